"""The units NLSR masks and transplants, one strategy object each, registered by name.

- ``element``: single LoRA factor values (the official code); the output is an adapter shaped
  like the fine-tuned one. Meaningful only when the fine-tune continues the aligned adapter.
- ``row``: output rows (neurons) of ΔW relative to the unaligned base; a full checkpoint out.
- ``weight``: single entries of ΔW; a full checkpoint out. One flag per weight of every module
  is too much to hold in memory until the transplant, so these masks are spilled to disk.

``auto`` (the default) is ``weight`` for every fine-tune. Measured on the testbed (five seeds,
docs/realign.md): element and row units, at any mask ratio tried, left a LoRA fine-tune 39–100 %
harmful, while single ΔW weights in every module took it to 0–4 % with the task kept on most
seeds. ``element`` (the official code's unit) and ``row`` stay available by name. Each unit
carries its defaults: the budget (``weight``: every module; the mask already picks the weights)
and the mask ratio (``weight``: 0.15 of a LoRA fine-tune's weights, whose change is low-rank,
and 0.4 of a full fine-tune's, whose change is spread over every weight; elements and rows:
0.2, the paper's). Code that differs by unit reads these attributes instead
of comparing unit names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from llmguard.realign.nlsr.scoring import row_mask, weight_mask
from llmguard.registry import Registry

DeltaMask = Callable[[str, torch.Tensor, "torch.Tensor | None", float, float], torch.Tensor]


@dataclass(frozen=True)
class Unit:
    name: str
    #: measured and patched in ΔW space (full-checkpoint output) rather than in LoRA factors
    delta_space: bool
    #: how the reversible patch indexes the unit: "rows" or "elements" (flat indices)
    patch_index: str
    #: one patch entry holds a whole row of d_in values
    whole_rows: bool = False
    #: masks are spilled to disk until the transplant (``mask_store``)
    spills_masks: bool = False
    #: the ΔW mask rule, (scorer, ΔW_ref, C, ratio, keep) -> bool mask; None for LoRA elements
    delta_mask: DeltaMask | None = None
    #: ``--budget`` when none is given: a fraction of the modules
    default_budget: str = "0.5"
    #: ``--mask-ratio`` when none is given, for a LoRA fine-tune and for a full fine-tune
    default_mask_ratio_lora: float = 0.2
    default_mask_ratio_full: float = 0.2

    def default_mask_ratio(self, finetune_is_adapter: bool) -> float:
        return self.default_mask_ratio_lora if finetune_is_adapter else self.default_mask_ratio_full

    @property
    def output_is_adapter(self) -> bool:
        return not self.delta_space

    def parameters_in(self, masked: int, d_in: int) -> int:
        """Scalar weights inside ``masked`` units of a module with ``d_in`` inputs."""
        return masked * d_in if self.whole_rows else masked


UNITS: Registry[Unit] = Registry("NLSR unit")


def register_unit(unit: Unit) -> Unit:
    return UNITS.add(unit.name, unit)


register_unit(Unit("element", delta_space=False, patch_index="elements"))
register_unit(Unit("row", delta_space=True, patch_index="rows", whole_rows=True, delta_mask=row_mask))
register_unit(Unit("weight", delta_space=True, patch_index="elements", spills_masks=True, delta_mask=weight_mask,
                   default_budget="1.0", default_mask_ratio_lora=0.15, default_mask_ratio_full=0.4))

UNIT_CHOICES = ("auto", *UNITS)
#: what ``--unit auto`` resolves to
AUTO_UNIT = "weight"
DELTA_UNITS = tuple(name for name, unit in UNITS.items() if unit.delta_space)
