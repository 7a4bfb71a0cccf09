"""Stages on several hosts: per-role tcp hosts, and CURVE links (encrypted, allow-listed clients).

The Linux loopback answers on all of 127.0.0.0/8, so 127.0.0.2 and 127.0.0.3 stand for two other
hosts: "host A" (this test process: capture and embed) and "host B" (a detect stage started alone).
Every socket binds to a loopback address only."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
import zmq
from conftest import REPO
from waiting import wait_until

from stream.errors import FacestreamError
from stream.pipeline import config, security, transport, wire

pytestmark = pytest.mark.e2e  # every test here starts processes

HOST_A, HOST_B = "127.0.0.3", "127.0.0.2"


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stream", *args], capture_output=True, text=True, timeout=timeout
    )


def free_base_port() -> int:
    """A base port whose capture/detect/results ports are free on both test hosts."""
    for _ in range(50):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        base = s.getsockname()[1] - 400
        s.close()
        if not 1024 < base < 60000:
            continue
        try:
            for host, off in ((HOST_A, 0), (HOST_B, 100), (HOST_B, 301)):
                with socket.socket() as t:
                    t.bind((host, base + off))
        except OSError:
            continue
        return base
    pytest.skip("no free port range on loopback")


def tcp_config(base_port: int, keys_dir: Path | None, run_dir: Path | None = None) -> dict:
    transport_cfg: dict = {
        "kind": "tcp",
        "base_port": base_port,
        "hosts": {"capture": HOST_A, "detect": HOST_B, "embed": HOST_A, "match": HOST_B},
    }
    if keys_dir is not None:
        transport_cfg["curve"] = {"keys_dir": str(keys_dir)}
    if run_dir is not None:
        transport_cfg["run_dir"] = str(run_dir)
    return {"sources": [{"url": "unused.mp4"}], "transport": transport_cfg}


# ----- (a) endpoints and validation -------------------------------------------------------------------
def test_endpoints_follow_each_roles_host(tmp_path):
    cfg = config.load(None, {**tcp_config(7000, None), "detect": {"workers": 2}, "embed": {"workers": 2}})
    assert cfg.endpoint("capture", 0) == f"tcp://{HOST_A}:7000"
    assert cfg.endpoint("detect", 1) == f"tcp://{HOST_B}:7101"
    # Consumers connect to the producer's host.
    assert cfg.upstream("detect") == [f"tcp://{HOST_A}:7000"]
    assert cfg.upstream("embed") == [f"tcp://{HOST_B}:7100", f"tcp://{HOST_B}:7101"]
    assert cfg.upstream("match") == [f"tcp://{HOST_A}:7200", f"tcp://{HOST_A}:7201"]
    assert cfg.upstream("sink") == [f"tcp://{HOST_B}:7300"]  # no supervisor (run_dir): no control link
    assert cfg.endpoint("results") == f"tcp://{HOST_B}:7301"  # bound by match: match's host
    # Unset roles keep transport.host, which stays loopback by default.
    plain = config.load(None, {"transport.kind": "tcp", "transport.hosts": {"detect": "gpu-1.lan"}})
    assert plain.endpoint("capture") == "tcp://127.0.0.1:5550"
    assert plain.endpoint("detect") == "tcp://gpu-1.lan:5650"
    v6 = config.load(None, {"transport.kind": "tcp", "transport.host": "::1"})
    assert v6.endpoint("match") == "tcp://[::1]:5850"
    # The supervisor's control link is ipc in its private run dir, whatever the transport.
    sup = config.load(None, {"transport.kind": "tcp", "transport.run_dir": str(tmp_path)})
    assert sup.upstream("sink") == ["tcp://127.0.0.1:5850", f"ipc://{tmp_path}/control-0"]


def test_replicas_topology_meets_at_fixed_points():
    """topology replicas: detect and embed bind nothing; detect connects to every capture and pushes
    into the relay, embed pulls from the relay and pushes into match, which binds that input."""
    hosts = {"capture": HOST_A, "relay": "relay.svc", "match": HOST_B}
    cfg = config.load(
        None,
        {
            "sources": [{"url": "a"}, {"url": "b"}],
            "transport": {"kind": "tcp", "topology": "replicas", "base_port": 7000, "hosts": hosts},
            "detect": {"workers": 3},
            "embed": {"workers": 2},
        },
    )
    assert cfg.connects("detect") == [f"tcp://{HOST_A}:7000", f"tcp://{HOST_A}:7001", "tcp://relay.svc:7100"]
    assert cfg.connects("embed") == ["tcp://relay.svc:7150", f"tcp://{HOST_B}:7200"]
    assert cfg.binds_input("relay") and cfg.upstream("relay") == ["tcp://relay.svc:7100"]
    assert cfg.endpoint("relay") == "tcp://relay.svc:7150"
    assert cfg.binds_input("match") and cfg.upstream("match") == [f"tcp://{HOST_B}:7200"]
    assert cfg.connects("match") == [] and cfg.connects("relay") == []
    assert cfg.endpoint("detect", 2) == cfg.endpoint("detect", 0)  # one meeting point for every replica
    assert "relay" in cfg.roles()
    # The default stays as it was: each worker binds, consumers connect to every worker, no relay.
    indexed = config.load(None, {**tcp_config(7000, None), "detect": {"workers": 2}})
    assert not indexed.binds_input("match") and "relay" not in indexed.roles()
    assert indexed.connects("detect") == [f"tcp://{HOST_A}:7000"]


def test_shm_and_replicas_do_not_mix():
    with pytest.raises(FacestreamError, match="shm needs topology: indexed"):
        config.load(None, {"transport": {"topology": "replicas", "shm": True}})
    cfg = config.load(None, {"transport": {"topology": "replicas", "shm_dir": "/tmp/x"}})
    assert not cfg.transport.use_shm  # inline pixels: the ring's windows count each role's workers


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"transport.hosts": {"detect": "bad host"}}, "transport.hosts.detect"),
        ({"transport.hosts": {"detect": "tcp://x:1"}}, "not a hostname"),
        ({"transport.host": "0.0.0.0"}, "wildcard"),
        ({"transport.hosts": {"embed": "::"}}, "wildcard"),
        ({"transport.hosts": {"dtect": "h"}}, "transport.hosts.dtect"),
        ({"transport.base_port": 70000}, "transport.base_port"),
        ({"transport.kind": "tcp", "sources": [{"url": str(i)} for i in range(101)]}, "100 sources"),
        ({"outputs.results": "tcp://h:99999"}, "outputs.results"),
        ({"transport.curve": {"keys_dir": "k"}}, "curve needs kind: tcp"),
    ],
)
def test_bad_hosts_ports_and_curve_with_ipc_are_one_line_errors(overrides, words):
    with pytest.raises(FacestreamError) as e:
        config.load(None, overrides)
    assert words in str(e.value) and "\n" not in str(e.value)


# ----- (d) keys -------------------------------------------------------------------------------------
def test_keys_generate_makes_private_secret_files(tmp_path):
    d = tmp_path / "keys"
    r = run_cli("keys", "generate", str(d))
    assert r.returncode == 0, r.stderr
    for name in ("server", "client"):
        assert stat.S_IMODE((d / f"{name}.key_secret").stat().st_mode) == 0o600
        assert stat.S_IMODE((d / f"{name}.key").stat().st_mode) == 0o644
        public, secret = zmq.auth.load_certificate(d / f"{name}.key_secret")
        assert len(public) == 40 and len(secret) == 40
        assert zmq.auth.load_certificate(d / f"{name}.key") == (public, None)
    assert (d / "servers").is_dir() and (d / "clients").is_dir()
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    r = run_cli("keys", "generate", str(d), "--name", "dashboard")
    assert r.returncode == 0 and stat.S_IMODE((d / "dashboard.key_secret").stat().st_mode) == 0o600
    again = run_cli("keys", "generate", str(d))  # never overwrites a key
    assert again.returncode == 2 and "exists" in again.stderr and again.stderr.count("\n") == 1


# ----- two "hosts" with keys ----------------------------------------------------------------------
@pytest.fixture
def keys(tmp_path) -> dict[str, Path]:
    """Host A and host B key dirs, each trusting the other; and an intruder's pair nobody allows."""
    a, b, intruder = tmp_path / "keys-a", tmp_path / "keys-b", tmp_path / "intruder"
    for d in (a, b):
        security.generate(d)
    security.generate(intruder, "client")
    shutil.copy(a / "server.key", b / "servers" / f"{HOST_A}.key")
    shutil.copy(b / "server.key", a / "servers" / f"{HOST_B}.key")
    shutil.copy(a / "client.key", b / "clients" / "host-a.key")
    shutil.copy(b / "client.key", a / "clients" / "host-b.key")
    return {"a": a, "b": b, "intruder": intruder}


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


