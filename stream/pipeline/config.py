"""The one pipeline config: a pydantic model (unknown keys rejected), loaded from YAML, overridden by
CLI flags, and the single place endpoints are named.

    sources: [{url: video.mp4, name: door}]
    gallery: g.db
    detect: {workers: 1, max_batch: 4, max_wait_ms: 5}
    outputs: {out: results.jsonl}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from facestream_models.registry import DEFAULT_EMBEDDER
from stream.errors import FacestreamError

ROLES = ("capture", "detect", "embed", "match", "sink")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceConfig(_Strict):
    url: str  # webcam index ("0"), video file, image folder, rtsp:// or http(s):// URL
    name: str | None = None  # camera label in outputs; default cam<i>
    fps: float | None = Field(None, gt=0)  # pacing for image folders / files without fps


class CaptureConfig(_Strict):
    realtime: bool = False  # pace files at native fps and drop like a live camera
    reconnect_initial_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(10.0, gt=0)
    send_timeout_s: float = Field(60.0, gt=0)  # blocking sends give up (and say so) after this


class StageConfig(_Strict):
    workers: int = Field(1, ge=1, le=32)
    max_batch: int = Field(4, ge=1, le=1024)
    max_wait_ms: float = Field(5.0, ge=0, le=10_000)
    threads: int | None = Field(None, ge=1)  # torch / ONNX Runtime threads in each worker
    device: str | None = None  # None: GPU when present, else CPU


class DetectConfig(StageConfig):
    min_face_size: int = Field(20, ge=4)  # pixels; larger skips pyramid levels (faster)


class EmbedConfig(StageConfig):
    # fp32 reproduces the reference model; int8 (where the build made one) is ~2x faster on CPU,
    # embeddings within L2 ~0.04 of fp32; auto = int8 on CPU when available, else fp32.
    precision: Literal["fp32", "int8", "auto"] = "fp32"


class MatchConfig(_Strict):
    threshold: float | None = None  # None: the model's default
    refresh_s: float = Field(2.0, gt=0)  # how often the gallery is checked for changes


class TransportConfig(_Strict):
    kind: Literal["ipc", "tcp"] = "ipc"
    run_dir: Path | None = None  # ipc sockets live here; the supervisor makes a private 0700 one
    host: str = "127.0.0.1"  # tcp: where stages bind and connect (loopback unless configured)
    base_port: int = Field(5550, ge=1, le=65000)
    hwm: int = Field(2, ge=1, le=1000)  # frames queued per link: low, or latency grows
    results_hwm: int = Field(100, ge=1)  # results PUB: small messages, slow dashboards drop


class OutputConfig(_Strict):
    out: Path | None = None  # JSONL, one line per processed frame
    record: Path | None = None  # annotated video
    events: Path | None = None  # JSONL of track and camera events
    results: str | None = None  # results PUB endpoint; default from transport


class MetricsConfig(_Strict):
    port: int | None = Field(None, ge=0, le=65535)
    host: str = "127.0.0.1"


class SupervisorConfig(_Strict):
    max_restarts_per_minute: int = Field(3, ge=0)
    drain_timeout_s: float = Field(20.0, gt=0)
    eos_grace_s: float = Field(2.0, ge=0)  # after a camera's end: wait this long for stragglers


class PipelineConfig(_Strict):
    sources: list[SourceConfig] = Field(default_factory=list)
    gallery: Path | None = None
    model: str = DEFAULT_EMBEDDER
    home: Path | None = None  # $FACESTREAM_HOME override
    capture: CaptureConfig = Field(default_factory=CaptureConfig)
    detect: DetectConfig = Field(default_factory=lambda: DetectConfig(max_batch=4, max_wait_ms=5))
    embed: EmbedConfig = Field(default_factory=lambda: EmbedConfig(max_batch=32, max_wait_ms=2))
    match: MatchConfig = Field(default_factory=MatchConfig)
    transport: TransportConfig = Field(default_factory=TransportConfig)
    outputs: OutputConfig = Field(default_factory=OutputConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    supervisor: SupervisorConfig = Field(default_factory=SupervisorConfig)

    @model_validator(mode="after")
    def _names(self) -> PipelineConfig:
        for i, src in enumerate(self.sources):
            if not src.name:
                src.name = f"cam{i}"
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"camera names must be unique, got {names}")
        if self.capture.reconnect_max_s < self.capture.reconnect_initial_s:
            raise ValueError("capture.reconnect_max_s must be >= reconnect_initial_s")
        return self

    @property
    def cameras(self) -> list[str]:
        return [s.name for s in self.sources]  # type: ignore[misc]

    def workers(self, role: str) -> int:
        return {"capture": len(self.sources), "detect": self.detect.workers, "embed": self.embed.workers}.get(
            role, 1
        )

    def endpoint(self, role: str, index: int = 0) -> str:
        """Where `role`'s worker `index` binds its output (its consumers connect there).
        Roles: capture, detect, embed, match (-> sink), results (PUB), control (supervisor -> sink)."""
        offsets = {"capture": 0, "detect": 100, "embed": 200, "match": 300, "results": 301, "control": 302}
        if role not in offsets:
            raise KeyError(role)
        if role == "results" and self.outputs.results:
            return self.outputs.results
        t = self.transport
        if t.kind == "tcp":
            return f"tcp://{t.host}:{t.base_port + offsets[role] + index}"
        if t.run_dir is None:
            raise FacestreamError("transport.run_dir is not set: ipc endpoints need a run directory")
        return f"ipc://{t.run_dir}/{role}-{index}"

    def upstream(self, role: str) -> list[str]:
        """The outputs a consumer of `role`'s input connects to."""
        prev = {"detect": "capture", "embed": "detect", "match": "embed"}[role]
        return [self.endpoint(prev, i) for i in range(self.workers(prev))]

    def dump(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))


def load(path: Path | None = None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """YAML file (optional) + overrides (dotted keys, e.g. {"detect.workers": 2}) -> validated config."""
    data: dict[str, Any] = {}
    name = str(path) if path else "config"
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise FacestreamError(f"{path}: no such config file") from None
        except yaml.YAMLError as e:
            raise FacestreamError(f"{path}: not valid YAML ({_one_line(str(e))})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise FacestreamError(f"{path}: the config must be a YAML mapping")
        data = loaded or {}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise FacestreamError(f"{name}: {p} must be a mapping")
        node[leaf] = value
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise FacestreamError(f"{name}: {format_errors(e)}") from None


def format_errors(e: ValidationError) -> str:
    """All problems in one line: 'detect.max_batch: Input should be ...; bogus: Extra inputs ...'."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "config"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def _one_line(text: str) -> str:
    return " ".join(text.split())
