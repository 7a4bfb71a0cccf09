"""ZeroMQ CURVE for tcp links between hosts: encrypted, and only allow-listed clients get through.

Set `transport.curve: {keys_dir: DIR}` (tcp only). Each host has its own DIR:

    server.key_secret   this host's server key pair: every tcp socket a stage binds is a CURVE server
    client.key_secret   this host's client key pair: every tcp socket a stage connects uses it
    servers/HOST.key    the server public key of each host this one connects to, named as the config
                        names that host (transport.hosts / transport.host): a copy of HOST's server.key
    clients/*.key       the allow-list: client public keys this host's binding stages accept (copies of
                        the peers' client.key, a dashboard's key); the ZAP authenticator refuses others

`facestream keys generate DIR` makes server and client key pairs (secret files 0600) and the two
folders; `--name NAME` makes one more pair (a dashboard's). Public `.key` files are safe to copy;
`.key_secret` files never leave their host. Clients check the server's key, so a stage cannot be fed
by an impostor; servers check the client's key (ZAP), so frames reach only allow-listed peers. The
allow-list is read when a stage starts: restart the binding stages after adding a key.

Refused clients leave a trace (`AuthFailures`; links.LinkMonitor reports the server sockets' failed handshakes): every refused handshake on a stage's server sockets is
counted in facestream_auth_failures_total{stage,reason} and logged as one WARNING per peer (its public
key, or 'no key') and address per minute. Reasons: `key_not_allowed` (a CURVE key not in clients/, the
ZAP handler's denial), `mechanism_mismatch` (a plaintext client: libzmq refuses it at the greeting,
before ZAP, so the server socket's monitor reports it, without the peer's address), `handshake_aborted`
(a client that dropped the connection mid-handshake, as a plaintext one may on seeing the CURVE
greeting), `protocol_error` (any other failed CURVE handshake, such as a client that holds the wrong
server key), and the ZAP handler's other denials by their text (`invalid_credentials`, ...).
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from stream.errors import FacestreamError
from stream.pipeline.config import endpoint_host
from stream.pipeline.roles import BINDERS

if TYPE_CHECKING:
    from stream.pipeline.config import PipelineConfig

log = logging.getLogger(__name__)
ZAP_DOMAIN = b"facestream"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class Curve:
    """One process's CURVE keys, read when first needed and kept."""

    def __init__(self, keys_dir: Path):
        self.keys_dir = Path(keys_dir)
        self._pairs: dict[str, tuple[bytes, bytes]] = {}
        self._servers: dict[str, bytes] = {}

    @classmethod
    def from_config(cls, cfg: PipelineConfig) -> Curve | None:
        c = cfg.transport.curve
        return None if c is None or cfg.transport.kind != "tcp" else cls(c.keys_dir)

    # ----- keys --------------------------------------------------------------------------------------
    def pair(self, name: str) -> tuple[bytes, bytes]:
        """(public, secret) from NAME.key_secret: 'server' or 'client'."""
        if name not in self._pairs:
            path = self.keys_dir / f"{name}.key_secret"
            public, secret = _load(path, hint=f"make it with `facestream keys generate {self.keys_dir}`")
            if secret is None:
                raise FacestreamError(f"CURVE key {path} has no secret key (is it a public .key file?)")
            mode = path.stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                log.warning("CURVE secret key %s is readable by others (chmod 600 it)", path)
            self._pairs[name] = (public, secret)
        return self._pairs[name]

    def server_public(self, host: str) -> bytes:
        """The public key of the server at `host` (as the config names it)."""
        if host not in self._servers:
            path = self.keys_dir / "servers" / f"{host}.key"
            self._servers[host] = _load(path, hint=f"copy the server.key of host {host} there")[0]
        return self._servers[host]

    def allow_list(self) -> Path:
        """The clients/ folder, checked: every *.key readable, at least one."""
        folder = self.keys_dir / "clients"
        if not folder.is_dir():
            raise FacestreamError(
                f"CURVE allow-list {folder} is missing: put the client.key of every peer that connects here"
            )
        keys = sorted(folder.glob("*.key"))
        if not keys:
            raise FacestreamError(
                f"CURVE allow-list {folder} has no *.key files: this host's stages would accept nobody"
            )
        for path in keys:
            _load(path, hint="")
        return folder

    def check(self, cfg: PipelineConfig, role: str) -> None:
        """Read every key `role` will need, so a stage with missing keys says so before loading models."""
        if (role in BINDERS and not cfg.connects_output(role)) or cfg.binds_input(role):
            self.pair("server")
            self.allow_list()
        connects = cfg.connects(role)
        if connects:
            self.pair("client")
            for endpoint in connects:
                host = endpoint_host(endpoint)
                if host is not None:
                    self.server_public(host)

    # ----- sockets -----------------------------------------------------------------------------------
    def serve(self, ctx: zmq.Context[Any], sock: zmq.Socket[Any], stage: str = "unknown") -> None:
        """Make `sock` a CURVE server (before bind); the context's ZAP authenticator checks clients and
        every refusal is counted and logged for `stage` (see `AuthFailures`)."""
        public, secret = self.pair("server")
        failures: AuthFailures | None = getattr(ctx, "auth_failures", None)
        if failures is None:
            failures = AuthFailures(stage)
            ctx.auth_failures = failures
        if getattr(ctx, "authenticator", None) is None:
            allowed = self.allow_list()
            auth = ZapAuthenticator(failures, ctx, log=logging.getLogger("stream.pipeline.zap"))
            auth.start()  # ZAP handler bound before any server socket binds: no unchecked window
            try:
                auth.configure_curve(domain=ZAP_DOMAIN.decode(), location=str(allowed))
            except Exception:
                auth.stop()
                raise
            ctx.authenticator = auth
        sock.curve_server = True
        sock.curve_publickey = public
        sock.curve_secretkey = secret
        sock.zap_domain = ZAP_DOMAIN

    def connect(self, sock: zmq.Socket[Any], endpoint: str) -> None:
        """Set the client keys for one connect (libzmq takes the server key at connect time)."""
        host = endpoint_host(endpoint)
        if host is None:
            return
        public, secret = self.pair("client")
        sock.curve_publickey = public
        sock.curve_secretkey = secret
        sock.curve_serverkey = self.server_public(host)


