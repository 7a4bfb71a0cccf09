#!/bin/sh
# The GPU image's entrypoint: the CUDA libraries of torch's nvidia-* wheels on the loader's path (for
# onnxruntime-gpu), then `facestream` with the given arguments (exec: it stays PID 1 for signals).
LD_LIBRARY_PATH="$(cat /opt/facestream/cuda-libs)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
exec facestream "$@"
