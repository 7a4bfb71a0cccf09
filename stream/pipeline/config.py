"""The one pipeline config: a pydantic model (unknown keys rejected), loaded from YAML, overridden by
CLI flags, and the single place endpoints are named.

    sources: [{url: video.mp4, name: door}]
    gallery: g.db
    detect: {workers: 1, max_batch: 4, max_wait_ms: 5}
    outputs: {out: results.jsonl}

Endpoints: `ipc://` sockets in the supervisor's private 0700 run directory on one host (the default),
or `tcp://` when stages run on several hosts. With tcp every role binds on its own host:
`transport.hosts.<role>`, else `transport.host` (127.0.0.1: loopback unless the config says
otherwise), and its consumers connect there. A host is an address of the machine that runs that role
(a wildcard like 0.0.0.0 is refused: consumers could not connect to it).

    transport:
      kind: tcp
      hosts: {capture: 10.0.0.1, detect: 10.0.0.2, embed: 10.0.0.3, match: 10.0.0.3}
      curve: {keys_dir: /etc/facestream/curve}

`transport.topology` says who binds. `indexed` (the default, and what the supervisor runs on one
host): every worker binds its own output and consumers connect to `workers` endpoints of their
producer role, so a worker is known by its index. `replicas` (Kubernetes, deploy/k8s): detect and
embed bind nothing and connect to fixed points -- every capture and the relay (detect), the relay and
match (embed) -- so replicas of one Deployment are interchangeable and an autoscaler may add or remove
them; the relay (`facestream stage relay`) is one more process and one more hop, which a single
host with a supervisor that knows every worker's index does not need.

    transport:
      kind: tcp
      topology: replicas
      hosts: {capture: facestream-capture, relay: facestream-relay, match: facestream-match}

Liveness (tcp, links.py): TCP keepalive and a user timeout on every link, so a peer lost with its
host is noticed in seconds instead of when TCP gives up (minutes to hours): a PUSH stops routing to
it, a connecting socket reconnects (through a Service: to its replacement), and the loss is counted
(facestream_links_lost_total). With `heartbeat_s` > 0, sending sockets also send a ZeroMQ heartbeat
that often and drop a peer that answers none for `peer_timeout_s` (a hung process whose kernel
still answers). Off by default: with libzmq 4.3.5 a producer that exits with heartbeats on can make
its consumers lose the frames they had not read yet (links.py says how, and what was measured).

`transport.curve` encrypts and authenticates every tcp link (ZeroMQ CURVE; files in
stream/pipeline/security.py). It is refused with `kind: ipc`: ipc sockets never leave the host and
live in a 0700 directory, so there is nothing for CURVE to protect, and a config that asks for CURVE
but runs ipc most likely forgot `kind: tcp` (stages on other hosts would never connect), which an
error says at once where a warning would scroll by.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    field_validator,
    model_validator,
)

from stream.errors import FacestreamError
from stream.pipeline.roles import CONTROL, MEETS_AT, PORT_OFFSETS, PREVIEW, RESULTS, UPSTREAM, Role
from stream.registry import DEFAULT_EMBEDDER

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


def check_host(host: str) -> str:
    """A hostname or an IP address that peers can connect to (no wildcard, no port, no scheme)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.match(host):
            raise ValueError(f"{host!r} is not a hostname or IP address") from None
        return host
    if ip.is_unspecified:
        raise ValueError(f"{host!r} is a wildcard: give this host's own address (consumers connect to it)")
    return host


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def endpoint_host(endpoint: str) -> str | None:
    """'tcp://10.0.0.2:5650' -> '10.0.0.2', 'tcp://[::1]:5650' -> '::1'; None for ipc:// and others."""
    if not endpoint.startswith("tcp://"):
        return None
    host = endpoint[len("tcp://") :].rsplit(":", 1)[0]
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _open_timeout(v: object) -> float | str:
    # One plain message instead of pydantic's two per union member.
    if v == "forever" or v == float("inf"):
        return "forever"
    if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
        raise ValueError(f"must be seconds > 0 or 'forever', got {v!r}")
    return float(v)


