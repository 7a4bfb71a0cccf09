"""Whether ONNX Runtime can really run on a GPU here: one probe, asked by the embedder (to choose
its provider) and by `facestream doctor` (to report why not)."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from functools import lru_cache


@lru_cache(maxsize=1)
def ort_cuda_usable() -> tuple[bool, str | None]:
    """(usable, why not). onnxruntime-gpu lists the CUDA provider on any machine and falls back to
    the CPU when its libraries or the GPU are missing, saying why only on the C++ stderr: so build a
    one-node session on it, and catch that line for the reason. Asking torch instead would be
    wrong both ways: a CPU build of torch on a GPU server, or a CUDA torch beside a CPU-only
    ONNX Runtime."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, "this ONNX Runtime has no CUDA provider"
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sys.stderr.flush()
    saved = os.dup(2)
    err: str | None = None
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            s = ort.InferenceSession(model.SerializeToString(), opts, providers=["CUDAExecutionProvider"])
            works = "CUDAExecutionProvider" in s.get_providers()
        except Exception as e:  # noqa: BLE001 - a provider that cannot start is the answer
            works, err = False, str(e)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        log = re.sub(r"\x1b\[[0-9;]*m", "", captured.read().decode(errors="replace"))
    if works:
        return True, None
    reason = re.search(r"with error: (.*)", log) or re.search(r"\] (.+)", log)
    text = err or (reason.group(1) if reason else "session fell back to CPU")
    return False, " ".join(text.split())[:300]
