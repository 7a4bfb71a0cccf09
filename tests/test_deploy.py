"""deploy/ checked by the real tools: promtool (config, rules, rule unit tests), hadolint (every
Dockerfile), kubernetes-validate --strict (every Kubernetes manifest, as written and as kustomize
renders each overlay), check-jsonschema (the compose file against the compose spec), and the Grafana
dashboard's and alert rules' PromQL against the metric names stream/pipeline/metrics.py defines.
Then the real thing: Debian's Prometheus scraping a running pipeline (every dashboard query answers),
and the rendered Kubernetes base run with a network namespace per pod (frames flow, a pod restarts).

A missing tool skips its test with the reason; under CI=true it fails (conftest.missing). The tools:
promtool from Debian's `prometheus`, the others from the `deploy` extra (.ci/run installs both)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, missing
from netns import PodNetwork, in_netns

DEPLOY = REPO / "deploy"
PROMETHEUS = DEPLOY / "prometheus"

pytestmark = pytest.mark.e2e  # every test here starts a checker process


def tool(name: str) -> str:
    """The checker's path: beside this interpreter (a venv's console script) or on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        missing(f"{name} not installed (see .ci/run)")
    assert found is not None
    return found


def check(*cmd: str, cwd: Path = REPO) -> str:
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode == 0, f"{' '.join(cmd)} failed:\n{out}"
    return out


# --- Prometheus -------------------------------------------------------------------------------


def exported_metric_names() -> set[str]:
    """Every series name the pipeline exports: counters get _total, histograms _bucket/_sum/_count."""
    from prometheus_client import Counter, Gauge, Histogram

    from stream.pipeline import metrics

    names: set[str] = set()
    for metric in vars(metrics.get()).values():
        base = metric._name
        if isinstance(metric, Counter):
            names |= {f"{base}_total", f"{base}_created"}
        elif isinstance(metric, Histogram):
            names |= {f"{base}_bucket", f"{base}_sum", f"{base}_count", f"{base}_created"}
        else:
            assert isinstance(metric, Gauge), metric
            names.add(base)
    return names


PROMQL_NAME = re.compile(r"\b(facestream_[a-z0-9_]+)\b")


def promql_names(expr: str) -> set[str]:
    return set(PROMQL_NAME.findall(expr))


def test_promql_names_finds_every_metric_in_an_expression() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le) (rate(facestream_e2e_latency_seconds_bucket{camera="a"}[1m])))'
    )
    assert promql_names(expr + " / facestream_camera_up") == {
        "facestream_e2e_latency_seconds_bucket",
        "facestream_camera_up",
    }


def test_metric_names_are_what_prometheus_scrapes() -> None:
    """The helper the PromQL checks rely on: it yields the scraped names (a wrong helper would let
    every misspelt query pass)."""
    names = exported_metric_names()
    assert {
        "facestream_camera_up",
        "facestream_frames_total",
        "facestream_frames_dropped_total",
        "facestream_worker_restarts_total",
        "facestream_e2e_latency_seconds_bucket",
        "facestream_detect_plans_total",
    } <= names
    assert "facestream_frames" not in names and "facestream_camera_up_total" not in names


def test_prometheus_configs_and_rules() -> None:
    promtool = tool("promtool")
    out = check(promtool, "check", "config", str(DEPLOY / "prometheus.yml"))
    assert "1 rule files found" in out and "8 rules found" in out, out
    check(promtool, "check", "config", str(DEPLOY / "compose" / "prometheus.yml"))
    check(promtool, "check", "rules", str(PROMETHEUS / "facestream.rules.yml"))


def test_alert_rule_unit_tests() -> None:
    """promtool's unit tests: each alert fires on its failure and not on the healthy camera beside it."""
    out = check(tool("promtool"), "test", "rules", "facestream.rules.test.yml", cwd=PROMETHEUS)
    assert "SUCCESS" in out, out


