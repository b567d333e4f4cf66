"""The CPU serving dtype follows the kernel's CPU flags: bf16 only where the CPU multiplies it natively."""

from __future__ import annotations

from pathlib import Path

import pytest

from cycleqd.serving.cpu_dtype import cpu_flags, cpu_serving_dtype
from cycleqd.serving.transformers_serve import default_options

AVX2_EPYC = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
AVX512_WITHOUT_BF16 = "processor\t: 0\nflags\t\t: avx2 avx512f avx512bw avx512_vnni\n"


@pytest.mark.parametrize(
    ("cpuinfo", "dtype"),
    [(AVX2_EPYC, "float32"), (SAPPHIRE_RAPIDS, "auto"), (AVX512_WITHOUT_BF16, "float32")],
)
def test_bf16_is_kept_only_on_a_cpu_with_bf16_instructions(tmp_path: Path, cpuinfo: str, dtype: str) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert cpu_serving_dtype(path) == dtype


def test_flags_are_read_from_the_flags_line_and_a_missing_file_has_none(tmp_path: Path) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(AVX2_EPYC)
    assert cpu_flags(path) == {"fpu", "sse2", "avx", "avx2", "fma"}
    assert cpu_flags(tmp_path / "absent") == frozenset()
    assert cpu_serving_dtype(tmp_path / "absent") == "float32"


def test_an_accelerator_serves_the_checkpoints_own_dtype_with_torchs_threads() -> None:
    cpu, gpu = default_options("cpu"), default_options("cuda")
    assert cpu.dtype == cpu_serving_dtype() and cpu.threads == 1
    assert gpu.dtype == "auto" and gpu.threads is None and gpu.continuous_batching
