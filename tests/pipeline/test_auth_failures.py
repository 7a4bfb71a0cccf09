"""Refused CURVE clients leave a trace: counted in facestream_auth_failures_total{stage,reason} and
logged once per peer (key or 'no key') and address per minute, while allowed clients keep working.

In-process, real tcp sockets on loopback (no stage process): a detect-output PUSH built exactly as the
detect stage builds it, an allowed client, and strays that connect from their own loopback source
address (libzmq's "tcp://SOURCE:0;HOST:PORT") so the log can be checked per address."""

from __future__ import annotations

import logging
import shutil
import socket
from pathlib import Path
from typing import Any

import numpy as np
import zmq
import zmq.auth
from prometheus_client import REGISTRY
from waiting import wait_until

from stream.pipeline import config, security, transport, wire

SERVER_HOST, CLIENT_HOST = "127.0.0.2", "127.0.0.3"
PLAIN_FROM, INTRUDER_FROM = "127.0.0.5", "127.0.0.6"


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def failures(reason: str) -> float:
    labels = {"stage": "detect", "reason": reason}
    return REGISTRY.get_sample_value("facestream_auth_failures_total", labels) or 0.0


def stray(endpoint: str, source: str, curve_keys: tuple[bytes, bytes] | None, server_key: bytes) -> Any:
    ctx = zmq.Context()
    s = ctx.socket(zmq.PULL)
    s.linger = 0
    if curve_keys is not None:
        s.curve_publickey, s.curve_secretkey = curve_keys
        s.curve_serverkey = server_key
    s.connect(endpoint.replace("tcp://", f"tcp://{source}:0;"))
    return ctx, s


def test_refused_clients_are_counted_and_logged_once_per_peer(tmp_path: Path, caplog) -> None:
    keys_dir, intruder_dir = tmp_path / "keys", tmp_path / "intruder"
    security.generate(keys_dir)
    security.generate(intruder_dir, "client")
    shutil.copy(keys_dir / "server.key", keys_dir / "servers" / f"{SERVER_HOST}.key")
    shutil.copy(keys_dir / "client.key", keys_dir / "clients" / "self.key")
    port = free_port(SERVER_HOST)
    cfg = config.load(
        None,
        {
            "transport": {
                "kind": "tcp",
                "base_port": port - 100,  # detect's output: base_port + 100
                "hosts": {"detect": SERVER_HOST, "embed": CLIENT_HOST},
                "curve": {"keys_dir": str(keys_dir)},
            }
        },
    )
    endpoint = cfg.endpoint("detect", 0)
    assert endpoint == f"tcp://{SERVER_HOST}:{port}"
    server_key = zmq.auth.load_certificate(keys_dir / "server.key")[0]
    intruder = zmq.auth.load_certificate(intruder_dir / "client.key_secret")
    intruder_z85 = intruder[0].decode()
    before = {r: failures(r) for r in ("mechanism_mismatch", "handshake_aborted", "key_not_allowed")}

    server_ctx, client_ctx = transport.context(cfg), transport.context(cfg)
    strays = []
    try:
        with caplog.at_level(logging.WARNING, logger="stream.pipeline.security"):
            push = transport.socket(server_ctx, zmq.PUSH, bind=endpoint, hwm=10, linger_ms=0)
            pull = transport.socket(client_ctx, zmq.PULL, connect=[endpoint], hwm=10, linger_ms=0)
            # libzmq may give up on a refused client (always after a ZAP denial, sometimes after a
            # mechanism mismatch), so repeated attempts are several sockets from one address.
            strays = [stray(endpoint, PLAIN_FROM, None, server_key) for _ in range(3)]
            strays += [stray(endpoint, INTRUDER_FROM, intruder, server_key) for _ in range(3)]
            wait_until(
                lambda: (
                    # a plaintext client that sees the CURVE greeting first drops the connection: the
                    # server counts that attempt as handshake_aborted (and the client retries)
                    failures("mechanism_mismatch") - before["mechanism_mismatch"] >= 1
                    and failures("mechanism_mismatch")
                    + failures("handshake_aborted")
                    - before["mechanism_mismatch"]
                    - before["handshake_aborted"]
                    >= 3
                    and failures("key_not_allowed") - before["key_not_allowed"] >= 3
                ),
                20,
                "several refusals of each kind",
            )

            # The allowed client still gets every message (a stray that got through would take some).
            n = 6
            for seq in range(n):
                transport.send(push, wire.frame_message("cam0", seq, np.zeros((8, 8, 3), np.uint8)))
            got = []
            for _ in range(n):
                assert pull.poll(5000), "the allowed client stopped receiving"
                got.append(wire.decode(pull.recv_multipart(copy=False)).seq)
            assert got == list(range(n))
            for _, s in strays:
                assert not s.poll(20)

        lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        refusals = [line for line in lines if "refused a CURVE client" in line]
        plain = [line for line in refusals if "no key" in line]
        bad_key = [line for line in refusals if INTRUDER_FROM in line]
        # Exactly one line per peer and address within the minute, whatever the number of attempts.
        assert len(plain) == 1 and len(bad_key) == 1, refusals
        # libzmq refuses a plaintext client before ZAP and names only the endpoint, not the peer.
        assert plain[0].startswith("detect ") and f"no key from an unknown address on {endpoint}" in plain[0]
        assert "mechanism_mismatch" in plain[0] or "handshake_aborted" in plain[0]
        assert "key_not_allowed" in bad_key[0] and intruder_z85 in bad_key[0]
        assert len(refusals) == 2, refusals  # the allowed client was never refused
    finally:
        for c, s in strays:
            s.close(linger=0)
            c.term()
        client_ctx.destroy(linger=0)
        server_ctx.destroy(linger=0)


def test_a_peer_is_logged_again_after_the_interval_with_the_attempts_in_between(caplog) -> None:
    f = security.AuthFailures("match", every_s=0.2)
    with caplog.at_level(logging.WARNING, logger="stream.pipeline.security"):
        for _ in range(3):
            f.refused("key_not_allowed", "K" * 40, "10.0.0.9")
        f.refused("key_not_allowed", "K" * 40, "10.0.0.8")  # another address: its own line
        first = len(caplog.records)
        wait_until(
            lambda: f.refused("key_not_allowed", "K" * 40, "10.0.0.9") or len(caplog.records) > first,
            5,
            "the peer's next line",
        )
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and "10.0.0.8" in lines[1]
    assert "10.0.0.9" in lines[2] and "more refused attempt" in lines[2]
