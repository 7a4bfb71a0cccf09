"""Trust boundaries: what a stage checks on a well-formed message before it acts on it.

wire.decode checks that a message follows the schema; these checks ask whether it can be true of this
run. Whoever reaches a stage's input -- a process of this user with the run directory, or a host with
an allow-listed CURVE key -- can send well-formed lies, and each costs only itself:

- A message for a camera that is not in the config is dropped where it is received (`receive`):
  a frame is counted in frames_dropped_total{camera="(unknown)", reason="unknown_camera"}, any other
  kind in bad_messages_total. The camera label is fixed: the sender chooses the name, and every new
  label value is a new time series. The name is logged, once a minute per stage with a count.
- An end-of-stream is accepted only from the capture process that owns the camera: the supervisor
  gives each capture process it starts a fresh random token (env FACESTREAM_CAPTURE_TOKEN, and a 0600
  file per camera in the run directory, replaced when it restarts the capture); the capture puts it in
  its end-of-stream (`origin`), and every stage that has the run directory compares it (re-reading the
  file on a mismatch: a restarted capture has a new one). The sink also refuses an end-of-stream whose
  `sent` is below what it has already seen of that camera (frames received + frames dropped on the
  way). A refused one is counted in bad_messages_total with one log line and changes nothing.
  Without a supervisor (stages started by hand, or on hosts that do not share its run directory) there
  is no token file: only the counts are checked, so a forged end-of-stream that claims at least what
  the sink has seen can still end that camera early -- never before the frames already written.
  After the supervisor restarted a camera's capture, the counts of the two processes cannot be told
  apart (seq restarts at 0), so for that camera only the token is checked.
  The token is no secret from this user (run directory, /proc): it separates the processes that
  follow the protocol from those that do not (another camera's capture, a stage on an allow-listed
  host, a capture that was replaced), not this user from itself.
- A frame's ring reference is checked against the ring before any use: framering.StagePixels."""

from __future__ import annotations

import logging
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING

from stream.pipeline import metrics, wire

if TYPE_CHECKING:
    from stream.pipeline.config import PipelineConfig

log = logging.getLogger(__name__)

TOKEN_ENV = "FACESTREAM_CAPTURE_TOKEN"
UNKNOWN_CAMERA = "(unknown)"  # the camera label of messages for cameras not in the config
LOG_INTERVAL_S = 60.0


def token_path(run_dir: Path, index: int) -> Path:
    return Path(run_dir) / f"capture-{index}.token"


def issue_token(run_dir: Path, index: int, renew: bool = True) -> str:
    """The supervisor: a fresh token for capture `index` (or the current one, renew=False), written
    0600 under a temporary name then renamed, so a reader never sees half of it."""
    path = token_path(run_dir, index)
    if not renew and (current := read_token(run_dir, index)) is not None:
        return current
    token = secrets.token_hex(16)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, token.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return token


def read_token(run_dir: Path, index: int) -> str | None:
    try:
        return token_path(run_dir, index).read_text().strip() or None
    except OSError:
        return None


def own_token() -> str | None:
    """A capture process: the token its supervisor gave it (None when started by hand)."""
    return os.environ.get(TOKEN_ENV) or None


class _Limited:
    """One warning per key per interval; what was not logged is counted into the next line."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def warn(self, key: str, text: str) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -self.interval_s) < self.interval_s:
            self._unlogged[key] = self._unlogged.get(key, 0) + 1
            return
        more = self._unlogged.pop(key, 0)
        log.warning("%s%s", text, f" (and {more} more since the last report)" if more else "")
        self._last[key] = now


class Trust:
    """One stage's checks (see the module docstring): cameras from the config, tokens from the run
    directory (None: no supervisor, no tokens)."""

    def __init__(self, cameras: list[str], run_dir: Path | None, stage: str) -> None:
        self.index = {cam: i for i, cam in enumerate(cameras)}
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.stage = stage
        self.m = metrics.get()
        self._log = _Limited()
        # Read now: the supervisor writes every capture's first token before it starts the stages, so
        # a token that differs later means that capture was restarted (see renewed).
        self._tokens: dict[int, str | None] = {i: self._read(i) for i in self.index.values()}
        self.renewed: set[str] = set()  # cameras whose capture was restarted since this process began

    @classmethod
    def of(cls, cfg: PipelineConfig, stage: str) -> Trust:
        return cls(cfg.cameras, cfg.transport.run_dir, stage)

    def camera_index(self, cam: str) -> int | None:
        return self.index.get(cam)

    def admit(self, msg: wire.Message) -> bool:
        """True: act on it. False: dropped here, counted and logged."""
        if msg.cam not in self.index:
            self._unknown_camera(msg)
            return False
        if isinstance(msg, wire.EndOfStream) and (why := self._eos_origin(msg)) is not None:
            self.reject(msg, why)
            return False
        return True

    def eos_counts_agree(self, msg: wire.EndOfStream, seen: int) -> bool:
        """The sink: an end-of-stream cannot say fewer frames were sent than already arrived or were
        dropped on the way (`seen`, plus those it carries as skipped). False: refused, counted."""
        if msg.cam in self.renewed:  # two capture processes' frames: counts not comparable
            return True
        if msg.sent < seen + msg.skipped:
            self.reject(msg, f"it says {msg.sent} frames were sent, {seen + msg.skipped} were already seen")
            return False
        return True

    def reject(self, msg: wire.Message, why: str) -> None:
        self.m.bad_messages_total.labels(self.stage).inc()
        self._log.warn(
            f"{msg.kind}:{msg.cam}",
            f"{self.stage}: refused an end-of-stream for camera {msg.cam}: {why}"
            if isinstance(msg, wire.EndOfStream)
            else f"{self.stage}: refused a {msg.kind} message for camera {msg.cam}: {why}",
        )

    def _unknown_camera(self, msg: wire.Message) -> None:
        if isinstance(msg, wire.FrameMessage):
            self.m.frames_dropped_total.labels(self.stage, UNKNOWN_CAMERA, "unknown_camera").inc()
        else:
            self.m.bad_messages_total.labels(self.stage).inc()
        self._log.warn(
            "unknown_camera",
            f"{self.stage}: dropped a {msg.kind} message for camera {msg.cam[:64]!r}, "
            f"which is not in the config",
        )

    def _eos_origin(self, msg: wire.EndOfStream) -> str | None:
        """Why this end-of-stream is not from the capture the supervisor started (None: it is, or
        there is no supervisor's token to compare with)."""
        index = self.index[msg.cam]
        known = self._tokens.get(index) or self._read(index)
        if known is None:
            return None  # no supervisor's token: the sink's counts are the only check
        if _same(msg.origin, known):
            return None
        fresh = self._read(index)  # the capture may have been restarted: it has a new token
        if fresh is not None and fresh != known:
            self._tokens[index] = fresh
            self.renewed.add(msg.cam)
            if _same(msg.origin, fresh):
                return None
        if msg.origin is None:
            return "it does not say which capture process sent it"
        return "it is not from the capture process the supervisor started for it"

    def _read(self, index: int) -> str | None:
        return read_token(self.run_dir, index) if self.run_dir is not None else None


def _same(origin: str | None, token: str) -> bool:
    # Bytes: compare_digest refuses str that is not ASCII, and the origin is the sender's choice.
    return origin is not None and secrets.compare_digest(origin.encode(), token.encode())
