"""Contrastive decoding between a strongly and a weakly watermarked model (CDG-KD scrub / spoof).

A student ``S`` distilled from a watermarked teacher carries the teacher's watermark; a reference
``R`` trained on diluted or paraphrased teacher data carries a weaker copy. Their next-token
log-probabilities differ mostly where the watermark pushed them, so ``Δ = ℓ_S − ℓ_R`` points along
the watermark. Subtracting it scrubs the watermark, adding it amplifies (spoofs) it::

    scrub:  s = ℓ_R − β·(ℓ_S − ℓ_R)    plausibility mask from R
    spoof:  s = ℓ_S + β·(ℓ_S − ℓ_R)    plausibility mask from S
    s[v] = −inf unless p_E(v) ≥ α·max_w p_E(w)     (E = the model named above)

This is the standard contrastive-decoding form (expert ``(1+β)ℓ_E − βℓ_A``) with the adaptive
plausibility constraint of Li et al.; the CDG-KD repository names exactly these two
hyper-parameters (``--alpha 0.1 --beta 0.5``) and one flag for the direction, but does not ship the
script itself, so the rule here is a reconstruction, not a port.

:class:`ContrastiveLogitsProcessor` is the rule as a transformers ``LogitsProcessor`` (it holds
the other model and its KV cache, so ``student.generate(..., logits_processor=[proc])`` works for
greedy decoding); :func:`contrastive_generate` is the batched driver the verbs use: both models
advance with their own KV cache, one forward each per token, and temperature / top-p are applied
to the contrastive scores (not to the student's), with a per-batch seeded generator so a resumed
run writes the same records.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import LogitsProcessor

from llmguard.errors import InvalidInputError, UsageError
from llmguard.progress import NullProgress, Progress
from llmguard.watermark.rule import MODES, check_rule

__all__ = ["MODES", "ContrastiveLogitsProcessor", "Sampling", "check_rule", "check_tokenizers", "contrastive_generate",
           "contrastive_scores"]

def contrastive_scores(student_logits: torch.Tensor, reference_logits: torch.Tensor, mode: str, alpha: float,
                       beta: float) -> torch.Tensor:
    """The rule on one step's logits ``(batch, vocab)``; returns float32 scores with −inf outside the mask."""
    ls = torch.log_softmax(student_logits.float(), dim=-1)
    lr = torch.log_softmax(reference_logits.float(), dim=-1)
    delta = ls - lr
    if mode == "scrub":
        expert, scores = lr, lr - beta * delta
    else:
        expert, scores = ls, ls + beta * delta
    cutoff = math.log(alpha) + expert.max(dim=-1, keepdim=True).values
    return scores.masked_fill(expert < cutoff, -math.inf)