# ----- refused clients -----------------------------------------------------------------------------
AUTH_LOG_EVERY_S = 60.0
NO_KEY = "no key"


class AuthFailures:
    """One process's refused CURVE handshakes: each counted (facestream_auth_failures_total{stage,
    reason}); one WARNING per (peer key, address) per `every_s`, so a client retrying every 100 ms
    cannot flood the log (the next line says how many attempts were not logged). Thread-safe: the ZAP
    thread and the socket monitors report here."""

    def __init__(self, stage: str, every_s: float = AUTH_LOG_EVERY_S):
        from stream.pipeline import metrics

        self.stage = stage
        self.every_s = every_s
        self._counter = metrics.get().auth_failures_total  # made here, not first in a ZAP thread
        self._lock = threading.Lock()
        self._logged: dict[tuple[str, str], tuple[float, int]] = {}  # peer -> (last line, unlogged)

    def refused(self, reason: str, key: str, address: str | None) -> None:
        try:
            self._refused(reason, key, address)
        except Exception:  # never let a report take down the ZAP thread or a monitor
            log.exception("could not report a refused CURVE client")

    def _refused(self, reason: str, key: str, address: str | None) -> None:
        self._counter.labels(self.stage, reason).inc()
        peer = (key, address or "an unknown address")
        now = time.monotonic()
        with self._lock:
            last, unlogged = self._logged.get(peer, (None, 0))
            if last is not None and now - last < self.every_s:
                self._logged[peer] = (last, unlogged + 1)
                return
            if len(self._logged) >= 4096:  # many peers: forget those not seen for a while
                self._logged = {p: v for p, v in self._logged.items() if now - v[0] < self.every_s}
            self._logged[peer] = (now, 0)
        log.warning(
            "%s refused a CURVE client (%s): %s from %s%s",
            self.stage,
            reason,
            key if key == NO_KEY else f"key {key}",
            peer[1],
            f"; {unlogged} more refused attempt(s) from it since the last line" if unlogged else "",
        )


