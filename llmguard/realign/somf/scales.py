"""Learned merge coefficients: one scale per (tensor, fine-tune), trained beside the shared mask.

Fusing fine-tunes with one shared mask m gives Merge({τ_i ⊙ m / mean(m)}): the mask can drop an
entry of every task vector at once, but it cannot choose one fine-tune's entry over another's.
Where two task vectors interfere in the same modules (the testbed's sst2 and arith fine-tunes each
overwrite the other's answer format), no mask over their sum recovers both tasks. A scale s_{t,i}
per tensor t and fine-tune i (τ̃_i = s_{t,i} · τ_i ⊙ m / mean(m), init 1, kept in [0, 1], trained
with the same loss as the mask: DPO + the task term) lets the training weigh each fine-tune per module, as
layer-wise AdaMerging (Yang et al., ICLR'24) learns per-task, per-layer coefficients. It is an
extension beyond the SOMF paper (``--task-scales none`` is the paper's fusion) and is used only when
fusing with ``--task-data``: without the task term the DPO loss alone would shrink every scale
towards the aligned model.

The scales are few (tensors × fine-tunes) and are stored in the mask file's header, so that
``--mask-file`` reproduces the same fused model.
"""

from __future__ import annotations

from typing import Sequence

import torch


class TaskScales(torch.nn.Module):
    """Trainable per-(tensor, fine-tune) coefficients, initialised to 1."""

    def __init__(self, names: Sequence[str], fine_tunes: int, init: float = 1.0) -> None:
        super().__init__()
        self.names = list(names)
        self.values = torch.nn.ParameterList([torch.nn.Parameter(torch.full((fine_tunes,), float(init))) for _ in self.names])
        self._index = {n: i for i, n in enumerate(self.names)}

    def of(self, name: str) -> torch.Tensor:
        return self.values[self._index[name]]

    def project(self) -> None:
        """Back into [0, 1] after an optimizer step (projected gradient descent): a scale may keep
        less of a fine-tune, never amplify it (the task term alone would push the scales of the
        task it sees past 1, fitting its training pairs and extrapolating beyond the fine-tune)."""
        with torch.no_grad():
            for value in self.values:
                value.clamp_(0.0, 1.0)

    def to_dict(self) -> dict[str, list[float]]:
        """The trained scales as plain floats (exact: float32 values round-trip through JSON)."""
        return {n: [float(v) for v in self.of(n).detach().cpu()] for n in self.names}


def summary(scales: dict[str, list[float]]) -> list[dict[str, float]]:
    """Per fine-tune: min, mean and max of its scales over the tensors (the manifest's short form)."""
    if not scales:
        return []
    columns = list(zip(*scales.values()))
    return [{"min": round(min(c), 4), "mean": round(sum(c) / len(c), 4), "max": round(max(c), 4)} for c in columns]
