"""`cycleqd sft`: gold trajectories from the real environments, assistant-only labels, training that moves the
model toward the gold, LoRA merged into full weights, and a resume that lands on the same weights."""

from __future__ import annotations

import difflib
import re
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cycleqd.evolver.checkpoint_files import verify_experts
from cycleqd.sft.command import SFTRequest, run_sft, transcripts_file
from cycleqd.sft.data import IGNORE, GoldTranscript, TrainingExample, load_transcripts, render
from cycleqd.sft.train import SFTSettings, example_loss, fine_tune
from tests.cli_process import CYCLEQD
from tests.evolution_probe import make_tiny_family


def test_only_the_models_own_turns_are_labelled(default_model) -> None:  # noqa: ANN001
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model.path)
    transcript = GoldTranscript(
        [{"role": "user", "content": "prompt"}, {"role": "assistant", "content": "one-shot reply"},
         {"role": "user", "content": "task"}, {"role": "assistant", "content": "gold reply"},
         {"role": "user", "content": "observation"}, {"role": "assistant", "content": "final answer"}],
        prompt_messages=3,
    )  # fmt: skip
    example = render(transcript, tokenizer, 4096)
    trained = tokenizer.decode([label for label in example.labels if label != IGNORE])
    assert trained == "gold reply<|im_end|>\nfinal answer<|im_end|>\n"
    assert len(example.input_ids) == len(example.labels)


def greedy(folder: Path, transcript: GoldTranscript, new_tokens: int) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    prompt = tokenizer.apply_chat_template(transcript.messages[: transcript.prompt_messages], tokenize=True,
                                           add_generation_prompt=True, return_dict=False)  # fmt: skip
    with torch.no_grad():
        output = model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False)
    return tokenizer.decode(output[0, len(prompt) :], skip_special_tokens=True)


def test_the_learning_curve_is_the_mean_loss_of_each_epoch_counted_from_the_last_step() -> None:
    from cycleqd.sft.command import epoch_means

    assert epoch_means([4.0, 2.0, 3.0, 1.0], 2) == (3.0, 2.0)
    assert epoch_means([2.0, 3.0, 1.0], 2) == (2.0, 2.0)  # resumed after the first step: the rest of epoch 1, epoch 2


def test_the_training_sets_digest_changes_with_any_example_and_their_order() -> None:
    from cycleqd.sft.command import examples_digest
    from cycleqd.sft.data import TrainingExample

    a, b = TrainingExample([1, 2, 3], [-100, 2, 3]), TrainingExample([4, 5], [-100, 5])
    assert examples_digest([a, b]) == examples_digest([TrainingExample([1, 2, 3], [-100, 2, 3]), b])
    assert len({examples_digest(x) for x in ([a, b], [b, a], [a], [a, TrainingExample([4, 5], [4, 5])])}) == 4


@pytest.mark.slow
def test_sft_lowers_the_loss_and_moves_the_greedy_answer_toward_the_gold(
    docker_engine, default_model, tmp_path: Path
) -> None:  # noqa: ANN001, E501
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "coding-expert"
    settings = SFTSettings(epochs=4, learning_rate=1e-4, batch_size=1, max_length=1024, save_every=100)
    summary = run_sft(SFTRequest(default_model.path, "coding", "builtin", "train", 2, out, settings), console=None)
    assert summary.examples == 2 and summary.last_loss < summary.first_loss
    assert len(summary.epoch_losses) == 4 and summary.epoch_losses[-1] < summary.epoch_losses[0]  # the curve
    verify_experts(default_model.path, [out])  # same tensor names, shapes and dtypes: usable as an expert

    transcripts = load_transcripts(transcripts_file(out))
    tokenizer = AutoTokenizer.from_pretrained(default_model.path)
    examples = [render(t, tokenizer, 1024) for t in transcripts]
    before = AutoModelForCausalLM.from_pretrained(default_model.path, dtype=torch.float32)
    after = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    for example in examples:
        assert example_loss(after, example) < 0.7 * example_loss(before, example)

    gold = transcripts[0].messages[transcripts[0].prompt_messages]["content"]
    length = len(tokenizer(gold)["input_ids"]) + 4
    similarity = [difflib.SequenceMatcher(None, greedy(m, transcripts[0], length), gold).ratio()
                  for m in (default_model.path, out)]  # fmt: skip
    assert similarity[1] > similarity[0] + 0.1, similarity


def toy_examples(count: int = 4, length: int = 16) -> list[TrainingExample]:
    generator = torch.Generator().manual_seed(5)
    examples = []
    for _ in range(count):
        ids = torch.randint(0, 128, (length,), generator=generator).tolist()
        examples.append(TrainingExample(ids, [IGNORE] * (length // 2) + ids[length // 2 :]))
    return examples


class Interrupt(Exception):
    pass


def test_a_killed_fine_tune_resumes_to_the_same_weights(tmp_path: Path) -> None:
    base, _ = make_tiny_family(tmp_path / "family", experts=0)
    settings = SFTSettings(epochs=2, learning_rate=1e-3, batch_size=2, save_every=1)
    whole = fine_tune(base, toy_examples(), tmp_path / "whole", settings, device="cpu")

    def stop_at_three(step: int, _total: int, _loss: float) -> None:
        if step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        fine_tune(base, toy_examples(), tmp_path / "resumed", settings, on_step=stop_at_three, device="cpu")
    seen: list[int] = []
    resumed = fine_tune(base, toy_examples(), tmp_path / "resumed", settings, device="cpu",
                        on_step=lambda step, _t, _l: seen.append(step))  # fmt: skip
    assert seen == [3, 4]  # steps 1-2 were saved; step 3 had not been
    a, b = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
    assert not (tmp_path / "resumed.partial").exists()


def test_lora_is_merged_into_full_weights(tmp_path: Path) -> None:
    base, _ = make_tiny_family(tmp_path / "family", experts=0)
    settings = SFTSettings(epochs=3, learning_rate=1e-2, batch_size=2, lora_rank=4)
    out = fine_tune(base, toy_examples(), tmp_path / "lora", settings, device="cpu")
    verify_experts(base, [out])
    original, merged = load_file(base / "model.safetensors"), load_file(out / "model.safetensors")
    changed = {name for name in original if not torch.equal(original[name], merged[name])}
    assert changed and all(".layers." in name for name in changed)  # only the decoder blocks' linears moved
    assert "model.layers.0.self_attn.q_proj.weight" in changed


def test_the_sft_command_trains_a_checkpoint_the_evolver_accepts_and_refuses_bad_input_in_one_line(
    docker_engine,
    default_model,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    out = tmp_path / "coding-expert"
    args = ["--env", "coding", "--limit", "1", "--epochs", "2", "--batch-size", "1", "--max-length", "512"]
    done = subprocess.run([CYCLEQD, "sft", *args, "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = " ".join(done.stdout.split())
    assert re.search(r"1 trajectories \(\d+ trained tokens, data [0-9a-f]{12}\), loss [\d.]+ → [\d.]+", summary)
    verify_experts(default_model.path, [out])
    assert len(load_transcripts(transcripts_file(out))) == 1
    for bad, expected in ((["--base", str(tmp_path / "nowhere")], "nowhere"), (["--epochs", "0"], "--epochs")):
        refused = subprocess.run([CYCLEQD, "sft", *args, *bad, "--out", str(tmp_path / "not-made")],
                                 capture_output=True, text=True, timeout=120)  # fmt: skip
        lines = refused.stderr.strip().splitlines()
        assert refused.returncode == 2 and len(lines) == 1 and expected in lines[0], refused.stderr
        assert not (tmp_path / "not-made").exists()
