"""DPO on the mask logits: L = −log σ(β[(log π(y⁺) − log π_ref(y⁺)) − (log π(y⁻) − log π_ref(y⁻))]).

π is the masked model (a fresh relaxed mask every step), π_ref the aligned model A, whose
log-probabilities are computed once per pair before training (the paper's code instead runs a
second, randomly masked model as the reference at every step). Only the logits are trained.

With task pairs (``--task-data``: the fine-tune's own training pairs) the loss adds
``task_weight`` × the mean per-token negative log-likelihood of their responses under π, so the
mask is also trained to keep what the fine-tune learned. Without it the DPO loss sees only safety
pairs and is free to drop task entries with the harmful ones (on the testbed's seeds 3 and 4 the
LoRA fine-tune lost 8-13 points of sst2 that way; docs/realign.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from llmguard.io.manifest import peak_rss_bytes
from llmguard.progress import NullProgress, Progress
from llmguard.realign.somf.masked_model import MaskedModel
from llmguard.realign.somf.preference import EncodedPair


def _pad(batch: Sequence[tuple[list[int], int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    response = torch.zeros((len(batch), width), dtype=torch.bool)
    for row, (ids, start) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[row, : len(ids)] = 1
        response[row, start : len(ids)] = True
    return input_ids.to(device), attention.to(device), response.to(device)


def _response_logprobs(model: torch.nn.Module, batch: Sequence[tuple[list[int], int]], pad_id: int,
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """log p of every next token and the mask of those that are response tokens, [n, len − 1] each."""
    input_ids, attention, response = _pad(batch, pad_id, device)
    logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
    token_lp = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return token_lp, response[:, 1:]


def sequence_logprobs(model: torch.nn.Module, batch: Sequence[tuple[list[int], int]], pad_id: int, device: torch.device) -> torch.Tensor:
    """Σ log p(response token) per sequence."""
    token_lp, response = _response_logprobs(model, batch, pad_id, device)
    return (token_lp * response).sum(dim=-1)


def mean_token_nll(model: torch.nn.Module, batch: Sequence[tuple[list[int], int]], pad_id: int, device: torch.device) -> torch.Tensor:
    """Mean over sequences of the per-token negative log-likelihood of the response."""
    token_lp, response = _response_logprobs(model, batch, pad_id, device)
    return -((token_lp * response).sum(dim=-1) / response.sum(dim=-1).clamp(min=1)).mean()


def pair_logprobs(model: torch.nn.Module, pairs: Sequence[EncodedPair], pad_id: int, device: torch.device) -> torch.Tensor:
    """[n, 2] (chosen, rejected) log-probabilities in one forward pass."""
    lp = sequence_logprobs(model, [p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id, device)
    return torch.stack([lp[: len(pairs)], lp[len(pairs):]], dim=1)


@dataclass
class TrainLog:
    losses: list[float] = field(default_factory=list)  # the DPO loss
    task_losses: list[float] = field(default_factory=list)  # the task term alone (empty without task pairs)
    step_seconds: list[float] = field(default_factory=list)
    peak_rss_bytes: list[int] = field(default_factory=list)
    reference_seconds: float = 0.0
    reference: torch.Tensor | None = field(default=None, repr=False)  # A's pair log-probabilities


def reference_logprobs(masked: MaskedModel, pairs: Sequence[EncodedPair], pad_id: int, chunk: int = 32) -> torch.Tensor:
    masked.reference()
    with torch.no_grad():
        return torch.cat([pair_logprobs(masked.model, pairs[i : i + chunk], pad_id, masked.device) for i in range(0, len(pairs), chunk)])


class _Batches:
    """Seeded epochs of permutations of ``n`` indices, ``size`` at a time (fewer than ``size`` when
    ``n`` is smaller: one epoch per batch)."""

    def __init__(self, n: int, size: int, seed: int) -> None:
        self.n, self.size = n, size
        self.generator = torch.Generator().manual_seed(seed)
        self.order: list[int] = []

    def next(self) -> list[int]:
        if len(self.order) < self.size:
            self.order += torch.randperm(self.n, generator=self.generator).tolist()
        idx, self.order = self.order[: self.size], self.order[self.size:]
        return idx


def _loss(masked: MaskedModel, pairs: Sequence[EncodedPair], reference: torch.Tensor, idx: list[int], beta: float, pad_id: int,
          task: Sequence[tuple[list[int], int]], task_idx: list[int] | None, task_weight: float,
          log: TrainLog) -> torch.Tensor:
    """DPO on the pairs ``idx`` (+ ``task_weight`` × the task NLL on ``task_idx``) under the model
    as it is now (one relaxed sample, or the fixed binary mask); the terms go into ``log``."""
    policy = pair_logprobs(masked.model, [pairs[i] for i in idx], pad_id, masked.device)
    ref = reference[idx].to(policy.device)
    margin = beta * ((policy[:, 0] - ref[:, 0]) - (policy[:, 1] - ref[:, 1]))
    loss = -torch.nn.functional.logsigmoid(margin).mean()
    log.losses.append(round(float(loss.detach()), 6))
    if task_idx is not None:  # the same model for both terms: one sampled mask per step
        task_loss = mean_token_nll(masked.model, [task[i] for i in task_idx], pad_id, masked.device)
        log.task_losses.append(round(float(task_loss.detach()), 6))
        loss = loss + task_weight * task_loss
    return loss


def _optimise(masked: MaskedModel, trained: list[torch.nn.Parameter], prepare: Callable[[], None], pairs: Sequence[EncodedPair],
              reference: torch.Tensor, *, pad_id: int, steps: int, lr: float, beta: float, batch_size: int, seed: int,
              progress: Progress, task: Sequence[tuple[list[int], int]], task_weight: float, log: TrainLog) -> None:
    """``steps`` Adam steps on ``trained``; ``prepare`` sets up the model of each step."""
    optimizer = torch.optim.Adam(trained, lr=lr)
    batches = _Batches(len(pairs), batch_size, seed)
    task_batches = _Batches(len(task), batch_size, seed + 3) if task else None
    for _ in range(steps):
        t = time.perf_counter()
        prepare()
        loss = _loss(masked, pairs, reference, batches.next(), beta, pad_id, task,
                     task_batches.next() if task_batches is not None else None, task_weight, log)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if masked.scales is not None:
            masked.scales.project()
        log.step_seconds.append(round(time.perf_counter() - t, 5))
        log.peak_rss_bytes.append(peak_rss_bytes())
        progress.advance()
        note = getattr(progress, "note", None)  # optional part of the protocol: the CLI shows the loss
        if note is not None:
            note(f"loss {log.losses[-1]:.4f}")


def train_mask(masked: MaskedModel, pairs: Sequence[EncodedPair], *, pad_id: int, steps: int, lr: float, beta: float,
               batch_size: int, seed: int, progress: Progress | None = None,
               task: Sequence[tuple[list[int], int]] = (), task_weight: float = 1.0) -> TrainLog:
    """Adam on the mask logits (and the merge scales, when the model has them) for ``steps`` DPO
    steps, plus the task term when ``task`` is given; returns the per-step log (its ``reference``
    is kept for :func:`calibrate_scales`)."""
    progress = progress or NullProgress()
    log = TrainLog()
    t0 = time.perf_counter()
    log.reference = reference_logprobs(masked, pairs, pad_id)
    log.reference_seconds = round(time.perf_counter() - t0, 4)
    trained = list(masked.mask.parameters()) + (list(masked.scales.parameters()) if masked.scales is not None else [])
    mask_gen = torch.Generator().manual_seed(seed + 1)
    progress.stage("train mask (DPO)" + (" + task" if task else ""), steps)
    _optimise(masked, trained, lambda: masked.begin_step(mask_gen), pairs, log.reference, pad_id=pad_id, steps=steps, lr=lr,
              beta=beta, batch_size=batch_size, seed=seed, progress=progress, task=task, task_weight=task_weight, log=log)
    masked.reference()
    return log


def calibrate_scales(masked: MaskedModel, binary: dict[str, torch.Tensor], pairs: Sequence[EncodedPair], reference: torch.Tensor, *,
                     pad_id: int, steps: int, lr: float, beta: float, batch_size: int, seed: int,
                     task: Sequence[tuple[list[int], int]], task_weight: float = 1.0, progress: Progress | None = None) -> TrainLog:
    """Train the merge scales alone on the model that will be written: the final binary mask,
    merged as written (TIES trims and elects signs, DARE drops, from the binary-masked vectors).

    The mask's training sees relaxed samples, so the scales it learns fit a noisy neighbour of
    the written model (on average half of every vector, rescaled ×2, at the start); this phase
    fits them to the written one, with the same loss. Only the scales move (one per tensor and
    fine-tune); the mask stays as training chose it."""
    assert masked.scales is not None
    progress = progress or NullProgress()
    log = TrainLog()
    progress.stage("calibrate merge scales", steps)
    _optimise(masked, list(masked.scales.parameters()), lambda: masked.use_binary(binary), pairs, reference, pad_id=pad_id,
              steps=steps, lr=lr, beta=beta, batch_size=batch_size, seed=seed + 5, progress=progress, task=task,
              task_weight=task_weight, log=log)
    masked.reference()
    return log
