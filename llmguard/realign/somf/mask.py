"""The Concrete (relaxed-Bernoulli) mask over task vectors, and its bit-packed file.

One logit ℓ per task-vector entry (``element``, the paper's unit) or per output row (``row``:
one logit for a whole row of a tensor, far fewer parameters). During training a mask is a
reparameterised sample m = σ((ℓ + log u − log(1 − u)) / T), u ~ U(0, 1), so gradients reach ℓ
without a straight-through estimator; the masked vector is τ̃ = τ ⊙ m / mean(m) (rescaled so its
expected size is kept). The final mask is binary and deterministic: the ``keep_ratio`` largest
logits of each tensor (``top``) or σ(ℓ) > 0.5 (``sigmoid``); or, as the paper's code does, one
seeded relaxed-Bernoulli sample > 0.5 (``official``).
"""

from __future__ import annotations

import json
from pathlib import Path
import numpy as np
import torch

from llmguard.errors import InvalidInputError

MASK_FILE = "somf_mask.safetensors"


def mask_shape(shape: tuple[int, ...], granularity: str) -> tuple[int, ...]:
    """The logit shape of a tensor: the tensor's own (element) or one per dim-0 row (row)."""
    if granularity == "row" and len(shape) >= 2:
        return (shape[0],) + (1,) * (len(shape) - 1)
    return tuple(shape)


def apply_mask(tau: torch.Tensor, mask: torch.Tensor, rescale: bool = True) -> torch.Tensor:
    """τ ⊙ m / mean(m) (mean over the tensor's entries; an all-zero mask gives 0)."""
    masked = tau * mask
    if not rescale:
        return masked
    mean = mask.mean()  # a row mask has equal-sized rows, so its mean is the entries' mean
    return masked / mean.clamp_min(1e-12) if float(mean.detach()) > 0 else masked * 0.0


class ConcreteMask(torch.nn.Module):
    """Trainable logits for every masked tensor, in a fixed order."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], granularity: str, temperature: float = 0.5, init: float = 0.0) -> None:
        super().__init__()
        self.names = list(shapes)
        self.shapes = dict(shapes)
        self.granularity = granularity
        self.temperature = temperature
        self.logits = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.full(mask_shape(shapes[n], granularity), float(init))) for n in self.names]
        )
        self._index = {n: i for i, n in enumerate(self.names)}

    def logit(self, name: str) -> torch.Tensor:
        return self.logits[self._index[name]]

    def sample(self, name: str, generator: torch.Generator) -> torch.Tensor:
        """A reparameterised relaxed-Bernoulli sample (differentiable in the logits)."""
        logit = self.logit(name)
        u = torch.rand(logit.shape, generator=generator).clamp_(1e-6, 1 - 1e-6).to(logit.device)
        return torch.sigmoid((logit + torch.log(u) - torch.log1p(-u)) / self.temperature)

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.logits)

    def binary(self, mode: str = "top", keep_ratio: float = 0.8, seed: int = 0) -> dict[str, torch.Tensor]:
        """The final binary mask per tensor (logit shape, ``torch.bool``)."""
        out: dict[str, torch.Tensor] = {}
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name in self.names:
                logit = self.logit(name).detach().cpu()
                if mode == "official":
                    out[name] = self.sample(name, gen).detach().cpu() > 0.5
                elif mode == "top":
                    flat = logit.reshape(-1)
                    k = max(1, int(round(keep_ratio * flat.numel())))
                    keep = torch.zeros(flat.numel(), dtype=torch.bool)
                    keep[torch.topk(flat, k).indices] = True
                    out[name] = keep.reshape(logit.shape)
                else:
                    out[name] = torch.sigmoid(logit) > 0.5
        return out


def density(mask: torch.Tensor) -> float:
    return float(mask.float().mean())


def save_mask(path: Path, masks: dict[str, torch.Tensor], meta: dict) -> None:
    """Bit-packed masks: one U8 tensor per masked tensor, shapes and provenance in the header."""
    from safetensors.torch import save_file

    tensors = {name: torch.from_numpy(np.packbits(m.to(torch.bool).numpy().reshape(-1)).copy()) for name, m in masks.items()}
    header = {"llmguard": json.dumps({**meta, "shapes": {n: list(m.shape) for n, m in masks.items()}})}
    save_file(tensors, str(path), metadata=header)


def load_mask(path: Path, expected: dict[str, tuple[int, ...]], granularity: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a mask written by :func:`save_mask`; a mask of another model is exit 3."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise InvalidInputError(f"--mask-file {path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {}).get("llmguard", "null") or "null")
            if not isinstance(meta, dict) or "shapes" not in meta:
                raise InvalidInputError(f"--mask-file {path}: not a SOMF mask file (no llmguard header)")
            packed = {k: handle.get_tensor(k) for k in handle.keys()}
    except InvalidInputError:
        raise
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's input
        raise InvalidInputError(f"--mask-file {path}: unreadable ({err})") from None
    shapes = {n: tuple(s) for n, s in meta["shapes"].items()}
    want = {n: mask_shape(s, meta.get("granularity", granularity)) for n, s in expected.items()}
    if set(shapes) != set(want):
        missing = sorted(set(want) - set(shapes)) or sorted(set(shapes) - set(want))
        raise InvalidInputError(f"--mask-file {path}: made for another model (tensor {missing[0]!r} differs)")
    for name, shape in want.items():
        if shapes[name] != shape:
            raise InvalidInputError(f"--mask-file {path}: made for another model ({name!r} mask {list(shapes[name])}, expected {list(shape)})")
    masks = {}
    for name, shape in shapes.items():
        count = int(np.prod(shape))
        bits = np.unpackbits(packed[name].numpy(), count=count)
        masks[name] = torch.from_numpy(bits.astype(bool)).reshape(shape)
    return masks, meta


def densities(masks: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: round(density(m), 6) for name, m in masks.items()}

