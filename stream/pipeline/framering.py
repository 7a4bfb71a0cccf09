"""Per-camera shared-memory frame rings (one host): pixels once, references after.

Capture writes each RGB frame once, into slot `seq % slots` of its camera's ring, and sends only a
header that names (ring, slot) -- see wire.FrameRef. Readers (detect, embed, the video recorder) map
a ring once and view the slot without copying.

Storage: one mmap'd file per ring, `<ring_dir>/cap<index>-<pid>-<generation>.ring`. ring_dir is a
private 0700 directory the supervisor makes on tmpfs (/dev/shm; its run directory when there is no
/dev/shm) and removes at the end of the run -- after SIGINT too, and whatever happened to the stages
(a killed stage cannot leak a ring: the file belongs to the directory, not to a process). Files rather
than multiprocessing.shared_memory: Python < 3.13's resource tracker unlinks segments when any process
that attached exits, and a name in a 0700 directory is private to this user by construction.

A new ring generation (a new file name) is made when a frame of another size arrives (camera
reconfigured) and when a capture process restarts. Readers learn of it from the header: every frame
reference names its ring file, and an unknown name is mapped on first sight. The old file is unlinked
once the new generation has filled its slots (by then every frame of the old one would have been
overwritten anyway); readers that mapped it keep their mapping until they let it go.

Seqlock per slot: the writer sets the slot's stamp to 0, writes the pixels, then stamps seq+1 (and
raises `written`, the highest seq+1 written, before the frame's header is sent).
A reader checks the stamp is seq+1 before and after using the pixels; otherwise the slot was
overwritten and the frame is a counted drop ("overwritten"), never wrong pixels. (x86 keeps stores
in order; the stamps are aligned 8-byte words.)

Flow control: headers are tiny, so ZeroMQ's HWMs no longer bound what is in flight (the kernel's
socket buffer alone holds hundreds of headers). Each reading role therefore publishes its progress
(`done[role]`: the highest seq+1 it no longer needs) in the ring header, and a capture with blocking
backpressure (files) waits before writing a frame until every role is within its window -- detect
within the HWM budget it would have had with inline pixels, the last reader within the ring's
slots -- so file runs never overwrite a slot a reader still needs. The supervisor bumps `epoch[role]`
when it restarts a reading stage: the frames in flight to the dead process are lost, and the capture
stops waiting for them. Live sources never wait: a stage that falls more than `slots` frames behind
finds its slot overwritten and drops the frame.

A reference is checked before any use (StagePixels; trust.py has the other boundaries): the ring it
names must be its camera's capture's (cap<index of the camera in the config>-...), the slot within
the ring and equal to seq % slots, the shape the ring's, and the seq not ahead of `written`. One that
fails costs only its own message: counted (frames_dropped_total{reason="forged_ref"}), and it moves no
reader's progress, releases no slot and is not carried as a frame of the camera (the capture never
sent it). A reference that passes every check is the same pixels as the frame the capture sent:
replaying one can only repeat that frame.

Layout: page 0.. (header region, mapped read-write by everyone):
    0   magic b"FSRING2\\0"     8   slots u32   12 height u32   16 width u32   20 channels u32
    24  slot_bytes u64        32  data_offset u64   40  written u64 (highest seq+1 written)
    64  done[3] u64 (detect, embed, sink)      96  epoch[3] u64 (same roles)
    128 stamps[slots] u64
then `slots` slots of `slot_bytes` each (page-aligned), mapped read-only by the readers.
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stream.pipeline import wire
from stream.pipeline.roles import PIXEL_READERS

if TYPE_CHECKING:
    from stream.pipeline.config import PipelineConfig

log = logging.getLogger(__name__)

MAGIC = b"FSRING2\0"  # 2: the written word
PAGE = mmap.PAGESIZE
_HEAD = struct.Struct("<8sIIIIQQ")
_WRITTEN_AT, _DONE_AT, _EPOCH_AT, _STAMPS_AT = 40, 64, 96, 128
NAME_RE = re.compile(r"^cap[0-9]{1,4}-[0-9]{1,10}-[0-9]{1,6}\.ring$")
MAX_SLOTS = 4096


DROP_LOG_INTERVAL_S = 10.0


class RingError(RuntimeError):
    """A ring file that is missing, or not what a reference says it is."""


class RingGone(RingError):
    """The ring a reference names does not exist (any more): a frame of a retired generation, which
    would have been overwritten by now, or a reference to a ring that never was."""


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def _header_bytes(slots: int) -> int:
    return _round_up(_STAMPS_AT + 8 * slots, PAGE)


class _Mapping:
    """One ring file mapped: header region read-write, slots read-write (writer) or read-only."""

    def __init__(self, path: Path, writable: bool):
        self.path = path
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if size < PAGE:
                raise RingError(f"{path.name}: truncated ring")
            head = mmap.mmap(fd, PAGE, mmap.MAP_SHARED, mmap.PROT_READ)
            magic, slots, h, w, c, slot_bytes, data_offset = _HEAD.unpack_from(head, 0)
            head.close()
            if magic != MAGIC or not 0 < slots <= MAX_SLOTS or c != 3:
                raise RingError(f"{path.name}: not a frame ring")
            if data_offset != _header_bytes(slots) or size < data_offset + slots * slot_bytes:
                raise RingError(f"{path.name}: inconsistent ring header")
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            self._hdr = mmap.mmap(fd, data_offset, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            self._data = mmap.mmap(fd, slots * slot_bytes, mmap.MAP_SHARED, prot, offset=data_offset)
        finally:
            os.close(fd)
        self.slots, self.shape, self.slot_bytes = slots, (h, w, c), slot_bytes
        hdr = np.frombuffer(self._hdr, np.uint64)
        self.written = hdr[_WRITTEN_AT // 8 : _WRITTEN_AT // 8 + 1]
        self.done = hdr[_DONE_AT // 8 : _DONE_AT // 8 + len(PIXEL_READERS)]
        self.epoch = hdr[_EPOCH_AT // 8 : _EPOCH_AT // 8 + len(PIXEL_READERS)]
        self.stamps = hdr[_STAMPS_AT // 8 : _STAMPS_AT // 8 + slots]
        data = np.frombuffer(self._data, np.uint8).reshape(slots, slot_bytes)
        self.frames = data[:, : h * w * c].reshape(slots, h, w, c)

    def close(self) -> None:
        # Views of the buffers may still be alive in the caller (a frame in flight): the mmaps are then
        # released by the garbage collector when the last view goes.
        self.written = self.done = self.epoch = self.stamps = self.frames = None  # type: ignore[assignment]
        for mm in (self._hdr, self._data):
            try:
                mm.close()
            except BufferError:
                pass


def create(path: Path, slots: int, shape: tuple[int, int, int]) -> None:
    """A new ring file (zeroed: every stamp 0 = empty), made under a temporary name then renamed, so
    that a reader never maps a half-written header."""
    h, w, c = shape
    if c != 3 or not 0 < slots <= MAX_SLOTS:
        raise RingError(f"cannot make a ring of {slots} slots for frames {shape}")
    slot_bytes = _round_up(h * w * c, PAGE)
    data_offset = _header_bytes(slots)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, data_offset + slots * slot_bytes)
        os.pwrite(fd, _HEAD.pack(MAGIC, slots, h, w, c, slot_bytes, data_offset), 0)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class RingWriter:
    """Capture's side: one ring per frame size; a new generation when the size changes."""

    def __init__(self, ring_dir: Path, index: int, slots_for: Callable[[int], int]):
        self.dir = Path(ring_dir)
        self.index = index
        self.slots_for = slots_for  # frame bytes -> slots
        self.gen = 0
        self.ring: _Mapping | None = None
        self.name = ""
        self._old: list[tuple[Path, int]] = []  # (file, frames to write before unlinking it)
        self._floor = [0] * len(PIXEL_READERS)
        self._epoch_seen: list[int] = [0] * len(PIXEL_READERS)
        self.next_seq = 0
        # A restarted capture: the rings of its predecessor are useless to new frames.
        for old in self.dir.glob(f"cap{index}-*.ring"):
            if not old.name.startswith(f"cap{index}-{os.getpid()}-"):
                old.unlink(missing_ok=True)

    def _new_ring(self, shape: tuple[int, int, int]) -> None:
        if self.ring is not None:
            self._old.append((self.ring.path, self.ring.slots))
            self.ring.close()
            self.gen += 1
        slots = max(2, min(MAX_SLOTS, self.slots_for(int(np.prod(shape)))))
        self.name = f"cap{self.index}-{os.getpid()}-{self.gen}.ring"
        path = self.dir / self.name
        create(path, slots, shape)
        self.ring = _Mapping(path, writable=True)
        self._floor = [0] * len(PIXEL_READERS)
        self._epoch_seen = [int(e) for e in self.ring.epoch]
        log.info("frame ring %s: %d slots of %s", self.name, slots, shape)

    def prepare(self, shape: tuple[int, ...]) -> None:
        if len(shape) != 3 or shape[2] != 3:
            raise RingError(f"frames must be H x W x 3, got {shape}")
        if self.ring is None or self.ring.shape != tuple(shape):
            self._new_ring(tuple(shape))  # type: ignore[arg-type]

    def wait_room(self, seq: int, windows: dict[str, int], stop: object, timeout_s: float) -> bool:
        """Blocking backpressure: wait until each role in `windows` has finished frames up to
        seq - window. Gives up (False) on stop or after timeout_s; the caller then writes anyway."""
        ring = self.ring
        assert ring is not None
        deadline = time.monotonic() + timeout_s
        delay = 0.0005
        while True:
            for i, e in enumerate(ring.epoch):  # a reading stage restarted: what it held is lost
                if int(e) != self._epoch_seen[i]:
                    self._epoch_seen[i] = int(e)
                    for j in range(i, len(PIXEL_READERS)):  # and it never reaches the roles after it
                        self._floor[j] = seq
            if all(
                seq - max(int(ring.done[PIXEL_READERS.index(r)]), self._floor[PIXEL_READERS.index(r)]) < w
                for r, w in windows.items()
            ):
                return True
            if stop or time.monotonic() > deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    def wait_received(self, sent: int, timeout_s: float, stop: object = False) -> bool:
        """Before the capture exits: wait until detect has taken its end-of-stream (marked done at
        sent + 1). Headers are tiny, so they sit in the socket buffers when the capture exits, and
        ZeroMQ discards what the connection still held when its peer goes away; pixels inline never
        got that far ahead. Gives up when detect restarts (what it held is lost), on `stop` (truthy: the
        supervisor is gone) or after timeout_s."""
        ring = self.ring
        if ring is None:
            return True
        epoch = int(ring.epoch[0])
        deadline = time.monotonic() + timeout_s
        while int(ring.done[0]) < sent + 1:
            if int(ring.epoch[0]) != epoch or stop or time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def write(self, frame: np.ndarray, seq: int) -> tuple[str, int]:
        """Copy the frame into its slot (seqlock: invalidate, write, stamp); returns (ring, slot)."""
        self.prepare(frame.shape)
        ring = self.ring
        assert ring is not None
        slot = seq % ring.slots
        ring.stamps[slot] = 0
        ring.frames[slot] = frame
        ring.stamps[slot] = seq + 1
        if int(ring.written[0]) < seq + 1:  # before the header goes out: readers check refs against it
            ring.written[0] = seq + 1
        self._retire_old()
        return self.name, slot

    def _retire_old(self) -> None:
        keep = []
        for path, left in self._old:
            if left <= 1:
                path.unlink(missing_ok=True)
            else:
                keep.append((path, left - 1))
        self._old = keep

    def close(self) -> None:
        """Unmap. The files stay until the supervisor removes the ring directory: frames still in
        flight after the capture exits (the end of a file) must remain readable."""
        if self.ring is not None:
            self.ring.close()
            self.ring = None