# How long a live source may take to open for the first time before the run fails: seconds, or
# "forever" (a CCTV camera that may be rebooting when the pipeline starts). Only the FIRST open has a
# deadline: a camera that delivered once and dropped is retried forever.
OpenTimeout = Annotated[float | str, PlainValidator(_open_timeout)]


class LivenessConfig(_Strict):
    """Per camera: is each track a live person (stream/liveness/judge.py)? off (default), blink (a
    blink within the window), challenge (head turns in the order a `liveness_challenge` event asks).
    On, the embed stage runs the optional face landmark model on that camera's faces
    (`facestream models pull mediapipe-face-landmark`)."""

    mode: Literal["off", "blink", "challenge"] = "off"
    window_s: float = Field(6.0, gt=0, le=60)  # from a track's first face: live by then, or not_live


class SourceConfig(_Strict):
    url: str  # webcam index ("0"), video file, image folder, rtsp:// or http(s):// URL
    name: str | None = None  # camera label in outputs; default cam<i>
    fps: float | None = Field(None, gt=0)  # pacing for image folders / files without fps
    open_timeout_s: OpenTimeout | None = None  # None: capture.open_timeout_s
    liveness: LivenessConfig = Field(default_factory=LivenessConfig)


class CaptureConfig(_Strict):
    realtime: bool = False  # pace files at native fps and drop like a live camera
    reconnect_initial_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(10.0, gt=0)
    # Every live source's first-open deadline unless the source sets its own. 10 s: several backoff
    # retries (a camera still negotiating gets its chance), short enough that a typo is noticed.
    open_timeout_s: OpenTimeout = 10.0
    send_timeout_s: float = Field(60.0, gt=0)  # blocking sends give up (and say so) after this


class StageConfig(_Strict):
    workers: int = Field(1, ge=1, le=32)
    max_batch: int = Field(4, ge=1, le=1024)
    max_wait_ms: float = Field(5.0, ge=0, le=10_000)
    threads: int | None = Field(None, ge=1)  # torch / ONNX Runtime threads in each worker
    device: str | None = None  # None: GPU when present, else CPU


class DetectConfig(StageConfig):
    min_face_size: int = Field(20, ge=4)  # pixels; larger skips pyramid levels (faster)
    # full: the whole of every frame. guided: the whole frame every full_every_s (and at a scene cut),
    # else only where the picture changed and around the faces found last (stream/guided.py). guided
    # is the default: it found >= 0.99 of the whole frame's faces (same boxes) on every clip measured,
    # for less (benchmarks/RESULTS.md, "Guided detection").
    mode: Literal["full", "guided"] = "guided"
    full_every_s: float = Field(1.0, gt=0)


class FollowConfig(_Strict):
    """Recognise once, then follow (stream/pipeline/follow.py): a face's embedding is carried over to
    the same face in the next frames instead of being computed again."""

    # Off by default: it saves most embeddings on clear faces, but near the threshold the tracker then
    # waits longer for agreeing fresh faces (benchmarks/RESULTS.md, "Recognise once, then follow").
    max_age: int = Field(0, ge=0)  # frames; every face is embedded afresh at least this often (0: off)
    min_iou: float = Field(0.5, gt=0, le=1)  # box overlap with where the face was a frame ago
    min_quality: float = Field(0.3, ge=0, le=1)  # poorer faces are embedded in every frame
    quality_gain: float = Field(0.1, ge=0)  # a view this much better is embedded afresh
    max_chip_change: float = Field(0.06, ge=0, le=1)  # aligned chips must look this alike (0..1)


class EmbedConfig(StageConfig):
    # fp32 reproduces the reference model; int8 (where the build made one) is faster on CPU, its
    # embeddings close to fp32's (both measured: benchmarks/RESULTS.md); auto = int8 on CPU when
    # available, else fp32.
    precision: Literal["fp32", "int8", "auto"] = "fp32"
    follow: FollowConfig = Field(default_factory=lambda: FollowConfig())


