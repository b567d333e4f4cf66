"""Which dtype a CPU serves a bf16 checkpoint in.

A CPU without bf16 instructions (AVX-512 BF16, AMX) emulates every bf16 matrix product: on an AVX2 EPYC, prefilling
an OS episode's 581-token first prompt took 15.2 s in bf16 and 2.5 s in fp32 through the same batching server.
Prompts of agent episodes are long and re-sent every round, so there the checkpoint is served in fp32; a CPU with
those instructions keeps the checkpoint's own dtype. The answer comes from the kernel's CPU flags, never from a
timing, so one machine always serves a checkpoint the same way (greedy answers depend on the dtype).
"""

from __future__ import annotations

from pathlib import Path

NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The first processor's x86 flags (empty where the file is missing or has none: not Linux, or not x86, whose
    bf16 kernels were never measured here, so they are served in fp32)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def cpu_serving_dtype(cpuinfo: Path = CPUINFO) -> str:
    """`auto` (the checkpoint's dtype) where the CPU multiplies bf16 natively, else `float32`."""
    return "auto" if cpu_flags(cpuinfo) & NATIVE_BF16_FLAGS else "float32"
