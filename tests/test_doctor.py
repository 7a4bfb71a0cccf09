"""`facestream doctor` run as a user runs it (a subprocess), against real model folders, a real
/proc/cpuinfo and a real socket: what it reports, and that it exits 1 only when something is broken."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from stream.cpu import ARM_FEATURES, X86_FEATURES

pytestmark = pytest.mark.e2e  # every test here starts processes


def doctor(home: Path, *args: str) -> tuple[int, str]:
    env = {**os.environ, "FACESTREAM_HOME": str(home)}
    p = subprocess.run(
        [sys.executable, "-m", "stream", "doctor", *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert "Traceback" not in p.stderr, p.stderr
    return p.returncode, p.stdout


def doctor_json(home: Path, *args: str) -> tuple[int, dict]:
    rc, out = doctor(home, "--json", *args)
    return rc, json.loads(out)


def linked_home(
    tmp_path: Path, models_home: Path, names: tuple[str, ...] = ("mtcnn", "dlib-resnet-v1")
) -> Path:
    """A FACESTREAM_HOME whose model folders hold links to the built files (damage goes to copies)."""
    home = tmp_path / "home"
    for name in names:
        (home / "models" / name).mkdir(parents=True)
        for f in (models_home / "models" / name).iterdir():
            (home / "models" / name / f.name).symlink_to(f)
    return home


def models_by_name(report: dict) -> dict[str, dict]:
    return {m["name"]: m for m in report["models"]["items"]}


def test_empty_home_reports_the_machine_and_how_to_build(tmp_path: Path) -> None:
    rc, out = doctor(tmp_path / "empty")
    assert rc == 0, out  # nothing built is not broken: it says how to build
    assert "model mtcnn:" in out and "not built (`facestream models pull mtcnn`)" in out
    assert "run `facestream models pull`" in out and out.rstrip().endswith("ok")
    # One fact per line, `name: value`.
    assert all(re.match(r"^[A-Za-z0-9 ._/-]+: +\S", line) for line in out.splitlines()), out

    rc, report = doctor_json(tmp_path / "empty")
    assert rc == 0 and report["schema"] == 1 and report["problems"] == [] and report["ok"]
    for key in ("cpu", "threads", "runtimes", "models", "embedder", "storage", "ports", "warnings"):
        assert key in report
    assert {m["state"] for m in report["models"]["items"]} == {"not built"}
    assert report["embedder"]["precision"] is None
    rt = report["runtimes"]
    assert rt["torch"]["version"] and rt["onnxruntime"]["version"] and rt["numpy"] and rt["opencv"]
    assert "CPUExecutionProvider" in rt["onnxruntime"]["providers"]
    th = report["threads"]
    assert th["os_cpu_count"] == os.cpu_count() and th["affinity"] == len(os.sched_getaffinity(0))
    assert th["pipeline"]["detect"]["threads"] >= 1 and th["pipeline"]["embed"]["threads"] >= 1
    assert report["storage"]["shm_free_bytes"] > 0 and report["storage"]["home_free_bytes"] > 0


def test_cpu_features_match_proc_cpuinfo(tmp_path: Path) -> None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        pytest.skip("no /proc/cpuinfo on this system")
    flags = set(re.search(r"^(?:flags|Features)\s*:(.*)$", text, re.M).group(1).split())
    _, report = doctor_json(tmp_path)
    cpu = report["cpu"]
    listed = X86_FEATURES if cpu["arch"] == "x86_64" else ARM_FEATURES
    assert {f for f in listed if f in flags} == set(cpu["features"])
    assert cpu["model"] and cpu["int8_kernel"] and cpu["logical_cpus"] == len(os.sched_getaffinity(0))


def test_built_models_are_verified(tmp_path: Path, models_home: Path) -> None:
    home = linked_home(tmp_path, models_home)
    rc, report = doctor_json(home)
    assert rc == 0, report["problems"]
    models = models_by_name(report)
    for name in ("mtcnn", "dlib-resnet-v1"):
        manifest = json.loads((home / "models" / name / "model.json").read_text())
        assert models[name]["state"] == "ok" and models[name]["sha256_checked"] == len(manifest["sha256"])
    assert models["facenet-casia"]["state"] == "not built"
    emb = report["embedder"]
    assert emb["model"] == "dlib-resnet-v1" and emb["precision"] == "fp32"  # the config's default
    assert emb["provider"] == "CPUExecutionProvider" or report["runtimes"]["torch"]["cuda"]


def test_int8_record_is_reported(tmp_path: Path, models_home: Path) -> None:
    """The manifest's int8 entry: verified on another kernel (re-verified at load), or skipped."""
    home = linked_home(tmp_path, models_home)
    path = home / "models" / "dlib-resnet-v1" / "model.json"
    manifest = json.loads(path.read_text())
    if not (manifest.get("int8") or {}).get("file"):
        pytest.skip("this build has no int8 model")
    path.unlink()  # the link: write a private copy
    manifest["int8"]["verified_on"] = {"int8_kernel": "x86-sse", "features": []}
    path.write_text(json.dumps(manifest))
    rc, out = doctor(home)
    assert rc == 0 and re.search(
        r"^int8: +verified on x86-sse, this CPU \S+: differs \(re-verified", out, re.M
    )

    manifest["int8"] = {"skipped": "int8 vs fp32 over the limits"}
    del manifest["sha256"]["model.int8.onnx"], manifest["files"]["model.int8.onnx"]
    path.write_text(json.dumps(manifest))
    cfg = tmp_path / "int8.yaml"
    cfg.write_text("embed: {precision: int8}\n")
    rc, report = doctor_json(home, "--config", str(cfg))
    assert report["embedder"]["int8"] == {
        "state": "skipped",
        "reason": "int8 vs fp32 over the limits",
        "this_cpu": report["cpu"]["int8_kernel"],
    }
    # Asking for int8 where there is none would fail `facestream run`: broken, exit 1.
    assert rc == 1 and any("no int8 model" in p for p in report["problems"])


