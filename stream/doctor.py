"""`facestream doctor`: what this machine is, as far as facestream's speed and correctness depend on it.

`facts()` returns one stable dict (`--json` prints it; new keys are added, never renamed): the CPU
(from stream.cpu, its one owner), the threads the pipeline would use, torch / ONNX Runtime and whether
CUDA really works, the built models checked against their manifests' sha256, which embedder precision
will run, free shared memory and disk, and whether the configured ports can be bound. `render()` is
the human text, one fact per line; `header()` the few lines every benchmark prints above its tables.

Exit status: 0 when nothing is broken (warnings, such as models not built yet, are printed but do not
fail); 1 when something would make `facestream run` fail here: a model that is present but damaged,
a configured port already in use, a GPU whose CUDA does not work, `embed.precision: int8` without an
int8 model. A bad --config is the usual one-line error, exit 2."""

from __future__ import annotations

import argparse
import errno
import json
import os
import platform
import shutil
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stream.cpu import ARM_FEATURES, X86_FEATURES, cpu_info
from stream.gpu import ort_cuda_usable

if TYPE_CHECKING:
    from stream.pipeline.config import PipelineConfig

SCHEMA = 1
GiB = 2**30


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "doctor",
        help="the machine: CPU features, threads, runtimes, models, shared memory, ports",
        description="Report what this machine is for facestream. Exit 0 unless something is broken "
        "(a damaged model, a configured port in use, CUDA present but failing): then 1.",
    )
    p.add_argument("--json", action="store_true", help="one JSON object (stable keys) for scripts")
    p.add_argument("--config", type=Path, metavar="FILE", help="pipeline config whose ports to check")
    p.add_argument("--metrics-port", type=int, help="also check this /metrics port")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    f = facts(args.config, args.metrics_port)
    print(json.dumps(f) if args.json else render(f))
    return 1 if f["problems"] else 0


def facts(config: Path | None = None, metrics_port: int | None = None, ports: bool = True) -> dict[str, Any]:
    from stream.pipeline import config as pipeline_config

    cfg = pipeline_config.load(config, {"metrics.port": metrics_port})
    notes: dict[str, list[str]] = {"problems": [], "warnings": []}
    cpu = cpu_info()
    runtimes = _runtimes(notes)
    models = _models(cfg.home, notes)
    out: dict[str, Any] = {
        "schema": SCHEMA,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": str(config) if config else None,
        "cpu": cpu.to_json(),
        "threads": _threads(cfg, notes),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "runtimes": runtimes,
        "models": models,
        "embedder": _embedder(cfg, models, runtimes, notes),
        "storage": _storage(cfg, notes),
        "ports": _ports(cfg, notes) if ports else [],
    }
    return {**out, **notes, "ok": not notes["problems"]}


def _threads(cfg: PipelineConfig, notes: dict[str, list[str]]) -> dict[str, Any]:
    import torch

    from stream.pipeline.stages.base import stage_threads

    usable = cpu_info().logical_cpus
    stages = {
        role: {"workers": getattr(cfg, role).workers, "threads": stage_threads(cfg, role)}
        for role in ("detect", "embed")
    }
    busiest = stages["detect"]["workers"] * stages["detect"]["threads"]
    if busiest > usable:
        # Only configured thread counts can exceed this: the defaults follow the usable CPUs.
        notes["warnings"].append(
            f"detection would run {busiest} threads but this process may use {usable} CPUs: "
            "set detect.threads / embed.threads in the config"
        )
    return {
        "os_cpu_count": os.cpu_count(),
        "affinity": usable,
        "torch": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "pipeline": stages,
        "kernels": _torch_kernels(),
    }


def _torch_kernels() -> str:
    """The instruction sets torch's CPU kernels use: ATen's own (ATEN_CPU_CAPABILITY may lower it)
    and oneDNN's (the convolutions; ONEDNN_MAX_CPU_ISA may cap it). Lowered, a faster CPU stands in
    for a slower one: an emulation of its instruction set, not of its cores or memory."""
    import torch

    aten = torch.backends.cpu.get_cpu_capability()
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    onednn = f"oneDNN capped at {cap} (ONEDNN_MAX_CPU_ISA)" if cap else "oneDNN: the CPU's best"
    lowered = (
        " (lowered: an emulation of a CPU without the rest)"
        if cap or os.environ.get("ATEN_CPU_CAPABILITY")
        else ""
    )
    return f"ATen {aten}, {onednn}{lowered}"


