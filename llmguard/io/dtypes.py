"""The dtype names of the safetensors format and their torch counterparts."""

from __future__ import annotations

import torch


SAFETENSORS_TO_TORCH: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"), ("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64")):
    if hasattr(torch, _attr):
        SAFETENSORS_TO_TORCH[_name] = getattr(torch, _attr)

TORCH_TO_SAFETENSORS: dict[torch.dtype, str] = {v: k for k, v in SAFETENSORS_TO_TORCH.items()}

ITEMSIZE: dict[str, int] = {name: torch.empty((), dtype=dt).element_size() for name, dt in SAFETENSORS_TO_TORCH.items()}

from llmguard.io.device import parse_dtype_option  # noqa: E402,F401 - re-exported: the --dtype parser lives with --device


def is_floating(dtype_name: str) -> bool:
    """Floating tensors take part in weight arithmetic; integer/bool buffers are copied."""
    return dtype_name.startswith(("F", "BF"))