class RingReader:
    """A reading stage's side: rings mapped once (by name; up to `keep`, about one per camera), slots
    viewed in place."""

    def __init__(self, ring_dir: Path, role: str, keep: int = 64):
        self.dir = Path(ring_dir)
        self.role = PIXEL_READERS.index(role) if role in PIXEL_READERS else None
        self.keep = keep
        self.rings: OrderedDict[str, _Mapping] = OrderedDict()

    def _ring(self, name: str) -> _Mapping:
        ring = self.rings.get(name)
        if ring is not None:
            self.rings.move_to_end(name)
            return ring
        if not NAME_RE.match(name):
            raise RingError(f"bad ring name {name!r}")
        try:
            ring = _Mapping(self.dir / name, writable=False)
        except FileNotFoundError:
            raise RingGone(f"ring {name} is gone") from None
        self.rings[name] = ring
        while len(self.rings) > self.keep:
            self.rings.popitem(last=False)[1].close()
        return ring

    def checked(self, name: str, slot: int, seq: int, shape: tuple[int, ...]) -> _Mapping:
        """The ring of a reference that matches it: slot within it and seq % slots, its frame shape,
        seq already written. RingError (RingGone: no such ring) otherwise."""
        ring = self._ring(name)
        if slot >= ring.slots or tuple(shape) != ring.shape or slot != seq % ring.slots:
            raise RingError(f"reference to {name} slot {slot} {tuple(shape)} does not match the ring")
        if seq >= int(ring.written[0]):
            raise RingError(f"reference to {name} frame {seq}, which is not written yet")
        return ring

    def view(self, name: str, slot: int, seq: int, shape: tuple[int, ...]) -> np.ndarray | None:
        """The frame in place (read-only view), or None when the slot no longer holds `seq`.
        RingError: the ring is missing or does not match the reference (a bad reference)."""
        ring = self.checked(name, slot, seq, shape)
        if int(ring.stamps[slot]) != seq + 1:
            return None
        frame: np.ndarray = ring.frames[slot]
        return frame

    def valid(self, name: str, slot: int, seq: int) -> bool:
        """After use: does the slot still hold `seq` (so what was read was that frame)?"""
        ring = self.rings.get(name)
        return ring is not None and int(ring.stamps[slot]) == seq + 1

    def done(self, name: str, seq: int, end: bool = False) -> None:
        """This role no longer needs frames up to `seq` of that ring (flow control for the capture).
        Never past what the writer has written (a frame's seq < written; a camera's end, `end`, at
        seq = frames sent <= written): a forged seq must not release slots of frames in flight."""
        ring = self.rings.get(name)
        if ring is None:
            try:
                ring = self._ring(name)
            except RingError:
                return
        if seq > int(ring.written[0]) - (0 if end else 1):
            return
        if self.role is not None and int(ring.done[self.role]) < seq + 1:
            ring.done[self.role] = seq + 1

    def close(self) -> None:
        for ring in self.rings.values():
            ring.close()
        self.rings.clear()


