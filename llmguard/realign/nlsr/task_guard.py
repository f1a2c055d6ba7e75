"""Task guard (``--task-data``): give the fine-tune's task back where the transplant costs it.

NLSR transplants the reference's safety-critical units into every selected module, judged by
similarity alone. Where the fine-tune's task and its harm live in different weights this can cost
the task for nothing: on the testbed's seed 4 the LoRA fine-tune's realigned model lost 12 points
of sst2 (label flips), and reverting its layer-0 query projection alone gave back 7 of them while
the harmful rate barely moved; the harm was undone in layer 3 (docs/realign.md).

So, given pairs of the fine-tune's own task (its training data, never DEV or TEST):

1. measure the task accuracy of the fine-tuned model and of the patched one, *teacher-forced*
   (an item is right when its first response tokens are all the model's argmax: one forward
   pass per batch, no generation), and the same accuracy on safe responses to harmful prompts
   (the calibration pairs: does the model still open with the refusal?);
2. if the patched model is within ``tolerance`` points of the fine-tune, keep every unit;
3. ``--task-guard-mode units`` (default): revert single patched units (weights or rows) in
   small steps, each step the :data:`REVERT_FRACTION` of the patched units whose revert lowers
   the decision-token loss of task *and* refusal pairs most to first order (−∇L·(W_ft − W)),
   re-measuring after each step, until the task is within tolerance (at most
   :data:`MAX_REVERT_STEPS` steps);
4. if it still is not (or with ``--task-guard-mode modules``), revert each patched module alone
   (leave-one-out), score it by task accuracy regained per point of safety accuracy lost, and
   revert modules in that order, re-measuring, until the task is within tolerance or no module
   that helps the task is left.

Why units first: a module is a coarse thing to give back. On the testbed's seed 4 full
fine-tune (AMD build) the module guard gave the task back by reverting whole modules, and the
safety with them (77.8 % harmful on TEST); reverting 0.5 % of the patched weights at a time gave
it back with 27.8 % harmful and sst2 at 100 % (docs/realign.md). A one-shot ranking (all reverts from one
gradient) was worse than the steps (48.6 %): the gradient goes stale as the model moves.

The model is held once, on the device; units and modules are reverted and re-patched in place
from the streamed source tensors. Memory: the fine-tuned model in float32, plus in units mode
the gradients of the patched weights and their masks (one byte per weight of a patched module)
while the guard runs. The guard works on ΔW units (``weight``, ``row``), whose output is a
checkpoint; it returns the masks it shrank, and the transplant writes exactly those.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch

from llmguard.errors import InvalidInputError
from llmguard.realign.nlsr.analysis import ModuleResult
from llmguard.realign.nlsr.inputs import NlsrInputs
from llmguard.realign.nlsr.mask_store import MaskStore
from llmguard.realign.nlsr.reference import Reference, source_weight
from llmguard.realign.nlsr.transplant import transplant_delta, unit_view

#: how the guard gives the task back: single units first (then modules), or whole modules only
GUARD_MODES = ("units", "modules")


@dataclass
class GuardResult:
    """What the guard kept and why (written under ``task_guard`` in the manifest).

    ``results`` are the selected modules as the transplant must write them: the reverted
    modules left out, the others with the masks the unit steps shrank (new ModuleResults; the
    analysis's own are never changed, so ``--search`` points can share them)."""

    reverted: list[str] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)
    results: list[ModuleResult] = field(default_factory=list)


#: points of safety accuracy below which a revert's cost counts as this much (no division by 0)
COST_FLOOR = 0.5
#: response tokens that decide an item: a label, an answer, or the opening of a refusal
DECISION_TOKENS = 8
#: units mode: share of the initially patched units reverted per step
REVERT_FRACTION = 0.005
#: units mode: most steps before the module leave-one-out takes over (20 % of the patched units)
MAX_REVERT_STEPS = 40


def _decision(batch: Any, device: torch.device, decision_tokens: int) -> tuple[torch.Tensor, ...]:
    """Input ids, attention, next-token targets and the decision positions of one batch."""
    ids, attention, select = (t.to(device) for t in (batch.input_ids, batch.attention_mask, batch.select))
    target, chosen = ids[:, 1:], select[:, 1:]
    return ids, attention, target, chosen & (chosen.cumsum(dim=1) <= decision_tokens)


@torch.no_grad()
def teacher_forced(model: Any, batches: list, decision_tokens: int = DECISION_TOKENS) -> float:
    """Percent of items whose first ``decision_tokens`` response tokens are all the model's argmax."""
    right = items = 0
    device = next(model.parameters()).device
    for batch in batches:
        ids, attention, target, chosen = _decision(batch, device, decision_tokens)
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
        hit = (logits.argmax(-1) == target) | ~chosen
        has = chosen.any(dim=1)
        right += int((hit.all(dim=1) & has).sum())
        items += int(has.sum())
    return 100.0 * right / max(1, items)