class ContrastiveLogitsProcessor(LogitsProcessor):
    """CDG-KD contrastive decoding as a logits processor on the *student's* scores.

    ``scores`` given to ``__call__`` are the student's next-token logits; the processor runs the
    ``reference`` model on the same ids (incrementally, with its own KV cache) and returns
    :func:`contrastive_scores` for ``mode`` (``scrub``: ``ℓ_R − β(ℓ_S − ℓ_R)`` under R's
    plausibility mask; ``spoof``: ``ℓ_S + β(ℓ_S − ℓ_R)`` under S's), keeping only tokens with
    ``p ≥ α·max p`` of the mask's model.

    Args:
        reference: the weakly watermarked model (same tokenizer as the student).
        mode: ``scrub`` or ``spoof``.
        alpha: plausibility cutoff in (0, 1) (0.1 in CDG-KD).
        beta: contrast strength > 0 (0.5 in CDG-KD).

    Example::

        proc = ContrastiveLogitsProcessor(reference, "scrub", alpha=0.1, beta=0.5)
        proc.start(attention_mask)            # left-padded prompts, as for generate
        out = student.generate(input_ids=ids, attention_mask=attention_mask, do_sample=False,
                               logits_processor=[proc], max_new_tokens=64)

    With ``do_sample=True`` transformers applies its temperature/top-p warpers *before* custom
    processors; :func:`contrastive_generate` applies them after the rule, as contrastive decoding
    intends.
    """

    def __init__(self, reference: Any, mode: str, alpha: float = 0.1, beta: float = 0.5) -> None:
        check_rule(mode, alpha, beta)
        self.reference = reference
        self.mode = mode
        self.alpha = float(alpha)
        self.beta = float(beta)
        self._mask: torch.Tensor | None = None
        self._cache: Any = None
        self._positions: torch.Tensor | None = None
        self._seen = 0

    def start(self, attention_mask: torch.Tensor | None) -> None:
        """Forget the previous sequence; ``attention_mask`` marks the prompt's left padding."""
        self._mask = attention_mask
        self._cache = None
        self._positions = None
        self._seen = 0

    def reference_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The reference's next-token logits for ``input_ids`` (prompt first, then one token per call)."""
        if self._cache is None or input_ids.shape[1] != self._seen + 1:
            mask = self._mask if self._mask is not None and self._mask.shape == input_ids.shape else torch.ones_like(input_ids)
            self._mask = mask
            pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
            out = self.reference(input_ids=input_ids, attention_mask=mask, position_ids=pos, use_cache=True)
            self._positions = pos[:, -1:]
        else:
            self._mask = torch.cat([self._mask, self._mask.new_ones((input_ids.shape[0], 1))], dim=-1)
            self._positions = self._positions + 1
            out = self.reference(input_ids=input_ids[:, -1:], attention_mask=self._mask, position_ids=self._positions,
                                 use_cache=True, **{_cache_kw(self.reference): self._cache})
        self._cache = _cache_of(out)
        self._seen = input_ids.shape[1]
        return out.logits[:, -1, :]

    def combine(self, student_logits: torch.Tensor, reference_logits: torch.Tensor) -> torch.Tensor:
        width = min(student_logits.shape[-1], reference_logits.shape[-1])
        return contrastive_scores(student_logits[..., :width], reference_logits[..., :width], self.mode, self.alpha,
                                  self.beta)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        combined = self.combine(scores, self.reference_logits(input_ids))
        if combined.shape[-1] < scores.shape[-1]:
            pad = combined.new_full((combined.shape[0], scores.shape[-1] - combined.shape[-1]), -math.inf)
            combined = torch.cat([combined, pad], dim=-1)
        return combined.to(scores.dtype)

    def describe(self) -> dict[str, Any]:
        return {"rule": "cdg-kd contrastive", "mode": self.mode, "alpha": self.alpha, "beta": self.beta,
                "mask_from": "reference" if self.mode == "scrub" else "student"}


# ----------------------------------------------------------------------------- compatibility


def check_tokenizers(student_tok: Any, reference_tok: Any, student_vocab: int, reference_vocab: int,
                     force_vocab: bool) -> list[str]:
    """Refuse models that do not share a tokenizer; returns warnings (``force_vocab``: sizes may differ).

    The contrast subtracts log-probabilities token by token, so token ``i`` must be the same string
    for both models: different vocabularies are refused outright. Identical vocabularies with
    different embedding sizes (one model padded its embedding matrix) are refused unless
    ``force_vocab``, which compares the first ``min`` logits only.
    """
    if student_tok.get_vocab() != reference_tok.get_vocab():
        raise InvalidInputError(
            f"student and reference do not share a tokenizer ({len(student_tok)} vs {len(reference_tok)} tokens, "
            "different vocabularies); contrastive decoding compares the same token ids")
    specials = ("bos_token_id", "eos_token_id")
    for name in specials:
        if getattr(student_tok, name, None) != getattr(reference_tok, name, None):
            raise InvalidInputError(f"student and reference tokenizers differ in {name}")
    warnings: list[str] = []
    if student_vocab != reference_vocab:
        msg = (f"student and reference share the tokenizer ({len(student_tok)} tokens) but their vocab sizes differ "
               f"({student_vocab} vs {reference_vocab})")
        if not force_vocab:
            raise InvalidInputError(msg + "; pass --force-vocab to compare the first "
                                    f"{min(student_vocab, reference_vocab)} logits")
        warnings.append(msg + f"; --force-vocab: comparing the first {min(student_vocab, reference_vocab)} logits")
    return warnings


# ----------------------------------------------------------------------------- generation


