"""The evolver's math against arithmetic on full fp32 weights, on tiny random bf16 Llama checkpoints made here.

Every expected value is computed independently of the code under test: task vectors from the checkpoints' own
tensors, SVDs redone with torch.linalg.svd (U diag(x) Vᵀ does not depend on the sign choices an SVD makes), and
the mutation draws redone from the seed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cycleqd.evolver.checkpoint_files import (
    CheckpointError,
    CheckpointLayout,
    ExpertMismatchError,
    TensorSpec,
    verify_experts,
)
from cycleqd.evolver.genome import Genome, GenomeCorruptError, GenomeError, GenomeNotFoundError
from cycleqd.evolver.materialize import MARKER, MaterializeError, MaterializeStats, dense_delta, materialize, noise_seed
from cycleqd.evolver.operators import (
    average_merge,
    crossover,
    draw_omegas,
    gaussian_mutation,
    softmax_merge,
    svd_mutation,
)
from cycleqd.evolver.safetensors_stream import StreamWriteError, StreamWriter
from cycleqd.evolver.svd_cache import SVDCache, UnsupportedTensorError, build_svd_cache
from tests.evolution_probe import tiny_config

FP32 = {"atol": 1e-5, "rtol": 1e-4}  # the SVD round trip and fp32 sums, far below any term under test
BF16 = {"atol": 1e-6, "rtol": 2**-7}  # at most one bf16 rounding step (2^-7 relative) apart
INDEX = "model.safetensors.index.json"


@dataclass
class Family:
    base: Path
    sharded_base: Path
    experts: list[Path]
    cache: SVDCache  # over the single-file base
    sharded_cache: SVDCache  # the same experts over the sharded copy of the base
    theta: dict[str, torch.Tensor]  # base weights, fp32
    taus: list[dict[str, torch.Tensor]]  # task vectors from the checkpoints' tensors, fp32


def weights(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors |= load_file(path)
    return tensors


def tiny_llama():  # noqa: ANN201 - a LlamaForCausalLM
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM(tiny_config()).to(torch.bfloat16)


@pytest.fixture(scope="session")
def family(tmp_path_factory: pytest.TempPathFactory) -> Family:
    root = tmp_path_factory.mktemp("evolver-math")
    torch.manual_seed(0)
    model = tiny_llama()
    model.save_pretrained(root / "base")
    model.save_pretrained(root / "base-sharded", max_shard_size="20KB")
    original = {name: t.clone() for name, t in model.state_dict().items()}
    generator = torch.Generator().manual_seed(1)
    experts = []
    for k in range(3):
        # Full-rank perturbations, as large as the weights themselves: every singular direction matters.
        perturbed = {n: (t.float() + 0.02 * torch.randn(t.shape, generator=generator)).to(t.dtype)
                     for n, t in original.items()}  # fmt: skip
        model.load_state_dict(perturbed)
        folder = root / f"expert-{k}"
        model.save_pretrained(folder, **({"max_shard_size": "30KB"} if k == 2 else {}))  # sharded unlike the base
        experts.append(folder)
    theta = {n: t.float() for n, t in weights(root / "base").items()}
    taus = [{n: t.float() - theta[n] for n, t in weights(e).items()} for e in experts]
    cache = build_svd_cache(root / "base", experts, root / "cache", progress=False)
    sharded = build_svd_cache(root / "base-sharded", experts, root / "cache", progress=False)
    return Family(root / "base", root / "base-sharded", experts, cache, sharded, theta, taus)


def redo_draws(theta: dict[str, torch.Tensor], w_max: float, seed: int) -> dict[str, torch.Tensor]:
    """The mutation's w for every matrix, redone from the seed: one generator, matrices in sorted name order."""
    generator = torch.Generator().manual_seed(seed)
    matrices = sorted(n for n, t in theta.items() if t.ndim == 2)
    return {name: torch.rand(min(theta[name].shape), generator=generator) * w_max for name in matrices}


