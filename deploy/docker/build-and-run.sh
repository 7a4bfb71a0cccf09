#!/usr/bin/env bash
# Build the CPU image (deploy/docker/Dockerfile) with podman on a machine that reaches no image
# registry, then run the demo in it, offline, and check what it says. From the repository root:
#   sudo bash deploy/docker/build-and-run.sh
# Needs: root, mmdebstrap, podman, runc (Debian: apt-get install -y mmdebstrap podman runc) and
# Debian's mirror and PyPI reachable. The result of a run is in benchmarks/RESULTS.md.
#
# The base image (what python:3.11-slim-bookworm would be) is made from Debian's packages with
# mmdebstrap and `podman import`ed. It carries this machine's own CAs (/usr/local/share/
# ca-certificates, empty on most machines) and a pip.conf pointing pip at the system bundle, so that
# TLS through a site's intercepting proxy verifies; both are the site's business, not the Dockerfile's.
#
# torch: PyPI's Linux wheel brings GBs of CUDA libraries, so the Dockerfile takes TORCH_INDEX (an
# index with a CPU build). Set TORCH_INDEX to one (https://download.pytorch.org/whl/cpu), or
# TORCH_WHEEL to a CPU wheel on disk: this script then serves that wheel and its dependencies
# (fetched from PyPI) as an index on 127.0.0.1 for the build (pip trusts plain http on loopback).
#
# Environment (all optional):
#   WORK            podman's storage, the base tarball, the index, the demo's output
#                   (default /var/tmp/facestream-image)
#   STORAGE_DRIVER  overlay (default) or vfs
#   NETWORK         podman's network for the build and the first run: host (default) or a podman
#                   network (slirp4netns, bridge) where those work
#   TORCH_INDEX, TORCH_WHEEL   as above; by default the first /opt/wheels/torch-*+cpu-cp311-*.whl
#   CLIP            a video for the second check, `facestream run` with a mounted config
#                   (default ../shared/data/video/facenet-pytorch-video.mp4; skipped if missing)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${WORK:-/var/tmp/facestream-image}
STORAGE_DRIVER=${STORAGE_DRIVER:-overlay}
NETWORK=${NETWORK:-host}
BASE=localhost/facestream-base:bookworm
IMAGE=localhost/facestream:0.1.0-cpu
CLIP=${CLIP:-$REPO/../shared/data/video/facenet-pytorch-video.mp4}
SUITE=bookworm
MIRROR=${MIRROR:-http://deb.debian.org/debian}

mkdir -p "$WORK/storage" "$WORK/run"
# podman's own settings, private to this script (the machine's /etc/containers stays as it is).
# cgroupfs: no systemd here. runc: Debian's podman recommends crun, not installed here. The ulimits: by
# default podman asks for more open files than this sandbox's hard limit and runc then refuses to
# start the container ("error setting rlimits"); nofile stays within `ulimit -Hn`, and nproc is a
# fixed 4096 (plenty for one pipeline) because runc was refused 65536 here though `ulimit -Hu` said 96365.
nofile=$(ulimit -Hn)
[ "$nofile" = unlimited ] || [ "$nofile" -gt 65536 ] && nofile=65536
nproc=4096
cat > "$WORK/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
EOF
cat > "$WORK/storage.conf" <<EOF
[storage]
driver = "$STORAGE_DRIVER"
runroot = "$WORK/run"
graphroot = "$WORK/storage"
EOF
export CONTAINERS_CONF=$WORK/containers.conf CONTAINERS_STORAGE_CONF=$WORK/storage.conf

say() { printf '== %s\n' "$*"; }
seconds() { date +%s; }

# 1. The base image.
if ! podman image exists "$BASE"; then
    say "base image: mmdebstrap $SUITE"
    t0=$(seconds)
    cat > "$WORK/pip.conf" <<EOF
[global]
cert = /etc/ssl/certs/ca-certificates.crt
EOF
    mmdebstrap --variant=minbase \
        --include=python3,python3-venv,python-is-python3,ca-certificates \
        --customize-hook='copy-in /usr/local/share/ca-certificates /usr/local/share' \
        --customize-hook="upload $WORK/pip.conf /etc/pip.conf" \
        --customize-hook='chroot "$1" update-ca-certificates' \
        "$SUITE" "$WORK/base.tar" "$MIRROR"
    podman import --change 'ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        "$WORK/base.tar" "$BASE"
    rm -f "$WORK/base.tar"
    say "base image: $(($(seconds) - t0)) s"
fi

# 2. Where torch comes from.
server=""
cleanup() { if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; fi; }
trap cleanup EXIT
if [ -z "${TORCH_INDEX:-}" ]; then
    TORCH_WHEEL=${TORCH_WHEEL:-$(find /opt/wheels -maxdepth 1 -name 'torch-*+cpu-cp311-*.whl' 2>/dev/null | sort | head -n 1)}
    if [ -z "$TORCH_WHEEL" ]; then
        echo "no torch CPU wheel: set TORCH_INDEX (e.g. https://download.pytorch.org/whl/cpu) or TORCH_WHEEL" >&2
        exit 2
    fi
    index=$WORK/torch-index
    if [ ! -d "$index/torch" ]; then
        say "torch index: $(basename "$TORCH_WHEEL") and its dependencies"
        rm -rf "$index" "$WORK/wheels"
        python3 -m pip download --quiet --dest "$WORK/wheels" --only-binary :all: \
            --python-version 3.11 --platform manylinux_2_28_x86_64 "$TORCH_WHEEL"
        # A PEP 503 index: one folder per normalised project name; http.server's listing is its page.
        for whl in "$WORK/wheels"/*.whl; do
            name=$(basename "$whl" | cut -d- -f1 | tr 'A-Z_.' 'a-z--')
            mkdir -p "$index/$name"
            mv "$whl" "$index/$name/"
        done
    fi
    # A fixed port where it is free: TORCH_INDEX is a build argument, so a new URL is a new cache key
    # and would rebuild the torch layer every time.
    port=$(python3 -c 'import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as http.server does: TIME_WAIT is no obstacle
try:
    s.bind(("127.0.0.1", 38471))
except OSError:
    s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')
    python3 -m http.server --bind 127.0.0.1 --directory "$index" "$port" > "$WORK/index.log" 2>&1 &
    server=$!
    TORCH_INDEX=http://127.0.0.1:$port/
    for _ in $(seq 50); do python3 -c "import urllib.request; urllib.request.urlopen('$TORCH_INDEX')" 2>/dev/null && break; sleep 0.1; done
    [ "$NETWORK" = host ] || say "warning: the build reaches $TORCH_INDEX only with NETWORK=host"
fi

# 3. The image.
say "build $IMAGE (torch from $TORCH_INDEX)"
t0=$(seconds)
# --format docker: the OCI format drops SHELL (and so pipefail). --ulimit: buildah's RUN asks for
# its own limits, not containers.conf's, and runc cannot raise them past the hard limit here.
podman build --format docker --network "$NETWORK" --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc" \
    --build-arg PYTHON_IMAGE="$BASE" --build-arg TORCH_INDEX="$TORCH_INDEX" \
    -f "$REPO/deploy/docker/Dockerfile" -t "$IMAGE" "$REPO"
say "build: $(($(seconds) - t0)) s"
cleanup
server=""
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
say "image size: $((size / 1000000)) MB (base $(($(podman image inspect --format '{{.Size}}' "$BASE") / 1000000)) MB)"

# 4. The demo, inside it, without a network: everything it needs must be in the image.
out=$WORK/demo
rm -rf "$out"
mkdir -p "$out"
chown 10001:10001 "$out"
say "demo: podman run --network none $IMAGE demo"
t0=$(seconds)
set +e
podman run --rm --no-healthcheck --network none --shm-size 1g -v "$out:/var/lib/facestream" "$IMAGE" demo 2>&1 | tee "$WORK/demo.log"
rc=${PIPESTATUS[0]}
set -e
say "demo: exit $rc in $(($(seconds) - t0)) s"
[ "$rc" = 0 ] || { echo "the demo failed in the container (exit $rc)" >&2; exit 1; }
for f in facestream-demo.jsonl facestream-demo.mp4; do
    [ -s "$out/$f" ] || { echo "the demo wrote no $f" >&2; exit 1; }
done
grep -q obama "$WORK/demo.log" || { echo "the demo named nobody" >&2; exit 1; }
say "demo: $(wc -l < "$out/facestream-demo.jsonl") results, $(grep -c '"name": *"obama"' "$out/facestream-demo.jsonl" || true) lines naming obama"

# 5. The image's own command, `facestream run` with a mounted config, on a clip, offline.
if [ -f "$CLIP" ]; then
    data=$WORK/run-data
    rm -rf "$data"
    mkdir -p "$data"
    chown 10001:10001 "$data"
    cat > "$WORK/facestream.yaml" <<EOF
sources:
  - {url: /clip.mp4, name: door}
gallery: /var/lib/facestream/people.db
outputs:
  out: /var/lib/facestream/results.jsonl
  events: /var/lib/facestream/events.jsonl
metrics: {port: 9108, host: 0.0.0.0}
EOF
    # Detached, so that the image's HEALTHCHECK can be run meanwhile: podman schedules it with
    # systemd timers, and there is no systemd here, so it is run by hand (`podman healthcheck run`).
    # The gallery the config names must exist: enroll one person (from the demo's photos in the image)
    # with a one-off container, as a user would.
    podman run --rm --no-healthcheck --network none -v "$data:/var/lib/facestream" "$IMAGE" \
        enroll --gallery /var/lib/facestream/people.db obama \
        /opt/facestream/home/samples/face_recognition-1.3.0/obama.jpg
    say "run: podman run --network none $IMAGE (its CMD: run --config /etc/facestream/facestream.yaml)"
    t0=$(seconds)
    podman rm -f facestream-check > /dev/null 2>&1 || true
    podman run -d --name facestream-check --health-interval disable --network none --shm-size 1g -v "$data:/var/lib/facestream" \
        -v "$WORK/facestream.yaml:/etc/facestream/facestream.yaml:ro" -v "$CLIP:/clip.mp4:ro" \
        "$IMAGE" > /dev/null 2>&1
    health=unhealthy
    while [ "$(podman inspect --format '{{.State.Running}}' facestream-check)" = true ]; do
        if [ "$health" != healthy ] && podman healthcheck run facestream-check > /dev/null 2>&1; then
            health=healthy
        fi
        sleep 1
    done
    rc=$(podman inspect --format '{{.State.ExitCode}}' facestream-check)
    podman logs facestream-check 2>&1 | tail -n 20 | tee "$WORK/run.log"
    podman rm facestream-check > /dev/null 2>&1  # (podman says it has no systemd timer to remove)
    frames=$(wc -l < "$data/results.jsonl" 2>/dev/null || echo 0)
    say "run: exit $rc in $(($(seconds) - t0)) s, $frames result lines, healthcheck: $health while it ran"
    [ "$rc" = 0 ] && [ "$frames" -gt 0 ] && [ "$health" = healthy ] || { echo "facestream run failed in the container" >&2; exit 1; }
fi
say "ok"
