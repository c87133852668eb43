"""CPU feature detection that picks bf16 where the hardware multiplies it."""

from __future__ import annotations

from ingest import hardware


def test_flags_come_from_cpuinfo():
    flags = hardware.cpu_flags()
    assert isinstance(flags, frozenset)
    # every x86-64 Linux CPU reports sse2; other platforms report nothing or their own flags
    assert not flags or "sse2" in flags or "fp" in flags or "asimd" in flags


def test_detection_follows_amx(monkeypatch):
    monkeypatch.delenv(hardware.ENV_OVERRIDE, raising=False)
    assert hardware.cpu_fast_bf16() == ("amx_bf16" in hardware.cpu_flags())


def test_override_both_ways(monkeypatch):
    monkeypatch.setenv(hardware.ENV_OVERRIDE, "0")
    assert hardware.cpu_fast_bf16() is False
    monkeypatch.setenv(hardware.ENV_OVERRIDE, "1")
    assert hardware.cpu_fast_bf16() is True
    monkeypatch.setenv(hardware.ENV_OVERRIDE, "")
    assert hardware.cpu_fast_bf16() == ("amx_bf16" in hardware.cpu_flags())
