"""Task guard (``--task-data``): leave unpatched the modules whose transplant costs the task most.

NLSR transplants the reference's safety-critical units into every selected module, judged by
similarity alone. Where the fine-tune's task and its harm live in different modules this can cost
the task for nothing: on the testbed's seed 4 the LoRA fine-tune's realigned model lost 12 points
of sst2 (label flips), and reverting its layer-0 query projection alone gave back 7 of them while
the harmful rate barely moved; the harm was undone in layer 3 (docs/realign.md).

So, given pairs of the fine-tune's own task (its training data, never DEV or TEST):

1. measure the task accuracy of the fine-tuned model and of the patched one, *teacher-forced*
   (an item is right when its first response tokens are all the model's argmax: one forward
   pass per batch, no generation), and the same accuracy on safe responses to harmful prompts
   (the calibration pairs: does the model still open with the refusal?);
2. if the patched model is within ``tolerance`` points of the fine-tune, keep every module;
3. otherwise revert each patched module alone (leave-one-out) and score it by task accuracy
   regained per point of safety accuracy lost;
4. revert modules in that order, re-measuring, until the accuracy is within tolerance or no
   module that helps the task is left.

The model is held once, on the device; a module is reverted and re-patched in place from the
streamed source tensors, so the cost is two forward passes over the task and safety pairs per
patched module. The guard works on ΔW units (``weight``, ``row``), whose output is a checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from llmguard.errors import InvalidInputError
from llmguard.realign.nlsr.analysis import ModuleResult
from llmguard.realign.nlsr.inputs import NlsrInputs
from llmguard.realign.nlsr.reference import Reference, source_weight
from llmguard.realign.nlsr.transplant import transplant_delta


@dataclass
class GuardResult:
    """What the guard kept and why (written under ``task_guard`` in the manifest)."""

    reverted: list[str] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)


#: points of safety accuracy below which a revert's cost counts as this much (no division by 0)
COST_FLOOR = 0.5
#: response tokens that decide an item: a label, an answer, or the opening of a refusal
DECISION_TOKENS = 8


@torch.no_grad()
def teacher_forced(model: Any, batches: list, decision_tokens: int = DECISION_TOKENS) -> float:
    """Percent of items whose first ``decision_tokens`` response tokens are all the model's argmax."""
    right = items = 0
    device = next(model.parameters()).device
    for batch in batches:
        ids, attention, select = (t.to(device) for t in (batch.input_ids, batch.attention_mask, batch.select))
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
        target, chosen = ids[:, 1:], select[:, 1:]
        chosen = chosen & (chosen.cumsum(dim=1) <= decision_tokens)
        hit = (logits.argmax(-1) == target) | ~chosen
        has = chosen.any(dim=1)
        right += int((hit.all(dim=1) & has).sum())
        items += int(has.sum())
    return 100.0 * right / max(1, items)


def _load_finetuned(inputs: NlsrInputs, device: torch.device) -> Any:
    from llmguard.inference import load_causal_lm

    ft = inputs.finetuned
    if ft.adapter is not None:
        model, _ = load_causal_lm(ft.base.root, adapter=ft.path, device=str(device), dtype="float32")
    else:
        model, _ = load_causal_lm(ft.path, device=str(device), dtype="float32")
    model.eval()
    return model


def guard(inputs: NlsrInputs, reference: Reference, selected: list[ModuleResult], task_batches: list, safety_batches: list,
          *, tolerance: float, device: torch.device) -> GuardResult:
    """Drop from ``selected`` the modules whose transplant costs the task most (module doc)."""
    t0 = time.perf_counter()
    model = _load_finetuned(inputs, device)
    params = dict(model.named_parameters())
    missing = [r.name for r in selected if f"{r.name}.weight" not in params]
    if missing:
        raise InvalidInputError(f"--task-data: module {missing[0]!r} is not a parameter of the loaded fine-tuned model")

    def weight(result: ModuleResult) -> torch.Tensor:
        return params[f"{result.name}.weight"].data

    def set_finetuned(result: ModuleResult) -> None:
        weight(result).copy_(source_weight(inputs.finetuned, f"{result.name}.weight", device))

    def set_patched(result: ModuleResult) -> None:
        tensor = source_weight(inputs.finetuned, f"{result.name}.weight", device).contiguous()
        transplant_delta(inputs, reference, result, tensor, device)
        weight(result).copy_(tensor)

    def measure() -> tuple[float, float]:
        return teacher_forced(model, task_batches), teacher_forced(model, safety_batches) if safety_batches else 100.0

    task_ft = teacher_forced(model, task_batches)
    for result in selected:
        set_patched(result)
    task_now, safe_now = measure()
    record: dict[str, Any] = {"task_accuracy_finetuned": round(task_ft, 2), "task_accuracy_patched": round(task_now, 2),
                              "safe_accuracy_patched": round(safe_now, 2), "tolerance": tolerance}
    reverted: list[str] = []
    if task_now < task_ft - tolerance and selected:
        scores = []
        for result in selected:  # leave-one-out: what reverting this module alone gives back and costs
            set_finetuned(result)
            task_m, safe_m = measure()
            set_patched(result)
            scores.append((result, task_m - task_now, max(safe_now - safe_m, 0.0)))
        ranked = sorted((s for s in scores if s[1] > 0), key=lambda s: (-s[1] / (s[2] + COST_FLOOR), s[0].name))
        record["leave_one_out"] = [{"module": r.name, "task_gain": round(g, 2), "safe_cost": round(c, 2)} for r, g, c in scores]
        for result, _, _ in ranked:
            set_finetuned(result)
            reverted.append(result.name)
            task_now, safe_now = measure()
            if task_now >= task_ft - tolerance:
                break
    record.update(task_accuracy_guarded=round(task_now, 2), safe_accuracy_guarded=round(safe_now, 2), reverted=reverted,
                  within_tolerance=task_now >= task_ft - tolerance, seconds=round(time.perf_counter() - t0, 3))
    del model, params
    return GuardResult(reverted, record)
