"""CPU feature detection that picks bf16 where the hardware multiplies it."""

from __future__ import annotations

import pytest

from ingest import hardware


def test_flags_come_from_cpuinfo():
    flags = hardware.cpu_flags()
    assert isinstance(flags, frozenset)
    # every x86-64 Linux CPU reports sse2; other platforms report nothing or their own flags
    assert not flags or "sse2" in flags or "fp" in flags or "asimd" in flags


@pytest.mark.parametrize(
    ("flags", "unit"),
    [
        ({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, "amx_bf16"),  # Sapphire Rapids: AMX first
        ({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}, "avx512_bf16"),  # AMD Zen 4, Cooper Lake
        ({"avx2", "avx512f", "avx512_vnni"}, None),  # Ice Lake / Skylake-X: AVX-512 without BF16
        ({"avx2", "fma"}, None),  # Zen 2/3
        (set(), None),  # no /proc/cpuinfo
    ],
)
def test_the_bf16_unit_of_known_cpus(flags, unit):
    assert hardware.cpu_bf16_unit(frozenset(flags)) == unit


@pytest.mark.parametrize(
    ("flags", "fast", "amx"),
    [({"amx_bf16", "avx512_bf16"}, True, True), ({"avx512_bf16"}, True, False), ({"avx512f"}, False, False)],
)
def test_generator_follows_any_bf16_unit_and_the_embedder_amx_only(monkeypatch, flags, fast, amx):
    monkeypatch.delenv(hardware.ENV_OVERRIDE, raising=False)
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    assert hardware.cpu_fast_bf16() is fast
    assert hardware.cpu_amx_bf16() is amx


def test_detection_follows_this_cpu(monkeypatch):
    monkeypatch.delenv(hardware.ENV_OVERRIDE, raising=False)
    flags = hardware.cpu_flags()
    assert hardware.cpu_fast_bf16() == ("amx_bf16" in flags or "avx512_bf16" in flags)
    assert hardware.cpu_amx_bf16() == ("amx_bf16" in flags)


def test_override_both_ways(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    monkeypatch.setenv(hardware.ENV_OVERRIDE, "0")
    assert hardware.cpu_fast_bf16() is False and hardware.cpu_amx_bf16() is False
    monkeypatch.setenv(hardware.ENV_OVERRIDE, "1")
    assert hardware.cpu_fast_bf16() is True and hardware.cpu_amx_bf16() is True
    monkeypatch.setenv(hardware.ENV_OVERRIDE, "")
    assert hardware.cpu_fast_bf16() is True and hardware.cpu_amx_bf16() is False
