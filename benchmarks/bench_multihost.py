"""Several hosts, simulated on one machine: the same clip through the one-host pipeline (`facestream
run`, ipc + shared-memory rings) and through stages on three "hosts" -- network namespaces on a
bridge (tests/netns.py), each stage started by its own `facestream stage ROLE --config ... --index i`
and linked over tcp:// with ZeroMQ CURVE, as deploy/multihost.example.yaml lays it out:

    host A 10.77.0.10: capture        host B 10.77.0.11: detect (xN)        host C 10.77.0.12: embed, match, sink

Each host has its own CURVE key directory (`facestream keys generate`) holding only what it would
hold on a real host: its own secrets, the public server keys of the hosts it connects to and the
public client keys it accepts. Rows, side by side in one run (interleaved with --repeat):

  ipc              facestream run on one host (bench_pipeline's run)
  tcp+CURVE        the namespaced stages
  ... buffers      the same with each namespace's kernel TCP buffers capped (sysctl net.ipv4.tcp_rmem /
                   tcp_wmem, per namespace; --tcp-buf-kb): how much of the tcp rows' behaviour comes
                   from frames parked in socket buffers, beyond ZeroMQ's HWM
  ... netem        with `tc netem delay` on every host's link (--netem-ms; skipped where the kernel
                   has no sch_netem)
  kill detect      two detect workers on host B, one killed with SIGKILL once a third of the frames are
                   out (default and capped buffers): the other carries the frames on. Frames out, and
                   drops by reason from each stage's /metrics (scraped from the switch namespace every
                   0.2 s; a killed worker's counts are its last scrape)

Stages get OMP_WAIT_POLICY=PASSIVE, as the supervisor gives them (STAGE_ENV).

    sudo .venv/bin/python benchmarks/bench_multihost.py [--clip 360p|1080p] [--repeat N] [--netem-ms 1]
        [--tcp-buf-kb 256]

Needs root (network namespaces), iproute2, the models and the shared clip. Prints markdown tables."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))

from bench_pipeline import CLIP, fmt, make_gallery, make_small, row_stats, run_pipeline  # noqa: E402
from netns import PodNetwork, in_netns  # noqa: E402

from stream import doctor  # noqa: E402

HOSTS = ("A", "B", "C")
ROLE_HOST = {"capture": "A", "detect": "B", "embed": "C", "match": "C", "sink": "C"}
METRICS_PORT = {"capture": 9200, "detect": 9210, "embed": 9220, "match": 9230, "sink": 9240}

# What `facestream run`'s supervisor gives its stages besides the config (supervisor._spawn): idle
# OpenMP threads sleep instead of spinning. `facestream stage` alone does not set it, and the five
# stages here share the machine's cores as they do under the supervisor, where spinning threads of one
# stage steal the cores of the others.
STAGE_ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OPENCV_LOG_LEVEL": "ERROR"}

# Runs in the switch namespace (it reaches every host): fetches each stage's /metrics every `every`
# seconds and keeps the latest good answer in DIR/NAME.prom (renamed into place: never half written).
SCRAPER = """
import os, sys, time, urllib.request
out, every, targets = sys.argv[1], float(sys.argv[2]), [a.split("=", 1) for a in sys.argv[3:]]
while True:
    for name, url in targets:
        try:
            text = urllib.request.urlopen(url, timeout=1).read()
        except OSError:
            continue
        with open(os.path.join(out, name + ".tmp"), "wb") as f:
            f.write(text)
        os.replace(os.path.join(out, name + ".tmp"), os.path.join(out, name + ".prom"))
    time.sleep(every)
"""


def parse(text: str, metric: str) -> list[tuple[dict[str, str], float]]:
    """`metric`'s samples in one Prometheus text exposition: [(labels, value)]."""
    return [
        (dict(re.findall(r'(\w+)="([^"]*)"', m.group(1))), float(m.group(2)))
        for m in re.finditer(rf"^{metric}\{{([^}}]*)\}} (\S+)$", text, re.M)
    ]