# ----- (c) missing keys ---------------------------------------------------------------------------
@pytest.mark.parametrize("broken", ["no-dir", "no-server-secret", "no-peer-key", "garbled", "no-allow-list"])
def test_a_stage_with_missing_keys_says_so_in_one_line(tmp_path, keys, broken):
    b = keys["b"]
    if broken == "no-dir":
        b = tmp_path / "nowhere"
    elif broken == "no-server-secret":
        (b / "server.key_secret").unlink()
    elif broken == "no-peer-key":
        (b / "servers" / f"{HOST_A}.key").unlink()
    elif broken == "garbled":
        (b / "client.key_secret").write_text('curve\n    public-key = "short"\n')
    else:
        shutil.rmtree(b / "clients")
    cfg = write_config(tmp_path / "b.yaml", tcp_config(free_base_port(), b))
    start = time.monotonic()
    r = run_cli("stage", "detect", "--config", str(cfg))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert re.search(r"CURVE (key|allow-list) \S+ (is missing|has no|holds a malformed)", r.stderr), r.stderr
    assert time.monotonic() - start < 20  # said before any model loads


# ----- (b) a detect stage alone on "host B", over CURVE ---------------------------------------------
def frame(seq: int) -> wire.Message:
    return wire.frame_message("cam0", seq, np.full((120, 160, 3), 128, np.uint8))