class TrackingConfig(_Strict):
    """How tracks are followed and named (stream/gallery/tracking.py; README, "Names and margins").
    Margins are fractions of the threshold, so they mean the same for every model."""

    # A good face this far under the threshold (0.05 x 0.6 = 0.03 for dlib-resnet-v1) names its track
    # in its first frame; nearer the threshold, `agree_frames` faces must agree.
    clear_margin: float = Field(0.05, ge=0, lt=1)
    # A face whose second-nearest person is within this of its nearest is a tie: unknown.
    tie_margin: float = Field(0.05, ge=0, lt=1)
    agree_frames: int = Field(3, ge=1)
    # Faces up to this fraction over the threshold still count as agreeing on their nearest person
    # (they are never shown with a name themselves).
    near_band: float = Field(0.15, ge=0)
    # Quality (0..1, stream.gallery.quality): faces under min_quality are reported but do not vote;
    # faces under good_quality vote only when clear by weak_margin, and do not shape the appearance.
    min_quality: float = Field(0.05, ge=0, le=1)
    good_quality: float = Field(0.3, ge=0, le=1)
    weak_margin: float = Field(0.15, ge=0, lt=1)
    # A face further than this x threshold from its track's appearance starts a new track.
    appearance_ratio: float = Field(1.0, gt=0)
    # A change of the whole picture over this (capture's change score, 0..1) is a scene cut: every
    # track of the camera ends.
    cut_change: float = Field(0.1, gt=0, le=1)
    max_missed: int = Field(12, ge=0)  # updates a track survives unseen
    max_age_s: float = Field(3.0, gt=0)
    unknown_frames: int = Field(10, ge=1)  # an unnamed track this long: unknown_persists
    unknown_seconds: float = Field(1.0, ge=0)


class UnknownsConfig(_Strict):
    """Strangers who come back (stream/gallery/unknowns.py): tracks that end unknown with enough
    good-quality faces join the nearest unknown identity or found a new one, in the gallery file."""

    # On by default: the cost at the match stage is small beside a frame's detect and embed
    # (benchmarks/RESULTS.md, "Strangers who come back"); off: unknown faces are forgotten when their
    # track ends and nothing of them is written.
    enabled: bool = True
    min_faces: int = Field(3, ge=1, le=10)  # good-quality faces a track needs to count
    # A track's appearance within this x threshold of an unknown identity's is that identity.
    join_ratio: float = Field(1.0, gt=0)
    keep_faces: int = Field(3, ge=1, le=20)  # best faces (embedding, crop) stored per visit
    # An identity keeps at most this many faces (the best): what a regular visitor leaves stays
    # bounded, and its appearance is the mean of its best faces.
    max_faces: int = Field(30, ge=1, le=1000)
    returned_gap_s: float = Field(600.0, ge=0)  # unknown_returned: seen again after this long away
    retention_days: float = Field(30.0, gt=0)  # unseen this long: deleted with its faces


class MatchConfig(_Strict):
    threshold: float | None = None  # None: the model's default
    refresh_s: float = Field(2.0, gt=0)  # how often the gallery is checked for changes
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    unknowns: UnknownsConfig = Field(default_factory=UnknownsConfig)


class HostsConfig(_Strict):
    """tcp: the host that runs each role (it binds there; its consumers connect there)."""

    capture: str | None = None
    detect: str | None = None
    embed: str | None = None
    match: str | None = None
    relay: str | None = None  # topology replicas: where detect's output meets embed
    results: str | None = None  # dashboards' PUB; bound by match, so default: match's host

    @field_validator("*")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        return v if v is None else check_host(v)


class CurveConfig(_Strict):
    """ZeroMQ CURVE on every tcp link. keys_dir holds this host's files (see security.py):
    server.key_secret (binding stages), client.key_secret (connecting stages), servers/<host>.key
    (each producer host's server public key) and clients/*.key (the client keys this host accepts)."""

    keys_dir: Path