def svd_term(tau: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """U diag(w ⊙ σ) Vᵀ from an SVD of τ made here."""
    u, s, vh = torch.linalg.svd(tau, full_matrices=False)
    return u @ torch.diag(w * s) @ vh


def test_the_layout_reads_single_and_sharded_checkpoints(family: Family) -> None:
    single, sharded = CheckpointLayout.read(family.base), CheckpointLayout.read(family.sharded_base)
    assert single.shards == ("model.safetensors",)
    index = json.loads((family.sharded_base / INDEX).read_text())["weight_map"]
    assert len(sharded.shards) > 1 and sharded.shards == tuple(sorted(set(index.values())))
    assert {n: (s.dtype, s.shape) for n, s in single.tensors.items()} == {
        n: (s.dtype, s.shape) for n, s in sharded.tensors.items()
    }
    assert all(sharded.tensors[name].shard == shard for name, shard in index.items())
    assert single.weight_bytes == sum(t.numel() * 2 for t in family.theta.values())
    assert single.tensors["model.embed_tokens.weight"] == TensorSpec("model.safetensors", "BF16", (128, 32))


def test_a_folder_without_config_or_weights_is_named(family: Family, tmp_path: Path) -> None:
    shutil.copytree(family.base, tmp_path / "no-config")
    (tmp_path / "no-config" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no-config: no config.json"):
        CheckpointLayout.read(tmp_path / "no-config")
    (tmp_path / "no-weights").mkdir()
    shutil.copy(family.base / "config.json", tmp_path / "no-weights")
    with pytest.raises(CheckpointError, match=r"no-weights: no \*\.safetensors weights"):
        CheckpointLayout.read(tmp_path / "no-weights")
    shutil.copytree(family.sharded_base, tmp_path / "lost-shard")
    lost = CheckpointLayout.read(family.sharded_base).shards[1]
    (tmp_path / "lost-shard" / lost).unlink()
    with pytest.raises(CheckpointError, match=f"names shard {lost}, which is missing"):
        CheckpointLayout.read(tmp_path / "lost-shard")


def test_the_svd_cache_holds_the_task_vectors(family: Family) -> None:
    cache = family.cache
    assert cache.experts == 3 and cache.vector_names == tuple(sorted(n for n, t in family.theta.items() if t.ndim == 1))
    assert cache.matrix_names == tuple(sorted(n for n, t in family.theta.items() if t.ndim == 2))
    assert "lm_head.weight" in cache.matrix_names and "model.embed_tokens.weight" in cache.matrix_names
    for k, taus in enumerate(family.taus):
        for name, tau in taus.items():
            torch.testing.assert_close(cache.task_vector(k, name), tau, **FP32)
            if tau.ndim == 2:
                u, s, vh = cache.factors(k, name)
                assert u.shape == (tau.shape[0], cache.rank(name)) and vh.shape == (cache.rank(name), tau.shape[1])
                torch.testing.assert_close(s, torch.linalg.svdvals(tau), **FP32)


def test_crossover_is_the_weighted_task_vector_average(family: Family) -> None:
    cache, taus = family.cache, family.taus
    first = crossover(Genome.expert(cache, 0), Genome.expert(cache, 1), 1.3, 0.6)
    child = crossover(first, Genome.expert(cache, 2), 0.7, 1.1)  # a crossover of a crossover stays exact
    for name in family.theta:
        parent = (1.3 * taus[0][name] + 0.6 * taus[1][name]) / 1.9
        torch.testing.assert_close(dense_delta(first, cache, name), parent, **FP32)
        torch.testing.assert_close(dense_delta(child, cache, name), (0.7 * parent + 1.1 * taus[2][name]) / 1.8, **FP32)
    with pytest.raises(GenomeError, match="sum to 0.0: the merge would divide by ~zero"):
        crossover(first, child, 0.5, -0.5)


def test_omegas_are_one_normal_draw_per_parent() -> None:
    import numpy as np

    draws = [draw_omegas(np.random.default_rng(seed), 1.0, 0.01) for seed in range(400)]
    assert all(isinstance(w, float) for pair in draws for w in pair)
    values = np.array(draws).ravel()
    assert abs(values.mean() - 1.0) < 0.002 and 0.008 < values.std() < 0.012
    assert draw_omegas(np.random.default_rng(5), 1.0, 0.01) == draws[5]


def test_svd_mutation_adds_exactly_u_diag_w_sigma_v(family: Family) -> None:
    cache, taus = family.cache, family.taus
    parent = crossover(Genome.expert(cache, 0), Genome.expert(cache, 1), 1.0, 1.0)
    child = svd_mutation(parent, cache, 2, w_max=0.1, seed=4321)
    draws = redo_draws(family.theta, 0.1, 4321)
    for name, tau in taus[2].items():
        added = dense_delta(child, cache, name) - dense_delta(parent, cache, name)
        if tau.ndim == 1:
            assert torch.equal(added, torch.zeros_like(added))  # norm vectors are not mutated
            assert child.coefficients[name] is parent.coefficients[name]
            continue
        w = draws[name]
        assert 0 <= w.min() and w.max() <= 0.1 and w.std() > 0.01
        torch.testing.assert_close(added, svd_term(tau, w), **FP32)
        row = child.coefficients[name][2] - parent.coefficients[name][2]
        torch.testing.assert_close(row, w * torch.linalg.svdvals(tau), **FP32)
        assert torch.equal(child.coefficients[name][:2], parent.coefficients[name][:2])
    other = svd_mutation(parent, cache, 2, w_max=0.1, seed=4322)
    assert other.content_hash() != child.content_hash()
    assert svd_mutation(parent, cache, 2, w_max=0.1, seed=4321) == child  # same seed, same child
    with pytest.raises(GenomeError, match="expert 3: the cache has 3 experts"):
        svd_mutation(parent, cache, 3, 0.1, 1)


def test_a_materialised_child_equals_the_operators_on_full_weights(family: Family, tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    cache, taus, theta = family.sharded_cache, family.taus, family.theta
    child = svd_mutation(crossover(Genome.expert(cache, 0), Genome.expert(cache, 1), 1.3, 0.6), cache, 2, 0.1, 99)
    draws = redo_draws(theta, 0.1, 99)
    expected = {}
    for name in theta:
        expected[name] = (1.3 * taus[0][name] + 0.6 * taus[1][name]) / 1.9
        if theta[name].ndim == 2:
            expected[name] = expected[name] + svd_term(taus[2][name], draws[name])
        torch.testing.assert_close(dense_delta(child, cache, name), expected[name], **FP32)  # before the cast
    out = materialize(child, cache, tmp_path / "child")
    written = weights(out)
    assert written.keys() == theta.keys()
    for name, tensor in written.items():
        assert tensor.dtype == torch.bfloat16
        torch.testing.assert_close(tensor.float(), (theta[name] + expected[name]).bfloat16().float(), **BF16)
    base = family.sharded_base
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(p.name for p in base.glob("*.safetensors"))
    assert (out / INDEX).read_text() == (base / INDEX).read_text()
    assert (out / "config.json").read_text() == (base / "config.json").read_text()
    assert (out / MARKER).read_text() == child.content_hash()
    for path in out.glob("*.safetensors"):  # each shard holds exactly what the base's does
        with safe_open(str(path), "pt") as mine, safe_open(str(base / path.name), "pt") as theirs:
            assert set(mine.keys()) == set(theirs.keys()) and mine.metadata() == theirs.metadata()
    model = LlamaForCausalLM.from_pretrained(out)
    state = model.state_dict()
    assert all(torch.equal(state[name], tensor) for name, tensor in written.items())
    logits = model(torch.arange(10).unsqueeze(0)).logits
    assert logits.shape == (1, 10, 128) and torch.isfinite(logits).all()


def test_materialising_again_reuses_replaces_or_refuses(family: Family, tmp_path: Path) -> None:
    cache = family.cache
    first, second = Genome.expert(cache, 0), Genome.expert(cache, 1)
    out = materialize(first, cache, tmp_path / "slot")
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert materialize(first, cache, out) == out and (out / "model.safetensors").stat().st_mtime_ns == stamp
    materialize(second, cache, out)  # another genome's checkpoint is ours to replace
    assert (out / MARKER).read_text() == second.content_hash()
    torch.testing.assert_close(weights(out)["lm_head.weight"], weights(family.experts[1])["lm_head.weight"], **BF16)
    assert [p.name for p in tmp_path.iterdir()] == ["slot"]  # no temporary folders left behind
    (tmp_path / "mine").mkdir()
    with pytest.raises(MaterializeError, match="mine: exists and is not a checkpoint materialised by cycleqd"):
        materialize(first, cache, tmp_path / "mine")
    assert (tmp_path / "mine").is_dir()
    two = Genome({n: t[:2] for n, t in first.coefficients.items()})
    with pytest.raises(MaterializeError, match=r"needs \[3, "):
        materialize(two, cache, tmp_path / "two")


def test_expert_genomes_materialise_to_the_experts(family: Family, tmp_path: Path) -> None:
    for k, expert in enumerate(family.experts):
        out = materialize(Genome.expert(family.cache, k), family.cache, tmp_path / f"expert-{k}")
        written = weights(out)
        for name, tensor in weights(expert).items():
            torch.testing.assert_close(written[name].float(), tensor.float(), **BF16)


def test_the_cache_is_about_one_checkpoint_and_a_child_reads_at_most_two_per_expert(
    family: Family, tmp_path: Path
) -> None:
    cache = family.cache
    checkpoint = cache.layout.weight_bytes
    for path in cache.files:  # Q (r×r) and σ per matrix in fp32, nothing for vectors (+ the header)
        payload = sum((min(t.shape) ** 2 + min(t.shape)) * 4 for t in family.theta.values() if t.ndim == 2)
        assert payload < path.stat().st_size < payload + 16384
        assert path.stat().st_size <= 1.15 * checkpoint  # this toy is square-heavy; real shapes: bench.evolver
    crossed = crossover(Genome.expert(cache, 0), Genome.expert(cache, 1), 1.3, 0.6)
    stats = MaterializeStats()
    materialize(crossed, cache, tmp_path / "crossed", stats=stats)
    assert stats.bytes_read == 3 * checkpoint  # the base and the two experts' checkpoints; no Q at all
    mutated = svd_mutation(crossed, cache, 2, 0.1, 7)
    stats = MaterializeStats()
    materialize(mutated, cache, tmp_path / "mutated", stats=stats)
    q_bytes = sum((min(t.shape) ** 2 + min(t.shape)) * 4 for t in family.theta.values() if t.ndim == 2)
    matrix_bytes = sum(t.numel() * 2 for t in family.theta.values() if t.ndim == 2)  # vectors are not mutated
    assert stats.bytes_read == 3 * checkpoint + matrix_bytes + q_bytes  # + expert 2's matrices and its Q, σ
    assert stats.bytes_read - checkpoint <= 2 * 3 * checkpoint


def test_zero_singular_values_and_wide_and_tall_matrices_stay_exact(family: Family, tmp_path: Path) -> None:
    """An expert that left some matrices alone (σ all 0), changed others by rank 1 (σ mostly 0), wide and tall."""
    wide, tall_name, still = (
        "model.layers.0.self_attn.k_proj.weight",  # 16×32
        "model.layers.0.mlp.up_proj.weight",  # 64×32
        "model.layers.1.self_attn.q_proj.weight",
    )
    generator = torch.Generator().manual_seed(5)

    def rank_one(tensors: dict[str, torch.Tensor]) -> None:
        tensors.update(load_file(family.base / "model.safetensors"))
        rows = tensors[wide].float()  # one row changed: rank 1 exactly, whatever bf16 rounds
        rows[3] += 0.05 * torch.randn(rows.shape[1], generator=generator)
        columns = tensors[tall_name].float()  # one column changed
        columns[:, 5] += 0.05 * torch.randn(columns.shape[0], generator=generator)
        tensors[wide], tensors[tall_name] = rows.bfloat16(), columns.bfloat16()

    sparse = broken_copy(family.experts[0], tmp_path / "sparse", rank_one)
    cache = build_svd_cache(family.base, [family.experts[0], sparse], tmp_path / "cache", progress=False)
    tau = {n: t.float() - family.theta[n] for n, t in weights(sparse).items()}
    assert torch.equal(tau[still], torch.zeros_like(tau[still]))
    assert torch.linalg.matrix_rank(tau[wide]) == 1 == torch.linalg.matrix_rank(tau[tall_name])
    assert torch.equal(cache.sigma(1, still), torch.zeros(32))  # every direction of `still` has σ = 0
    child = svd_mutation(crossover(Genome.expert(cache, 0), Genome.expert(cache, 1), 1.0, 1.0), cache, 1, 0.1, 11)
    draws = redo_draws(family.theta, 0.1, 11)
    for name in (wide, tall_name, still):
        expected = (family.taus[0][name] + tau[name]) / 2 + svd_term(tau[name], draws[name])
        delta = dense_delta(child, cache, name)
        assert torch.isfinite(delta).all()
        torch.testing.assert_close(delta, expected, **FP32)
    out = weights(materialize(child, cache, tmp_path / "child"))
    torch.testing.assert_close(out[wide].float(), (family.theta[wide] + dense_delta(child, cache, wide)).bfloat16()
                               .float(), **BF16)  # fmt: skip


def test_merges_are_their_formulas(family: Family) -> None:
    cache, taus = family.cache, family.taus
    merge = average_merge(cache)
    qualities = [0.2, 0.5, 0.9]
    beta = torch.softmax(torch.tensor(qualities, dtype=torch.float64), 0).tolist()
    final = softmax_merge([Genome.expert(cache, k) for k in range(3)], qualities)
    for name in family.theta:
        torch.testing.assert_close(dense_delta(merge, cache, name), sum(t[name] for t in taus) / 3, **FP32)
        expected = sum(b * t[name] for b, t in zip(beta, taus, strict=True))
        torch.testing.assert_close(dense_delta(final, cache, name), expected, **FP32)
    elites = [svd_mutation(Genome.expert(cache, k), cache, (k + 1) % 3, 0.1, k) for k in range(3)]
    merged = softmax_merge(elites, qualities)
    for name, coefficients in merged.coefficients.items():
        expected = sum(b * e.coefficients[name] for b, e in zip(beta, elites, strict=True))
        torch.testing.assert_close(coefficients, expected, **FP32)
    with pytest.raises(GenomeError, match="one quality per genome"):
        softmax_merge(elites, [1.0])


def test_gaussian_mutation_is_exact_and_scales_with_its_genome(family: Family, tmp_path: Path) -> None:
    cache = family.cache
    parent = Genome.expert(cache, 1)
    noisy = gaussian_mutation(parent, 3e-4, seed=11)
    assert noisy.noise == ((11, 3e-4),)
    assert all(noisy.coefficients[n] is t for n, t in parent.coefficients.items())  # shared, not copied
    for name in family.theta:
        added = dense_delta(noisy, cache, name) - dense_delta(parent, cache, name)
        generator = torch.Generator().manual_seed(noise_seed(11, name))
        torch.testing.assert_close(added, 3e-4 * torch.randn(family.theta[name].shape, generator=generator),
                                   atol=1e-7, rtol=1e-4)  # fmt: skip
    name = "model.layers.0.mlp.up_proj.weight"
    added = dense_delta(noisy, cache, name) - dense_delta(parent, cache, name)
    assert 2.5e-4 < added.std() < 3.5e-4
    half = Genome.combine([noisy], [0.5])  # noise scales with its genome, like the coefficients
    assert half.noise == ((11, 1.5e-4),)
    twice = gaussian_mutation(gaussian_mutation(parent, 1e-4, 5), 2e-4, 5)  # the same seed is the same noise
    assert twice.noise == ((5, pytest.approx(3e-4)),)
    out = materialize(noisy, cache, tmp_path / "noisy")
    torch.testing.assert_close(weights(out)[name].float(), (family.theta[name] + dense_delta(noisy, cache, name))
                               .bfloat16().float(), **BF16)  # fmt: skip


def broken_copy(expert: Path, out: Path, change) -> Path:  # noqa: ANN001
    shutil.copytree(expert, out)
    tensors = load_file(out / "model.safetensors")
    change(tensors)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    return out


def test_experts_that_do_not_fit_the_base_are_named(family: Family, tmp_path: Path) -> None:
    base, good = family.base, family.experts[0]
    name = "model.layers.1.self_attn.k_proj.weight"
    renamed = broken_copy(good, tmp_path / "renamed", lambda t: t.__setitem__("model.extra.weight", t.pop(name)))
    with pytest.raises(ExpertMismatchError, match=f"renamed: tensor {name} of the base .* is missing; the expert "
                                                  "has model.extra.weight instead"):  # fmt: skip
        verify_experts(base, [family.experts[1], renamed])
    extra = broken_copy(good, tmp_path / "extra", lambda t: t.__setitem__("model.extra.weight", torch.zeros(2)))
    with pytest.raises(ExpertMismatchError, match="extra: tensor model.extra.weight is not in the base"):
        verify_experts(base, [extra])
    reshaped = broken_copy(good, tmp_path / "reshaped", lambda t: t.__setitem__(name, t[name][:8].contiguous()))
    with pytest.raises(ExpertMismatchError, match=rf"reshaped: tensor {name} has shape \[8, 32\], the base's is "
                                                  r"\[16, 32\]"):  # fmt: skip
        verify_experts(base, [reshaped])
    retyped = broken_copy(good, tmp_path / "retyped", lambda t: t.__setitem__(name, t[name].half()))
    with pytest.raises(ExpertMismatchError, match=f"retyped: tensor {name} has dtype F16, the base's is BF16"):
        verify_experts(base, [retyped])
    with pytest.raises(CheckpointError, match="at least one expert"):
        verify_experts(base, [])
    assert verify_experts(base, family.experts).tensors == CheckpointLayout.read(base).tensors


def test_tensors_with_more_than_two_dimensions_are_refused_by_name(tmp_path: Path) -> None:
    for folder in (tmp_path / "base", tmp_path / "expert"):
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        save_file({"conv.weight": torch.zeros(4, 3, 2, 2), "norm.weight": torch.ones(4)}, folder / "model.safetensors")
    with pytest.raises(UnsupportedTensorError, match=r"conv\.weight \(F32 \[4, 3, 2, 2\]\)"):
        build_svd_cache(tmp_path / "base", [tmp_path / "expert"], tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").glob("svd/*.safetensors"))


def test_genome_hashes_are_stable_across_save_load_and_processes(family: Family, tmp_path: Path) -> None:
    genome = gaussian_mutation(svd_mutation(Genome.expert(family.cache, 0), family.cache, 1, 0.1, 3), 1e-4, 8)
    digest = genome.save(tmp_path)
    assert genome.save(tmp_path) == digest and [p.name for p in tmp_path.iterdir()] == [f"{digest}.safetensors"]
    loaded = Genome.load(tmp_path, digest)
    assert loaded == genome and loaded.noise == genome.noise and loaded.content_hash() == digest
    code = ("import sys; from cycleqd.evolver.genome import Genome; "
            "print(Genome.load(sys.argv[1], sys.argv[2]).content_hash())")  # fmt: skip
    other = subprocess.run([sys.executable, "-c", code, str(tmp_path), digest], capture_output=True, text=True,
                           check=True, cwd=Path(__file__).parent.parent)  # fmt: skip
    assert other.stdout.strip() == digest
    name = family.cache.matrix_names[3]
    changed = dict(genome.coefficients)
    changed[name] = changed[name].clone()
    changed[name][2, 5] += 1e-6
    assert Genome(changed, genome.noise).content_hash() != digest
    assert Genome(genome.coefficients, ((8, 2e-4),)).content_hash() != digest
    assert genome.nbytes == sum(t.numel() * 4 for t in genome.coefficients.values())
    path = tmp_path / f"{digest}.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # one flipped byte in the last coefficient
    path.write_bytes(bytes(data))
    with pytest.raises(GenomeCorruptError, match="does not match its hash"):
        Genome.load(tmp_path, digest)
    path.write_bytes(b"garbage")
    with pytest.raises(GenomeCorruptError, match="unreadable genome"):
        Genome.load(tmp_path, digest)
    with pytest.raises(GenomeNotFoundError, match=f"genome {'0' * 64} is not in"):
        Genome.load(tmp_path, "0" * 64)
    with pytest.raises(GenomeError, match="not a genome hash"):
        Genome.load(tmp_path, "../x")
    with pytest.raises(GenomeError, match="must be a float32 CPU tensor"):
        Genome({name: torch.zeros(3, 4, dtype=torch.float64)})


def test_the_svd_cache_is_reused_without_computing(family: Family, monkeypatch: pytest.MonkeyPatch) -> None:
    files = family.cache.files
    stamps = [path.stat().st_mtime_ns for path in files]

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the second build computed a decomposition")

    monkeypatch.setattr(torch.linalg, "eigh", refuse)
    started = time.perf_counter()
    again = build_svd_cache(family.base, family.experts, files[0].parent.parent, progress=False)
    assert time.perf_counter() - started < 2.0
    assert again.files == files and [path.stat().st_mtime_ns for path in files] == stamps
    assert len(list(files[0].parent.glob("*.safetensors"))) == 6  # 3 experts × (single-file base, sharded base)


def test_the_streaming_writer_round_trips_and_refuses_wrong_tensors(tmp_path: Path) -> None:
    tensors = {
        "big": torch.randn(33, 7),
        "half": torch.randn(3, 5).to(torch.bfloat16),
        "cube": torch.randn(2, 3, 4).to(torch.float16),
        "ids": torch.arange(9, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "empty": torch.zeros(0, 3),
        "bytes": torch.arange(5, dtype=torch.uint8),
    }
    specs = [(n, {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64",
                  torch.bool: "BOOL", torch.float64: "F64", torch.uint8: "U8"}[t.dtype], tuple(t.shape))
             for n, t in tensors.items()]  # fmt: skip
    with StreamWriter(tmp_path / "x.safetensors", specs, metadata={"format": "pt", "note": "streamed"}) as writer:
        for name, tensor in tensors.items():
            # "big" goes in as a non-contiguous view of the same values: the writer must lay it out in C order.
            writer.write(name, tensor.t().contiguous().t() if name == "big" else tensor)
    loaded = load_file(tmp_path / "x.safetensors")
    assert loaded.keys() == tensors.keys()
    assert all(loaded[n].dtype == t.dtype and torch.equal(loaded[n], t) for n, t in tensors.items())
    with safe_open(str(tmp_path / "x.safetensors"), "pt") as handle:
        assert handle.metadata() == {"format": "pt", "note": "streamed"}
    header_length = int.from_bytes((tmp_path / "x.safetensors").read_bytes()[:8], "little")
    assert (8 + header_length) % 8 == 0  # the data is aligned for memory-mapped fp32/fp64 views

    wrong = [
        (lambda w: w.write("big", torch.zeros(7, 33)), r"big should be F32 \[33, 7\], got F32 \[7, 33\]"),
        (lambda w: w.write("big", torch.zeros(33, 7, dtype=torch.float16)), r"got F16 \[33, 7\]"),
        (lambda w: w.write("half", torch.zeros(3, 5, dtype=torch.bfloat16)), "expected tensor big next, got half"),
        (lambda w: w.write("big", tensors["big"]) or w.close(), "7 tensors were never written"),
    ]
    for action, message in wrong:
        with pytest.raises(StreamWriteError, match=message):
            writer = StreamWriter(tmp_path / "y.safetensors", specs)
            action(writer)
        assert not (tmp_path / "y.safetensors").exists() and not list(tmp_path.glob(".y*"))
    assert issubclass(StreamWriteError, ValueError)