def decision_loss_backward(model: Any, batches: list, decision_tokens: int = DECISION_TOKENS) -> float:
    """Accumulate into ``.grad`` the gradient of the mean cross-entropy of the decision tokens
    (the tokens :func:`teacher_forced` judges); returns the loss. One batch at a time."""
    device = next(model.parameters()).device
    total = sum(int(_decision(b, torch.device("cpu"), decision_tokens)[3].sum()) for b in batches)
    loss_sum = 0.0
    with torch.enable_grad():
        for batch in batches:
            ids, attention, target, chosen = _decision(batch, device, decision_tokens)
            logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
            loss = torch.nn.functional.cross_entropy(logits[chosen].float(), target[chosen], reduction="sum") / max(1, total)
            loss.backward()
            loss_sum += float(loss.detach())
    return loss_sum


def _load_finetuned(inputs: NlsrInputs, device: torch.device) -> Any:
    from llmguard.inference import load_causal_lm

    ft = inputs.finetuned
    if ft.adapter is not None:
        model, _ = load_causal_lm(ft.base.root, adapter=ft.path, device=str(device), dtype="float32")
    else:
        model, _ = load_causal_lm(ft.path, device=str(device), dtype="float32")
    model.eval()
    return model


class _GuardedModel:
    """The fine-tuned model with the selected modules patched in place, and how to revert them."""

    def __init__(self, inputs: NlsrInputs, reference: Reference, selected: list[ModuleResult], device: torch.device) -> None:
        self.inputs, self.reference, self.device = inputs, reference, device
        self.model = _load_finetuned(inputs, device)
        self.params = dict(self.model.named_parameters())
        missing = [r.name for r in selected if f"{r.name}.weight" not in self.params]
        if missing:
            raise InvalidInputError(f"--task-data: module {missing[0]!r} is not a parameter of the loaded fine-tuned model")
        for parameter in self.params.values():
            parameter.requires_grad_(False)

    def weight(self, result: ModuleResult) -> torch.nn.Parameter:
        return self.params[f"{result.name}.weight"]

    def finetuned(self, result: ModuleResult) -> torch.Tensor:
        return source_weight(self.inputs.finetuned, f"{result.name}.weight", self.device)

    def set_finetuned(self, result: ModuleResult) -> None:
        self.weight(result).data.copy_(self.finetuned(result))

    def set_patched(self, result: ModuleResult) -> None:
        tensor = self.finetuned(result).contiguous()
        transplant_delta(self.inputs, self.reference, result, tensor, self.device)
        self.weight(result).data.copy_(tensor)


def guard(inputs: NlsrInputs, reference: Reference, selected: list[ModuleResult], task_batches: list, safety_batches: list,
          *, tolerance: float, device: torch.device, mode: str = "units", masks: MaskStore | None = None) -> GuardResult:
    """Give the task back where the transplant of ``selected`` costs it (module doc).

    ``masks`` receives the shrunk weight masks where the analysis spilled its own."""
    if mode not in GUARD_MODES:
        raise InvalidInputError(f"task guard mode {mode!r}: expected one of {', '.join(GUARD_MODES)}")
    t0 = time.perf_counter()
    state = _GuardedModel(inputs, reference, selected, device)

    def measure() -> tuple[float, float]:
        return teacher_forced(state.model, task_batches), teacher_forced(state.model, safety_batches) if safety_batches else 100.0

    task_ft = teacher_forced(state.model, task_batches)
    for result in selected:
        state.set_patched(result)
    task_now, safe_now = measure()
    record: dict[str, Any] = {"mode": mode, "task_accuracy_finetuned": round(task_ft, 2), "task_accuracy_patched": round(task_now, 2),
                              "safe_accuracy_patched": round(safe_now, 2), "tolerance": tolerance}

    def good(task: float) -> bool:
        return task >= task_ft - tolerance

    def within() -> bool:
        return good(task_now)

    current = list(selected)
    if mode == "units" and not within() and selected:
        current, steps, last = _revert_units(state, current, task_batches, safety_batches, measure, good)
        task_now, safe_now = last or (task_now, safe_now)
        before = sum(r.masked for r in selected)
        after = sum(r.masked for r in current)
        record["unit_steps"] = steps
        record.update(units_patched=before, units_reverted=before - after, revert_fraction=REVERT_FRACTION,
                      max_steps=MAX_REVERT_STEPS)
    reverted: list[str] = []
    if not within() and current:
        scores = []
        for result in current:  # leave-one-out: what reverting this module alone gives back and costs
            state.set_finetuned(result)
            task_m, safe_m = measure()
            state.set_patched(result)
            scores.append((result, task_m - task_now, max(safe_now - safe_m, 0.0)))
        ranked = sorted((s for s in scores if s[1] > 0), key=lambda s: (-s[1] / (s[2] + COST_FLOOR), s[0].name))
        record["leave_one_out"] = [{"module": r.name, "task_gain": round(g, 2), "safe_cost": round(c, 2)} for r, g, c in scores]
        for result, _, _ in ranked:
            state.set_finetuned(result)
            reverted.append(result.name)
            task_now, safe_now = measure()
            if within():
                break
    record.update(task_accuracy_guarded=round(task_now, 2), safe_accuracy_guarded=round(safe_now, 2), reverted=reverted,
                  within_tolerance=within(), seconds=round(time.perf_counter() - t0, 3))
    spill = masks if inputs.strategy.spills_masks else None
    return GuardResult(reverted, record, [_kept_result(r, spill) for r in current if r.name not in reverted])