def bump_epoch(ring_dir: Path, role: str) -> None:
    """The supervisor restarted a reading stage: tell every capture that what it held is lost."""
    if role not in PIXEL_READERS:
        return
    i = PIXEL_READERS.index(role)
    for path in Path(ring_dir).glob("*.ring"):
        try:
            with open(path, "r+b") as f, mmap.mmap(f.fileno(), PAGE) as mm:
                hdr = np.frombuffer(mm, np.uint64)
                hdr[_EPOCH_AT // 8 + i] += np.uint64(1)
                del hdr
        except (OSError, ValueError):
            continue


def make_dir(run_dir: Path) -> Path:
    """The run's private ring directory: on tmpfs (/dev/shm) when there is one, else in run_dir.
    Directories left by supervisors that died (kill -9) are removed first."""
    base = Path("/dev/shm")
    if not (base.is_dir() and os.access(base, os.W_OK)):
        base = Path(run_dir)
    else:
        remove_stale(base)
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=f"facestream-{os.getpid()}-", dir=base))
    os.chmod(path, 0o700)
    return path


def remove_stale(base: Path) -> list[Path]:
    """Remove the directories (facestream-<pid>-*) that this user's runs left in `base` when their
    process is gone (a supervisor killed by -9); returns what was removed."""
    import shutil

    removed = []
    for d in base.glob("facestream-*-*"):
        try:
            pid = int(d.name.split("-")[1])
            if d.stat().st_uid != os.getuid() or not d.is_dir() or d.is_symlink():
                continue
        except (ValueError, IndexError, OSError):
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
        except (PermissionError, OverflowError):
            continue
    return removed


