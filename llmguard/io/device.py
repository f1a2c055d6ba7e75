"""``--device`` resolution: auto picks CUDA when present; asking for a missing device is exit 4."""

from __future__ import annotations

import torch

from llmguard.errors import ResourceError, UsageError


def resolve_device(spec: str | None = "auto") -> torch.device:
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ResourceError(f"--device {spec}: no CUDA device is available")
        device = torch.device(spec)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ResourceError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
        return device
    raise UsageError(f"--device {spec!r}: choose auto, cpu, cuda or cuda:N")
