"""``llmguard.io.device``: one --device and one --dtype parser (bf16 accepted everywhere)."""

from __future__ import annotations

import pytest
import torch

from llmguard.errors import LLMGuardError
from llmguard.io.device import load_dtype, parse_dtype_option, resolve_device
from llmguard.inference.loading import resolve_device as inference_device


def test_dtype_names_are_the_same_for_writing_and_loading():
    for name, dtype in (("bf16", torch.bfloat16), ("bfloat16", torch.bfloat16), ("fp16", torch.float16), ("float32", torch.float32)):
        assert parse_dtype_option(name) == dtype and load_dtype(name, "cpu") == dtype
    assert parse_dtype_option("auto") is None
    assert load_dtype("auto", "cpu", torch.bfloat16) == torch.float32  # CPU inference stays float32
    assert load_dtype("auto", "cuda", "bfloat16") == torch.bfloat16 and load_dtype("auto", "cuda", None) == torch.float32
    with pytest.raises(LLMGuardError, match="--dtype 'int8'") as info:
        load_dtype("int8", "cpu")
    assert info.value.exit_code == 2


def test_device_names():
    assert resolve_device("CPU") == torch.device("cpu") and inference_device("cpu") == "cpu"
    assert inference_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "cuda:x"):  # a malformed name is a usage error, GPU or not
        with pytest.raises(LLMGuardError) as info:
            resolve_device(bad)
        assert info.value.exit_code == 2 and "--device" in info.value.message