def test_alert_rules_name_real_metrics() -> None:
    rules = yaml.safe_load((PROMETHEUS / "facestream.rules.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    assert {a["alert"] for a in alerts} >= {
        "FacestreamCameraDown",
        "FacestreamStageRestarting",
        "FacestreamE2ELatencyHigh",
        "FacestreamFramesDropped",
        "FacestreamNoFramesFromCamera",
    }
    known = exported_metric_names()
    for a in alerts:
        unknown = promql_names(a["expr"]) - known
        assert not unknown, f"{a['alert']}: {sorted(unknown)} not exported by stream/pipeline/metrics.py"


# --- Kubernetes ------------------------------------------------------------------------------

K8S = DEPLOY / "k8s"
KUSTOMIZATIONS = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


def kustomization(folder: Path) -> dict:
    return yaml.safe_load((folder / "kustomization.yaml").read_text())


def test_every_k8s_file_is_used() -> None:
    """Every YAML under deploy/k8s is a kustomization, a resource, a patch or a generator's file of
    one: nothing lies there unvalidated or forgotten."""
    used: set[Path] = set()
    for folder in KUSTOMIZATIONS:
        k = kustomization(folder)
        used.add(folder / "kustomization.yaml")
        used |= {(folder / r).resolve() for r in k.get("resources", []) if r.endswith(".yaml")}
        used |= {(folder / p["path"]).resolve() for p in k.get("patches", [])}
        used |= {(folder / f).resolve() for g in k.get("configMapGenerator", []) for f in g.get("files", [])}
    files = {p.resolve() for p in K8S.rglob("*.yaml")}
    assert files - used == set(), "not in any kustomization"
    assert {p.name for p in KUSTOMIZATIONS} == {"base", "gpu", "prometheus-adapter"}


def resources(folder: Path) -> list[Path]:
    return [folder / r for r in kustomization(folder).get("resources", []) if r.endswith(".yaml")]


@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_k8s_manifests_validate_strict(folder: Path, tmp_path: Path) -> None:
    """Each resource file as written, and the whole of what kustomize renders (patches applied),
    against the Kubernetes schemas with unknown fields refused."""
    validate = tool("kubernetes-validate")
    files = resources(folder)
    if files:
        check(validate, "--strict", "--quiet", *map(str, files))
    rendered = tmp_path / f"{folder.name}.yaml"
    rendered.write_text(check(tool("kubectl"), "kustomize", str(folder)))
    check(validate, "--strict", "--quiet", str(rendered))


def rendered(folder: Path) -> list[dict]:
    out = subprocess.run(
        [tool("kubectl"), "kustomize", str(folder)], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_kubernetes_validate_refuses_an_unknown_field(tmp_path: Path) -> None:
    """The validator really validates: a misspelt field in a rendered Deployment fails --strict."""
    docs = rendered(K8S / "base")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(deployment))
    p = subprocess.run([tool("kubernetes-validate"), "--strict", str(bad)], capture_output=True, text=True)
    assert p.returncode != 0 and "livenesProbe" in p.stdout + p.stderr


def test_k8s_config_is_a_valid_pipeline_config() -> None:
    """The ConfigMap's file passes the pipeline's own strict validation (tcp + CURVE, the replicas
    topology, one host per binding role named as its Service)."""
    from stream.pipeline import config

    cfg = config.load(K8S / "base" / "facestream.yaml")
    assert cfg.transport.kind == "tcp" and cfg.transport.curve is not None and cfg.replicas
    services = {d["metadata"]["name"]: d for d in rendered(K8S / "base") if d["kind"] == "Service"}
    for role in ("capture", "relay", "match"):
        assert cfg.transport.host_of(role) in services, f"{role}'s host is not a Service"


def bound_endpoints(cfg) -> dict[str, str]:
    """Every endpoint some process binds in this config -> the role that binds it (replicas: the
    relay binds detect's output, match embed's)."""
    from stream.pipeline.roles import RESULTS, Role

    out = {cfg.endpoint(Role.CAPTURE, i): "capture" for i in range(len(cfg.sources))}
    for role in (Role.DETECT, Role.RELAY, Role.EMBED, Role.MATCH):
        out[cfg.endpoint(role)] = cfg.binder(role)
    out[cfg.endpoint(RESULTS)] = "match"
    return out


def test_k8s_every_bound_endpoint_has_its_pod_and_service_port() -> None:
    """Each endpoint the config binds is a Service port whose named target only one pod declares
    (the same containerPort); that pod runs the binding role and binds its Service name (hostAliases
    0.0.0.0). Those fixed roles run one pod each (Recreate); detect and embed bind nothing, declare no
    ZeroMQ port and no --index, and are one Deployment each with several replicas that roll over
    without a gap (RollingUpdate, maxUnavailable 0)."""
    from stream.pipeline import config

    cfg = config.load(K8S / "base" / "facestream.yaml")
    docs = rendered(K8S / "base")
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    deployments = {d["metadata"]["labels"]["facestream/stage"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == {"capture", "detect", "relay", "embed", "match", "sink"}
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"]
    bound = bound_endpoints(cfg)
    assert len(bound) == len(cfg.sources) + 5
    for endpoint, role in bound.items():
        host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
        (sp,) = [p for p in services[host]["spec"]["ports"] if p["port"] == int(port)]
        owners = [
            pod
            for pod in pods
            for c in pod["containers"]
            for cp in c.get("ports", [])
            if cp["name"] == sp["targetPort"]
        ]
        assert len(owners) == 1, f"{endpoint}: {len(owners)} pods declare {sp['targetPort']}"
        (pod,) = owners
        (c,) = pod["containers"]
        assert [cp["containerPort"] for cp in c["ports"] if cp["name"] == sp["targetPort"]] == [int(port)]
        assert c["args"][:2] == ["stage", role]
        assert {"ip": "0.0.0.0", "hostnames": [host]} in pod["hostAliases"]
    for role, d in deployments.items():
        (c,) = d["spec"]["template"]["spec"]["containers"]
        if role in ("detect", "embed"):
            assert d["spec"]["replicas"] >= 2, role
            assert d["spec"]["strategy"] == {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            }
            assert "--index" not in c["args"] and [p["name"] for p in c["ports"]] == ["metrics"]
            assert "hostAliases" not in d["spec"]["template"]["spec"]
        else:
            assert d["spec"]["replicas"] == 1 and d["spec"]["strategy"] == {"type": "Recreate"}, role


def test_hpa_scales_detect_and_embed_on_a_metric_the_adapter_serves() -> None:
    """Each HorizontalPodAutoscaler targets the detect or embed Deployment, on a Pods metric that the
    prometheus-adapter rule serves, computed from a counter the stages export."""
    docs = rendered(K8S / "base")
    deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    hpas = {d["spec"]["scaleTargetRef"]["name"]: d for d in docs if d["kind"] == "HorizontalPodAutoscaler"}
    assert set(hpas) == {"facestream-detect", "facestream-embed"} and set(hpas) <= deployments
    (adapter,) = rendered(K8S / "prometheus-adapter")
    assert adapter["metadata"] == {"name": "adapter-config", "namespace": "monitoring"}
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    served = {r["name"]["as"]: r for r in rules}
    for hpa in hpas.values():
        assert hpa["apiVersion"] == "autoscaling/v2" and hpa["spec"]["minReplicas"] >= 2
        (metric,) = hpa["spec"]["metrics"]
        assert metric["type"] == "Pods"
        rule = served[metric["pods"]["metric"]["name"]]
        assert promql_names(rule["seriesQuery"]) <= exported_metric_names()
        assert re.fullmatch(rule["name"]["matches"], "facestream_busy_seconds_total")
        assert {"namespace", "pod"} <= set(rule["resources"]["overrides"])


def test_gpu_overlay_puts_detect_and_embed_on_gpus() -> None:
    for d in rendered(K8S / "overlays" / "gpu"):
        if d["kind"] != "Deployment":
            continue
        pod = d["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        gpu = d["metadata"]["labels"]["facestream/stage"] in ("detect", "embed")
        assert (c["resources"]["limits"].get("nvidia.com/gpu") == 1) == gpu, d["metadata"]["name"]
        assert ("nvidia.com/gpu.present" in pod.get("nodeSelector", {})) == gpu
        assert c["image"].endswith("-gpu") == gpu
        assert "memory" in c["resources"]["limits"]  # the patch added to the limits, kept the rest


# --- Container images ------------------------------------------------------------------------

DOCKER = DEPLOY / "docker"
DOCKERFILES = sorted(p for p in DEPLOY.rglob("Dockerfile*") if not p.name.endswith(".dockerignore"))


def test_there_are_a_cpu_and_a_gpu_image() -> None:
    assert {p.name for p in DOCKERFILES} == {"Dockerfile", "Dockerfile.gpu"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lints_clean(dockerfile: Path) -> None:
    check(tool("hadolint"), str(dockerfile))


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_shape(dockerfile: Path) -> None:
    """Multi-stage, the final stage runs as a non-root user, has a HEALTHCHECK on the metrics port
    the configs use, and `facestream` (directly or through the GPU wrapper) as its entrypoint."""
    ins = instructions(dockerfile)
    froms = [i for i, (w, _) in enumerate(ins) if w == "FROM"]
    assert len(froms) >= 2, "not multi-stage"
    final = ins[froms[-1] :]
    users = [a for w, a in final if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    (health,) = [a for w, a in final if w == "HEALTHCHECK"]
    assert "127.0.0.1:9108/metrics" in health
    (entry,) = [json.loads(a) for w, a in final if w == "ENTRYPOINT"]
    if entry == ["facestream-gpu"]:
        wrapper = (DOCKER / "gpu-entrypoint.sh").read_text()
        assert 'exec facestream "$@"' in wrapper
        subprocess.run(["sh", "-n", str(DOCKER / "gpu-entrypoint.sh")], check=True)
    else:
        assert entry == ["facestream"]
    assert any(w == "COPY" and "--from=build" in a for w, a in final), "the final stage copies the build"
    assert any(w == "RUN" and "facestream models pull" in a for w, a in ins), (
        "models are built into the image"
    )
    # The image's user cannot write $FACESTREAM_HOME: the demo's photos must be fetched at build time
    # (the first real build's demo failed without this).
    assert any(w == "RUN" and "facestream demo --fetch-only" in a for w, a in ins), (
        "the demo's photos are in the image"
    )


def test_build_script_passes_build_args_the_dockerfile_declares() -> None:
    """deploy/docker/build-and-run.sh (podman, run by hand: benchmarks/RESULTS.md) parses, and every
    --build-arg it passes is an ARG of the CPU Dockerfile (podman warns and ignores one that is not,
    and the image would quietly come from python:3.11-slim-bookworm, which no registry here serves)."""
    script = DOCKER / "build-and-run.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    passed = set(re.findall(r"--build-arg (\w+)=", script.read_text()))
    declared = {a.split("=")[0] for w, a in instructions(DOCKER / "Dockerfile") if w == "ARG"}
    assert passed == {"PYTHON_IMAGE", "TORCH_INDEX"} and passed <= declared, (passed, declared)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerignore_lets_in_what_copy_needs(dockerfile: Path) -> None:
    """The context is the repository root with everything ignored but what the Dockerfile copies:
    each COPY source must exist and be let in by a `!` line."""
    ignore = (dockerfile.parent / f"{dockerfile.name}.dockerignore").read_text().splitlines()
    allowed = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    assert "*" in ignore
    for word, args in instructions(dockerfile):
        if word != "COPY" or "--from=" in args:
            continue
        sources = [a for a in args.split() if not a.startswith("--")][:-1]
        for src in sources:
            assert (REPO / src).exists(), src
            assert any(src == a or src.startswith(a + "/") for a in allowed), f"{src} is ignored"


# --- Compose ---------------------------------------------------------------------------------

COMPOSE = DEPLOY / "compose"


def test_compose_file_matches_the_compose_spec(tmp_path: Path) -> None:
    checker = tool("check-jsonschema")
    compose = COMPOSE / "compose.yaml"
    check(checker, "--builtin-schema", "vendor.compose-spec", str(compose))
    # ... and the schema is really applied: a misspelt service key fails it.
    doc = yaml.safe_load(compose.read_text())
    doc["services"]["facestream"]["shm_sise"] = "1gb"
    bad = tmp_path / "compose.yaml"
    bad.write_text(yaml.safe_dump(doc))
    p = subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", str(bad)], capture_output=True, text=True
    )
    assert p.returncode != 0 and "shm_sise" in p.stdout + p.stderr


def test_compose_pieces_fit_together() -> None:
    """Every bind-mounted file exists; the pipeline config is valid and serves /metrics where
    Prometheus scrapes and the image's HEALTHCHECK looks; the rules Prometheus loads are the
    tested ones; Grafana's data source is the one the dashboard uses."""
    from stream.pipeline import config

    doc = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    services = doc["services"]
    assert {"facestream", "prometheus", "grafana", "mosquitto"} <= set(services)
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (COMPOSE / src).exists(), f"{name}: {src} missing"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["facestream"]["volumes"]}
    cfg = config.load(COMPOSE / mounts["/etc/facestream/facestream.yaml"])
    assert cfg.metrics.port == 9108 and cfg.metrics.host == "0.0.0.0"
    assert len(cfg.sources) == 1
    prom = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == [f"facestream:{cfg.metrics.port}"]
    prom_mounts = {
        v.split(":")[1]: (COMPOSE / v.split(":")[0]).resolve() for v in services["prometheus"]["volumes"]
    }
    for rule_file in prom["rule_files"]:
        # promtool resolves rule_files against the config's folder, Prometheus too: /etc/prometheus.
        in_container = os.path.normpath(f"/etc/prometheus/{rule_file}")
        assert prom_mounts[in_container] == (PROMETHEUS / "facestream.rules.yml").resolve()
    datasources = yaml.safe_load((COMPOSE / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    uids = {d["uid"] for d in datasources["datasources"]}
    dashboard = json.loads((COMPOSE / "grafana/dashboards/facestream.json").read_text())
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] in uids, panel["title"]


# --- Grafana dashboard -----------------------------------------------------------------------

DASHBOARD = COMPOSE / "grafana" / "dashboards" / "facestream.json"


def dashboard_queries(rate_interval: str = "1m") -> dict[str, str]:
    """{panel title / refId: PromQL} with Grafana's variables replaced by what they stand for."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = {}
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            expr = t["expr"].replace("$__rate_interval", rate_interval).replace('"$camera"', '".*"')
            assert "$" not in expr, expr
            queries[f"{panel['title']} / {t['refId']}"] = expr
    return queries


def test_dashboard_names_real_metrics_and_covers_the_issue() -> None:
    known = exported_metric_names()
    used: set[str] = set()
    for title, expr in dashboard_queries().items():
        names = promql_names(expr)
        assert names, f"{title}: no facestream metric"
        assert names <= known, f"{title}: {sorted(names - known)} not exported by stream/pipeline/metrics.py"
        used |= names
    # fps, drops by reason, e2e and per-stage latency from the histograms, restarts, camera up/down,
    # faces named/unknown.
    assert {
        "facestream_frames_total",
        "facestream_frames_dropped_total",
        "facestream_e2e_latency_seconds_bucket",
        "facestream_stage_seconds_bucket",
        "facestream_worker_restarts_total",
        "facestream_camera_up",
        "facestream_matches_total",
    } <= used
    for q in ("0.5", "0.95", "0.99"):
        assert any(
            f"histogram_quantile({q}," in e and "e2e_latency" in e for e in dashboard_queries().values()
        )


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    """Every panel query through Prometheus' own parser (promtool, as recording rules)."""
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:q{i}", "expr": e}
                    for i, e in enumerate(dashboard_queries().values())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    out = check(tool("promtool"), "check", "rules", str(path))
    assert f"SUCCESS: {len(rules['groups'][0]['rules'])} rules found" in out, out
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "bad", "rules": [{"record": "x:y", "expr": "rate(x[1m]"}]}]})
    )
    assert (
        subprocess.run([tool("promtool"), "check", "rules", str(path)], capture_output=True).returncode != 0
    )