class ZapAuthenticator(ThreadAuthenticator):
    """pyzmq's ZAP handler (CURVE allow-list), reporting each denial with the peer's key and address."""

    def __init__(self, failures: AuthFailures, context: zmq.Context[Any], log: logging.Logger):
        super().__init__(context, log=log)
        self.failures = failures
        self._request: list[bytes] = []

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        self._request = msg  # requests are handled one at a time, in the ZAP thread
        try:
            await super().handle_zap_message(msg)
        finally:
            self._request = []

    def _send_zap_reply(
        self, request_id: bytes, status_code: bytes, status_text: bytes, user_id: str = "anonymous"
    ) -> None:
        super()._send_zap_reply(request_id, status_code, status_text, user_id)
        if status_code == b"200":
            return
        msg = self._request
        address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else None
        key = NO_KEY
        if len(msg) == 7 and msg[5] == b"CURVE" and len(msg[6]) == 32:
            key = z85.encode(msg[6]).decode("ascii")
        text = status_text.decode("utf-8", "replace")
        reason = "key_not_allowed" if text == "Unknown key" else re.sub(r"\W+", "_", text.lower()).strip("_")
        self.failures.refused(reason or "denied", key, address)


def check(cfg: PipelineConfig, roles: list[str] | tuple[str, ...]) -> None:
    """FacestreamError (one line) when a key that these roles need is missing or unreadable."""
    curve = Curve.from_config(cfg)
    if curve is not None:
        for role in roles:
            curve.check(cfg, role)


def _load(path: Path, hint: str) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise FacestreamError(f"CURVE key {path} is missing" + (f": {hint}" if hint else ""))
    try:
        public, secret = zmq.auth.load_certificate(path)
    except OSError as e:
        raise FacestreamError(f"CURVE key {path} cannot be read ({e.strerror or e})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise FacestreamError(f"CURVE key {path} is not a ZeroMQ certificate ({e})") from None
    for key in (public, secret):
        if key is not None and not _is_key(key):
            raise FacestreamError(f"CURVE key {path} holds a malformed key (want 40 Z85 characters)")
    return public, secret


def _is_key(key: bytes) -> bool:
    if len(key) != 40:
        return False
    try:
        return len(z85.decode(key)) == 32
    except (ValueError, KeyError, TypeError):
        return False


def generate(keys_dir: Path, name: str | None = None) -> list[Path]:
    """Key pairs in keys_dir: NAME.key (public) and NAME.key_secret (0600). Without a name: this host's
    server and client pairs and the servers/ and clients/ folders. Never overwrites a key."""
    names = [name] if name else ["server", "client"]
    for n in names:
        if not _NAME.match(n):
            raise FacestreamError(f"key name {n!r}: use letters, digits, '.', '_' and '-'")
    keys_dir = Path(keys_dir)
    for n in names:
        for suffix in (".key", ".key_secret"):
            if (keys_dir / f"{n}{suffix}").exists():
                raise FacestreamError(
                    f"{keys_dir / (n + suffix)} exists: remove it to make a new pair "
                    "(then give peers the new public key)"
                )
    made: list[Path] = []
    old = os.umask(0o077)  # the secret file is never readable by others, not even for a moment
    try:
        keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if name is None:
            for sub in ("servers", "clients"):
                (keys_dir / sub).mkdir(exist_ok=True, mode=0o700)
        for n in names:
            public, secret = zmq.auth.create_certificates(keys_dir, n)
            os.chmod(secret, 0o600)
            os.chmod(public, 0o644)
            made += [Path(public), Path(secret)]
    except OSError as e:
        raise FacestreamError(f"cannot write keys in {keys_dir}: {e.strerror}") from None
    finally:
        os.umask(old)
    return made
