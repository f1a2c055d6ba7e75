"""The streaming checkpoint engine: read per tensor, compute in float32, write atomically.

Everything here works one tensor at a time so memory does not grow with model size:
:class:`SafetensorsFile` reads single tensors with ``pread``, :class:`Checkpoint` resolves a
model directory through its index, :class:`LoraAdapter` computes ΔW from adapter files alone,
:class:`Architecture` says which tensors are linear maps, fused or tied (from the config and
transformers' module tree), and :class:`StreamingWriter` writes HF-layout shards into a temporary directory that is renamed
into place only when complete.

The names below are imported on first use (they need torch); ``llmguard.io.checkpoint_options``,
which the CLI reads at import time, does not.
"""

from typing import Any

_EXPORTS = {"Checkpoint": "checkpoint", "open_checkpoint": "checkpoint", "LoraAdapter": "lora", "is_adapter_dir": "lora",
            "SafetensorsFile": "safetensors_file", "TensorInfo": "safetensors_file", "StreamingWriter": "writer",
            "TensorPlan": "writer", "Architecture": "architecture", "architecture_of": "architecture"}

__all__ = [
    "Architecture",
    "Checkpoint",
    "LoraAdapter",
    "SafetensorsFile",
    "StreamingWriter",
    "TensorInfo",
    "TensorPlan",
    "architecture_of",
    "is_adapter_dir",
    "open_checkpoint",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