def mean_batch(texts: list[str], role: str) -> float:
    """Mean frames (detect) or faces (embed) per batch, over the scrapes of `role`'s processes."""
    total = count = 0.0
    for text in texts:
        total += sum(v for labels, v in parse(text, "facestream_batch_size_sum") if labels["stage"] == role)
        count += sum(v for labels, v in parse(text, "facestream_batch_size_count") if labels["stage"] == role)
    return total / count if count else float("nan")


class Scraper(threading.Thread):
    """The ipc run's /metrics (the supervisor's, on 127.0.0.1), fetched every 0.2 s; `text` is the last
    answer (the supervisor is gone once the run ends)."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.url, self.text, self.stopped = f"http://127.0.0.1:{port}/metrics", "", threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            try:
                self.text = urllib.request.urlopen(self.url, timeout=1).read().decode()
            except OSError:
                pass


def run_ipc(clip: Path, gallery: Path, tmp: Path, cfg: dict, port: int) -> dict:
    """bench_pipeline's `facestream run` (ipc, shared-memory rings), with its detect batch sizes."""
    text = yaml.safe_dump({**{k: v for k, v in cfg.items() if k != "sources"}, "metrics": {"port": port}})
    scraper = Scraper(port)
    scraper.start()
    try:
        r = run_pipeline(clip, gallery, tmp, False, text)
    finally:
        scraper.stopped.set()
        scraper.join()
    return {**r, "batch": mean_batch([scraper.text], "detect"), "drops": {}}


def base_config(args: argparse.Namespace, clip: Path, gallery: Path) -> dict:
    """What both kinds of run share (bench_pipeline's settings)."""
    return {
        "sources": [{"url": str(clip), "name": "walkway"}],
        "gallery": str(gallery),
        "detect": {"min_face_size": args.min_face, "max_batch": 4, "max_wait_ms": 5, "mode": "full"},
        "embed": {"max_batch": 32, "max_wait_ms": 2},
        "transport": {"hwm": args.hwm},
    }


