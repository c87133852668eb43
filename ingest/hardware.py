"""What the machine's CPU can do fast, read from the kernel without importing torch.

Two CPU units multiply bfloat16 matrices in hardware, and oneDNN (used by torch on CPU) takes them
for bf16 matmuls:

- **AMX** (Intel Sapphire Rapids and later, flag ``amx_bf16``). Measured on a 2-core Xeon
  (``bench/embedder_speed.py``, ``BENCHMARKS.md``): MiniLM embedding 3.6x faster than float32 with
  cosine >= 0.9999 to the float32 vectors, SmolLM2-135M prefill 1.8x and a LoRA training step 1.9x
  faster under bf16 autocast.
- **AVX512-BF16** (AMD Zen 4 and later, Intel Cooper Lake, flag ``avx512_bf16``). Measured on a
  2-core AMD EPYC with it (``BENCHMARKS.md`` "CPU paths"): bf16 matmuls 2.0x float32, MiniLM
  embedding 1.8x (ONNX int8 1.9x, so the embedder keeps ONNX int8 there), generation 0.5x the
  seconds, a LoRA training step 0.85x.

Without either (AVX2, or AVX-512 without BF16) bf16 is emulated and slower than float32, so ``auto``
settings use it only where this module says it pays.
"""

from __future__ import annotations

import functools
import os
import pathlib

#: set to 0 / 1 to override the detection (e.g. to compare float32 and bf16 on one machine)
ENV_OVERRIDE = "RAGQA_CPU_BF16"
#: /proc/cpuinfo flags of the CPU units that multiply bf16 matrices, the faster first
BF16_UNITS = ("amx_bf16", "avx512_bf16")


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


def _forced() -> bool | None:
    value = os.environ.get(ENV_OVERRIDE, "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    return None


def cpu_bf16_unit(flags: frozenset[str] | None = None) -> str | None:
    """The flag of the fastest unit that multiplies bf16 matrices on this CPU (see :data:`BF16_UNITS`), or None."""
    flags = cpu_flags() if flags is None else flags
    return next((unit for unit in BF16_UNITS if unit in flags), None)


def cpu_fast_bf16() -> bool:
    """True when bfloat16 matmuls run in hardware (AMX or AVX512-BF16) on this CPU, or the override says so.

    The generator's weights and the trainers' autocast follow this."""
    forced = _forced()
    return forced if forced is not None else cpu_bf16_unit() is not None


def cpu_amx_bf16() -> bool:
    """True where bf16 runs on AMX (or the override says bf16): only there does the torch bf16 embedder beat
    ONNX int8 (3.6x float32 against ~1.9x for both on AVX512-BF16), so the embedder's ``auto`` follows this."""
    forced = _forced()
    return forced if forced is not None else cpu_bf16_unit() == "amx_bf16"


__all__ = ["BF16_UNITS", "ENV_OVERRIDE", "cpu_amx_bf16", "cpu_bf16_unit", "cpu_fast_bf16", "cpu_flags"]