def _runtimes(notes: dict[str, list[str]]) -> dict[str, Any]:
    import cv2
    import numpy
    import onnxruntime as ort
    import torch

    t: dict[str, Any] = {"version": torch.__version__, "cuda_build": torch.version.cuda, "cuda": False}
    try:
        if torch.cuda.is_available():
            torch.zeros(1, device="cuda")  # is_available() only counts devices; this runs a kernel
            t["cuda"], t["cuda_device"] = True, torch.cuda.get_device_name(0)
    except Exception as e:  # noqa: BLE001 - any CUDA failure is the fact to report
        t["cuda_error"] = _one_line(str(e))
        notes["problems"].append(f"torch sees a GPU but CUDA fails: {t['cuda_error']}")
    providers = ort.get_available_providers()
    o: dict[str, Any] = {"version": ort.__version__, "providers": providers, "cuda": False}
    if "CUDAExecutionProvider" in providers:
        o["cuda"], err = ort_cuda_usable()
        if err:
            o["cuda_error"] = err
    return {
        "python": platform.python_version(),
        "torch": t,
        "onnxruntime": o,
        "numpy": numpy.__version__,
        "opencv": cv2.__version__,
    }


def _models(home: Path | None, notes: dict[str, list[str]]) -> dict[str, Any]:
    from stream.home import models_dir
    from stream.registry import DEFAULT_MODELS, MODELS

    items = [_check_model(name, home) for name in MODELS]
    for m in items:
        if m["state"] == "damaged":
            notes["problems"].append(f"model {m['name']} is damaged: {'; '.join(m['problems'])}")
        if m["state"] == "outdated":
            notes["warnings"].append(f"model {m['name']} {m['problems'][-1]}")
    missing = [m["name"] for m in items if m["name"] in DEFAULT_MODELS and m["state"] == "not built"]
    if missing:
        notes["warnings"].append(
            f"default models not built: run `facestream models pull` ({' '.join(missing)})"
        )
    return {"dir": str(models_dir(home)), "default": list(DEFAULT_MODELS), "items": items}


def _check_model(name: str, home: Path | None) -> dict[str, Any]:
    """ok / not built / damaged: every file the manifest lists, with its size and recorded sha256."""
    from stream.modelstore import check_model

    c = check_model(name, home, verify_sha256=True)
    return {
        "name": name,
        "state": c.state,
        "files": c.files,
        "sha256_checked": c.sha256_checked,
        "problems": c.problems,
    }


def _embedder(
    cfg: PipelineConfig, models: dict[str, Any], runtimes: dict[str, Any], notes: dict[str, list[str]]
) -> dict[str, Any]:
    """Which provider and precision the embed stage will run, by stream.embedder's rules."""
    from stream.errors import FacestreamError
    from stream.modelstore import read_manifest

    # The same probe (stream.gpu) decides the embedder's provider.
    on_cuda = cfg.embed.device in (None, "cuda") and runtimes["onnxruntime"]["cuda"]
    state = next((m["state"] for m in models["items"] if m["name"] == cfg.model), "not built")
    runs = state in ("ok", "outdated")
    try:
        int8 = read_manifest(cfg.model, cfg.home).get("int8") if runs else None
    except FacestreamError:
        int8 = None
    here = cpu_info().int8_kernel
    info: dict[str, Any] = {"state": "absent", "this_cpu": here}
    if isinstance(int8, dict) and "skipped" in int8:
        info.update(state="skipped", reason=int8["skipped"])
    elif isinstance(int8, dict) and int8.get("file"):
        seen = (int8.get("verified_on") or {}).get("int8_kernel")
        info.update(state="verified" if seen else "unrecorded", verified_on=seen)
        info["same_kernel"] = None if seen is None else seen == here
    want = cfg.embed.precision
    has_int8 = info["state"] in ("verified", "unrecorded")
    precision = "int8" if has_int8 and (want == "int8" or (want == "auto" and not on_cuda)) else "fp32"
    if want == "int8" and not has_int8 and runs:
        notes["problems"].append(
            f"embed.precision is int8 but {cfg.model} has no int8 model ({info.get('reason', 'none built')})"
        )
    return {
        "model": cfg.model,
        "state": state,
        "provider": "CUDAExecutionProvider" if on_cuda else "CPUExecutionProvider",
        "configured_precision": want,
        "precision": precision if runs else None,
        "int8": info,
    }


