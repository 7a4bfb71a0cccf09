"""The pipeline config: strict YAML, CLI overrides, one-line errors, endpoints."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

from stream.errors import FacestreamError
from stream.pipeline import config


def test_defaults_and_camera_names(tmp_path):
    cfg = config.load(None, {"sources": [{"url": "a.mp4"}, {"url": "0", "name": "door"}]})
    assert cfg.cameras == ["cam0", "door"]
    assert cfg.detect.workers == 1 and cfg.embed.workers == 1
    assert cfg.transport.kind == "ipc" and cfg.transport.hwm <= 4


def test_yaml_with_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("sources: [{url: a.mp4}]\ndetect: {workers: 2, max_batch: 8}\n")
    cfg = config.load(p, {"detect.workers": 3, "outputs.out": "r.jsonl", "gallery": None})
    assert cfg.detect.workers == 3 and cfg.detect.max_batch == 8
    assert str(cfg.outputs.out) == "r.jsonl"


def test_unknown_keys_are_rejected_in_one_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("sources: []\ndetect: {workerz: 2}\nbogus: 1\n")
    with pytest.raises(FacestreamError) as e:
        config.load(p)
    msg = str(e.value)
    assert "detect.workerz" in msg and "bogus" in msg and "\n" not in msg


@pytest.mark.parametrize(
    "text",
    [
        "detect: {max_batch: 0}",
        "transport: {kind: udp}",
        "sources: [{url: a, name: x}, {url: b, name: x}]",
        "- a list",
        "a: [unclosed",
    ],
)
def test_invalid_configs(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(FacestreamError):
        config.load(p)


def test_missing_config_file(tmp_path):
    with pytest.raises(FacestreamError, match="no such config"):
        config.load(tmp_path / "nope.yaml")


def test_endpoints_ipc_and_tcp(tmp_path):
    cfg = config.load(
        None,
        {"sources": [{"url": "a"}, {"url": "b"}], "detect.workers": 2, "transport.run_dir": str(tmp_path)},
    )
    assert cfg.endpoint("capture", 1) == f"ipc://{tmp_path}/capture-1"
    assert cfg.upstream("detect") == [f"ipc://{tmp_path}/capture-0", f"ipc://{tmp_path}/capture-1"]
    assert cfg.upstream("embed") == [f"ipc://{tmp_path}/detect-0", f"ipc://{tmp_path}/detect-1"]
    tcp = config.load(None, {"transport.kind": "tcp", "transport.base_port": 7000})
    assert tcp.endpoint("detect", 1) == "tcp://127.0.0.1:7101"
    assert tcp.endpoint("results") == "tcp://127.0.0.1:7301"


def test_dump_and_reload(tmp_path):
    cfg = config.load(None, {"sources": [{"url": "a.mp4"}], "transport.run_dir": str(tmp_path)})
    cfg.dump(tmp_path / "c.yaml")
    assert config.load(tmp_path / "c.yaml") == cfg


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.e2e
def test_validate_config_cli(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("detect: {workers: 2}\n")
    ok = run_cli("run", "--config", str(p), "--source", "x.mp4", "--validate-config")
    assert ok.returncode == 0 and "config OK" in ok.stdout and "2 detect" in ok.stdout
    p.write_text("detect: {wrkers: 2}\n")
    bad = run_cli("run", "--config", str(p), "--validate-config")
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "detect.wrkers" in bad.stderr


@pytest.mark.e2e
def test_shipped_example_config_is_valid():

    example = REPO / "deploy" / "facestream.example.yaml"
    cfg = config.load(example)
    assert cfg.cameras == ["door"] and cfg.embed.precision == "fp32" and cfg.metrics.port == 9108
    bad = run_cli("run", "--config", str(example), "--validate-config", "--source", "0")
    assert bad.returncode == 0, bad.stderr


def test_embed_precision_is_validated():
    with pytest.raises(FacestreamError, match="precision"):
        config.load(None, {"embed.precision": "fp16"})
