"""``--device`` and ``--dtype``: one parser each for every verb.

- :func:`resolve_device`: ``auto`` picks CUDA when present; ``cpu``, ``cuda``, ``cuda:N``, ``mps``;
  asking for a device that is not there is a resource error (exit 4), a malformed name a usage
  error (exit 2).
- :func:`parse_dtype_option`: the dtype written (``auto`` keeps each input tensor's dtype);
  :func:`load_dtype`: the dtype a model is loaded in for inference (``auto``: float32 on CPU,
  where half precision is slow and bfloat16 matmuls change greedy outputs; the checkpoint's dtype
  on an accelerator). Both accept ``float32``/``fp32``, ``bfloat16``/``bf16``, ``float16``/``fp16``.
"""

from __future__ import annotations

from typing import Any

import torch

from llmguard.errors import ResourceError, UsageError

DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_device(spec: str | None = "auto") -> torch.device:
    """The device ``spec`` names (recorded for the manifest's ``environment.devices``)."""
    from llmguard.provenance import note_device

    device = _resolve(spec)
    note_device(device)
    return device


def _resolve(spec: str | None) -> torch.device:
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ResourceError("--device mps: MPS is not available")
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        try:
            device = torch.device(spec)
        except RuntimeError:
            raise UsageError(f"--device {spec!r}: choose auto, cpu, cuda or cuda:N") from None
        if not torch.cuda.is_available():
            raise ResourceError(f"--device {spec}: no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ResourceError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
        return device
    raise UsageError(f"--device {spec!r}: choose auto, cpu, cuda or cuda:N")


def parse_dtype_option(value: str) -> torch.dtype | None:
    """``--dtype`` of a written checkpoint → torch dtype, or ``None`` for ``auto`` (keep each tensor's)."""
    if value == "auto":
        return None
    try:
        return DTYPE_NAMES[value.lower()]
    except KeyError:
        raise UsageError(f"--dtype {value!r}: choose auto, float32, bfloat16 or float16") from None


def load_dtype(value: str, device: str | torch.device, config_dtype: Any = None) -> torch.dtype:
    """``--dtype`` of a model loaded for inference on ``device`` (``config_dtype``: the checkpoint's)."""
    chosen = parse_dtype_option(value)
    if chosen is not None:
        return chosen
    if torch.device(device).type == "cpu":
        return torch.float32
    if isinstance(config_dtype, torch.dtype):
        return config_dtype
    if isinstance(config_dtype, str) and isinstance(getattr(torch, config_dtype, None), torch.dtype):
        return getattr(torch, config_dtype)
    return torch.float32