def _revert_units(state: _GuardedModel, results: list[ModuleResult], task_batches: list, safety_batches: list,
                  measure: Callable[[], tuple[float, float]],
                  good: Callable[[float], bool]) -> tuple[list[ModuleResult], list[dict], tuple[float, float] | None]:
    """Units mode: revert the patched units with the largest first-order gain, a step at a time.

    The gain of reverting a unit is −∇L·(W_ft − W) over its weights, L the decision-token loss
    of the task pairs plus that of the refusal pairs: a revert that helps the task but costs
    the refusal scores the difference. Returns the results with the shrunk masks (tensors), one
    record per step and the last (task, refusal) accuracies measured (None without a step)."""
    masks = {r.name: r.unit_mask().to(state.device).clone() for r in results}
    views = {r.name: unit_view(state.inputs, r.name, masks[r.name])[0] for r in results}
    per_step = max(1, math.ceil(REVERT_FRACTION * sum(int(m.sum()) for m in masks.values())))
    for result in results:
        state.weight(result).requires_grad_(True)
    steps: list[dict] = []
    last: tuple[float, float] | None = None
    try:
        for step in range(1, MAX_REVERT_STEPS + 1):
            for result in results:
                state.weight(result).grad = None
            loss = decision_loss_backward(state.model, task_batches)
            if safety_batches:
                loss += decision_loss_backward(state.model, safety_batches)
            # pass 1: each patched weight's gain −g·(W_ft − W) = g·(W − W_ft), in place of its
            # gradient; a running top-k of the positive unit gains gives the step's threshold
            # (memory: one module's gains and k values, never every patched unit at once)
            top = torch.empty(0, device=state.device)
            for result in results:
                parameter = state.weight(result)
                assert parameter.grad is not None
                parameter.grad.mul_(parameter.data - state.finetuned(result))
                gains = _unit_gains(views[result.name], parameter.grad)[views[result.name](masks[result.name])]
                gains = gains[gains > 0]
                if gains.numel():
                    merged = torch.cat([top, gains])
                    top = torch.topk(merged, min(per_step, merged.numel())).values
            if top.numel() == 0:
                break
            threshold = top.min()
            count = 0
            with torch.no_grad():  # pass 2: revert the still-patched units at or above the threshold
                for result in results:
                    parameter, view = state.weight(result), views[result.name]
                    assert parameter.grad is not None
                    gains = _unit_gains(view, parameter.grad)
                    chosen = (view(masks[result.name]) & (gains >= threshold) & (gains > 0)).nonzero().squeeze(1)
                    parameter.grad = None
                    if chosen.numel() == 0:
                        continue
                    view(parameter.data)[chosen] = view(state.finetuned(result))[chosen]
                    view(masks[result.name])[chosen] = False
                    count += int(chosen.numel())
            task_now, safe_now = last = measure()
            steps.append({"step": step, "reverted": count, "loss": round(loss, 5), "task": round(task_now, 2), "safe": round(safe_now, 2)})
            if good(task_now):
                break
    finally:
        for result in results:
            state.weight(result).requires_grad_(False)
            state.weight(result).grad = None
    shrunk = []
    for result in results:
        mask = masks[result.name].cpu()
        masked = int(mask.sum())
        d_in = state.weight(result).numel() // mask.numel()  # a row unit's width (1 for weight units)
        shrunk.append(replace(result, delta_mask=mask, masked=masked,
                              parameters_masked=state.inputs.strategy.parameters_in(masked, d_in)))
    return shrunk, steps, last


def _unit_gains(view: Callable[[torch.Tensor], torch.Tensor], gain: torch.Tensor) -> torch.Tensor:
    """One gain per unit of a module: the weight's own (weight units) or its row's sum (row units)."""
    units = view(gain)
    return units.sum(dim=1) if units.dim() == 2 else units


def _kept_result(result: ModuleResult, masks: MaskStore | None) -> ModuleResult:
    """Spill a shrunk mask to ``masks`` (given for units that spill theirs, as the analysis does)."""
    if masks is not None and isinstance(result.delta_mask, torch.Tensor):
        return replace(result, delta_mask=masks.put(result.delta_mask))
    return result
