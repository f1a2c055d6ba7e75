"""Load a causal LM (plus an optional PEFT adapter) for inference, with one-line errors.

A *model* is a local directory in Hugging Face layout (``config.json`` + safetensors weights,
single file or sharded with an index), a PEFT adapter directory whose ``adapter_config.json``
names a local base model, or a hub id when the hub is reachable. Pickle weights
(``pytorch_model.bin``) are refused unless ``allow_pickle=True``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmguard.errors import InvalidInputError, ResourceError, UsageError

def resolve_device(device: str = "auto") -> str:
    """``--device`` as a device string (``llmguard.io.device.resolve_device``)."""
    from llmguard.io.device import resolve_device as resolve

    return str(resolve(device))


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
    from llmguard.io.lora import read_adapter_config

    if not path.exists():
        raise InvalidInputError(f"{path}: adapter directory does not exist")
    if not path.is_dir() or not (path / "adapter_config.json").is_file():
        raise InvalidInputError(f"{path}: not a PEFT adapter directory (no adapter_config.json)")
    if not (path / "adapter_model.safetensors").is_file():
        raise InvalidInputError(f"{path}: no adapter_model.safetensors")
    return read_adapter_config(path / "adapter_config.json")


def verify_checkpoint_files(model_dir: Path, adapter_dir: Path | None) -> None:
    """The engine's checks on the files transformers and PEFT are about to open, before they do.

    transformers follows a ``weight_map`` entry ``../x``, an absolute path or a symlink out of
    the directory, accepts overlapping ``data_offsets``, and PEFT applies an adapter partially
    when a ``lora_B`` is missing or a target module is not in the base. Opening the checkpoint
    with :func:`llmguard.io.checkpoint.open_checkpoint` (confined index, validated headers) and
    the adapter with :class:`llmguard.io.lora.LoraAdapter` (both factors of every module, every
    target present in the base) refuses all of these with one line (exit 3).
    """
    from llmguard.io.checkpoint import open_checkpoint
    from llmguard.io.dtypes import is_floating
    from llmguard.io.lora import LoraAdapter
    from llmguard.io.sources import attach_architecture

    checkpoint = open_checkpoint(model_dir)
    try:
        if not (checkpoint.config or {}).get("quantization_config"):
            # transformers casts an integer tensor into a float parameter without a word
            ints = [m for m in checkpoint.meta.values() if not is_floating(m.dtype)]
            if ints:
                raise InvalidInputError(f"{ints[0].file}: tensor {ints[0].name!r} is stored as {ints[0].dtype}; "
                                        "the model's parameters are floating point (wrong or corrupted file?)")
        if adapter_dir is not None:
            adapter = LoraAdapter(adapter_dir)
            attach_architecture(adapter, Path(model_dir), str(adapter_dir))
            names = set(checkpoint.names())
            if checkpoint.tie_word_embeddings and "model.embed_tokens.weight" in names:
                names.add("lm_head.weight")
            adapter.resolve_targets(names)
            shapes = {name: meta.shape for name, meta in checkpoint.meta.items()}
            if "lm_head.weight" not in shapes and "model.embed_tokens.weight" in shapes:
                shapes["lm_head.weight"] = shapes["model.embed_tokens.weight"]
            adapter.check_shapes(shapes)
    finally:
        checkpoint.close()


def check_loading_info(source: str, info: dict[str, Any], allow_missing: bool = False) -> None:
    """Refuse a model that transformers loaded with missing, unexpected or resized tensors.

    A missing tensor (or a ``config.json`` naming more layers than are stored) is silently
    initialised at random by ``from_pretrained``; evaluating or generating with it gives a
    plausible-looking, wrong result. ``allow_missing`` accepts missing tensors only.
    """
    missing = sorted(info.get("missing_keys") or [])
    unexpected = sorted(info.get("unexpected_keys") or [])
    mismatched = sorted(str(m[0]) if isinstance(m, (tuple, list)) else str(m) for m in (info.get("mismatched_keys") or []))
    if missing and not allow_missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InvalidInputError(f"{source}: tensor {missing[0]!r} the model config expects is not stored{more}; "
                                "it would be randomly initialised (is config.json for these weights?)")
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise InvalidInputError(f"{source}: stored tensor {unexpected[0]!r} is not part of the model its config.json describes{more}")
    if mismatched:
        raise InvalidInputError(f"{source}: tensor {mismatched[0]!r} has a shape other than config.json implies")


def check_adapter_base(model: str, local: Path, adapter_cfg: dict, adapter_dir: Path, warn: Callable[[str], None]) -> None:
    """Warn when the adapter records another base than the model it is applied to.

    A warning, not a refusal: the recorded ``base_model_name_or_path`` is often a hub id or a
    path on the training machine while the user loads a local copy of the same weights; a
    genuinely different base either fails to load (shapes) or is the user's deliberate choice.
    """
    recorded = adapter_cfg.get("base_model_name_or_path")
    if not recorded:
        return
    recorded_path = Path(recorded).expanduser()
    if recorded_path.exists() and local.exists():
        same = recorded_path.resolve() == local.resolve()
    else:
        same = recorded.rstrip("/") == model.rstrip("/")
    if not same:
        warn(f"{adapter_dir}: adapter was trained on {recorded!r} (base_model_name_or_path) but is applied to {model!r}; "
             "results are only meaningful if they are the same weights")


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
    allow_missing: bool = False,
    on_warning: Callable[[str], None] | None = None,
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
        allow_missing: load even when a tensor the config expects is not stored (it is then
            randomly initialised; refused by default, see :func:`check_loading_info`).
        on_warning: receives warnings (an adapter recorded for another base).

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
    if is_local and ((local / "model.safetensors").is_file() or (local / "model.safetensors.index.json").is_file()):
        verify_checkpoint_files(local, adapter_path)
    if adapter_cfg is not None and adapter_path is not None:
        check_adapter_base(text, local, adapter_cfg, adapter_path, on_warning or (lambda message: None))

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
        model, loading_info = AutoModelForCausalLM.from_pretrained(source, output_loading_info=True, **kwargs)
    except Exception as err:  # noqa: BLE001 - safetensors/transformers raise many kinds for bad files
        if _is_oom(err):
            raise
        raise InvalidInputError(f"{source}: cannot load the model weights: {_first_line(err)}") from None
    check_loading_info(source, loading_info, allow_missing)

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
