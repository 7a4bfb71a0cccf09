"""What this processor can do, as far as facestream's numerics and speed depend on it.

One owner for CPU facts: `facestream doctor` prints them, benchmarks name them, the int8 embedder
records them at build time and compares them at load time, and the 1:N search picks its kernel
with them. Read from /proc/cpuinfo (Linux); elsewhere the feature set is empty and every check
falls back to its portable path."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

# The flags that change which kernels torch, ONNX Runtime and numpy run here, and so what they cost
# or (for 8-bit integer arithmetic) what they compute. Names as Linux spells them.
X86_FEATURES = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
ARM_FEATURES = ("asimd", "asimddp", "i8mm", "bf16", "sve", "sve2")


@dataclass(frozen=True)
class CpuInfo:
    arch: str  # platform.machine(): x86_64, aarch64, ...
    model: str  # "AMD EPYC 9454", or "" where unknown
    features: frozenset[str]  # the subset of X86_FEATURES / ARM_FEATURES this CPU reports
    logical_cpus: int  # what this process may run on (affinity), not the whole machine

    def has(self, feature: str) -> bool:
        return feature in self.features

    @property
    def int8_kernel(self) -> str:
        """The family of 8-bit dot-product kernels ONNX Runtime (MLAS) picks here. Kernels of one
        family compute bit-identical int8 results; across families, U8S8 results can differ (the
        AVX2 path without VNNI sums pairs of u8 x s8 products in saturating 16-bit lanes)."""
        f = self.features
        if self.arch in ("x86_64", "AMD64", "i386", "i686"):
            if "amx_int8" in f:
                return "x86-amx"
            if "avx512_vnni" in f:
                return "x86-avx512-vnni"
            if "avx_vnni" in f:
                return "x86-avx-vnni"
            if "avx512bw" in f:
                return "x86-avx512"
            if "avx2" in f:
                return "x86-avx2"
            return "x86-sse"
        if self.arch in ("aarch64", "arm64"):
            if "i8mm" in f:
                return "arm-i8mm"
            if "asimddp" in f:
                return "arm-dotprod"
            return "arm-neon"
        return self.arch or "unknown"

    @property
    def native_bf16(self) -> bool:
        """bf16 dot products in hardware (elsewhere torch emulates bf16 in float32)."""
        return bool(self.features & {"avx512_bf16", "amx_bf16"}) or (
            self.arch in ("aarch64", "arm64") and "bf16" in self.features
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "model": self.model,
            "features": sorted(self.features),
            "logical_cpus": self.logical_cpus,
            "int8_kernel": self.int8_kernel,
            "native_bf16": self.native_bf16,
        }

    def summary(self) -> str:
        """One line: 'AMD EPYC (x86_64), 2 CPUs, avx2 avx512f ...'."""
        feats = " ".join(f for f in (*X86_FEATURES, *ARM_FEATURES) if f in self.features) or "none"
        return f"{self.model or 'unknown CPU'} ({self.arch}), {self.logical_cpus} CPUs, features: {feats}"


def parse_cpuinfo(text: str, arch: str) -> tuple[str, frozenset[str]]:
    """(model name, relevant features) from the text of /proc/cpuinfo."""
    model, flags = "", set[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    known = X86_FEATURES if arch in ("x86_64", "AMD64", "i386", "i686") else ARM_FEATURES
    return model, frozenset(f for f in known if f in flags)


@lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    arch = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model, features = parse_cpuinfo(f.read(), arch)
    except OSError:
        model, features = platform.processor(), frozenset()
    try:
        logical = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        logical = os.cpu_count() or 1
    return CpuInfo(arch=arch, model=model, features=features, logical_cpus=logical)
