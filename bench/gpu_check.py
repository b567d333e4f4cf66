"""The GPU path checked in one prepared command, on a machine with torch and transformers, a GPU, and nothing else
(no vLLM, no Docker, no network, no checkpoint): random Llama-shaped checkpoints are generated on the spot.

    python bench/gpu_check.py [OUT_DIR] [--shapes 1b,8b] [--layers-8b 8] [--device cuda] [--budget-s 420]

Per shape (`1b`: Llama-3.2-1B's matrices, 16 layers; `8b`: Llama-3-8B's, `--layers-8b` of its 32 layers so that
base, two experts, the child and the cache fit on a 64 GiB disk; `tiny`: a CPU-sized toy for the tests):
1. base + 2 experts (base + full-rank noise), bf16, written tensor by tensor;
2. the SVD cache built on the device: seconds, cache bytes per expert ÷ checkpoint;
3. a child (crossover of both experts + SVD mutation along the second) materialised on the device: seconds, bytes
   read per contributing expert ÷ checkpoint, and ÷ reading and writing the same bytes with no arithmetic
   (goal ≤ 1.5; the second of two runs, so both come from the page cache);
4. the same child materialised on the CPU (1b and tiny; for 8b, three tensors' fp32 deltas): the largest
   difference in bf16 steps and the share of weights that differ; and the error of three tensors against
   full-weight fp32 arithmetic (task vectors and an SVD redone here, as tests/test_evolver_math.py does);
5. one SFT step (cycleqd.sft.train with LoRA when it imports; a plain AdamW step otherwise) from the child;
6. a greedy generation from the child, twice (identical), and from the CPU-materialised child.
Figures go to OUT_DIR/gpu_check.json ($OUT, else ./gpu_check_out), rewritten after every step, so a run cut
short keeps what it measured. Steps that would pass `--budget-s` are skipped and say so.

Prepare here, once, the pure-Python packages the evolver imports that such a machine may lack (rich), and carry
them: `python -m pip install -q --target bench/gpu_site --no-deps rich markdown-it-py mdurl pygments`; this
script appends bench/gpu_site to sys.path (the machine's own packages come first).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench" / "gpu_site"))

import torch  # noqa: E402

from bench.evolver import read_and_write, touched_ranges  # noqa: E402
from cycleqd.evolver.checkpoint_files import CheckpointLayout  # noqa: E402
from cycleqd.evolver.genome import Genome  # noqa: E402
from cycleqd.evolver.materialize import MaterializeStats, dense_delta, materialize  # noqa: E402
from cycleqd.evolver.operators import crossover, mutation_draws, svd_mutation  # noqa: E402
from cycleqd.evolver.safetensors_stream import StreamWriter  # noqa: E402
from cycleqd.evolver.svd_cache import build_svd_cache  # noqa: E402

SHAPES = {
    "tiny": {"hidden": 64, "intermediate": 160, "layers": 2, "heads": 4, "kv_heads": 2, "vocab": 512, "tie": False},
    "1b": {"hidden": 2048, "intermediate": 8192, "layers": 16, "heads": 32, "kv_heads": 8, "vocab": 128256,
           "tie": True},
    "8b": {"hidden": 4096, "intermediate": 14336, "layers": 32, "heads": 32, "kv_heads": 8, "vocab": 128256,
           "tie": False},
}  # fmt: skip
NEAR_ZERO = 1e-6
BF16_STEP = 2.0**-7  # relative spacing of bf16 numbers


def tensor_shapes(shape: dict) -> dict[str, tuple[int, ...]]:
    """LlamaForCausalLM's tensor names and shapes for these dimensions."""
    h, i, kv = shape["hidden"], shape["intermediate"], shape["kv_heads"] * shape["hidden"] // shape["heads"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (shape["vocab"], h), "model.norm.weight": (h,)}
    for n in range(shape["layers"]):
        p = f"model.layers.{n}."
        shapes |= {p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                   p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                   p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                   p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
                   p + "mlp.down_proj.weight": (h, i)}  # fmt: skip
    if not shape["tie"]:
        shapes["lm_head.weight"] = (shape["vocab"], h)
    return shapes