def recv(sock: zmq.Socket, timeout_ms: int) -> wire.Message | None:
    if not sock.poll(timeout_ms):
        return None
    return wire.decode(sock.recv_multipart(copy=False))


HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


def stray_client(curve_keys: tuple[bytes, bytes] | None, server_key: bytes, endpoint: str):
    """A PULL on its own plain context: CURVE with the given pair, or plaintext (None). Its refused
    handshakes are reported on its monitor socket (see `refused`)."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.PULL)
    s.linger = 0
    if curve_keys is not None:
        s.curve_publickey, s.curve_secretkey = curve_keys
        s.curve_serverkey = server_key
    s.get_monitor_socket(HANDSHAKE_FAILED)  # before connect: every attempt is seen
    s.connect(endpoint)
    return ctx, s


def refused(sock: zmq.Socket, timeout_s: float) -> bool:
    """A stray client has tried the server and its handshake was refused (the event, not a guess at
    how long a retry takes); then its monitor is closed."""
    monitor = sock.get_monitor_socket()
    try:
        return bool(monitor.poll(int(timeout_s * 1000)))  # only handshake failures are monitored
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)


def test_detect_stage_over_curve_serves_only_allowed_clients(models_home, tmp_path, keys):
    base = free_base_port()
    cfg_b = write_config(tmp_path / "b.yaml", tcp_config(base, keys["b"], run_dir=tmp_path / "run-b"))
    (tmp_path / "run-b").mkdir()
    cfg_a = config.load(None, tcp_config(base, keys["a"]))
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream", "stage", "detect", "--config", str(cfg_b)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    ctx = transport.context(cfg_a)
    strays = []
    try:
        # Host A plays capture (binds, CURVE server) and embed (connects to B, CURVE client).
        push = transport.socket(ctx, zmq.PUSH, bind=cfg_a.endpoint("capture", 0), hwm=10, linger_ms=0)
        pull = transport.socket(ctx, zmq.PULL, connect=[cfg_a.endpoint("detect", 0)], hwm=10, linger_ms=0)
        server_b = zmq.auth.load_certificate(keys["b"] / "server.key")[0]
        intruder = zmq.auth.load_certificate(keys["intruder"] / "client.key_secret")
        detect_out = cfg_a.endpoint("detect", 0)
        strays = [stray_client(intruder, server_b, detect_out), stray_client(None, server_b, detect_out)]

        def ready() -> bool:
            assert proc.poll() is None, proc.stderr.read()
            return (tmp_path / "run-b" / "ready-detect-0").exists()

        wait_until(ready, 120, "the detect stage to be ready")

        # PUSH deals round-robin to connected peers: had a stray client got through, it would take
        # most of these frames. The allowed client gets every one, in order. (The strays retry their
        # connection every 100 ms: wait until each has tried the now bound stage and been refused.)
        for _, s in strays:
            assert refused(s, 30), "a stray client never tried the bound stage"
        n = 6
        for seq in range(n):
            transport.send(push, frame(seq))
        got = [recv(pull, 30_000 if seq == 0 else 5_000) for seq in range(n)]
        assert [(m.kind, m.seq) for m in got if m] == [(wire.DETS, s) for s in range(n)]
        assert got[0].frame.shape == (120, 160, 3) and {"detect_in", "detect_out"} <= set(got[0].t)
        for _, s in strays:
            assert not s.poll(500), "a client without an allowed key received detections"

        # An impostor "capture" with the wrong server key cannot feed the stage: the stage (a CURVE
        # client) refuses the handshake, so the impostor never even gets a peer to send to.
        push.close(linger=0)
        rogue_ctx = zmq.Context()
        rogue = rogue_ctx.socket(zmq.PUSH)
        rogue.linger = 0
        rogue.curve_server = True
        rogue.curve_publickey, rogue.curve_secretkey = intruder
        retry_bind(lambda: rogue.bind(cfg_a.endpoint("capture", 0)))
        assert not rogue.poll(1500, zmq.POLLOUT), "the stage shook hands with a server with the wrong key"
        assert recv(pull, 200) is None
        rogue.close(linger=0)
        rogue_ctx.term()

        # The real capture again: the stage reconnects and kept serving.
        push = retry_bind(
            lambda: transport.socket(ctx, zmq.PUSH, bind=cfg_a.endpoint("capture", 0), hwm=10, linger_ms=0)
        )
        transport.send(push, frame(4))
        again = recv(pull, 30_000)
        assert again is not None and (again.kind, again.seq) == (wire.DETS, 4)
        for _, s in strays:
            assert not s.poll(200)
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(10)
        for c, s in strays:
            s.close(linger=0)
            c.destroy(linger=0)  # and the monitor socket, if the test stopped before `refused`
        ctx.destroy(linger=0)
    # The stage logged each refused stray once (auth failures are logged once per peer a minute).
    err = proc.stderr.read() if proc.stderr else ""
    assert err.count("detect refused a CURVE client (key_not_allowed)") == 1, err[-2000:]
    # The plaintext stray: refused before ZAP (libzmq names neither its key nor its address).
    assert err.count("no key from an unknown address") == 1, err[-2000:]


def retry_bind(bind):
    """A port just closed in this process may take a moment to be free again."""
    bound = []

    def attempt() -> bool:
        try:
            bound.append(bind())
        except zmq.ZMQError as e:
            if e.errno != zmq.EADDRINUSE:
                raise
            return False
        return True

    wait_until(attempt, 2.5, "the port to be free (it stayed busy)")
    return bound[0]


def test_results_pub_for_dashboards_is_curve_too(tmp_path, keys):
    """match's results PUB (here built in-process exactly as match builds it) serves only allowed
    subscribers: a dashboard whose key is in the allow-list, not an intruder or a plaintext one."""
    base = free_base_port()
    cfg_b = config.load(None, tcp_config(base, keys["b"]))
    cfg_a = config.load(None, tcp_config(base, keys["a"]))
    endpoint = cfg_b.endpoint("results")
    assert endpoint == f"tcp://{HOST_B}:{base + 301}"
    pub_ctx, sub_ctx = transport.context(cfg_b), transport.context(cfg_a)
    server_b = zmq.auth.load_certificate(keys["b"] / "server.key")[0]
    intruder = zmq.auth.load_certificate(keys["intruder"] / "client.key_secret")
    strays = []
    try:
        pub = transport.socket(pub_ctx, zmq.PUB, bind=endpoint, hwm=100, linger_ms=0)
        sub = transport.socket(sub_ctx, zmq.SUB, connect=[endpoint], hwm=100, linger_ms=0)
        for keys_, kind in ((intruder, zmq.SUB), (None, zmq.SUB)):
            c = zmq.Context()
            s = c.socket(kind)
            s.linger = 0
            s.subscribe(b"")
            if keys_ is not None:
                s.curve_publickey, s.curve_secretkey = keys_
                s.curve_serverkey = server_b
            s.connect(endpoint)
            strays.append((c, s))
        msg = wire.Result(cam="cam0", seq=7)
        deadline = time.monotonic() + 10
        while not sub.poll(50):  # PUB drops until the subscription arrives: keep publishing
            assert time.monotonic() < deadline, "the allowed dashboard got nothing"
            transport.send(pub, msg, zmq.NOBLOCK)
        assert wire.decode(sub.recv_multipart(copy=False)).seq == 7
        for _ in range(5):
            transport.send(pub, msg, zmq.NOBLOCK)
        for _, s in strays:
            assert not s.poll(300)
    finally:
        for c, s in strays:
            s.close(linger=0)
            c.term()
        pub_ctx.destroy(linger=0)
        sub_ctx.destroy(linger=0)


# ----- the whole supervised pipeline over tcp + CURVE (one host) ------------------------------------
def test_supervised_run_over_curve(models_home, shared_data, tmp_path):
    """`facestream run` with every link tcp + CURVE on loopback: frames pass every stage and the sink."""
    import cv2

    clip = tmp_path / "clip.mp4"
    cap = cv2.VideoCapture(str(shared_data / "video" / "facenet-pytorch-video.mp4"))
    out = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (640, 360))
    for _ in range(6):
        ok, img = cap.read()
        assert ok
        out.write(cv2.resize(img, (640, 360), interpolation=cv2.INTER_AREA))
    out.release()
    keys_dir = tmp_path / "keys"
    security.generate(keys_dir)
    shutil.copy(keys_dir / "server.key", keys_dir / "servers" / "127.0.0.1.key")
    shutil.copy(keys_dir / "client.key", keys_dir / "clients" / "self.key")
    cfg = tcp_config(free_base_port(), keys_dir)
    cfg["transport"]["hosts"] = {}
    cfg["sources"] = [{"url": str(clip)}]
    results = tmp_path / "r.jsonl"
    r = run_cli("run", "--config", str(write_config(tmp_path / "c.yaml", cfg)), "--out", str(results))
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted(row["seq"] for row in rows) == list(range(6)) and all(row["faces"] for row in rows)


# ----- (4) the shipped multi-host example --------------------------------------------------------------
def test_multihost_example_config_is_valid():
    example = REPO / "deploy" / "multihost.example.yaml"
    cfg = config.load(example)
    assert cfg.transport.kind == "tcp" and cfg.transport.curve is not None
    assert len({cfg.transport.host_of(r) for r in ("capture", "detect", "match")}) == 3
    r = run_cli("run", "--config", str(example), "--validate-config")
    assert r.returncode == 0 and "tcp + CURVE" in r.stdout, r.stderr