class TransportConfig(_Strict):
    kind: Literal["ipc", "tcp"] = "ipc"
    # indexed: each worker binds its output (one host, the supervisor); replicas: detect and embed
    # connect to fixed points (capture, relay, match) and may scale freely (see the module docstring).
    topology: Literal["indexed", "replicas"] = "indexed"
    run_dir: Path | None = None  # ipc sockets live here; the supervisor makes a private 0700 one
    host: str = "127.0.0.1"  # tcp: every role's host unless hosts.<role> says (loopback by default)
    hosts: HostsConfig = Field(default_factory=HostsConfig)
    base_port: int = Field(5550, ge=1, le=65000)  # capture +0.., detect +100.., embed +200.., match +300
    hwm: int = Field(2, ge=1, le=1000)  # frames queued per link: low, or latency grows
    results_hwm: int = Field(100, ge=1)  # results PUB: small messages, slow dashboards drop
    curve: CurveConfig | None = None  # tcp only: encrypted, authenticated links
    # ipc (one host): frames live in a per-camera shared-memory ring and only headers travel (see
    # framering.py); default on with ipc. tcp always sends pixels inline (the ring is on one host).
    shm: bool | None = None
    ring_slots: int | None = Field(None, ge=4, le=4096)  # None: from the HWMs and batches (ring_slots())
    ring_mb: int = Field(512, ge=16)  # the default slots are capped to this much memory per camera
    shm_dir: Path | None = None  # set by the supervisor: its private ring directory
    # tcp sending sockets: a ZeroMQ heartbeat this often (0: none, the default: see links.py); a peer
    # that answers none for peer_timeout_s is dropped (longer than a healthy consumer's longest pause).
    heartbeat_s: float = Field(0.0, ge=0, le=60)
    peer_timeout_s: float = Field(30.0, gt=0, le=600)
    # tcp: each socket's kernel send and receive buffers (SO_SNDBUF/SO_RCVBUF; 0: the OS's autotuning).
    # With pixels inline, autotuned buffers park tens of frames per link beyond the HWM: latency, and
    # frames lost with a killed peer (benchmarks/RESULTS.md, "Several hosts, simulated").
    socket_buffer_kb: int = Field(256, ge=0, le=65536)

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        return check_host(v)

    @model_validator(mode="after")
    def _curve_needs_tcp(self) -> TransportConfig:
        if self.curve is not None and self.kind != "tcp":
            raise ValueError(
                "curve needs kind: tcp (ipc links never leave the host and live in a private 0700 directory)"
            )
        if self.shm and self.kind != "ipc":
            raise ValueError("shm needs kind: ipc (shared memory does not reach other hosts)")
        if self.shm and self.topology == "replicas":
            raise ValueError("shm needs topology: indexed (the ring's windows count each role's workers)")
        if self.heartbeat_s and self.peer_timeout_s <= self.heartbeat_s:
            raise ValueError("peer_timeout_s must be longer than heartbeat_s (a few heartbeats)")
        return self

    @property
    def use_shm(self) -> bool:
        """Frames go through a ring: ipc, indexed, not switched off, and a supervisor made the ring
        directory. Not with topology replicas: the ring's flow control sizes each reader's window from
        the number of workers and their queues (ring_windows), which replicas leave open."""
        return (
            self.kind == "ipc"
            and self.topology == "indexed"
            and self.shm is not False
            and self.shm_dir is not None
        )

    def host_of(self, role: str) -> str:
        """The host that runs `role` (results: match's host unless set)."""
        h = self.hosts
        if role == RESULTS:
            return h.results or h.match or self.host
        return getattr(h, role, None) or self.host


class MqttConfig(_Strict):
    """MQTT events for door kiosks and Home Assistant (stream/pipeline/mqtt.py): events on
    PREFIX/events/<camera>, the people each camera sees now retained on PREFIX/state/<camera>, and
    Home Assistant discovery (one sensor per camera). A broker that is down never stalls the sink."""

    host: str
    port: int = Field(1883, ge=1, le=65535)
    topic_prefix: str = Field("facestream", pattern=r"^[A-Za-z0-9_\-/]+$")
    username: str | None = None
    password: str | None = None
    tls: bool = False  # TLS with the system's CA certificates (port 8883 on most brokers)
    discovery_prefix: str = "homeassistant"