class Hosts:
    """Three namespaces (A, B, C) on a bridge, each with its own key directory and config file."""

    def __init__(
        self, tmp: Path, cfg: dict, detect_workers: int, netem_ms: float | None, tcp_buf_kb: int | None = None
    ):
        self.tmp = tmp
        self.net = PodNetwork(f"fsmh{os.getpid() % 100000}")
        self.ns: dict[str, str] = {}
        self.addr: dict[str, str] = {}
        self.config: dict[str, Path] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.killed: set[str] = set()
        self.scrapes = tmp / "scrapes"
        self.scrapes.mkdir(exist_ok=True)
        try:
            self._setup(tmp, cfg, detect_workers, netem_ms, tcp_buf_kb)
        except BaseException:
            self.net.close()
            raise

    def _setup(
        self, tmp: Path, cfg: dict, detect_workers: int, netem_ms: float | None, tcp_buf_kb: int | None
    ) -> None:
        for i, h in enumerate(HOSTS):
            self.ns[h], self.addr[h] = self.net.host(i)
            if netem_ms:
                self.net.delay(self.ns[h], netem_ms)
            if tcp_buf_kb:  # the kernel's socket buffers, per namespace (autotuning's ceiling)
                cap = tcp_buf_kb * 1024
                for key, default in (("tcp_rmem", 131072), ("tcp_wmem", 16384)):
                    setting = f"net.ipv4.{key}=4096 {min(default, cap)} {cap}"
                    subprocess.run(
                        in_netns(self.ns[h], ["sysctl", "-q", "-w", setting]),
                        check=True,
                        capture_output=True,
                    )
        keys = {h: Path(tempfile.mkdtemp(dir=tmp, prefix="keys-")) / h for h in HOSTS}
        for d in keys.values():
            subprocess.run(
                [sys.executable, "-m", "stream", "keys", "generate", str(d)], check=True, capture_output=True
            )
        # Public keys only, as an operator would copy them: each consumer host gets its producer
        # host's server key (named by the producer's address, as the config names it), each
        # producer host the client key of the host that consumes from it.
        for producer, consumer in (("A", "B"), ("B", "C"), ("C", "C")):
            shutil.copy(
                keys[producer] / "server.key", keys[consumer] / "servers" / f"{self.addr[producer]}.key"
            )
            shutil.copy(keys[consumer] / "client.key", keys[producer] / "clients" / f"host-{consumer}.key")
        for h in HOSTS:
            c = yaml.safe_load(yaml.safe_dump(cfg))
            c["detect"]["workers"] = detect_workers
            c["transport"].update(
                kind="tcp",
                hosts={role: self.addr[host] for role, host in ROLE_HOST.items() if role != "sink"},
                curve={"keys_dir": str(keys[h])},
            )
            c["outputs"] = {"out": str(tmp / "mh.jsonl")}
            c["metrics"] = {"host": "0.0.0.0"}  # scraped from the switch namespace
            self.config[h] = tmp / f"host-{h}.yaml"
            self.config[h].write_text(yaml.safe_dump(c))

    def start(self, role: str, index: int = 0) -> str:
        name, host = f"{role}-{index}", ROLE_HOST[role]
        argv = [sys.executable, "-m", "stream", "stage", role, "--config", str(self.config[host])]
        argv += ["--index", str(index), "--metrics-port", str(METRICS_PORT[role] + index)]
        self.logs[name] = self.tmp / f"{name}.log"
        with open(self.logs[name], "w") as log:
            self.procs[name] = subprocess.Popen(
                in_netns(self.ns[host], argv), stdout=log, stderr=log, cwd=REPO, env=STAGE_ENV
            )
        return name

    def scraper(self) -> None:
        targets = [
            f"{name}=http://{self.addr[ROLE_HOST[name.split('-')[0]]]}:{METRICS_PORT[name.split('-')[0]] + int(name.split('-')[1])}/metrics"
            for name in self.procs
        ]
        self.procs["scraper"] = subprocess.Popen(
            in_netns(self.net.switch, [sys.executable, "-c", SCRAPER, str(self.scrapes), "0.2", *targets])
        )

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.killed.add(name)

    def check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None and p.returncode != 0 and name in self.logs and name not in self.killed:
                raise SystemExit(f"{name} exited {p.returncode}:\n{self.logs[name].read_text()[-3000:]}")

    def wait_ready(self, names: list[str], timeout: float = 600) -> None:
        """detect and embed log '<name> ready', match 'match ready', once their models are loaded and
        their sockets open (the sink has no such line: it loads nothing)."""
        deadline = time.monotonic() + timeout
        line = {n: "match ready" if n.startswith("match-") else f"{n} ready" for n in names}
        while not all(line[n] in self.logs[n].read_text() for n in names):
            self.check_alive()
            if time.monotonic() > deadline:
                raise SystemExit(f"not ready after {timeout} s: {names}")
            time.sleep(0.2)

    def samples(self, metric: str) -> dict[str, list[tuple[dict[str, str], float]]]:
        """`metric`'s samples in each stage's last scrape: {stage process: [(labels, value)]}."""
        return {f.stem: parse(f.read_text(), metric) for f in sorted(self.scrapes.glob("*.prom"))}

    def mean_batch(self, role: str) -> float:
        texts = [f.read_text() for f in self.scrapes.glob(f"{role}-*.prom")]
        return mean_batch(texts, role)

    def drops(self) -> dict[str, float]:
        """frames_dropped_total by stage/reason over every stage process."""
        out: dict[str, float] = {}
        for samples in self.samples("facestream_frames_dropped_total").values():
            for labels, value in samples:
                key = f"{labels['stage']}/{labels['reason']}"
                out[key] = out.get(key, 0.0) + value
        return {k: v for k, v in out.items() if v}

    def frames(self, role: str) -> dict[str, float]:
        """frames_total of each `role` process (a killed one: its last scrape)."""
        return {
            name: sum(v for labels, v in samples if labels.get("stage") == role)
            for name, samples in self.samples("facestream_frames_total").items()
            if name.startswith(f"{role}-")
        }

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.net.close()


