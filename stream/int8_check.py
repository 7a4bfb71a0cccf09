"""Is an int8 embedder, verified on one processor, still the same embedder on this one?

8-bit integer kernels are chosen per CPU (stream.cpu.CpuInfo.int8_kernel), and kernels of
different families may compute different int8 results for the same file. So the build records the
family it verified the int8 file on, and keeps a few real face chips with their fp32 embeddings
next to it (CHECK_FILE). Where the family here differs, the runtime embeds those chips with the
int8 model and accepts it only if it stays within the build's limits; otherwise it falls back to
fp32 with one warning line. Rechecking costs a dozen chips: well under a second."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from stream.cpu import CpuInfo, cpu_info

log = logging.getLogger(__name__)

CHECK_FILE = "int8_check.npz"  # arrays "chips" (N, H, W, 3) uint8 RGB and "fp32" (N, D) float32
CHECK_CHIPS = 12


def verified_on(cpu: CpuInfo | None = None) -> dict[str, Any]:
    """What the manifest records about the processor an int8 file was verified on."""
    cpu = cpu or cpu_info()
    return {
        "int8_kernel": cpu.int8_kernel,
        "arch": cpu.arch,
        "model": cpu.model,
        "features": sorted(cpu.features),
    }


def write_check(path: Path, chips: np.ndarray, fp32: np.ndarray) -> None:
    np.savez_compressed(path, chips=np.ascontiguousarray(chips, np.uint8), fp32=fp32.astype(np.float32))


def accept_int8(
    model_dir: Path,
    entry: dict[str, Any],
    embed_int8: Callable[[np.ndarray], np.ndarray],
    kernel: str | None = None,
) -> tuple[bool, str]:
    """(usable, why) for the int8 file described by the manifest's `entry`, run by `kernel` (default:
    this CPU's int8 kernel family; an execution provider's name where a GPU runs it).

    Same kernel family as at build: usable as verified. Another family: usable when `embed_int8`
    keeps the stored chips within the build's L2 limits of their fp32 embeddings."""
    kernel = kernel or cpu_info().int8_kernel
    built = (entry.get("verified_on") or {}).get("int8_kernel")
    if built == kernel:
        return True, f"verified on this kernel family ({built})"
    where = f"verified on {built or 'an unrecorded CPU'}, running on {kernel}"
    try:
        with np.load(model_dir / CHECK_FILE) as f:
            chips, want = f["chips"], f["fp32"]
    except (OSError, KeyError, ValueError) as e:
        return False, f"{where} and the check chips are unreadable ({type(e).__name__})"
    got = embed_int8(chips)
    l2 = np.linalg.norm(got.astype(np.float64) - want, axis=1)
    mean_limit, max_limit = float(entry["l2_mean_limit"]), float(entry["l2_max_limit"])
    figures = f"L2 vs fp32 on {len(chips)} real faces: mean {l2.mean():.4f} / max {l2.max():.4f}"
    if not (np.all(np.isfinite(l2)) and l2.mean() <= mean_limit and l2.max() <= max_limit):
        return False, f"{where}; {figures}, over the limits {mean_limit} / {max_limit}"
    return True, f"{where}; rechecked here: {figures}"
