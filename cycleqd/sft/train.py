"""Supervised fine-tuning of a checkpoint on rendered examples: full fine-tune, or LoRA merged back into full
weights, so that the result is a plain checkpoint with the base's tensor names, shapes and dtypes (what the
evolver accepts as an expert).

Long runs survive a kill: every `save_every` optimizer steps the trainable weights, the optimizer and the step
are written (atomically) beside the output; a rerun with the same settings continues from there. The batch
order of each epoch derives from (seed, epoch), so a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from cycleqd.errors import BadOptionError
from cycleqd.sft.data import TrainingDataError, TrainingExample


@dataclass(frozen=True)
class SFTSettings:
    epochs: int = 3
    learning_rate: float = 2e-5
    batch_size: int = 4  # examples per optimizer step (one at a time, gradients accumulated)
    max_length: int = 2048
    lora_rank: int = 0  # 0: full fine-tune
    lora_alpha: float = 16.0
    save_every: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        # `cycleqd sft`'s option names: the demo checks its own before it builds settings
        for option, value, least in (("--epochs", self.epochs, 1), ("--batch-size", self.batch_size, 1),
                                     ("--max-length", self.max_length, 1), ("--lora-rank", self.lora_rank, 0),
                                     ("--save-every", self.save_every, 1)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise BadOptionError(option, value, f"a whole number of at least {least}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise BadOptionError("--lr", self.learning_rate, "a positive number")

    def steps_per_epoch(self, examples: int) -> int:
        return math.ceil(examples / self.batch_size)


class LoRALinear(nn.Module):
    """y = W x + (α / r) · B A x, with W frozen; B starts at zero so training starts from the base."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=torch.float32))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=torch.float32))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        base.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x.to(self.lora_a.dtype) @ self.lora_a.T @ self.lora_b.T * self.scale).to(x.dtype)

    def merged(self) -> nn.Linear:
        with torch.no_grad():
            delta = (self.lora_b @ self.lora_a) * self.scale
            self.base.weight.add_(delta.to(self.base.weight.dtype))
        self.base.weight.requires_grad_(True)
        return self.base


def attach_lora(model: nn.Module, rank: int, alpha: float) -> None:
    """LoRA on every linear layer of the decoder blocks; everything else frozen."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and ".layers." in f"{name}.":
                setattr(module, child_name, LoRALinear(child, rank, alpha))


def merge_lora(model: nn.Module) -> None:
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, child_name, child.merged())


def state_folder(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def fine_tune(
    base: Path,
    examples: list[TrainingExample],
    out: Path,
    settings: SFTSettings,
    on_step: Callable[[int, int, float], None] = lambda step, total, loss: None,
    device: str | None = None,
) -> Path:
    """Train on `examples` and write the checkpoint to `out` (published by rename). Returns `out`."""
    from transformers import AutoModelForCausalLM

    if not examples:
        raise TrainingDataError("no training examples: nothing to fine-tune on")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).to(device)
    base_dtype = _checkpoint_dtype(base)
    if settings.lora_rank:
        attach_lora(model, settings.lora_rank, settings.lora_alpha)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(trainable.values(), lr=settings.learning_rate, weight_decay=0.0)
    per_epoch = settings.steps_per_epoch(len(examples))
    total = per_epoch * settings.epochs
    step = _resume(state_folder(out), settings, model, optimizer)
    model.train()
    while step < total:
        epoch, index = divmod(step, per_epoch)
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(settings.seed * 1000 + epoch))
        batch = [examples[i] for i in order[index * settings.batch_size : (index + 1) * settings.batch_size].tolist()]
        optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for example in batch:
            ids = torch.tensor([example.input_ids[: settings.max_length]], device=device)
            labels = torch.tensor([example.labels[: settings.max_length]], device=device)
            loss = model(input_ids=ids, labels=labels).loss / len(batch)
            loss.backward()
            loss_sum += float(loss.detach())
        optimizer.step()
        step += 1
        on_step(step, total, loss_sum)
        if step % settings.save_every == 0 and step < total:
            _save_state(state_folder(out), settings, model, optimizer, step)
    if settings.lora_rank:
        merge_lora(model)
    _publish(model.to(base_dtype), base, out)
    shutil.rmtree(state_folder(out), ignore_errors=True)
    return out


def example_loss(model: nn.Module, example: TrainingExample) -> float:
    """Mean loss over the example's assistant tokens."""
    with torch.no_grad():
        device = next(model.parameters()).device
        ids = torch.tensor([example.input_ids], device=device)
        return float(model(input_ids=ids, labels=torch.tensor([example.labels], device=device)).loss)


def _checkpoint_dtype(folder: Path) -> torch.dtype:
    for weights in sorted(folder.glob("*.safetensors")):
        with safe_open(weights, "pt") as handle:
            return handle.get_tensor(next(iter(handle.keys()))).dtype
    raise TrainingDataError(f"{folder}: no *.safetensors weights")


def _save_state(
    folder: Path, settings: SFTSettings, model: nn.Module, optimizer: torch.optim.Optimizer, step: int
) -> None:
    temporary = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    weights = {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}
    save_file(weights, temporary / "trainable.safetensors")
    state = {"optimizer": optimizer.state_dict(), "step": step, "settings": asdict(settings)}
    torch.save(state, temporary / "state.pt")
    shutil.rmtree(folder, ignore_errors=True)
    temporary.rename(folder)


def _resume(folder: Path, settings: SFTSettings, model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    if not (folder / "state.pt").is_file():
        return 0
    state = torch.load(folder / "state.pt", weights_only=False)
    if state["settings"] != asdict(settings):
        raise TrainingDataError(
            f"{folder} holds a fine-tune with other settings ({state['settings']}); delete it to restart"
        )
    weights = load_file(folder / "trainable.safetensors")
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            parameters[name].copy_(tensor)
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


def _publish(model: nn.Module, base: Path, out: Path) -> None:
    temporary = out.with_name(out.name + ".writing")
    shutil.rmtree(temporary, ignore_errors=True)
    model.save_pretrained(temporary, safe_serialization=True)  # type: ignore[attr-defined]
    for item in base.iterdir():  # tokenizer, chat template, generation config: as the base has them
        if item.is_file() and item.suffix != ".safetensors" and not item.name.startswith(".") and item.name not in (
            "config.json", "model.safetensors.index.json"
        ):  # fmt: skip
            shutil.copy(item, temporary / item.name)
    shutil.rmtree(out, ignore_errors=True)
    temporary.rename(out)