def write_checkpoint(folder: Path, shape: dict, seed: int, base: Path | None, device: str) -> Path:
    """A random bf16 checkpoint (seed), or `base` plus full-rank noise of 1/10 of its scale (an expert)."""
    from safetensors import safe_open
    from transformers import LlamaConfig

    if (folder / "config.json").is_file():
        return folder
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shapes = tensor_shapes(shape)
    names = sorted(shapes)
    handle = safe_open(str(base / "model.safetensors"), "pt") if base else None
    generator = torch.Generator(device).manual_seed(seed)
    with StreamWriter(staging / "model.safetensors", [(n, "BF16", shapes[n]) for n in names], {"format": "pt"}) as w:
        for name in names:
            if handle is not None:
                noise = torch.randn(shapes[name], generator=generator, device=device) * 0.002
                tensor = handle.get_tensor(name).to(device, torch.float32) + noise
            elif len(shapes[name]) == 1:
                tensor = torch.ones(shapes[name], device=device)
            else:
                tensor = torch.randn(shapes[name], generator=generator, device=device) * 0.02
            w.write(name, tensor.to(torch.bfloat16).cpu())
    config = LlamaConfig(hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
                         num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                         num_key_value_heads=shape["kv_heads"], vocab_size=shape["vocab"],
                         tie_word_embeddings=shape["tie"], max_position_embeddings=4096, dtype="bfloat16")  # fmt: skip
    config.save_pretrained(staging)
    staging.rename(folder)
    return folder


def bf16_difference(first: Path, second: Path) -> dict[str, float]:
    """Largest difference between two checkpoints in bf16 steps of the larger value, and the share that differ."""
    from safetensors import safe_open

    worst, differing, total = 0.0, 0, 0
    weights = "model.safetensors"
    with safe_open(str(first / weights), "pt") as a, safe_open(str(second / weights), "pt") as b:
        for name in a.keys():  # noqa: SIM118 - a safetensors handle
            x, y = a.get_tensor(name).float(), b.get_tensor(name).float()
            # below 1e-6 a weight is what is left when base and delta (~0.1) cancel, and fp32 sums of such
            # magnitudes differ by ~1e-8 with the order of summation: counted in steps of 1e-6's spacing
            scale = torch.maximum(x.abs(), y.abs()).clamp_min(NEAR_ZERO) * BF16_STEP
            worst = max(worst, float(((x - y).abs() / scale).max()))
            differing += int((x != y).sum())
            total += x.numel()
    return {"max_bf16_steps": worst, "share_differing": differing / total}


def fp64_reference_error(cache, child: Genome, names: list[str], w: dict, device: str) -> dict[str, float]:  # noqa: ANN001
    """Relative error of the child's deltas against full-weight fp64 arithmetic: (ω1 τ0 + ω2 τ1)/(ω1+ω2) +
    U diag(w ⊙ σ) Vᵀ of τ1, with the SVD redone here. In fp64: CUDA's fp32 SVD of a 2048² matrix was 2e-3 off
    (whatever the TF32 settings) while the CPU's was 2e-5, so an fp32 reference measured the reference."""
    errors = {}
    for name in names:
        t0, t1 = (cache.task_vector(k, name, device).double() for k in (0, 1))
        expected = (1.01 * t0 + 0.99 * t1) / 2.0
        if t1.ndim == 2:
            u, s, vh = torch.linalg.svd(t1, full_matrices=False)
            expected += (u * (w[name].to(device, torch.float64) * s)) @ vh
        got = dense_delta(child, cache, name, device).double()
        errors[name] = float((got - expected).abs().max() / expected.abs().max())
    return errors