class StagePixels:
    """A stage's access to frame pixels: inline pixels as they came, ring references viewed in place.

    load() before using msg.frame, check() after (seqlock); a frame whose slot was overwritten is
    dropped and counted (frames_dropped_total{stage,camera,reason="overwritten"}), and the drop rides
    on the camera's next frame or end through this stage as its `skipped`, so the sink's accounting
    stays exact. done() releases the slot for this role (the capture's flow control).

    A reference that fails the checks (see the module docstring) is a forged_ref drop that is forgotten
    (msg.ref = None): done() then releases nothing and carry() does not count it as the camera's frame.
    A ring that is gone is the one exception that is carried: a genuine frame of a retired generation
    ends that way, and the sink must then not wait for it."""

    def __init__(self, cfg: PipelineConfig, stage: str):
        from stream.pipeline import metrics

        self.stage = stage
        self.m = metrics.get()
        self.reader = RingReader(cfg.transport.shm_dir, stage) if cfg.transport.shm_dir else None
        self.cam_index = {cam: i for i, cam in enumerate(cfg.cameras)}  # capture index = ring owner
        self.skipped: dict[str, int] = {}
        self._last_log: dict[str, float] = {}  # camera -> monotonic time of its last drop warning
        self._unlogged: dict[str, int] = {}  # camera -> drops counted since then, not yet logged

    def load(self, msg: wire.FrameMessage) -> bool:
        """Make msg.frame the pixels (a read-only view of the slot); False: dropped, counted."""
        ref = msg.ref
        if ref is None or msg.frame is not None:
            return True
        if self.reader is None:
            self._drop(msg, "no_ring", f"a ring reference, but {self.stage} has no ring directory")
            return False
        try:
            self._check_owner(msg.cam, ref.ring)
            frame = self.reader.view(ref.ring, ref.slot, msg.seq, ref.shape)
        except RingGone as e:
            self._drop(msg, "bad_ref", str(e))
            return False
        except RingError as e:  # not a reference the capture sent: costs this message only
            msg.ref = None
            self._drop(msg, "forged_ref", str(e), carried=False)
            return False
        if frame is None:
            self._drop(msg, "overwritten")
            return False
        msg.frame = frame
        return True

    def check(self, msg: wire.FrameMessage) -> bool:
        """After using msg.frame: True when the slot still held the frame (what was read is valid)."""
        ref = msg.ref
        if ref is None or self.reader is None or self.reader.valid(ref.ring, ref.slot, msg.seq):
            return True
        self._drop(msg, "overwritten")
        return False

    def peek(self, msg: wire.FrameMessage) -> np.ndarray | None:
        """A copy of the frame's pixels for a best-effort reader (the dashboard's preview), or None
        when they cannot be had (no pixels, slot overwritten, not this camera's ring). Nothing is
        counted: the frame itself went on, whatever happens to its preview."""
        if msg.frame is not None:
            return np.array(msg.frame)
        ref = msg.ref
        if ref is None or self.reader is None:
            return None
        try:
            self._check_owner(msg.cam, ref.ring)
            view = self.reader.view(ref.ring, ref.slot, msg.seq, ref.shape)
            copy = None if view is None else np.array(view)
            return copy if copy is not None and self.reader.valid(ref.ring, ref.slot, msg.seq) else None
        except RingError:
            return None

    def done(self, msg: wire.Message) -> None:
        """This role is through with the frame's slot (or with the camera: its end of stream). Only
        for references to the camera's own ring, within what was written (RingReader.done)."""
        if self.reader is None:
            return
        ring = msg.ref.ring if isinstance(msg, wire.FrameMessage) and msg.ref is not None else None
        if isinstance(msg, wire.EndOfStream) and msg.ring and NAME_RE.match(msg.ring):
            ring = msg.ring  # a camera's end of stream (seq = frames sent): taken, its capture waits
        if ring is None:
            return
        try:
            self._check_owner(msg.cam, ring)
        except RingError:
            return
        self.reader.done(ring, msg.seq, end=isinstance(msg, wire.EndOfStream))

    def carry(self, msg: wire.Message) -> None:
        """Attach this camera's dropped frames to a message that goes on (frames, results, its end);
        an event does not count frames, so they wait for the camera's next frame or end."""
        if isinstance(msg, wire.FrameMessage | wire.EndOfStream):
            msg.skipped += self.skipped.pop(msg.cam, 0)

    def _check_owner(self, cam: str, ring: str) -> None:
        """The ring must be the one of this camera's capture (its index in the config)."""
        index = self.cam_index.get(cam)
        if not ring.startswith(f"cap{index}-") or not NAME_RE.match(ring):
            raise RingError(f"ring {ring} is not camera {cam}'s")

    def _drop(
        self, msg: wire.FrameMessage, reason: str, why: str | None = None, carried: bool = True
    ) -> None:
        # Every drop is counted; the log says so at most once per camera every DROP_LOG_INTERVAL_S (a
        # fast live camera can lose hundreds of frames a second, and one line each drowns the log).
        now = time.monotonic()
        unlogged = self._unlogged.get(msg.cam, 0)
        if now - self._last_log.get(msg.cam, -DROP_LOG_INTERVAL_S) >= DROP_LOG_INTERVAL_S:
            more = f" (and {unlogged} more since the last report)" if unlogged else ""
            log.warning(
                "%s: frame %s/%d dropped: %s%s",
                self.stage,
                msg.cam,
                msg.seq,
                why or "its slot was overwritten",
                more,
            )
            self._last_log[msg.cam], self._unlogged[msg.cam] = now, 0
        else:
            self._unlogged[msg.cam] = unlogged + 1
        self.m.frames_dropped_total.labels(self.stage, msg.cam, reason).inc()
        if carried:  # a frame the capture sent: the sink must not wait for it
            self.skipped[msg.cam] = self.skipped.get(msg.cam, 0) + 1 + msg.skipped

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
