"""What the machine's CPU can do fast, read from the kernel without importing torch.

Intel CPUs with AMX (Sapphire Rapids and later) multiply bfloat16 matrices in hardware; oneDNN
(used by torch on CPU) takes that path for bf16 matmuls. Measured on a 2-core Xeon with AMX
(``bench/embedder_speed.py``, ``BENCHMARKS.md``): MiniLM embedding 3.6x faster than float32
with cosine >= 0.9999 to the float32 vectors, SmolLM2-135M prefill 1.8x and a LoRA training
step 1.9x faster under bf16 autocast. Without AMX (AVX2/AVX-512 only) bf16 is emulated and
slower than float32, so ``auto`` settings use it only where this module says it pays.
"""

from __future__ import annotations

import functools
import os
import pathlib

#: set to 0 / 1 to override the detection (e.g. to compare float32 and bf16 on one machine)
ENV_OVERRIDE = "RAGQA_CPU_BF16"


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from ``/proc/cpuinfo`` (empty where the file does not exist)."""
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_fast_bf16() -> bool:
    """True when bfloat16 matmuls run in hardware (AMX) on this CPU, or the override says so."""
    forced = os.environ.get(ENV_OVERRIDE, "").strip().lower()
    if forced in ("0", "false", "no", "off"):
        return False
    if forced in ("1", "true", "yes", "on"):
        return True
    return "amx_bf16" in cpu_flags()


__all__ = ["ENV_OVERRIDE", "cpu_fast_bf16", "cpu_flags"]