def sft_step(child: Path, work: Path, device: str, vocab: int) -> dict[str, object]:
    """One optimizer step from the child on random token sequences."""
    generator = torch.Generator().manual_seed(0)
    sequences = [torch.randint(0, vocab, (64,), generator=generator).tolist() for _ in range(2)]
    started = time.perf_counter()
    try:
        from cycleqd.sft.data import TrainingExample
        from cycleqd.sft.train import SFTSettings, fine_tune
    except ImportError as exc:  # the GPU machine may lack the environments' dependencies (docker, …)
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(child, dtype=torch.float32).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        ids = torch.tensor(sequences, device=device)
        losses = []
        for _ in range(2):
            optimizer.zero_grad(set_to_none=True)
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
        return {"via": f"plain AdamW on all weights (cycleqd.sft.train: {exc})", "losses": losses,
                "seconds": time.perf_counter() - started}  # fmt: skip
    losses: list[float] = []
    examples = [TrainingExample(s, s) for s in sequences]
    settings = SFTSettings(epochs=2, batch_size=2, lora_rank=8, learning_rate=1e-4)
    fine_tune(child, examples, work / "sft", settings, on_step=lambda s, t, loss: losses.append(loss), device=device)
    return {"via": "cycleqd.sft.train.fine_tune, LoRA rank 8", "losses": losses,
            "seconds": time.perf_counter() - started}  # fmt: skip


def greedy(folder: Path, device: str, tokens: int = 16) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).to(device)
    prompt = torch.arange(1, 9, device=device).unsqueeze(0)
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=tokens, do_sample=False, pad_token_id=0)
    del model
    return out[0, prompt.shape[1] :].tolist()