class OutputConfig(_Strict):
    out: Path | None = None  # JSONL, one line per processed frame
    record: Path | None = None  # annotated video
    events: Path | None = None  # JSONL of track and camera events
    summary: Path | None = None  # JSON: the run's books and latencies, written as the run ends
    results: str | None = None  # results PUB endpoint (tcp://HOST:PORT or ipc://PATH); default from transport
    mqtt: MqttConfig | None = None

    @field_validator("results")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is None or v.startswith("ipc://"):
            return v
        host = endpoint_host(v)
        port = v.rsplit(":", 1)[-1]
        if host is None or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{v!r} is not tcp://HOST:PORT (1-65535) or ipc://PATH")
        if host != "*":
            try:
                ipaddress.ip_address(host)
            except ValueError:
                if not _HOSTNAME.match(host):
                    raise ValueError(f"{v!r}: {host!r} is not a hostname or IP address") from None
        return v


class MetricsConfig(_Strict):
    port: int | None = Field(None, ge=0, le=65535)
    host: str = "127.0.0.1"


class DashboardConfig(_Strict):
    """The web app (stream/web/): live page, REST API. Loopback unless `listen` says otherwise, and
    then only with a token; every gallery change needs the token even on loopback (stream/web/auth.py)."""

    listen: str = "127.0.0.1:8080"  # HOST:PORT
    token: str | None = None  # None: generated and printed once (kept in the run directory)
    preview_fps: float = Field(4.0, gt=0, le=30)  # live pictures per camera per second, while watched
    preview_width: int = Field(640, ge=64, le=4096)  # the live pictures are downscaled to this width
    max_upload_mb: float = Field(10.0, gt=0, le=100)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, _, port = v.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{v!r} is not HOST:PORT")
        return v


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
    dashboard: DashboardConfig | None = None  # `run --dashboard HOST:PORT`: the web app as one more child

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
        if self.transport.kind == "tcp":
            if len(self.sources) > 100:
                raise ValueError("transport tcp: at most 100 sources (capture ports are base_port+0..99)")
        return self

    def open_timeout(self, index: int) -> float | None:
        """Source `index`'s first-open deadline in seconds; None: wait forever."""
        t = self.sources[index].open_timeout_s
        t = self.capture.open_timeout_s if t is None else t
        return None if t == "forever" else float(t)

    def liveness(self, cam: str) -> LivenessConfig | None:
        """Camera `cam`'s liveness settings when it asks for liveness; None: off (or not a source)."""
        for src in self.sources:
            if src.name == cam and src.liveness.mode != "off":
                return src.liveness
        return None

    @property
    def cameras(self) -> list[str]:
        return [s.name for s in self.sources]  # type: ignore[misc]

    def workers(self, role: str) -> int:
        """How many processes of `role` the supervisor starts (topology replicas: how many detect and
        embed replicas it starts on one host; in Kubernetes, the Deployments' replicas say)."""
        if role == Role.CAPTURE:
            return len(self.sources)
        if role == Role.DETECT:
            return self.detect.workers
        return self.embed.workers if role == Role.EMBED else 1

    @property
    def replicas(self) -> bool:
        """topology replicas: detect and embed connect to fixed points (see the module docstring)."""
        return self.transport.topology == "replicas"

    def roles(self) -> list[Role]:
        """The stage roles this config runs (the relay only with topology replicas)."""
        return [r for r in Role if r != Role.DASHBOARD and (r != Role.RELAY or self.replicas)]

    def connects_output(self, role: str) -> bool:
        """True: `role` connects its output to the fixed role that binds it (replicas: detect, embed)."""
        return self.replicas and role in MEETS_AT

    def binds_input(self, role: str) -> bool:
        """True: `role` binds its input and its producers' replicas connect (replicas: relay, match)."""
        return self.replicas and role in MEETS_AT.values()

    def binder(self, role: str) -> str:
        """The role whose process binds `role`'s output endpoint (replicas: the relay or match)."""
        return str(MEETS_AT[Role(role)]) if self.connects_output(role) else role

    def endpoint(self, role: str, index: int = 0) -> str:
        """Where `role`'s worker `index` binds its output (its consumers connect there).
        Roles: capture, detect, embed, match (-> sink), results (PUB), control (supervisor -> sink),
        preview (sink -> dashboard, ipc like control: the dashboard runs beside the supervisor).
        tcp: on the role's host (transport.hosts, else transport.host). control is always ipc in the
        supervisor's run directory: supervisor and sink share a host, so it never needs a port."""
        if role not in PORT_OFFSETS and role not in (CONTROL, PREVIEW):
            raise KeyError(role)
        if role == RESULTS and self.outputs.results:
            return self.outputs.results
        t = self.transport
        if self.connects_output(role):
            index = 0  # one meeting point for every replica
        if t.kind == "tcp" and role not in (CONTROL, PREVIEW):
            host = t.host_of(self.binder(role))
            if ":" in host:  # IPv6 literal
                host = f"[{host}]"
            return f"tcp://{host}:{t.base_port + PORT_OFFSETS[role] + index}"
        if t.run_dir is None:
            raise FacestreamError("transport.run_dir is not set: ipc endpoints need a run directory")
        return f"ipc://{t.run_dir}/{role}-{index}"

    def upstream(self, role: str) -> list[str]:
        """The outputs a consumer of `role`'s input connects to (on the producers' hosts). The sink
        also takes the supervisor's control messages, when there is a supervisor (a run directory)."""
        prev: str = UPSTREAM[role]  # KeyError: a role with no input
        if self.replicas and role == Role.EMBED:
            prev = Role.RELAY  # detect's output meets embed at the relay
        n = 1 if self.connects_output(prev) or prev == Role.RELAY else self.workers(prev)
        outputs = [self.endpoint(prev, i) for i in range(n)]
        if role == Role.SINK and self.transport.run_dir is not None:
            outputs.append(self.endpoint(CONTROL))
        return outputs

    def connects(self, role: str) -> list[str]:
        """Every endpoint a process of `role` connects to (its input unless it binds it, and its
        output when it connects that: topology replicas)."""
        out = [] if role not in UPSTREAM or self.binds_input(role) else self.upstream(role)
        return out + ([self.endpoint(role)] if self.connects_output(role) else [])

    def ring_windows(self, slots: int) -> dict[str, int]:
        """How many frames each pixel-reading role may lag behind the capture (blocking sources):
        detect the HWM budget inline pixels gave it (capture's send queue + each worker's receive
        queue and batch + one in ZeroMQ's engine); the last reader the ring, less what two detect
        workers can reorder. The video recorder (sink) reads pixels only with --record."""
        hwm, d = self.transport.hwm, self.detect
        detect = min(slots, hwm + d.workers * (hwm + d.max_batch) + 1)
        last = max(1, slots - (d.workers - 1) * (2 * hwm + d.max_batch))
        return {
            Role.DETECT: detect,
            Role.EMBED: last,
            **({Role.SINK: last} if self.outputs.record else {}),
        }

    def ring_slots(self, frame_bytes: int) -> int:
        """transport.ring_slots, or 2 x the HWMs on the path to the last pixel reader + the batches
        there + a margin, capped to transport.ring_mb per camera (at least 8 slots)."""
        t = self.transport
        if t.ring_slots:
            return t.ring_slots
        hwms = 4 * t.hwm  # capture -> detect, detect -> embed: send + receive queues
        batches = self.detect.max_batch * self.detect.workers + min(self.embed.max_batch, 16)
        if self.outputs.record:  # embed -> match -> sink: the video recorder reads the pixels last
            hwms += 2 * t.hwm + max(t.hwm, 16) + 16
        slots = 2 * hwms + batches + 4
        return max(8, min(slots, t.ring_mb * 2**20 // max(frame_bytes, 1)))

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