@dataclass
class Sampling:
    """How the next token is picked from the (contrastive) scores."""

    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def validate(self) -> None:
        if self.temperature <= 0 or not math.isfinite(self.temperature):
            raise UsageError(f"--temperature must be positive, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise UsageError(f"--top-p must be in (0, 1], got {self.top_p}")

    def pick(self, scores: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if not self.do_sample:
            return scores.argmax(dim=-1)
        logits = scores / self.temperature
        if self.top_p < 1.0:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            probs = sorted_logits.softmax(dim=-1)
            drop = probs.cumsum(dim=-1) - probs > self.top_p  # keep the smallest prefix reaching top_p
            sorted_logits = sorted_logits.masked_fill(drop, -math.inf)
            logits = torch.full_like(logits, -math.inf).scatter(-1, order, sorted_logits)
        probs = logits.softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@dataclass
class GeneratedBatch:
    """One batch of continuations: ``start`` is the index of its first prompt."""

    index: int
    start: int
    token_ids: list[list[int]]
    texts: list[str]


def _cache_kw(model: Any) -> str:
    """The forward's name of the KV-cache argument (``cache`` since transformers 5.2x, else ``past_key_values``)."""
    import inspect

    forward = getattr(model, "forward", model)
    try:
        params = inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def _pad_left(rows: Sequence[Sequence[int]], pad_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


class _Stepper:
    """One model advancing one token per call with its KV cache (left padding aware)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.cache_kw = _cache_kw(model)

    def first(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.mask = mask
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        self.pos = pos[:, -1:]
        self.cache = _cache_of(out)
        return out.logits[:, -1, :]

    def next(self, token: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, self.mask.new_ones((token.shape[0], 1))], dim=-1)
        self.pos = self.pos + 1
        out = self.model(input_ids=token[:, None], attention_mask=self.mask, position_ids=self.pos,
                         use_cache=True, **{self.cache_kw: self.cache})
        self.cache = _cache_of(out)
        return out.logits[:, -1, :]


def batch_generator(seed: int, batch_index: int, device: Any) -> torch.Generator:
    """A generator for one batch, seeded from (seed, batch index): resuming at batch k repeats it exactly."""
    gen = torch.Generator(device=device)
    gen.manual_seed((int(seed) * 1_000_003 + int(batch_index)) % (2**63 - 1))
    return gen


def contrastive_generate(
    student: Any,
    reference: Any | None,
    tokenizer: Any,
    prompt_ids: Sequence[Sequence[int]],
    *,
    mode: str | None,
    alpha: float = 0.1,
    beta: float = 0.5,
    sampling: Sampling | None = None,
    max_new_tokens: int = 256,
    batch_size: int = 50,
    first_batch: int = 0,
    progress: Progress | None = None,
) -> Iterator[GeneratedBatch]:
    """Yield continuations batch by batch (input order, fixed batches of ``batch_size`` prompts).

    ``mode=None`` (or ``reference=None``) generates from the student alone through the same loop:
    the plain-generation baseline of the benchmark and the closed-loop evaluation. Rows stop at
    EOS; a batch ends when every row did or after ``max_new_tokens``. ``first_batch`` skips the
    batches a previous run already wrote (``--resume``).
    """
    sampling = sampling or Sampling(do_sample=False)
    sampling.validate()
    contrast = mode is not None and reference is not None
    if contrast:
        check_rule(mode, alpha, beta)
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    progress = progress or NullProgress()
    device = next(student.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    eos_id = tokenizer.eos_token_id
    n_batches = (len(prompt_ids) + batch_size - 1) // batch_size
    progress.stage("contrastive generate" if contrast else "generate", total=len(prompt_ids))
    progress.advance(min(len(prompt_ids), first_batch * batch_size))
    s_step = _Stepper(student)
    r_step = _Stepper(reference) if contrast else None
    with torch.inference_mode():
        for b in range(first_batch, n_batches):
            rows = prompt_ids[b * batch_size:(b + 1) * batch_size]
            ids, mask = _pad_left(rows, pad_id, device)
            gen = batch_generator(sampling.seed, b, device) if sampling.do_sample else None
            ls = s_step.first(ids, mask)
            lr = r_step.first(ids, mask) if r_step else None
            done = torch.zeros(len(rows), dtype=torch.bool, device=device)
            out: list[list[int]] = [[] for _ in rows]
            for _ in range(max_new_tokens):
                if contrast:
                    width = min(ls.shape[-1], lr.shape[-1])
                    scores = contrastive_scores(ls[:, :width], lr[:, :width], mode, alpha, beta)
                else:
                    scores = ls.float()
                token = sampling.pick(scores, gen)
                token = torch.where(done, torch.full_like(token, pad_id), token)
                for i, t in enumerate(token.tolist()):
                    if not done[i]:
                        out[i].append(t)
                if eos_id is not None:
                    done = done | (token == eos_id)
                if bool(done.all()):
                    break
                ls = s_step.next(token)
                if r_step:
                    lr = r_step.next(token)
            ids_out = [o[: o.index(eos_id)] if eos_id is not None and eos_id in o else o for o in out]
            texts = [tokenizer.decode(o, skip_special_tokens=True) for o in ids_out]
            progress.advance(len(rows))
            yield GeneratedBatch(b, b * batch_size, ids_out, texts)
