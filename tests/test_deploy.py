"""deploy/ checked by the real tools: promtool (config, rules, rule unit tests), hadolint (every
Dockerfile), kubernetes-validate --strict (every Kubernetes manifest, as written and as kustomize
renders each overlay), check-jsonschema (the compose file against the compose spec), and the Grafana
dashboard's and alert rules' PromQL against the metric names stream/pipeline/metrics.py defines.

A missing tool skips its test with the reason; under CI=true it fails (conftest.missing). The tools:
promtool from Debian's `prometheus`, the others from the `deploy` extra (.ci/run installs both)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, missing

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


PROMQL_NAME = re.compile(r"\b(facestream_[a-z_]+)\b")


def promql_names(expr: str) -> set[str]:
    return set(PROMQL_NAME.findall(expr))


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
    assert "1 rule files found" in out and "7 rules found" in out, out
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
    assert {p.name for p in KUSTOMIZATIONS} == {"base", "gpu"}


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
    """The ConfigMap's file passes the pipeline's own strict validation (tcp + CURVE, one host per
    role named as its Service)."""
    from stream.pipeline import config

    cfg = config.load(K8S / "base" / "facestream.yaml")
    assert cfg.transport.kind == "tcp" and cfg.transport.curve is not None
    services = {d["metadata"]["name"]: d for d in rendered(K8S / "base") if d["kind"] == "Service"}
    for role in ("capture", "detect", "embed", "match"):
        assert cfg.transport.host_of(role) in services, f"{role}'s host is not a Service"


def test_k8s_every_worker_has_its_deployment_and_service_port() -> None:
    """Each endpoint the config makes a consumer connect to is a Service port whose named target
    only that worker's pod declares (the same containerPort), and that pod runs that role and index
    and binds its Service name (hostAliases 0.0.0.0)."""
    from stream.pipeline import config
    from stream.pipeline.roles import Role

    cfg = config.load(K8S / "base" / "facestream.yaml")
    docs = rendered(K8S / "base")
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"]
    assert len(pods) == len(cfg.sources) + cfg.detect.workers + cfg.embed.workers + 2
    for role in (Role.CAPTURE, Role.DETECT, Role.EMBED, Role.MATCH):
        for index in range(cfg.workers(role)):
            host, port = cfg.endpoint(role, index).removeprefix("tcp://").rsplit(":", 1)
            (sp,) = [p for p in services[host]["spec"]["ports"] if p["port"] == int(port)]
            owners = [
                pod
                for pod in pods
                for c in pod["containers"]
                for cp in c.get("ports", [])
                if cp["name"] == sp["targetPort"]
            ]
            assert len(owners) == 1, f"{role} {index}: {len(owners)} pods declare {sp['targetPort']}"
            (pod,) = owners
            (c,) = pod["containers"]
            assert [cp["containerPort"] for cp in c["ports"] if cp["name"] == sp["targetPort"]] == [int(port)]
            assert c["args"][:2] == ["stage", role.value] and c["args"][
                c["args"].index("--index") + 1
            ] == str(index)
            assert {"ip": "0.0.0.0", "hostnames": [host]} in pod["hostAliases"]


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