# --- A real Prometheus scraping a running pipeline --------------------------------------------

CLIP = "video/facenet-pytorch-video.mp4"
# Panels that stay empty on this run, and why: it runs one file over ipc.
EMPTY_HERE = {
    "Camera reconnect attempts / A": "only a live camera that drops reconnects",
    "Refused connections (CURVE) / A": "only tcp links with CURVE refuse handshakes",
}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


@pytest.fixture
def fast_clip(shared_data: Path, tmp_path: Path) -> Path:
    """The shared clip at 640x360, played forwards and back to 2000 frames at 50 fps: 40 s of
    --realtime input that no CPU detects and embeds at full rate, so frames are dropped (capture
    late/busy, detect stale) and the drops panel has data wherever the test runs."""
    import cv2

    cap = cv2.VideoCapture(str(shared_data / CLIP))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.resize(frame, (640, 360), interpolation=cv2.INTER_AREA))
    assert len(frames) > 50
    cycle = frames + frames[-2:0:-1]
    path = tmp_path / "loop.mp4"
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 50.0, (640, 360))
    for i in range(2000):
        out.write(cycle[i % len(cycle)])
    out.release()
    return path


def test_prometheus_scrapes_a_running_pipeline(fast_clip: Path, models_home: Path, tmp_path: Path) -> None:
    """Debian's Prometheus (started here on 127.0.0.1) scrapes `facestream run` on the shared clip,
    loads the alert rules (healthy), answers a histogram_quantile of end-to-end latency, and every dashboard
    query returns data (but the two that cannot on this run, see EMPTY_HERE). A detect worker is
    killed midway so that the restarts panel has a series."""
    import signal
    import time
    import urllib.parse

    from waiting import wait_until

    prometheus = tool("prometheus")
    metrics_port, prom_port = free_port(), free_port()
    (tmp_path / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(PROMETHEUS / "facestream.rules.yml")],
                "scrape_configs": [
                    {"job_name": "facestream", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}
                ],
            }
        )
    )
    (tmp_path / "facestream.yaml").write_text(
        "capture: {realtime: true}\ndetect: {mode: guided, min_face_size: 40}\n"
    )
    api = f"http://127.0.0.1:{prom_port}/api/v1"

    def query(expr: str) -> list[dict]:
        answer = get_json(f"{api}/query?" + urllib.parse.urlencode({"query": expr}))
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    prom = subprocess.Popen(
        [
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "prometheus.log", "w"),
    )
    pipeline = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stream",
            "run",
            "--config",
            str(tmp_path / "facestream.yaml"),
            "--source",
            str(fast_clip),
            "--metrics-port",
            str(metrics_port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "pipeline.log", "w"),
        cwd=tmp_path,
    )
    try:

        def running(what: str) -> None:
            assert pipeline.poll() is None, (
                f"pipeline exited ({what}): {(tmp_path / 'pipeline.log').read_text()}"
            )
            assert prom.poll() is None, f"prometheus exited: {(tmp_path / 'prometheus.log').read_text()}"

        def answers(expr: str, what: str) -> list[dict]:
            running(what)
            try:
                return query(expr)
            except OSError:
                return []

        wait_until(lambda: answers("sum(facestream_e2e_latency_seconds_count) > 20", "frames"), 180, "frames")
        detect = [
            p for p in Path("/proc").iterdir() if p.name.isdigit() and _is_stage(p, pipeline.pid, "detect")
        ]
        assert detect, "no detect worker found"
        os.kill(int(detect[0].name), signal.SIGKILL)
        wait_until(lambda: answers("facestream_worker_restarts_total > 0", "restart"), 120, "the restart")
        # The restarted worker is back: frames reach the end again after the restart.
        t_restart = time.time()
        wait_until(
            lambda: (
                answers("increase(facestream_e2e_latency_seconds_count[5s]) > 0", "after restart")
                and time.time() > t_restart + 5
            ),
            120,
            "frames after the restart",
        )
        running("queries")

        p95 = query("histogram_quantile(0.95, sum by (le) (rate(facestream_e2e_latency_seconds_bucket[1m])))")
        assert len(p95) == 1 and 0.001 < float(p95[0]["value"][1]) < 30, p95
        empty = {title for title, expr in dashboard_queries("10s").items() if not query(expr)}
        assert empty == set(EMPTY_HERE), f"empty: {sorted(empty)}, expected only {sorted(EMPTY_HERE)}"
        groups = get_json(f"{api}/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert len(rules) == 8 and all(r["health"] == "ok" for r in rules), rules
    finally:
        for proc in (pipeline, prom):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in (pipeline, prom):
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _is_stage(proc_dir: Path, parent: int, role: str) -> bool:
    try:
        stat = (proc_dir / "stat").read_text()
        cmd = (proc_dir / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    ppid = int(stat.rsplit(")", 1)[1].split()[1])
    return ppid == parent and b"stage" in cmd and role.encode() in cmd


# --- The Kubernetes manifests, run: one network namespace per pod ------------------------------
# What kubelet and kube-proxy would do, done by hand: each Deployment's pod gets its own network
# namespace and address on a bridge, its /etc/hosts holds its hostAliases plus the cluster DNS names
# of the Services, a proxy stands in for each Service's virtual address (a port goes to the pod that
# declares its named targetPort, as the EndpointSlice controller resolves it), the init containers'
# commands run first, then each container's args as `facestream` with the ConfigMap's file. Paths
# the pods would mount (/etc/facestream, /run/facestream, /var/lib/facestream) live under tmp_path;
# the one camera is the shared clip. Everything stays inside namespaces this test makes and deletes.

SERVICE_PROXY = """
import asyncio, sys

async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()

async def main(routes):
    for listen_host, listen_port, host, port in routes:
        async def handle(r, w, host=host, port=port):
            try:
                r2, w2 = await asyncio.open_connection(host, port)
            except OSError:
                w.close()
                return
            await asyncio.gather(pipe(r, w2), pipe(r2, w))
        await asyncio.start_server(handle, listen_host, listen_port)
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main([(a, int(b), c, int(d)) for a, b, c, d in (x.split(",") for x in sys.argv[1:])]))
"""


def http_status(ns: str, url: str) -> int:
    """What a kubelet's httpGet probe sees, asked from the switch namespace."""
    code = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=3).status)"
    p = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code, url], capture_output=True, text=True
    )
    return int(p.stdout) if p.returncode == 0 else 0


