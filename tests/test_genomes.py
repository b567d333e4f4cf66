"""Genomes against full weights, on tiny random Llama checkpoints made here: crossover, SVD mutation,
materialisation, merges, expert verification, hashing, the SVD cache and the streaming safetensors writer."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from evolver.checkpoint_files import CheckpointLayout, ExpertMismatchError, verify_experts
from evolver.genome import Genome
from evolver.materialize import dense_delta, materialize
from evolver.operators import average_merge, crossover, softmax_merge, svd_mutation
from evolver.safetensors_stream import StreamWriter
from evolver.svd_cache import SVDCache, build_svd_cache

sys.path.insert(0, str(Path(__file__).parent))
from evolution_probe import make_tiny_family  # noqa: E402

FP32 = {"atol": 2e-5, "rtol": 1e-4}


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], SVDCache]:
    root = tmp_path_factory.mktemp("family")
    base, experts = make_tiny_family(root)
    return base, experts, build_svd_cache(base, experts, root / "cache", progress=False)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors |= load_file(path)
    return tensors


def task_vectors(base: Path, experts: list[Path]) -> list[dict[str, torch.Tensor]]:
    theta = weights(base)
    return [{n: t.float() - theta[n].float() for n, t in weights(e).items()} for e in experts]


def test_crossover_is_the_weighted_task_vector_average(family) -> None:  # noqa: ANN001
    base, experts, cache = family
    taus = task_vectors(base, experts)
    child = crossover(Genome.expert(cache, 0), Genome.expert(cache, 2), 1.02, 0.97)
    for name in cache.layout.tensors:
        expected = (1.02 * taus[0][name] + 0.97 * taus[2][name]) / (1.02 + 0.97)
        torch.testing.assert_close(dense_delta(child, cache, name), expected, **FP32)


def test_svd_mutation_adds_exactly_u_diag_w_sigma_v(family) -> None:  # noqa: ANN001
    base, experts, cache = family
    taus = task_vectors(base, experts)
    parent = crossover(Genome.expert(cache, 0), Genome.expert(cache, 1), 1.0, 1.0)
    child = svd_mutation(parent, cache, 1, w_max=0.1, seed=1234)
    generator = torch.Generator().manual_seed(1234)  # the draws, redone independently: sorted matrices
    draws = {name: torch.rand(min(taus[1][name].shape), generator=generator) * 0.1
             for name in sorted(n for n in taus[1] if taus[1][n].ndim == 2)}  # fmt: skip
    for name, tau in taus[1].items():
        added = dense_delta(child, cache, name) - dense_delta(parent, cache, name)
        if tau.ndim == 1:
            assert torch.equal(added, torch.zeros_like(added))  # norm vectors are not mutated
            continue
        u, s, vh = torch.linalg.svd(tau, full_matrices=False)
        torch.testing.assert_close(added, u @ torch.diag(draws[name] * s) @ vh, **FP32)
        assert added.abs().max() > 0


def test_a_materialised_genome_equals_the_same_operators_on_full_weights(family, tmp_path: Path) -> None:  # noqa: ANN001
    from transformers import LlamaForCausalLM

    base, experts, cache = family
    taus = task_vectors(base, experts)
    theta = weights(base)
    child = svd_mutation(crossover(Genome.expert(cache, 0), Genome.expert(cache, 2), 0.99, 1.01), cache, 0, 0.1, 7)
    out = materialize(child, cache, tmp_path / "child")
    written = weights(out)
    generator = torch.Generator().manual_seed(7)
    draws = {name: torch.rand(min(theta[name].shape), generator=generator) * 0.1
             for name in sorted(n for n in theta if theta[n].ndim == 2)}  # fmt: skip
    for name, tensor in theta.items():
        expected = (0.99 * taus[0][name] + 1.01 * taus[2][name]) / 2.0
        if tensor.ndim == 2:
            u, s, vh = torch.linalg.svd(taus[0][name], full_matrices=False)
            expected = expected + u @ torch.diag(draws[name] * s) @ vh
        torch.testing.assert_close(dense_delta(child, cache, name), expected, **FP32)
        assert written[name].dtype == torch.bfloat16
        torch.testing.assert_close(written[name].float(), (tensor.float() + expected).to(torch.bfloat16).float(),
                                   atol=1e-6, rtol=2**-7)  # at most one bf16 rounding step apart  # fmt: skip
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(p.name for p in base.glob("*.safetensors"))
    assert json.loads((out / "config.json").read_text()) == json.loads((base / "config.json").read_text())
    LlamaForCausalLM.from_pretrained(out)
    assert materialize(child, cache, tmp_path / "child") == out  # the second request finds it


def test_experts_and_merges_materialise_to_what_they_are(family, tmp_path: Path) -> None:  # noqa: ANN001
    base, experts, cache = family
    taus = task_vectors(base, experts)
    expert = weights(materialize(Genome.expert(cache, 1), cache, tmp_path / "expert"))
    for name, tensor in weights(experts[1]).items():
        torch.testing.assert_close(expert[name].float(), tensor.float(), atol=1e-6, rtol=2**-7)
    merge = average_merge(cache)
    genomes = [Genome.expert(cache, k) for k in range(3)]
    final = softmax_merge(genomes, [0.2, 0.5, 0.9])
    beta = torch.softmax(torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64), 0).tolist()
    for name in cache.layout.tensors:
        torch.testing.assert_close(dense_delta(merge, cache, name), sum(t[name] for t in taus) / 3, **FP32)
        expected = sum(b * t[name] for b, t in zip(beta, taus, strict=True))
        torch.testing.assert_close(dense_delta(final, cache, name), expected, **FP32)


def test_a_sharded_base_keeps_its_shards_and_index(tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    base, experts = make_tiny_family(tmp_path / "src", experts=2)
    for folder in (base, *experts):  # re-save every checkpoint in small shards
        model = LlamaForCausalLM.from_pretrained(folder)
        model.save_pretrained(tmp_path / "sharded" / folder.name, max_shard_size="40KB")
    sharded = tmp_path / "sharded"
    cache = build_svd_cache(sharded / "base", [sharded / e.name for e in experts], tmp_path / "cache", progress=False)
    out = materialize(Genome.expert(cache, 0), cache, tmp_path / "out")
    shards = sorted(p.name for p in (sharded / "base").glob("*.safetensors"))
    assert len(shards) > 1 and sorted(p.name for p in out.glob("*.safetensors")) == shards
    index = "model.safetensors.index.json"
    assert (out / index).read_text() == (sharded / "base" / index).read_text()
    assert CheckpointLayout.read(out).tensors == CheckpointLayout.read(sharded / "base").tensors


def broken_copy(expert: Path, out: Path, change) -> Path:  # noqa: ANN001
    shutil.copytree(expert, out)
    tensors = load_file(out / "model.safetensors")
    change(tensors)
    save_file(tensors, out / "model.safetensors")
    return out


def test_experts_that_do_not_fit_the_base_are_named(family, tmp_path: Path) -> None:  # noqa: ANN001
    base, experts, _ = family
    name = "model.layers.0.mlp.up_proj.weight"
    renamed = broken_copy(experts[0], tmp_path / "renamed", lambda t: t.__setitem__("extra.weight", t.pop(name)))
    with pytest.raises(ExpertMismatchError, match=f"renamed: tensor {name} of the base .* is missing"):
        verify_experts(base, [experts[1], renamed])
    narrow = lambda t: t.__setitem__(name, t[name][:, :8].contiguous())  # noqa: E731
    reshaped = broken_copy(experts[0], tmp_path / "reshaped", narrow)
    with pytest.raises(ExpertMismatchError, match=rf"tensor {name} has shape \[64, 8\], the base's is \[64, 32\]"):
        verify_experts(base, [reshaped])
    retyped = broken_copy(experts[0], tmp_path / "retyped", lambda t: t.__setitem__(name, t[name].float()))
    with pytest.raises(ExpertMismatchError, match=f"tensor {name} has dtype F32, the base's is BF16"):
        verify_experts(base, [retyped])


def test_genome_hashes_and_the_svd_cache_are_stable(family, tmp_path: Path) -> None:  # noqa: ANN001
    base, experts, cache = family
    genome = svd_mutation(Genome.expert(cache, 0), cache, 0, 0.1, 3)
    digest = genome.save(tmp_path)
    assert Genome.load(tmp_path, digest).content_hash() == digest
    changed = dict(genome.coefficients)
    name = cache.matrix_names[0]
    changed[name] = changed[name].clone()
    changed[name][0, 0] += 1e-6
    assert Genome(changed).content_hash() != digest
    assert genome.nbytes < 0.2 * cache.layout.weight_bytes  # even on a 32-wide model, far below a checkpoint
    stamps = [path.stat().st_mtime_ns for path in cache.files]
    again = build_svd_cache(base, experts, cache.files[0].parent.parent, progress=False)
    assert [path.stat().st_mtime_ns for path in again.files] == stamps


def test_the_streaming_writer_round_trips_and_refuses_wrong_tensors(tmp_path: Path) -> None:
    tensors = {"a": torch.randn(3, 5).to(torch.bfloat16), "b": torch.arange(7, dtype=torch.int64),
               "c": torch.randn(2, 2, 2)}  # fmt: skip
    specs = [("a", "BF16", (3, 5)), ("b", "I64", (7,)), ("c", "F32", (2, 2, 2))]
    with StreamWriter(tmp_path / "x.safetensors", specs, metadata={"format": "pt"}) as writer:
        for name, tensor in tensors.items():
            writer.write(name, tensor)
    loaded = load_file(tmp_path / "x.safetensors")
    assert all(torch.equal(loaded[name], tensor) for name, tensor in tensors.items())
    with pytest.raises(ValueError, match=r"a should be BF16 \[3, 5\], got BF16 \[5, 3\]"):
        with StreamWriter(tmp_path / "y.safetensors", specs) as writer:
            writer.write("a", torch.zeros(5, 3, dtype=torch.bfloat16))
    assert not (tmp_path / "y.safetensors").exists() and not list(tmp_path.glob(".y*"))