def test_damaged_model_fails(tmp_path: Path, models_home: Path) -> None:
    home = linked_home(tmp_path, models_home)
    onnx = home / "models" / "dlib-resnet-v1" / "model.onnx"
    data = onnx.read_bytes()
    onnx.unlink()
    onnx.write_bytes(data[: len(data) // 2])  # truncated copy
    pnet = home / "models" / "mtcnn" / "pnet.pt"
    data = bytearray(pnet.read_bytes())
    data[-1] ^= 0xFF  # same size, one bit pattern changed: only the sha256 notices
    pnet.unlink()
    pnet.write_bytes(bytes(data))

    rc, report = doctor_json(home)
    models = models_by_name(report)
    assert rc == 1 and not report["ok"]
    assert models["dlib-resnet-v1"]["state"] == "damaged"
    assert any("model.onnx has" in p for p in models["dlib-resnet-v1"]["problems"])
    assert models["mtcnn"]["state"] == "damaged"
    assert "pnet.pt sha256 differs from the manifest" in models["mtcnn"]["problems"]
    rc, out = doctor(home)
    assert rc == 1 and "DAMAGED" in out and "facestream models pull --force mtcnn" in out


def test_port_in_use_is_busy(tmp_path: Path) -> None:
    with socket.socket() as busy, socket.socket() as spare:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        spare.bind(("127.0.0.1", 0))  # bound, not listening: find a free port, then release it
        free = spare.getsockname()[1]
        spare.close()
        port = busy.getsockname()[1]
        cfg = tmp_path / "pipeline.yaml"
        cfg.write_text(f"metrics: {{port: {port}}}\noutputs: {{results: 'tcp://127.0.0.1:{free}'}}\n")
        rc, report = doctor_json(tmp_path, "--config", str(cfg))
    ports = {p["name"]: p for p in report["ports"]}
    assert ports["metrics"]["state"] == "busy" and ports["metrics"]["port"] == port
    assert ports["results"]["state"] == "free" and ports["results"]["port"] == free
    assert rc == 1 and any(f"127.0.0.1:{port}" in p for p in report["problems"])


def test_benchmark_header_names_the_machine() -> None:
    from stream import doctor
    from stream.cpu import cpu_info

    text = doctor.header()
    cpu = cpu_info()
    assert text.startswith(f"machine: {cpu.model}") and f"int8 kernel {cpu.int8_kernel}" in text
    assert "torch " in text and "onnxruntime " in text and "models: " in text


def test_model_from_an_older_build_is_outdated_not_damaged(tmp_path: Path, models_home: Path) -> None:
    from stream.modelstore import is_built

    home = linked_home(tmp_path, models_home)
    manifest_path = home / "models" / "mtcnn" / "model.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["build_format"] = manifest["build_format"] - 1
    manifest_path.unlink()  # a link to the real manifest: write a copy
    manifest_path.write_text(json.dumps(manifest))
    rc, report = doctor_json(home)
    mtcnn = models_by_name(report)["mtcnn"]
    assert rc == 0 and mtcnn["state"] == "outdated", report  # still runs: a warning, not a problem
    assert any("mtcnn built by an older facestream" in w for w in report["warnings"])
    assert not is_built("mtcnn", home)  # so the next `models pull` rebuilds it
    rc, out = doctor(home)
    # The label column is as wide as the longest model name: any width.
    assert re.search(r"^model mtcnn: +outdated: built by an older facestream", out, re.M), out


def test_torch_kernels_lowered_to_avx2_are_named_an_emulation(tmp_path: Path) -> None:
    """How bench runs stand in for an AVX2-only CPU on a bigger one: the report says so."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
    }
    plain = subprocess.run(
        [sys.executable, "-m", "stream", "doctor"],
        cwd=REPO,
        env={**env, "FACESTREAM_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
    ).stdout
    low = subprocess.run(
        [sys.executable, "-m", "stream", "doctor"],
        cwd=REPO,
        env={
            **env,
            "FACESTREAM_HOME": str(tmp_path),
            "ONEDNN_MAX_CPU_ISA": "AVX2",
            "ATEN_CPU_CAPABILITY": "avx2",
        },
        capture_output=True,
        text=True,
    ).stdout
    kernels = {
        name: next(line for line in out.splitlines() if line.startswith("torch kernels:"))
        for name, out in (("plain", plain), ("low", low))
    }
    assert (
        "ATen AVX2" in kernels["low"]
        and "oneDNN capped at AVX2" in kernels["low"]
        and "emulation" in kernels["low"]
    )
    assert "capped" not in kernels["plain"] and "emulation" not in kernels["plain"]
