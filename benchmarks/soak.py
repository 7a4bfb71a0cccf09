"""Soak: `facestream run` on two live RTSP cameras for N minutes, watching memory, latency, drops and
a camera that goes away and comes back. Prints markdown tables and a verdict per goal; writes JSON.

    python benchmarks/soak.py [--minutes 60] [--fps 2] [--restart-rtsp-at MIN] [--json soak.json]

The cameras are real RTSP servers on 127.0.0.1 (benchmarks/rtsp_server.py, gst-rtsp-server, run with
/usr/bin/python3), each serving the shared clip (1920x1080) looped at --fps: `loop` runs throughout;
`rtsp` is stopped at --restart-rtsp-at minutes (default: half way) and started again --down-s later,
and the time from the server being back to facestream_camera_up{camera="rtsp"} == 1 is compared with
the bound the config implies (the longest backoff step plus one open). At the end the pipeline gets
SIGINT and must exit 0.

Sampled: every stage process's RSS (/proc/<pid>/status, the supervisor's children) every --sample-s;
/metrics every minute: end-to-end latency p50/p95 per camera from the histogram's increments in that
minute (interpolated within buckets, as Prometheus' histogram_quantile does), frames out, drops by
stage and reason, stage restarts. Goals: RSS growth after minute 5 under 5% per stage, no latency
trend (median p50/p95 of the last third of the run within 25% of the third after minute 5), the
camera back within the bound, no stage restarted, exit 0 after SIGINT. Exit status 1 when a goal
that the run was long enough to judge is missed, 2 when the soak itself could not run."""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_pipeline import CLIP, make_gallery, stage_processes  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from stream import doctor  # noqa: E402
from stream.pipeline.sources import OPEN_TIMEOUT_MS  # noqa: E402

SERVER = REPO / "benchmarks" / "rtsp_server.py"
SYSTEM_PYTHON = "/usr/bin/python3"  # has gi (python3-gi); the venv does not
WARMUP_MIN = 5  # RSS and latency are judged from here on (models, arenas, rings settle first)
RSS_GOAL = 0.05
TREND_GOAL = 0.25
RECONNECT_MAX_S = 10.0  # capture.reconnect_max_s (the default), written into the config below
RECONNECT_MARGIN_S = 2.0  # the soak's own polling (0.5 s) and process scheduling on a busy machine


class SoakError(Exception):
    pass


def rtsp_missing() -> str | None:
    """Why the RTSP server cannot run here, or None."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found"
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
        "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
        "missing = [e for e in ('x264enc', 'h264parse', 'rtph264pay', 'qtdemux', 'avdec_h264') "
        "if Gst.ElementFactory.find(e) is None]; print(' '.join(missing))"
    )
    r = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        return "python3-gi / gir1.2-gst-rtsp-server-1.0 missing: " + r.stderr.strip().splitlines()[-1]
    if r.stdout.strip():
        return f"GStreamer elements missing: {r.stdout.strip()} (gstreamer1.0-plugins-good/bad/ugly, -libav)"
    return None


class Server:
    """One rtsp_server.py process, started and stopped by PID."""

    def __init__(self, port: int, fps: int, log: Path):
        self.port, self.fps, self.log = port, fps, log
        self.url = f"rtsp://127.0.0.1:{port}/cam"
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout_s: float = 60.0) -> None:
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                [SYSTEM_PYTHON, str(SERVER), str(CLIP), "--port", str(self.port), "--fps", str(self.fps)],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        line = ""
        while time.monotonic() < deadline and self.proc.poll() is None:
            line = self.proc.stdout.readline()  # the server prints one line, then nothing
            if line.startswith("ready"):
                return
        self.stop()
        raise SoakError(f"RTSP server on port {self.port} did not start: {line.strip()} (see {self.log})")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """/metrics as {sample name: [(labels, value)]}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


def value(m: dict[str, Any], name: str, **labels: str) -> float:
    return sum(v for lab, v in m.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))


def camera_up(port: int, cam: str) -> float | None:
    try:
        ups = scrape(port).get("facestream_camera_up", [])
    except OSError:
        return None
    return next((v for lab, v in ups if lab.get("camera") == cam), None)


def buckets(m: dict[str, Any], name: str, **labels: str) -> dict[float, float]:
    """Cumulative bucket counts {upper bound: count} of one histogram series."""
    out: dict[float, float] = {}
    for lab, v in m.get(name + "_bucket", []):
        if all(lab.get(k) == x for k, x in labels.items()):
            le = float(lab["le"])
            out[le] = out.get(le, 0.0) + v
    return out