def scrape_sum(ns: str, url: str, name: str, **labels: str) -> float:
    code = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())"
    p = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code, url], capture_output=True, text=True
    )
    total = 0.0
    for m in re.finditer(rf"^{name}\{{([^}}]*)\}} (\S+)$", p.stdout, re.M):
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


@pytest.fixture
def live_clip(shared_data: Path, tmp_path: Path) -> Path:
    """The shared clip at 640x360, forwards and back to 3000 frames at 10 fps: 5 minutes paced, longer
    than the test runs on a loaded machine (a capture whose file ends exits, and the test would say so)."""
    import cv2

    cap = cv2.VideoCapture(str(shared_data / CLIP))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.resize(frame, (640, 360), interpolation=cv2.INTER_AREA))
    cycle = frames + frames[-2:0:-1]
    path = tmp_path / "camera.mp4"
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (640, 360))
    for i in range(3000):
        out.write(cycle[i % len(cycle)])
    out.release()
    return path


def test_k8s_pods_run_the_pipeline_with_replicas_and_survive_losing_one(
    live_clip: Path, models_home: Path, tmp_path: Path
) -> None:
    """The rendered base, run as pods: a pod per replica (two detect and two embed replicas of ONE
    Deployment each). Frames from the camera reach the sink's results through the Services (ZeroMQ +
    CURVE with the init container's key layout; the fixed roles bind on their Service names through
    hostAliases 0.0.0.0, the replicas bind nothing); every pod's probe endpoint answers; both detect
    and both embed replicas get frames. One detect replica is killed: the other carries the frames,
    and its replacement (a new pod of the Deployment) gets frames without any other pod being
    touched; then one embed replica is killed and the other carries on. At the end the camera stops:
    its end-of-stream passes the replicas and the relay, match lets it go after the camera's frames
    (or says how many were lost with the killed pods, few), and the sink ends by itself with every
    frame written once."""
    import signal

    from waiting import wait_until

    if shutil.which("ip") is None:
        missing("iproute2's ip not installed")
    docs = rendered(K8S / "base")
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    services = [d for d in docs if d["kind"] == "Service"]
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert deployments["facestream-detect"]["spec"]["replicas"] == 2
    assert deployments["facestream-embed"]["spec"]["replicas"] == 2

    try:
        net = PodNetwork(f"fs{os.getpid() % 100000}")
    except subprocess.CalledProcessError as e:
        missing(f"cannot make network namespaces here: {e.stderr.decode().strip()}")
    procs: dict[str, subprocess.Popen] = {}
    try:
        keys = tmp_path / "keys"
        check(sys.executable, "-m", "stream", "keys", "generate", str(keys))
        secret = (
            tmp_path / "secret"
        )  # the Secret facestream-curve: the four files `kubectl create secret` takes
        secret.mkdir()
        for name in ("server.key", "server.key_secret", "client.key", "client.key_secret"):
            shutil.copy(keys / name, secret / name)
        var = tmp_path / "var"
        (var / "gallery").mkdir(parents=True)
        (var / "out").mkdir()

        # A pod per replica, named like the ReplicaSet's (Deployment name + a suffix); one more pod
        # slot for the detect replica's replacement.
        pod_specs = [
            (f"{name}-{r}" if d["spec"]["replicas"] > 1 else name, d)
            for name, d in sorted(deployments.items())
            for r in range(d["spec"]["replicas"] + (1 if name == "facestream-detect" else 0))
        ]
        pods: dict[str, dict] = {}
        for i, (name, d) in enumerate(pod_specs):
            ns, address = net.pod(i)
            root = tmp_path / "pods" / name
            (root / "etc").mkdir(parents=True)
            (root / "run" / "curve").mkdir(parents=True)

            def local(text: str, root: Path = root) -> str:
                return (
                    text.replace("/etc/facestream", str(root / "etc"))
                    .replace("/run/facestream/curve-secret", str(secret))
                    .replace("/run/facestream", str(root / "run"))
                    .replace("/var/lib/facestream", str(var))
                )

            cfg = yaml.safe_load(configmap["data"]["facestream.yaml"])
            cfg["sources"] = [{"url": str(live_clip), "name": "door", "open_timeout_s": "forever"}]
            cfg["capture"]["realtime"] = True
            (root / "etc" / "facestream.yaml").write_text(local(yaml.safe_dump(cfg)))
            pods[name] = {
                "ns": ns,
                "address": address,
                "root": root,
                "spec": d["spec"]["template"],
                "local": local,
            }

        # The Services: DNS names -> their addresses; each port -> the pod that declares its targetPort.
        routes, dns = [], {}
        for j, svc in enumerate(services):
            address = net.service_address(j)
            dns[svc["metadata"]["name"]] = address
            selector = svc["spec"]["selector"]
            for sp in svc["spec"]["ports"]:
                ends = [
                    (p["address"], cp["containerPort"])
                    for p in pods.values()
                    if selector.items() <= p["spec"]["metadata"]["labels"].items()
                    for c in p["spec"]["spec"]["containers"]
                    for cp in c.get("ports", [])
                    if cp["name"] == sp["targetPort"]
                ]
                assert len(ends) == 1, (svc["metadata"]["name"], sp)
                routes.append(f"{address},{sp['port']},{ends[0][0]},{ends[0][1]}")
        proxy = subprocess.Popen(
            ["ip", "netns", "exec", net.switch, sys.executable, "-c", SERVICE_PROXY, *routes],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs["service-proxy"] = proxy
        assert proxy.stdout is not None and proxy.stdout.readline().strip() == "ready"

        env = {**os.environ, "FACESTREAM_HOME": str(models_home), "PYTHONUNBUFFERED": "1"}
        commands: dict[str, list[str]] = {}
        for name, p in pods.items():
            spec, local = p["spec"]["spec"], p["local"]
            aliases = {h: a["ip"] for a in spec.get("hostAliases", []) for h in a["hostnames"]}
            hosts = p["root"] / "hosts"
            hosts.write_text(
                "127.0.0.1 localhost\n" + "".join(f"{aliases.get(n, a)} {n}\n" for n, a in dns.items())
            )
            for init in spec.get("initContainers", []):
                if "command" in init:
                    argv = [local(a) for a in init["command"]]
                else:  # the image's entrypoint: facestream
                    argv = [sys.executable, "-m", "stream", *map(local, init["args"])]
                subprocess.run(argv, check=True, env=env, timeout=120, capture_output=True)
            (c,) = spec["containers"]
            commands[name] = in_netns(
                p["ns"], [sys.executable, "-m", "stream", *map(local, c["args"])], hosts
            )

        def start(name: str) -> None:
            log = open(pods[name]["root"] / "log.txt", "a")
            procs[name] = subprocess.Popen(commands[name], stdout=log, stderr=log, env=env)

        replacement = "facestream-detect-2"
        for name in commands:
            if name != replacement:
                start(name)

        def metrics(name: str) -> str:
            return f"http://{pods[name]['address']}:9108/metrics"

        def frames(name: str, stage: str) -> float:
            return scrape_sum(net.switch, metrics(name), "facestream_frames_total", stage=stage)

        def alive() -> None:
            for name, proc in procs.items():
                log = pods[name]["root"] / "log.txt" if name in pods else None
                assert proc.poll() is None, f"{name} exited: {log.read_text()[-3000:] if log else ''}"

        results = var / "out" / "results.jsonl"

        def written() -> int:
            alive()
            return len(results.read_text().splitlines()) if results.exists() else 0

        wait_until(lambda: written() >= 10, 300, "results through every pod")
        for name in procs:  # the readiness/liveness probes' request, from outside the pod
            if name in pods:
                assert http_status(net.switch, metrics(name)) == 200, name
        lines = [json.loads(line) for line in results.read_text().splitlines()]
        assert {r["camera"] for r in lines} == {"door"}
        assert any(r["faces"] for r in lines), "no faces in the results"
        # Interchangeable replicas: each one of the two Deployments' replicas gets frames.
        for stage in ("detect", "embed"):
            for r in (0, 1):
                name = f"facestream-{stage}-{r}"
                wait_until(lambda name=name, stage=stage: alive() or frames(name, stage) > 0, 120, name)

        def kill_one_replica(stage: str) -> None:
            """Replica 0 dies (its pod is gone); replica 1 carries the frames meanwhile."""
            dead, other = f"facestream-{stage}-0", f"facestream-{stage}-1"
            procs[dead].send_signal(signal.SIGKILL)
            procs[dead].wait(30)
            del procs[dead]
            before, n = frames(other, stage), written()
            wait_until(
                lambda: frames(other, stage) > before + 5 and written() > n + 5,
                120,
                f"frames through {other} while {dead} is gone",
            )

        kill_one_replica("detect")
        # The ReplicaSet's replacement: a new pod, nothing else touched, gets its share.
        start(replacement)
        wait_until(
            lambda: alive() or frames(replacement, "detect") >= 3, 300, "frames through the new replica"
        )

        kill_one_replica("embed")

        # The camera stops (SIGINT: its end-of-stream goes behind its last frames). The sink ends by
        # itself once match let the end go: after every frame, or after the few lost with the pods.
        sink = procs["facestream-sink"]  # still in procs: stopped in `finally` if it hangs
        procs["facestream-capture-door"].send_signal(signal.SIGINT)
        assert sink.wait(180) == 0, (pods["facestream-sink"]["root"] / "log.txt").read_text()[-3000:]
        rows = [json.loads(line) for line in results.read_text().splitlines()]
        seqs = [r["seq"] for r in rows]
        assert len(seqs) == len(set(seqs)), "a frame written twice"
        match_log = (pods["facestream-match"]["root"] / "log.txt").read_text()
        ends = re.findall(r"its end goes on after (\d+) of (\d+) frames", match_log)
        # What the two killed pods held, at most: their queues and batches, and the kernel's TCP
        # buffers of their two frame links each (sender's send buffer + receiver's receive buffer,
        # each up to its tcp_wmem / tcp_rmem maximum: far more than the ZeroMQ high-water marks).
        cfg = yaml.safe_load(configmap["data"]["facestream.yaml"])
        hwm, frame_bytes = cfg["transport"]["hwm"], 640 * 360 * 3
        wmem, rmem = (
            int(
                subprocess.run(
                    ["ip", "netns", "exec", net.switch, "cat", f"/proc/sys/net/ipv4/{name}"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.split()[-1]
            )
            for name in ("tcp_wmem", "tcp_rmem")
        )
        in_tcp = -(-(wmem + rmem) // frame_bytes)
        held = (
            2 * 2 * in_tcp
            + (2 * hwm + cfg["detect"]["max_batch"] + 1)
            + (2 * hwm + cfg["embed"]["max_batch"] + 1)
        )
        for got, sent in ends:
            assert 0 < int(sent) - int(got) <= held, (got, sent, held)
        # ... and counted: no supervisor books them here, so match does (the drops alert sees them).
        lost = scrape_sum(
            net.switch,
            metrics("facestream-match"),
            "facestream_frames_dropped_total",
            stage="match",
            reason="lost_in_flight",
        )
        assert lost == sum(int(sent) - int(got) for got, sent in ends), (lost, ends)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        net.close()
