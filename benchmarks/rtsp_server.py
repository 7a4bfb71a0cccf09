"""A real RTSP camera on loopback for the soak and its test: serves a video file, looped forever, with
gst-rtsp-server (Debian: gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-{base,good,bad,ugly}).

    /usr/bin/python3 benchmarks/rtsp_server.py CLIP --port 8554 [--mount /cam] [--fps 2]

Run it with the system Python (it has gi; the project's venv does not). It prints `ready <url>` on
stdout once clients can connect and runs until killed (SIGTERM/SIGINT), so callers start and stop it
by PID, the way a camera is switched off.

The clip is decoded, resampled to --fps and encoded to H.264 once at start (a keyframe every second);
the server then only replays those access units, stamped at --fps, in a loop: serving costs almost no
CPU, and the loop point is a keyframe, so a client sees one endless stream (no end-of-stream, no
reconnect at the end of the clip). One media is shared by all clients."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def encode(clip: Path, fps: int) -> tuple[list[bytes], str]:
    """The clip as H.264 access units at `fps` (byte-stream), and their caps string."""
    pipeline = Gst.parse_launch(
        f"filesrc name=file ! decodebin ! videoconvert ! videorate ! "
        f"video/x-raw,format=I420,framerate={fps}/1 ! "
        f"x264enc tune=zerolatency speed-preset=veryfast key-int-max={fps} bframes=0 sliced-threads=false ! "
        "video/x-h264,stream-format=byte-stream,alignment=au ! appsink name=sink sync=false"
    )
    pipeline.get_by_name("file").set_property("location", str(clip))
    sink = pipeline.get_by_name("sink")
    bus = pipeline.get_bus()
    pipeline.set_state(Gst.State.PLAYING)
    units: list[bytes] = []
    caps = ""
    msg = None
    while not sink.get_property("eos"):
        msg = bus.pop_filtered(Gst.MessageType.ERROR)
        if msg is not None:
            break
        sample = sink.emit("try-pull-sample", Gst.SECOND // 10)
        if sample is None:
            continue
        buf = sample.get_buffer()
        units.append(buf.extract_dup(0, buf.get_size()))
        caps = sample.get_caps().to_string()
    pipeline.set_state(Gst.State.NULL)
    if msg is not None:
        err, _debug = msg.parse_error()
        raise SystemExit(f"rtsp_server: cannot encode {clip}: {err.message}")
    if not units:
        raise SystemExit(f"rtsp_server: {clip} gave no frames")
    return units, caps


class LoopFactory(GstRtspServer.RTSPMediaFactory):  # type: ignore[misc]
    """Each media plays the encoded units from the start, looped, stamped at the given fps."""

    def __init__(self, units: list[bytes], caps: str, fps: int):
        super().__init__()
        self.units, self.caps, self.duration = units, caps, Gst.SECOND // fps
        self.set_launch(
            "( appsrc name=src format=time ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1 )"
        )
        self.set_shared(True)
        self.connect("media-configure", self._configure)

    def _configure(self, _factory: object, media: GstRtspServer.RTSPMedia) -> None:
        src = media.get_element().get_child_by_name("src")
        src.set_property("caps", Gst.Caps.from_string(self.caps))
        state = {"n": 0}
        src.connect("need-data", self._need_data, state)

    def _need_data(self, src: Gst.Element, _length: int, state: dict[str, int]) -> None:
        n = state["n"]
        buf = Gst.Buffer.new_wrapped(self.units[n % len(self.units)])
        buf.pts = buf.dts = n * self.duration
        buf.duration = self.duration
        state["n"] = n + 1
        src.emit("push-buffer", buf)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("clip", type=Path)
    ap.add_argument("--port", type=int, default=8554)
    ap.add_argument("--mount", default="/cam")
    ap.add_argument("--fps", type=int, default=2)
    args = ap.parse_args()
    if not args.clip.is_file():
        raise SystemExit(f"rtsp_server: {args.clip}: no such file")
    Gst.init(None)
    units, caps = encode(args.clip, args.fps)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    server.get_mount_points().add_factory(args.mount, LoopFactory(units, caps, args.fps))
    if server.attach(None) == 0:
        raise SystemExit(f"rtsp_server: cannot listen on 127.0.0.1:{args.port}")
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(
        f"ready rtsp://127.0.0.1:{args.port}{args.mount} ({len(units)} frames at {args.fps} fps)", flush=True
    )
    loop.run()


if __name__ == "__main__":
    sys.exit(main())
