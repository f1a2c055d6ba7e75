"""Watermarked generation: one transformers ``LogitsProcessor`` for every registered scheme.

``WatermarkLogitsProcessor(scheme)`` adds ``scheme.delta`` to the logits of the green tokens of each
row, exactly as the scheme's reference processor does (same candidates for self-hash schemes, same
"skip while the context is too short" rule). Green lists are cached per seed by the scheme.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor

from llmguard.watermark.schemes import Scheme


class WatermarkLogitsProcessor(LogitsProcessor):
    """Bias green tokens by δ. Works for any batch size and left padding (pads are context, as upstream)."""

    def __init__(self, scheme: Scheme) -> None:
        self.scheme = scheme
        self.delta = float(scheme.delta)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = scores.clone()
        ids = input_ids.detach().cpu().numpy().astype(np.int64)
        width = scores.shape[-1]
        for b in range(ids.shape[0]):
            green = self.scheme.generation_green(ids[b], scores[b])
            if green is None or len(green) == 0:
                continue
            green = np.asarray(green, dtype=np.int64)
            green = green[green < width]
            index = torch.as_tensor(green, device=scores.device)
            out[b, index] = out[b, index] + self.delta
        return out

    def describe(self) -> dict[str, Any]:
        return self.scheme.config()