def quantile(q: float, cum: dict[float, float]) -> float | None:
    """histogram_quantile over cumulative buckets (linear within a bucket); None without samples."""
    les = sorted(cum)
    if not les or cum[les[-1]] <= 0:
        return None
    rank = q * cum[les[-1]]
    lo_le, lo_n = 0.0, 0.0
    for le in les:
        if cum[le] >= rank:
            if le == float("inf"):
                return lo_le  # beyond the last finite bucket: its bound is all we know
            return lo_le + (le - lo_le) * (rank - lo_n) / max(cum[le] - lo_n, 1e-12)
        lo_le, lo_n = le, cum[le]
    return lo_le


def stage_pids(sup_pid: int) -> dict[str, int]:
    """{"detect-0": pid, ...}: the supervisor's stage children, from their command lines."""
    return {
        f"{cmd[cmd.index('stage') + 1]}-{cmd[cmd.index('--index') + 1]}": pid
        for pid, cmd, _ in stage_processes(sup_pid)
        if "--index" in cmd
    }


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS and its parts (RssAnon: the heap and arenas; RssShmem: frame-ring pages touched;
    RssFile: mapped libraries and models) of a process, in MiB; {} once it is gone."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def rss_mib(pid: int) -> float | None:
    return memory_mib(pid).get("VmRSS")