def run_hosts(
    tmp: Path,
    cfg: dict,
    detect_workers: int = 1,
    netem_ms: float | None = None,
    kill_at: float | None = None,
    tcp_buf_kb: int | None = None,
) -> dict:
    """The namespaced stages on the clip; with kill_at, detect-1 gets SIGKILL once that fraction of
    the clip's frames is out."""
    import json

    out = tmp / "mh.jsonl"
    out.unlink(missing_ok=True)
    for f in (tmp / "scrapes").glob("*"):
        f.unlink()
    hosts = Hosts(tmp, cfg, detect_workers, netem_ms, tcp_buf_kb)
    total = frame_count(Path(cfg["sources"][0]["url"]))
    killed_at = None
    try:
        workers = [hosts.start("detect", i) for i in range(detect_workers)]
        workers += [hosts.start("embed"), hosts.start("match")]
        sink = hosts.start("sink")
        hosts.wait_ready(workers)
        hosts.start("capture")  # last, as the supervisor does: no frame waits for a model to load
        hosts.scraper()
        while hosts.procs[sink].poll() is None:
            hosts.check_alive()
            if kill_at is not None and killed_at is None and out.exists():
                n = len(out.read_text().splitlines())
                if n >= kill_at * total:
                    hosts.kill("detect-1")
                    killed_at = n
            time.sleep(0.1)
        if hosts.procs[sink].returncode != 0:
            raise SystemExit(
                f"sink exited {hosts.procs[sink].returncode}:\n{hosts.logs[sink].read_text()[-3000:]}"
            )
        time.sleep(0.5)  # one more scrape of the stages still up
        drops, detect_frames, batch = hosts.drops(), hosts.frames("detect"), hosts.mean_batch("detect")
    finally:
        hosts.close()
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    return {
        **row_stats(rows),
        "drops": drops,
        "killed_at": killed_at,
        "detect_frames": detect_frames,
        "batch": batch,
    }


