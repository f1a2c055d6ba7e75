"""Image-text-to-text judges (LLaVA layout) through transformers' image-text classes.

``load_image_text_model`` loads ``AutoProcessor`` + ``AutoModelForImageTextToText`` (which
maps ``llava`` configs to ``LlavaForConditionalGeneration``); ``generate_image_text`` is the
small batched greedy loop for (image, prompt) pairs: prompts sorted by length, left-padded,
only the new tokens decoded. Text-only judges use :func:`llmguard.inference.generate`.
Images are read by :func:`load_image` from a local path (relative to the items file), a
``data:`` URI or an http(s) URL, and hashed for the cache.
"""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path
from typing import Any

from llmguard.errors import InvalidInputError, ResourceError


class ImageError(Exception):
    """An item's image cannot be used (missing, unreadable, not an image)."""


def load_image(ref: str, base_dir: Path) -> tuple[Any, str]:
    """Return ``(PIL RGB image, sha256 of the bytes)``; raise :class:`ImageError` with the reason."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ResourceError("image inputs need Pillow: pip install pillow") from None
    if ref.startswith("data:"):
        try:
            data = base64.b64decode(ref.split(",", 1)[1], validate=True)
        except (IndexError, ValueError) as err:
            raise ImageError(f"bad data: URI ({err})") from None
    elif ref.startswith(("http://", "https://")):
        import urllib.request

        try:
            with urllib.request.urlopen(ref, timeout=20) as resp:  # noqa: S310 - user-given URL
                data = resp.read()
        except Exception as err:  # noqa: BLE001
            raise ImageError(f"cannot download {ref}: {err}") from None
    else:
        path = Path(ref).expanduser()
        if not path.is_absolute():
            path = base_dir / path
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ImageError(f"image file {path} does not exist") from None
        except OSError as err:
            raise ImageError(f"cannot read image {path}: {err.strerror}") from None
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ImageError(f"{ref}: not a decodable image ({type(err).__name__})") from None
    return image.convert("RGB"), hashlib.sha256(data).hexdigest()


def load_image_text_model(
    path: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    load_in_4bit: bool = False,
    load_in_8bit: bool = False,
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """``(model, processor)`` for an image-text-to-text checkpoint, left padding, eval mode."""
    from llmguard.inference import resolve_device

    local = Path(path).expanduser()
    if local.exists() and not (local / "config.json").is_file():
        raise InvalidInputError(f"{local}: not a model directory (no config.json)")
    if not local.exists() and path.count("/") != 1:
        raise InvalidInputError(f"{path}: model directory does not exist")
    dev = resolve_device(device)
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if dtype != "auto":
        kwargs["dtype"] = getattr(torch, dtype)
    elif dev == "cpu":
        kwargs["dtype"] = torch.float32
    if load_in_4bit or load_in_8bit:
        if not dev.startswith("cuda"):
            raise ResourceError("--load-in-4bit/--load-in-8bit need a CUDA GPU (bitsandbytes)")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit)
        kwargs["device_map"] = {"": dev if ":" in dev else 0}
    source = str(local) if local.exists() else path
    try:
        model = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        if "out of memory" in str(err).lower():
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InvalidInputError(f"{source}: not an image-text-to-text model: {first}") from None
    try:
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception as err:  # noqa: BLE001
        raise InvalidInputError(f"{source}: cannot load the processor: {err}") from None
    if not hasattr(processor, "image_processor"):
        raise InvalidInputError(f"{source}: the processor has no image processor (not an image-text model)")
    if not (load_in_4bit or load_in_8bit):
        model = model.to(dev)
    model.eval()
    tok = processor.tokenizer
    tok.padding_side = "left"
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return model, processor


def format_image_prompt(processor: Any, prompt: str, mode: str = "auto") -> str:
    """The text the model sees: the processor's chat template with one image and the prompt
    (``auto``/``chat``), or ``<image>`` + newline + the prompt (``none``/``plain``)."""
    has_chat = bool(getattr(processor, "chat_template", None))
    if mode == "chat" or (mode == "auto" and has_chat):
        if not has_chat:
            raise InvalidInputError("--prompt-format chat: the processor has no chat template")
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True)
    token = getattr(processor, "image_token", None) or "<image>"
    return f"{token}\n{prompt}"


def generate_image_text(
    model: Any,
    processor: Any,
    prompts: list[str],
    images: list[Any],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int | None = None,
) -> list[str]:
    """Batched generation for formatted prompts (each with one image); new text only, in order."""
    import torch

    tok = processor.tokenizer
    lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (-lengths[i], i))
    out: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    gen_kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "pad_token_id": tok.pad_token_id}
    if do_sample:
        gen_kwargs.update(temperature=temperature, top_k=0, top_p=1.0)
    else:
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    if seed is not None:
        torch.manual_seed(seed)
    dtype = next(model.parameters()).dtype
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = processor(
                images=[images[i] for i in chunk], text=[prompts[i] for i in chunk],
                padding=True, return_tensors="pt",
            )
            batch = {k: v.to(device) for k, v in batch.items()}
            if "pixel_values" in batch and batch["pixel_values"].is_floating_point():
                batch["pixel_values"] = batch["pixel_values"].to(dtype)
            generated = model.generate(**batch, **gen_kwargs)
            width = batch["input_ids"].shape[1]
            texts = tok.batch_decode(generated[:, width:], skip_special_tokens=True)
            for i, text in zip(chunk, texts):
                out[i] = text
    return out
