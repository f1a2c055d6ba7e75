"""Load a causal LM (plus an optional PEFT adapter) for inference, with one-line errors.

A *model* is a local directory in Hugging Face layout (``config.json`` + safetensors weights,
single file or sharded with an index), a PEFT adapter directory whose ``adapter_config.json``
names a local base model, or a hub id when the hub is reachable. Pickle weights
(``pytorch_model.bin``) are refused unless ``allow_pickle=True``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from llmguard.errors import InvalidInputError, ResourceError, UsageError

def resolve_device(device: str = "auto") -> str:
    """``--device`` as a device string (``llmguard.io.device.resolve_device``)."""
    from llmguard.io.device import resolve_device as resolve

    return str(resolve(device))


def _read_json(path: Path, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as err:
        raise InvalidInputError(f"{path}: {what} is not valid JSON (line {err.lineno}: {err.msg})") from None
    except OSError as err:
        raise InvalidInputError(f"{path}: cannot read {what}: {err.strerror}") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path}: {what} must be a JSON object")
    return data


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return (
        len(parts) == 2
        and all(parts)
        and not text.startswith((".", "~", "/"))
        and not text.endswith((".json", ".safetensors"))
    )


def _check_model_dir(path: Path, allow_pickle: bool) -> None:
    if not (path / "config.json").is_file():
        raise InvalidInputError(f"{path}: not a model directory (no config.json)")
    has_st = (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()
    has_pickle = (path / "pytorch_model.bin").is_file() or (path / "pytorch_model.bin.index.json").is_file()
    if not has_st:
        if has_pickle and not allow_pickle:
            raise InvalidInputError(
                f"{path}: only pickle weights (pytorch_model.bin); pass --allow-pickle to load them"
            )
        if not has_pickle:
            raise InvalidInputError(f"{path}: no weights (model.safetensors or model.safetensors.index.json)")


def _check_adapter_dir(path: Path) -> dict:
    if not path.exists():
        raise InvalidInputError(f"{path}: adapter directory does not exist")
    if not path.is_dir() or not (path / "adapter_config.json").is_file():
        raise InvalidInputError(f"{path}: not a PEFT adapter directory (no adapter_config.json)")
    if not (path / "adapter_model.safetensors").is_file():
        raise InvalidInputError(f"{path}: no adapter_model.safetensors")
    return _read_json(path / "adapter_config.json", "adapter_config.json")


def load_causal_lm(
    path: str | os.PathLike,
    *,
    adapter: str | os.PathLike | None = None,
    device: str = "auto",
    dtype: str = "auto",
    load_in_4bit: bool = False,
    load_in_8bit: bool = False,
    trust_remote_code: bool = False,
    merge_adapter: bool = True,
    allow_pickle: bool = False,
    padding_side: str = "left",
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` ready for generation (eval mode, left padding, pad token set).

    Args:
        path: model directory (HF layout), PEFT adapter directory (its base is loaded from
            ``base_model_name_or_path``), or a hub id.
        adapter: optional PEFT adapter directory applied on top of ``path``.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        dtype: ``auto`` (checkpoint dtype on GPU, float32 on CPU), ``float32``, ``bfloat16``, ``float16``.
        load_in_4bit / load_in_8bit: bitsandbytes quantisation (imported only when asked; GPU only).
        trust_remote_code: allow custom modelling code from the checkpoint.
        merge_adapter: merge the adapter into the weights (faster generation); ignored when quantised.
        allow_pickle: accept ``pytorch_model.bin`` weights.
        padding_side: tokenizer padding side (``left`` for batched generation).

    Raises:
        InvalidInputError: missing or malformed model/adapter directory (exit 3).
        ResourceError: requested device or bitsandbytes missing (exit 4).
    """
    if load_in_4bit and load_in_8bit:
        raise UsageError("--load-in-4bit and --load-in-8bit are mutually exclusive")
    text = os.fspath(path)
    local = Path(text).expanduser()
    adapter_path = Path(os.fspath(adapter)).expanduser() if adapter is not None else None

    # An adapter directory given as the model: load its base, then the adapter.
    if local.is_dir() and not (local / "config.json").is_file() and (local / "adapter_config.json").is_file():
        if adapter_path is not None:
            raise UsageError(f"{local}: is an adapter directory; give its base model as the model, or drop --adapter")
        cfg = _check_adapter_dir(local)
        base = cfg.get("base_model_name_or_path")
        if not base:
            raise InvalidInputError(f"{local}/adapter_config.json: field 'base_model_name_or_path' is empty")
        adapter_path, local, text = local, Path(base).expanduser(), str(base)

    is_local = local.exists()
    if is_local:
        if not local.is_dir():
            raise InvalidInputError(f"{local}: not a model directory (it is a file)")
        _check_model_dir(local, allow_pickle)
    elif not _looks_like_hub_id(text):
        raise InvalidInputError(f"{text}: model directory does not exist")
    adapter_cfg = _check_adapter_dir(adapter_path) if adapter_path is not None else None
    del adapter_cfg

    quantized = load_in_4bit or load_in_8bit
    dev = resolve_device(device)
    if quantized:
        if not dev.startswith("cuda"):
            raise ResourceError("--load-in-4bit/--load-in-8bit need a CUDA GPU (bitsandbytes)")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ResourceError(
                "--load-in-4bit/--load-in-8bit need bitsandbytes: pip install 'llmguard[quant]'"
            ) from None

    import torch  # noqa: F401
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # stderr stays for llmguard's own progress

    source = str(local) if is_local else text
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception as err:  # noqa: BLE001 - hub/offline/format errors all mean "cannot use this input"
        where = "config.json" if is_local else "the hub (offline, or not a model id?)"
        raise InvalidInputError(f"{source}: cannot load the model config from {where}: {_first_line(err)}") from None
    from llmguard.io.device import load_dtype

    torch_dtype = load_dtype(dtype, dev, getattr(config, "dtype", None) or getattr(config, "torch_dtype", None))

    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if quantized:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=load_in_4bit,
            load_in_8bit=load_in_8bit,
            bnb_4bit_compute_dtype=torch_dtype if load_in_4bit else None,
        )
        kwargs["device_map"] = {"": dev if ":" in dev else 0}
    if is_local and not (local / "model.safetensors").is_file() and not (local / "model.safetensors.index.json").is_file():
        kwargs["use_safetensors"] = False
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except Exception as err:  # noqa: BLE001 - safetensors/transformers raise many kinds for bad files
        if _is_oom(err):
            raise
        raise InvalidInputError(f"{source}: cannot load the model weights: {_first_line(err)}") from None

    if adapter_path is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(adapter_path))
        except Exception as err:  # noqa: BLE001
            if _is_oom(err):
                raise
            raise InvalidInputError(
                f"{adapter_path}: adapter does not fit the model {source}: {_first_line(err)}"
            ) from None
        if merge_adapter and not quantized:
            model = model.merge_and_unload()
    if not quantized:
        model = model.to(dev)
    model.eval()

    tokenizer = _load_tokenizer(source, adapter_path, trust_remote_code)
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
            model.resize_token_embeddings(len(tokenizer))
    gen_cfg = getattr(model, "generation_config", None)
    if gen_cfg is not None and gen_cfg.pad_token_id is None:
        gen_cfg.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _load_tokenizer(source: str, adapter_path: Path | None, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    candidates = []
    if adapter_path is not None and (
        (adapter_path / "tokenizer.json").is_file() or (adapter_path / "tokenizer_config.json").is_file()
    ):
        candidates.append(str(adapter_path))
    candidates.append(source)
    last: Exception | None = None
    for cand in candidates:
        try:
            return AutoTokenizer.from_pretrained(cand, trust_remote_code=trust_remote_code)
        except Exception as err:  # noqa: BLE001
            last = err
    raise InvalidInputError(f"{source}: cannot load the tokenizer: {_first_line(last)}")


def _first_line(err: BaseException | None) -> str:
    text = str(err).strip() if err is not None else ""
    return text.splitlines()[0] if text else type(err).__name__


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError" or "out of memory" in str(err).lower()