def _storage(cfg: PipelineConfig, notes: dict[str, list[str]]) -> dict[str, Any]:
    from stream.home import facestream_home

    home = Path(cfg.home) if cfg.home else facestream_home()
    existing = next(p for p in (home, *home.parents) if p.exists())  # not created before the first pull
    shm = Path("/dev/shm")
    shm_free = shutil.disk_usage(shm).free if shm.is_dir() else None
    # A 1080p camera's frame ring, sized as the pipeline sizes it (docker's default /dev/shm is 64 MB).
    frame = 1920 * 1080 * 3
    ring_bytes = cfg.ring_slots(frame) * frame
    if cfg.transport.kind == "ipc" and cfg.transport.shm is not False and shm_free is not None:
        if shm_free < ring_bytes:
            notes["warnings"].append(
                f"/dev/shm has {shm_free / 2**20:.0f} MB free, a 1080p camera's frame ring "
                f"needs {ring_bytes / 2**20:.0f} MB (docker: --shm-size)"
            )
    return {
        "home": str(home),
        "home_free_bytes": shutil.disk_usage(existing).free,
        "shm": str(shm) if shm.is_dir() else None,
        "shm_free_bytes": shm_free,
        "ring_1080p_bytes": ring_bytes,
    }


def _ports(cfg: PipelineConfig, notes: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Every TCP port the configured pipeline would bind on some host, tried here."""
    from stream.pipeline.config import endpoint_host

    wanted: list[tuple[str, str, int]] = []
    if cfg.metrics.port:  # 0 = any free port
        wanted.append(("metrics", cfg.metrics.host, cfg.metrics.port))
    tcp = cfg.transport.kind == "tcp"
    # ipc links bind no port; only a results PUB set to tcp:// does (outputs.results).
    endpoints = [("results", cfg.outputs.results or "")]
    if tcp:
        endpoints = [
            (f"{role}-{i}", cfg.endpoint(role, i))
            for role in ("capture", "detect", "embed")
            for i in range(cfg.workers(role))
        ] + [(role, cfg.endpoint(role)) for role in ("match", "results")]
    for name, ep in endpoints:
        host = endpoint_host(ep)
        if host is not None:
            wanted.append((name, host, int(ep.rsplit(":", 1)[1])))
    out = []
    for name, host, port in wanted:
        state, detail = _try_bind(host, port)
        out.append({"name": name, "host": host, "port": port, "state": state, "detail": detail})
        if state == "busy":
            notes["problems"].append(f"port {host}:{port} ({name}) is in use: {detail}")
    return out


def _try_bind(host: str, port: int) -> tuple[str, str | None]:
    """free / busy / elsewhere (an address of another host: that host binds it) / error."""
    try:
        family, _, _, _, addr = socket.getaddrinfo(
            None if host == "*" else host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        return "error", f"{host} does not resolve ({e.strerror})"
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # As ZeroMQ and prometheus' HTTP server do: a port in TIME_WAIT is free to them.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return "busy", "another process listens there"
            if e.errno == errno.EADDRNOTAVAIL:
                return "elsewhere", f"{host} is not an address of this host"
            return "error", e.strerror
    return "free", None


def render(f: dict[str, Any]) -> str:
    """The human report: one `fact: value` per line."""
    cpu, th, rt, emb, st = f["cpu"], f["threads"], f["runtimes"], f["embedder"], f["storage"]
    lines = [
        ("cpu", f"{cpu['model'] or 'unknown'} ({cpu['arch']})"),
        ("cpu features", _features(cpu)),
        ("int8 kernel", cpu["int8_kernel"]),
        ("native bf16", "yes" if cpu["native_bf16"] else "no (bf16 is emulated in float32)"),
        ("cpus", f"{th['affinity']} usable by this process, os.cpu_count {th['os_cpu_count']}"),
        ("torch threads", f"{th['torch']} (OMP_NUM_THREADS {th['omp_num_threads'] or 'unset'})"),
        ("torch kernels", th["kernels"]),
        ("pipeline threads", _stages(th)),
        ("load average", " ".join(str(x) for x in f["load_average"])),
        ("python", rt["python"]),
        ("torch", f"{rt['torch']['version']}, CUDA {_torch_cuda(rt['torch'])}"),
        (
            "onnxruntime",
            f"{rt['onnxruntime']['version']}, providers {' '.join(rt['onnxruntime']['providers'])}",
        ),
        ("onnxruntime CUDA", _ort_cuda(rt["onnxruntime"])),
        ("numpy", rt["numpy"]),
        ("opencv", rt["opencv"]),
        ("models dir", f["models"]["dir"]),
        *((f"model {m['name']}", _model(m)) for m in f["models"]["items"]),
        ("embedder", _embedder_line(emb)),
        ("int8", _int8(emb["int8"])),
        ("home disk free", f"{st['home_free_bytes'] / GiB:.1f} GiB ({st['home']})"),
        ("shared memory free", _shm(st)),
        *((f"port {p['name']}", _port(p)) for p in f["ports"]),
    ]
    if not f["ports"]:
        lines.append(("ports", "none configured (ipc links; no metrics port)"))
    lines += [("warning", w) for w in f["warnings"]] + [("problem", p) for p in f["problems"]]
    lines.append(("status", f"{len(f['problems'])} problem(s)" if f["problems"] else "ok"))
    width = max(len(k) for k, _ in lines) + 2
    return "\n".join(f"{k + ':':{width}}{v}" for k, v in lines)


def header() -> str:
    """The machine facts above every benchmark's tables, so that a figure names its hardware."""
    f = facts(ports=False)
    cpu, th, rt, emb = f["cpu"], f["threads"], f["runtimes"], f["embedder"]
    models = ", ".join(f"{m['name']} {m['state']}" for m in f["models"]["items"] if m["state"] != "not built")
    return "\n".join(
        [
            f"machine: {cpu['model'] or 'unknown CPU'} ({cpu['arch']}); features: {_features(cpu)}",
            f"int8 kernel {cpu['int8_kernel']}; native bf16 {'yes' if cpu['native_bf16'] else 'no'}; "
            f"{th['affinity']} usable CPUs (os.cpu_count {th['os_cpu_count']}); torch threads {th['torch']}; "
            f"pipeline {_stages(th)}; load average {f['load_average'][0]}",
            f"torch kernels: {th['kernels']}",
            f"software: python {rt['python']}, torch {rt['torch']['version']} (CUDA {_torch_cuda(rt['torch'])}), "
            f"onnxruntime {rt['onnxruntime']['version']} (CUDA {_ort_cuda(rt['onnxruntime'])}), "
            f"numpy {rt['numpy']}, opencv {rt['opencv']}",
            f"models: {models or 'none built'}; embedder {_embedder_line(emb)}; int8 {_int8(emb['int8'])}",
            *(f"warning: {w}" for w in f["warnings"]),
            *(f"problem: {p}" for p in f["problems"]),
            "",
        ]
    )


def _features(cpu: dict[str, Any]) -> str:
    known = X86_FEATURES if cpu["arch"] in ("x86_64", "AMD64", "i386", "i686") else ARM_FEATURES
    have = [x for x in known if x in cpu["features"]]
    lack = [x for x in known if x not in cpu["features"]]
    return f"{' '.join(have) or 'none'}" + (f" (not: {' '.join(lack)})" if lack else "")


def _stages(th: dict[str, Any]) -> str:
    p = th["pipeline"]
    return ", ".join(
        f"{r} {p[r]['workers']} worker(s) x {p[r]['threads']} thread(s)" for r in ("detect", "embed")
    )


def _torch_cuda(t: dict[str, Any]) -> str:
    if t["cuda"]:
        return f"works ({t['cuda_device']})"
    if t.get("cuda_error"):
        return f"fails: {t['cuda_error']}"
    return "no GPU" if t["cuda_build"] else "not in this build"


def _ort_cuda(o: dict[str, Any]) -> str:
    if "CUDAExecutionProvider" not in o["providers"]:
        return "not in this build"
    return "works" if o["cuda"] else f"listed but not usable: {o.get('cuda_error')}"


def _model(m: dict[str, Any]) -> str:
    if m["state"] == "ok":
        return (
            f"ok ({m['files']} file{'s' if m['files'] != 1 else ''}, {m['sha256_checked']} sha256 verified)"
        )
    if m["state"] == "not built":
        return f"not built (`facestream models pull {m['name']}`)"
    if m["state"] == "outdated":
        return f"outdated: {m['problems'][-1]}"
    return "DAMAGED: " + "; ".join(m["problems"])


def _embedder_line(e: dict[str, Any]) -> str:
    if e["precision"] is None:
        return f"{e['model']} {e['state']}"
    return (
        f"{e['model']} in {e['precision']} on {e['provider']} (embed.precision {e['configured_precision']})"
    )


def _int8(i: dict[str, Any]) -> str:
    if i["state"] == "skipped":
        return f"skipped at build: {i['reason']}"
    if i["state"] == "verified":
        same = "same" if i["same_kernel"] else "differs (re-verified at load; fp32 if that fails)"
        return f"verified on {i['verified_on']}, this CPU {i['this_cpu']}: {same}"
    if i["state"] == "unrecorded":
        return f"built; the CPU it was verified on is not recorded (this CPU {i['this_cpu']}: re-verified at load)"
    return "no int8 model"


def _shm(st: dict[str, Any]) -> str:
    if st["shm_free_bytes"] is None:
        return "no /dev/shm (frame rings live in the run directory)"
    need = st["ring_1080p_bytes"] / 2**20
    return f"{st['shm_free_bytes'] / GiB:.1f} GiB in {st['shm']} (a 1080p camera's ring: {need:.0f} MB)"


def _port(p: dict[str, Any]) -> str:
    return f"{p['host']}:{p['port']} {p['state']}" + (f" ({p['detail']})" if p["detail"] else "")


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]
