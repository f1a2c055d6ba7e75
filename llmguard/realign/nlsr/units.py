"""The units NLSR masks and transplants, one strategy object each, registered by name.

- ``element``: single LoRA factor values (the official code); the output is an adapter shaped
  like the fine-tuned one. Meaningful only when the fine-tune continues the aligned adapter.
- ``row``: output rows (neurons) of ΔW relative to the unaligned base; a full checkpoint out.
- ``weight``: single entries of ΔW; a full checkpoint out. One flag per weight of every module
  is too much to hold in memory until the transplant, so these masks are spilled to disk.

``auto`` (``inputs._decide_unit``) picks ``element`` for a continuing adapter, else ``row``.
Code that differs by unit reads these attributes instead of comparing unit names.
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
register_unit(Unit("weight", delta_space=True, patch_index="elements", spills_masks=True, delta_mask=weight_mask))

UNIT_CHOICES = ("auto", *UNITS)
DELTA_UNITS = tuple(name for name, unit in UNITS.items() if unit.delta_space)