class Report:
    def __init__(self, path: Path, budget_s: float) -> None:
        self.path, self.budget_s, self.started = path, budget_s, time.monotonic()
        self.figures: dict[str, object] = {"device": "", "shapes": {}}

    def left_s(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def save(self) -> None:
        self.figures["elapsed_s"] = round(time.monotonic() - self.started, 1)
        self.path.write_text(json.dumps(self.figures, indent=2))


def check_shape(label: str, shape: dict, work: Path, device: str, report: Report) -> None:
    figures: dict[str, object] = {}
    report.figures["shapes"][label] = figures  # type: ignore[index]

    def step(name: str, estimate_s: float, action) -> None:  # noqa: ANN001
        if report.left_s() < estimate_s:
            figures[name] = {"skipped": f"{report.left_s():.0f} s left of the budget, needs ~{estimate_s:.0f} s"}
        else:
            started = time.perf_counter()
            try:
                figures[name] = action()
            except Exception as exc:  # noqa: BLE001 - a failed step is a figure too; the others still run
                figures[name] = {"failed": f"{type(exc).__name__}: {exc}"}
            if isinstance(figures[name], dict):
                figures[name].setdefault("seconds", round(time.perf_counter() - started, 2))  # type: ignore[union-attr]
        report.save()
        print(f"{label} {name}: {json.dumps(figures[name])[:400]}", flush=True)

    state: dict[str, object] = {}

    def make() -> dict:
        base = write_checkpoint(work / "base", shape, 0, None, device)
        state["experts"] = [write_checkpoint(work / f"expert-{k}", shape, 1 + k, base, device) for k in range(2)]
        state["base"] = base
        return {"checkpoint_bytes": CheckpointLayout.read(base).weight_bytes}

    def cache() -> dict:
        started = time.perf_counter()
        built = build_svd_cache(state["base"], state["experts"], work / "cache", device=device, progress=False)  # type: ignore[arg-type]
        seconds = time.perf_counter() - started
        state["cache"] = built
        child = svd_mutation(crossover(Genome.expert(built, 0), Genome.expert(built, 1), 1.01, 0.99), built, 1, 0.1, 7)
        state["child"] = child
        return {"seconds": seconds, "bytes_per_expert_over_checkpoint": built.nbytes / 2 / built.layout.weight_bytes}

    def on_device() -> dict:
        built, child = state["cache"], state["child"]
        runs = []
        for _ in range(2):  # the second run reads from the page cache, as the baseline does
            shutil.rmtree(work / "child", ignore_errors=True)
            stats = MaterializeStats()
            started = time.perf_counter()
            materialize(child, built, work / "child", device=device, stats=stats)  # type: ignore[arg-type]
            runs.append((time.perf_counter() - started, stats))
        seconds, stats = runs[-1]
        out_bytes = sum(p.stat().st_size for p in (work / "child").iterdir() if p.is_file())
        baseline = read_and_write(touched_ranges(built, child), out_bytes, work / "copy.bin", bytearray(64 << 20))  # type: ignore[arg-type]
        checkpoint = built.layout.weight_bytes  # type: ignore[attr-defined]
        return {"seconds": seconds, "read_write_same_bytes_s": baseline, "ratio": seconds / baseline,
                "goal": "<= 1.5", "bytes_read_per_expert_over_checkpoint": stats.bytes_read / 2 / checkpoint,
                "gather_s": stats.gather_s, "matmul_s": stats.matmul_s, "write_s": stats.write_s}  # fmt: skip

    def against_cpu() -> dict:
        built, child = state["cache"], state["child"]
        names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight",
                 "model.layers.0.self_attn.k_proj.weight"]  # fmt: skip
        w = mutation_draws(built, 0.1, 7)  # type: ignore[arg-type]
        errors = fp64_reference_error(built, child, names, w, device)
        result: dict[str, object] = {"fp64_reference_relative_error": errors}
        if label == "8b":  # a full CPU materialisation of 8B shapes would not fit the budget: three tensors
            relative = {}
            for n in names:
                on_cpu = dense_delta(child, built, n, "cpu")  # type: ignore[arg-type]
                on_device = dense_delta(child, built, n, device).cpu()  # type: ignore[arg-type]
                relative[n] = float((on_cpu - on_device).abs().max() / on_cpu.abs().max())
            result["delta_cpu_vs_device_relative"] = relative
            return result
        started = time.perf_counter()
        materialize(child, built, work / "child-cpu", device="cpu")  # type: ignore[arg-type]
        result["cpu_seconds"] = time.perf_counter() - started
        result |= bf16_difference(work / "child", work / "child-cpu")
        return result

    def generation() -> dict:
        first, second = greedy(work / "child", device), greedy(work / "child", device)
        result = {"tokens": first, "repeatable": first == second}
        if (work / "child-cpu").is_dir():
            result["same_as_cpu_materialised"] = greedy(work / "child-cpu", device) == first
        return result

    scale = {"tiny": 0.01, "1b": 1.0, "8b": 4.0 * shape["layers"] / 32}[label]
    step("make_checkpoints", 30 * scale, make)
    step("svd_cache", 60 * scale, cache)
    step("materialise_on_device", 30 * scale, on_device)
    step("against_cpu_and_fp32", 60 * scale if label != "8b" else 30, against_cpu)
    if label != "8b":
        step("sft_step", 40 * scale, lambda: sft_step(work / "child", work, device, shape["vocab"]))
    step("greedy_generation", 20 * scale, generation)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", type=Path, default=Path(os.environ.get("OUT") or "gpu_check_out"))
    parser.add_argument("--shapes", default="1b,8b", help="comma list of tiny, 1b, 8b")
    parser.add_argument("--layers-8b", type=int, default=8, help="how many of the 8B shape's 32 layers to generate")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip steps that would run past this")
    parser.add_argument("--work", type=Path, help="where checkpoints go (default: a folder under /tmp)")
    args = parser.parse_args()
    labels = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in labels if s not in SHAPES]
    if unknown:
        parser.error(f"--shapes: unknown {unknown[0]!r}; expected some of {', '.join(SHAPES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False); use --device cpu for a dry run",
              file=sys.stderr)  # fmt: skip
        sys.exit(2)
    args.out.mkdir(parents=True, exist_ok=True)
    report = Report(args.out / "gpu_check.json", args.budget_s)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    report.figures |= {"device": name, "torch": torch.__version__, "budget_s": args.budget_s}
    work_root = args.work or Path("/tmp/cycleqd-gpu-check")
    try:
        for label in labels:
            shape = dict(SHAPES[label])
            if label == "8b":
                shape["layers"] = args.layers_8b
            work = work_root / label
            check_shape(label, shape, work, args.device, report)
            shutil.rmtree(work, ignore_errors=True)  # the next shape needs the disk
    finally:
        report.save()
        if args.work is None:
            shutil.rmtree(work_root, ignore_errors=True)
    print(f"figures: {report.path}")


if __name__ == "__main__":
    main()