def frame_count(clip: Path) -> int:
    import cv2

    return int(cv2.VideoCapture(str(clip)).get(cv2.CAP_PROP_FRAME_COUNT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clip", choices=["360p", "1080p"], default="360p")
    ap.add_argument("--min-face", type=int, default=20)
    ap.add_argument("--hwm", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1, help="runs of each row, interleaved (medians)")
    ap.add_argument("--netem-ms", type=float, default=1.0, help="netem delay per host link (0: no row)")
    ap.add_argument("--metrics-port", type=int, default=9191, help="the ipc run's /metrics (127.0.0.1)")
    ap.add_argument(
        "--tcp-buf-kb", type=int, default=256, help="the capped rows' kernel TCP buffer ceiling per namespace"
    )
    ap.add_argument("--kill-at", type=float, default=1 / 3, help="fraction of frames out before the kill")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: network namespaces")
    if not CLIP.is_file():
        raise SystemExit(f"{CLIP}: shared clip not found")
    print(doctor.header())
    load = [Path("/proc/loadavg").read_text().split()[:3]]
    netem = args.netem_ms > 0 and shutil.which("tc") is not None

    capped = f"tcp+CURVE, socket buffers <= {args.tcp_buf_kb} KB"
    netem_row = f"tcp+CURVE, netem {args.netem_ms:g} ms"
    rows: dict[str, dict] = {  # row -> run_hosts' arguments (None: the ipc run)
        "ipc (facestream run)": {},
        "tcp+CURVE": {"tcp": True},
        capped: {"tcp": True, "tcp_buf_kb": args.tcp_buf_kb},
    }
    if netem:
        rows[netem_row] = {"tcp": True, "netem_ms": args.netem_ms}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        gallery = make_gallery(tmp)
        clip = make_small(CLIP, tmp / "clip360.mp4") if args.clip == "360p" else CLIP
        total = frame_count(clip)
        cfg = base_config(args, clip, gallery)
        runs: dict[str, list[dict]] = {name: [] for name in rows}
        for _ in range(args.repeat):  # interleaved: a noisy neighbour hits every row alike
            for name, kw in list(rows.items()):
                try:
                    if kw.get("tcp"):
                        r = run_hosts(tmp, cfg, **{k: v for k, v in kw.items() if k != "tcp"})
                    else:
                        r = run_ipc(clip, gallery, tmp, cfg, args.metrics_port)
                except subprocess.CalledProcessError as e:  # tc without sch_netem
                    print(f"{name}: skipped ({e.stderr.decode().strip()})", file=sys.stderr)
                    del rows[name], runs[name]
                    continue
                runs[name].append(r)
                print(f"[{name}] {r['frames']} frames, {r['fps']:.1f} fps", file=sys.stderr)
        kills = {
            "tcp+CURVE": run_hosts(tmp, cfg, detect_workers=2, kill_at=args.kill_at),
            capped: run_hosts(tmp, cfg, detect_workers=2, kill_at=args.kill_at, tcp_buf_kb=args.tcp_buf_kb),
        }
        load.append(Path("/proc/loadavg").read_text().split()[:3])

    def median(rs: list[dict], key: str, i: int | None = None) -> float:
        vals = sorted(r[key] if i is None else r[key][i] for r in rs)
        return vals[len(vals) // 2]

    print(
        f"\nClip {args.clip} ({total} frames), as fast as possible, min_face_size {args.min_face}, hwm {args.hwm}, "
        f"{args.repeat} run(s) per row, interleaved (medians); load average before {' '.join(load[0])}, "
        f"after {' '.join(load[1])}\n"
    )
    base = median(runs["ipc (facestream run)"], "fps")
    print(
        "| run | frames out | dropped | frames/s | vs ipc | e2e p50 ms | e2e p95 ms | detect p50 ms (with its queue) "
        "| embed p50 ms | detect frames/batch |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, rs in runs.items():
        fps = median(rs, "fps")
        print(
            f"| {name} | {median(rs, 'frames'):.0f} | {total - median(rs, 'frames'):.0f} | {fps:.1f} | "
            f"{fps / base:.2f} | {fmt(median(rs, 'e2e', 0))} | {fmt(median(rs, 'e2e', 1))} | "
            f"{fmt(sorted(r['stages']['detect'][0] for r in rs)[len(rs) // 2])} | "
            f"{fmt(sorted(r['stages']['embed'][0] for r in rs)[len(rs) // 2])} | {median(rs, 'batch'):.2f} |"
        )
    print(
        "\nKill: 2 detect workers on host B; detect-1 gets SIGKILL once "
        f"{args.kill_at:.2f} of the frames are out. Frames per detect worker: its frames_total (detect-1: "
        "its last scrape before the kill). Lost uncounted: frames out + counted drops short of the clip.\n"
    )
    print(
        "| run | killed at (frames out) | frames out | detect-0 / detect-1 frames | dropped (counted, stage/reason) "
        "| lost uncounted | frames/s | e2e p50 ms | e2e p95 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, k in kills.items():
        drops = ", ".join(f"{r} {v:.0f}" for r, v in sorted(k["drops"].items())) or "none"
        uncounted = total - k["frames"] - sum(k["drops"].values())
        per = " / ".join(f"{k['detect_frames'].get(f'detect-{i}', 0):.0f}" for i in range(2))
        print(
            f"| {name}, detect x2, one killed | {k['killed_at']} | {k['frames']} | {per} | {drops} | "
            f"{uncounted:.0f} | {k['fps']:.1f} | {fmt(k['e2e'][0])} | {fmt(k['e2e'][1])} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
