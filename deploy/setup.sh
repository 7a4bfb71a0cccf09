#!/usr/bin/env bash
# Set up facestream on a fresh machine: a virtual environment in .venv, the CPU build of torch,
# the project with its test tools, the default models (MTCNN + dlib-resnet-v1) built into
# $FACESTREAM_HOME (default ~/.cache/facestream), and the demo's sample photos there too (so that
# `facestream demo` needs no network afterwards). Safe to run again: every step is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# torch first, pinned: this exact version installs a small CPU build here; a looser spec would make
# pip pull several GB of CUDA packages. On a GPU host, install the CUDA torch you want before this.
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
.venv/bin/facestream models pull
# The demo's sample photos (face_recognition 1.3.0 sdist, pinned): `facestream demo` then runs offline.
.venv/bin/facestream demo --fetch-only