def wait_for(pred: Any, timeout_s: float, step_s: float = 0.5) -> float | None:
    """Seconds until pred() is true (polled every step_s), or None after timeout_s."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if pred():
            return time.monotonic() - t0
        time.sleep(step_s)
    return None


class Soak:
    def __init__(self, args: argparse.Namespace, tmp: Path):
        self.args, self.tmp = args, tmp
        self.metrics_port = args.port + 10
        self.cams = {"loop": Server(args.port, args.fps, tmp / "loop.log")}
        self.cams["rtsp"] = Server(args.port + 1, args.fps, tmp / "rtsp.log")
        self.rss: list[dict[str, Any]] = []  # {"t": s, "<stage>": MiB}
        self.rss_parts: list[dict[str, Any]] = []  # {"t": s, "<stage>": {"RssAnon": MiB, ...}}
        self.minutes: list[dict[str, Any]] = []  # one scrape per minute, cumulative
        self.pids: dict[str, set[int]] = {}
        self.reconnect: dict[str, Any] = {}
        self.exit: dict[str, Any] = {}

    def config(self) -> Path:
        cfg = self.tmp / "soak.yaml"
        srcs = ", ".join(f"{{url: '{s.url}', name: {name}}}" for name, s in self.cams.items())
        cfg.write_text(
            f"sources: [{srcs}]\ncapture: {{reconnect_initial_s: 0.5, reconnect_max_s: {RECONNECT_MAX_S}}}\n"
        )
        return cfg

    def run(self) -> dict[str, Any]:
        a = self.args
        gallery = make_gallery(self.tmp)
        for s in self.cams.values():
            s.start()
        cmd = [
            sys.executable,
            "-m",
            "stream",
            "run",
            "--config",
            str(self.config()),
            "--gallery",
            str(gallery),
        ]
        cmd += ["--out", str(self.tmp / "out.jsonl"), "--metrics-port", str(self.metrics_port)]
        stderr = (self.tmp / "run.err").open("w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            if wait_for(lambda: all(camera_up(self.metrics_port, c) == 1 for c in self.cams), 180) is None:
                raise SoakError("the cameras did not come up within 180 s:\n" + self.stderr_tail())
            self.t0 = time.monotonic()
            restart_at = a.restart_rtsp_at if a.restart_rtsp_at is not None else a.minutes / 2
            self.loop(a.minutes * 60, restart_at * 60)
            self.stop_pipeline()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for s in self.cams.values():
                s.stop()
            stderr.close()
        return self.report()

    def stderr_tail(self, n: int = 3000) -> str:
        return (self.tmp / "run.err").read_text()[-n:]

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def sample_rss(self) -> None:
        t = round(self.elapsed(), 1)
        row: dict[str, Any] = {"t": t, "supervisor": rss_mib(self.proc.pid)}
        parts: dict[str, Any] = {"t": t}
        for stage, pid in stage_pids(self.proc.pid).items():
            self.pids.setdefault(stage, set()).add(pid)
            mem = memory_mib(pid)
            row[stage] = mem.get("VmRSS")
            parts[stage] = mem
        self.rss.append(row)
        self.rss_parts.append(parts)

    def sample_metrics(self) -> None:
        self.minutes.append({"t": round(self.elapsed(), 1), "m": scrape(self.metrics_port)})

    def loop(self, total_s: float, restart_s: float) -> None:
        next_rss = next_min = 0.0
        restarted = False
        self.sample_metrics()
        while self.elapsed() < total_s:
            if self.proc.poll() is not None:
                raise SoakError(f"the pipeline exited ({self.proc.returncode}):\n" + self.stderr_tail())
            if self.elapsed() >= next_rss:
                self.sample_rss()
                next_rss += self.args.sample_s
            if self.elapsed() >= next_min + 60:
                next_min += 60
                self.sample_metrics()
                print(f"[soak] minute {next_min / 60:.0f}: {self.progress()}", file=sys.stderr, flush=True)
            if not restarted and self.elapsed() >= restart_s:
                restarted = True
                self.restart_rtsp()
            time.sleep(0.5)
        self.sample_rss()
        self.sample_metrics()

    def progress(self) -> str:
        m = self.minutes[-1]["m"]
        rss = ", ".join(f"{k} {v:.0f}" for k, v in self.rss[-1].items() if k != "t" and v is not None)
        return f"frames out {value(m, 'facestream_frames_total', stage='sink'):.0f}; RSS MiB {rss}"

    def restart_rtsp(self) -> None:
        """Stop the `rtsp` camera's server, wait until the pipeline sees it down, keep it down
        --down-s, start it again and time the way back up."""
        srv, port = self.cams["rtsp"], self.metrics_port
        t_stop = self.elapsed()
        srv.stop()
        seen_down = wait_for(lambda: camera_up(port, "rtsp") == 0, 60)
        time.sleep(max(0.0, self.args.down_s - (self.elapsed() - t_stop)))
        srv.start()
        t_back = self.elapsed()
        up = wait_for(lambda: camera_up(port, "rtsp") == 1, 120)
        bound = RECONNECT_MAX_S + OPEN_TIMEOUT_MS / 1000 + RECONNECT_MARGIN_S
        self.reconnect = {
            "stopped_at_s": round(t_stop, 1),
            "seen_down_after_s": None if seen_down is None else round(seen_down, 1),
            "down_for_s": round(t_back - t_stop, 1),
            "up_after_restart_s": None if up is None else round(up, 1),
            "bound_s": bound,
            "ok": seen_down is not None and up is not None and up <= bound,
        }
        print(f"[soak] RTSP restart: {self.reconnect}", file=sys.stderr, flush=True)

    def stop_pipeline(self) -> None:
        t = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        try:
            rc: int | None = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            rc = None
        err = self.stderr_tail(100_000)
        self.exit = {
            "returncode": rc,
            "seconds": round(time.monotonic() - t, 1),
            "summary": err[err.find("facestream run summary") :].strip() if "run summary" in err else "",
            "tracebacks": err.count("Traceback"),
        }

    # ---- analysis -------------------------------------------------------------------------------

    def per_minute(self) -> list[dict[str, Any]]:
        """Increments between consecutive scrapes: latency quantiles, frames out, drops."""
        rows = []
        for prev, cur in zip(self.minutes, self.minutes[1:], strict=False):
            p, c = prev["m"], cur["m"]
            row: dict[str, Any] = {"minute": round(cur["t"] / 60, 1)}
            for cam in self.cams:
                b0 = buckets(p, "facestream_e2e_latency_seconds", camera=cam)
                b1 = buckets(c, "facestream_e2e_latency_seconds", camera=cam)
                inc = {le: n - b0.get(le, 0.0) for le, n in b1.items()}
                for q in (0.5, 0.95):
                    v = quantile(q, inc)
                    row[f"{cam}_p{int(q * 100)}_ms"] = None if v is None else round(v * 1000, 1)
                row[f"{cam}_out"] = value(c, "facestream_frames_total", stage="sink", camera=cam) - value(
                    p, "facestream_frames_total", stage="sink", camera=cam
                )
            drops: dict[str, float] = {}
            for lab, v in c.get("facestream_frames_dropped_total", []):
                d = v - value(p, "facestream_frames_dropped_total", **lab)
                if d:
                    key = f"{lab.get('stage')}/{lab.get('reason')}"
                    drops[key] = drops.get(key, 0.0) + d
            row["drops"] = dict(sorted(drops.items()))
            row["restarts"] = value(c, "facestream_worker_restarts_total") - value(
                p, "facestream_worker_restarts_total"
            )
            rows.append(row)
        return rows

    def rss_by_minute(self) -> list[dict[str, Any]]:
        """Mean RSS of each stage over each minute's samples."""
        by: dict[int, list[dict[str, Any]]] = {}
        for r in self.rss:
            if r["t"] >= self.args.minutes * 60:  # the closing sample: not a minute of its own
                continue
            by.setdefault(int(r["t"] // 60), []).append(r)
        out = []
        for minute, rs in sorted(by.items()):
            row: dict[str, Any] = {"minute": minute + 1}
            for k in sorted({k for r in rs for k in r if k != "t"}):
                vals = [r[k] for r in rs if r.get(k) is not None]
                row[k] = round(statistics.fmean(vals), 1) if vals else None
            out.append(row)
        return out

    def report(self) -> dict[str, Any]:
        mins = self.per_minute()
        rss = self.rss_by_minute()
        full = rss
        judged = self.args.minutes >= 3 * WARMUP_MIN
        verdicts: dict[str, Any] = {}
        growth = {}
        if judged:
            base = next(r for r in full if r["minute"] == WARMUP_MIN + 1)
            end = full[-1]
            for k in base:
                if k != "minute" and base[k] and end.get(k):
                    growth[k] = round((end[k] - base[k]) / base[k], 4)
            verdicts["rss_growth_under_5pct"] = all(g < RSS_GOAL for g in growth.values())
            after = [m for m in mins if m["minute"] > WARMUP_MIN]
            third = max(1, len(after) // 3)
            trend = {}
            for cam in self.cams:
                for q in ("p50", "p95"):
                    first = [m[f"{cam}_{q}_ms"] for m in after[:third] if m[f"{cam}_{q}_ms"] is not None]
                    last = [m[f"{cam}_{q}_ms"] for m in after[-third:] if m[f"{cam}_{q}_ms"] is not None]
                    if first and last:
                        trend[f"{cam}_{q}"] = round(statistics.median(last) / statistics.median(first), 3)
            verdicts["latency_no_trend"] = bool(trend) and all(
                abs(r - 1) <= TREND_GOAL for r in trend.values()
            )
            verdicts["latency_ratio_last_to_first_third"] = trend
        verdicts["reconnect_within_bound"] = bool(self.reconnect.get("ok"))
        restarts = value(self.minutes[-1]["m"], "facestream_worker_restarts_total")
        verdicts["no_stage_restart"] = restarts == 0 and all(len(p) == 1 for p in self.pids.values())
        verdicts["exit_0_after_sigint"] = self.exit.get("returncode") == 0
        return {
            "minutes": self.args.minutes,
            "fps": self.args.fps,
            "per_minute": mins,
            "rss_per_minute": rss,
            "rss_growth_after_warmup": growth,
            "rss_samples": self.rss,
            "rss_parts_samples": self.rss_parts,
            "scrapes": self.minutes,
            "reconnect": self.reconnect,
            "exit": self.exit,
            "stage_pids": {k: sorted(v) for k, v in self.pids.items()},
            "verdicts": verdicts,
            "judged": judged,
        }


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def print_tables(r: dict[str, Any], every: int) -> None:
    stages = [k for k in r["rss_per_minute"][0] if k != "minute"]
    print(f"\nRSS MiB per stage (mean over each minute's samples), every {every} min:\n")
    cams = ["loop", "rtsp"]  # capture-<i> reads source i (the config's order)
    names = [f"{s} ({cams[int(s[-1])]})" if s.startswith("capture-") else s for s in stages]
    print("| minute | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(stages))
    for row in r["rss_per_minute"]:
        if row["minute"] == 1 or row["minute"] % every == 0 or row is r["rss_per_minute"][-1]:
            print(f"| {row['minute']} | " + " | ".join(fmt(row.get(s)) for s in stages) + " |")
    if r["rss_growth_after_warmup"]:
        g = ", ".join(f"{k} {v * 100:+.1f}%" for k, v in r["rss_growth_after_warmup"].items())
        print(f"\nRSS growth from minute {WARMUP_MIN + 1} to the end: {g}")
    parts = [p for p in r.get("rss_parts_samples", []) if p["t"] < r["minutes"] * 60]
    if parts:
        at = {"start": parts[0], "end": parts[-1]}
        warm = [p for p in parts if p["t"] >= WARMUP_MIN * 60]
        if warm:
            at = {f"minute {WARMUP_MIN}": warm[0], "end": parts[-1]}
        print(
            "\nRSS parts, MiB (anon: heap and arenas; shmem: frame-ring pages touched; file: libraries, models):\n"
        )
        print("| stage | " + " | ".join(f"anon / shmem / file at {k}" for k in at) + " |")
        print("|---|" + "---|" * len(at))
        for stage in sorted(k for k in parts[-1] if k != "t"):
            cells = []
            for p in at.values():
                mem = p.get(stage, {})
                cells.append(" / ".join(fmt(mem.get(k)) for k in ("RssAnon", "RssShmem", "RssFile")))
            print(f"| {stage} | " + " | ".join(cells) + " |")
    print(f"\nPer minute (every {every} min shown; latency = end-to-end, capture to match, from /metrics):\n")
    print(
        "| minute | "
        + " | ".join(f"{c} p50 / p95 ms | {c} frames out" for c in cams)
        + " | drops (stage/reason) |"
    )
    print("|---|" + "---|---|" * len(cams) + "---|")
    for m in r["per_minute"]:
        if round(m["minute"]) in (1,) or round(m["minute"]) % every == 0 or m is r["per_minute"][-1]:
            lat = " | ".join(
                f"{fmt(m[f'{c}_p50_ms'])} / {fmt(m[f'{c}_p95_ms'])} | {m[f'{c}_out']:.0f}" for c in cams
            )
            drops = ", ".join(f"{k} {v:.0f}" for k, v in m["drops"].items()) or "none"
            print(f"| {m['minute']:.0f} | {lat} | {drops} |")
    total: dict[str, float] = {}
    for m in r["per_minute"]:
        for k, v in m["drops"].items():
            total[k] = total.get(k, 0.0) + v
    print("\nDrops over the whole run: " + (", ".join(f"{k} {v:.0f}" for k, v in total.items()) or "none"))
    print(f"RTSP restart: {r['reconnect']}")
    print(f"Exit after SIGINT: rc {r['exit'].get('returncode')} in {r['exit'].get('seconds')} s")
    print(
        "\nVerdicts"
        + ("" if r["judged"] else f" (run under {3 * WARMUP_MIN} min: RSS and trend not judged)")
        + ":"
    )
    for k, v in r["verdicts"].items():
        print(f"  {k}: {v}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--fps", type=int, default=2, help="each camera's frame rate (the machine is shared)")
    ap.add_argument("--restart-rtsp-at", type=float, default=None, help="minute (default: half way)")
    ap.add_argument("--down-s", type=float, default=15.0, help="how long the RTSP server stays off")
    ap.add_argument("--sample-s", type=float, default=10.0, help="RSS sampling period")
    ap.add_argument("--port", type=int, default=18554, help="RTSP ports PORT, PORT+1; /metrics PORT+10")
    ap.add_argument("--every", type=int, default=None, help="table rows every N minutes (default 5, or 1)")
    ap.add_argument("--json", type=Path, default=None, help="write everything measured here")
    ap.add_argument("--report", type=Path, default=None, help="print the tables of a saved --json and exit")
    args = ap.parse_args()
    if args.report:
        saved = json.loads(args.report.read_text())
        print_tables(saved, args.every or (5 if saved["minutes"] >= 20 else 1))
        return 0
    print(doctor.header())  # the machine the figures below were measured on
    if not CLIP.is_file():
        print(f"soak: {CLIP}: shared clip not found", file=sys.stderr)
        return 2
    missing = rtsp_missing()
    if missing:
        print(f"soak: cannot serve RTSP: {missing}", file=sys.stderr)
        return 2
    print(
        f"\nsoak: {args.minutes:g} min, 2 RTSP cameras (loop, rtsp) of the shared clip at {args.fps} fps each, "
        f"rtsp server off for {args.down_s:g} s at minute "
        f"{args.restart_rtsp_at if args.restart_rtsp_at is not None else args.minutes / 2:g}; "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="facestream-soak-") as d:
        try:
            result = Soak(args, Path(d)).run()
        except SoakError as e:
            print(f"soak: {e}", file=sys.stderr)
            return 2
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print_tables(result, args.every or (5 if args.minutes >= 20 else 1))
    print("\n" + result["exit"]["summary"])
    judged = {k: v for k, v in result["verdicts"].items() if isinstance(v, bool)}
    return 0 if all(judged.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
