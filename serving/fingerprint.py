"""Fingerprints: the log-probability a model gives each token of a fixed, hard-to-predict text, which tells
models apart.

The probe is scored, not generated: `/v1/completions` with `prompt_logprobs` (a vLLM extension) returns, for
every prompt token after the first, the log-probability of that token. A text nobody would predict (names,
numbers, code, shell, SQL, German) keeps those values far from 0, so any change of weights moves many of them;
a greedy continuation of an easy prompt ("the capital of France is") has log-probs near 0 for every merge of
one family and cannot tell them apart.

Serving is not batch-invariant: the same weights give slightly different log-probs in another batch, so
fingerprints are compared by their mean absolute difference against a tolerance, never exactly. After an
in-place weight swap the server must answer as the new candidate: within the tolerance of the fingerprint
recorded when a fresh process loaded the same checkpoint, and farther than the tolerance from the previous
model's when the checkpoints differ.

The tolerance is a guess, not yet measured on a GPU (bf16 kernels move a log-prob by ~1e-2; a merge of
distinct experts by more): measure it where vLLM and a GPU are at hand, and pass another with
`VLLMManager(fingerprint_tolerance=…)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PROBE_TEXT = (
    "Ledger 7f3a, Tuesday 03:41: Okonkwo moved 41 crates of quince jam from Tromsø to Valparaíso (ref QX-2209).\n"
    "def shuffle(xs, k=3):\n    return [x ** k % 17 for x in reversed(xs) if x != 9]\n"
    "SELECT name, MAX(score) FROM runs WHERE seed IN (5, 89, 233) GROUP BY name HAVING COUNT(*) > 2;\n"
    "$ find /var/log -name '*.gz' -mtime +12 | xargs -r du -ch | tail -n 1\n"
    "Die Zugspitze ist 2962 m hoch, und um Viertel nach vier dreht der Wind nach Nordost."
)
MEAN_ABS_TOLERANCE = 0.02  # nats per token, mean over the probe; unmeasured (see the module docstring)


class FingerprintFormatError(ValueError):
    """A completion answer without the prompt log-probs asked for."""


@dataclass(frozen=True)
class Fingerprint:
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]

    @classmethod
    def from_completion(cls, data: dict) -> Fingerprint:
        """From a vLLM /v1/completions answer to `probe_request`: `choices[0].prompt_logprobs` is a list with
        None for the first token and, for each other one, {token id (as a JSON string): {"logprob": …}}, the
        prompt's own token always among them; `prompt_token_ids` says which that is."""
        try:
            choice = data["choices"][0]
            entries = choice["prompt_logprobs"]
            ids = choice.get("prompt_token_ids")
            if ids is None:  # without the ids, only an answer of one entry per token says which token it is
                if any(entry is not None and len(entry) != 1 for entry in entries):
                    raise KeyError("prompt_token_ids")
                ids = [None if entry is None else int(next(iter(entry))) for entry in entries]
            pairs = [(int(token), float(entry[str(token)]["logprob"]))
                     for token, entry in zip(ids, entries, strict=True) if entry is not None]  # fmt: skip
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise FingerprintFormatError(f"the probe's answer has no usable prompt_logprobs ({exc!r})") from None
        if not pairs:
            raise FingerprintFormatError("the probe's answer scored no prompt token")
        return cls(tuple(t for t, _ in pairs), tuple(v for _, v in pairs))

    def distance(self, other: Fingerprint) -> float:
        """Mean |Δ log-prob| over the probe's tokens; infinite if the two tokenised the probe differently."""
        if self.token_ids != other.token_ids:
            return math.inf
        return sum(abs(a - b) for a, b in zip(self.logprobs, other.logprobs, strict=True)) / len(self.logprobs)

    def matches(self, other: Fingerprint, tolerance: float = MEAN_ABS_TOLERANCE) -> bool:
        return self.distance(other) <= tolerance


def probe_request(model: str) -> dict[str, object]:
    """Score the probe: one token generated (the API needs ≥ 1), every prompt token's log-prob returned."""
    return {"model": model, "prompt": PROBE_TEXT, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0,
            "return_token_ids": True}  # fmt: skip


def swap_verified(
    new: Fingerprint,
    *,
    expected: Fingerprint | None,
    previous: Fingerprint | None,
    same_weights_as_previous: bool,
    tolerance: float = MEAN_ABS_TOLERANCE,
) -> tuple[bool, str]:
    """Whether a swap can be trusted, and why not."""
    if expected is not None:
        if new.matches(expected, tolerance):
            return True, ""
        return False, f"the fingerprint is {new.distance(expected):.4f} from the candidate's (tolerance {tolerance})"
    if previous is not None and not same_weights_as_previous and new.matches(previous, tolerance):
        return False, (f"the fingerprint is within {tolerance} of the previous model's: the server may still serve "
                       "it")  # fmt: skip
    return True, ""
