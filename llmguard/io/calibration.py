"""Layer-wise calibration: run data through a model one decoder layer at a time.

Activation-aware methods (NLSR's ActSVD and Wanda scores, pruning, GPTQ-style quantisation)
need statistics of the inputs of every linear layer on some calibration text. The naive way
loads the whole model and stores every activation; this module instead

1. builds the model skeleton on the ``meta`` device (no memory), materialises only the
   embeddings and rotary tables, and captures *all* positional and keyword arguments of
   decoder layer 0 with a :class:`Catcher` (transformers 5 layers take ``position_embeddings``,
   a prepared 4-D mask, ``position_ids`` ...), one set per batch;
2. then, for each decoder layer in turn, materialises that layer on the device from a weight
   provider (any ``name -> tensor`` callable, so the weights may be computed on the fly, e.g. an
   amplified reference model that never exists on disk), runs every batch through it with
   forward hooks that accumulate the second moment ``XᵀX`` of each hooked linear's input over
   the selected token positions, hands the statistics to a callback, and frees the layer.

Memory is one decoder layer, its ``d_in × d_in`` statistics and the hidden states of the
calibration set (the layer inputs, kept on ``storage``); no per-linear activation is ever
stored and the data pass is made once. When the model fits on the device, ``mode="whole"``
loads it whole and runs each batch once end to end (same statistics, no hidden-state storage).

Linears that receive the very same input tensor (q/k/v, gate/up) share one statistic. The
batches come from the caller (NLSR tokenises its pairs in ``llmguard.realign.nlsr.calibration_data``);
this engine imports nothing above ``llmguard.io``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from llmguard.errors import InvalidInputError, ResourceError, UsageError
from llmguard.progress import NullProgress, Progress

WeightProvider = Callable[[str], torch.Tensor]


# -- batches ---------------------------------------------------------------------------------
@dataclass
class CalibrationBatch:
    """Right-padded token ids, attention mask and the positions whose activations count."""

    input_ids: torch.Tensor  # [B, T] long
    attention_mask: torch.Tensor  # [B, T] long
    select: torch.Tensor  # [B, T] bool

    @property
    def tokens(self) -> int:
        return int(self.select.sum())


# -- statistics ------------------------------------------------------------------------------
@dataclass
class SecondMoment:
    """Σ xxᵀ over the selected token positions of one linear's input (float32)."""

    xtx: torch.Tensor
    tokens: int = 0
    modules: list[str] = field(default_factory=list)  # every hooked linear that sees this input

    def covariance(self) -> torch.Tensor:
        """The mean second moment E[xxᵀ] (the scale does not matter for masks, but it keeps numbers sane)."""
        return self.xtx / max(1, self.tokens)


LayerCallback = Callable[[int, dict[str, SecondMoment]], None]


class Catcher(torch.nn.Module):
    """Stands in for decoder layer 0: records its inputs, then stops the forward pass."""

    class Stop(Exception):
        pass

    def __init__(self) -> None:
        super().__init__()
        self.captured: tuple[tuple[Any, ...], dict[str, Any]] | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.captured = (args, kwargs)
        raise Catcher.Stop


def _to(value: Any, device: torch.device | str) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def _decoder_layers(model: torch.nn.Module, count: int) -> tuple[str, torch.nn.ModuleList]:
    """The ModuleList of decoder layers (the first list with ``num_hidden_layers`` entries)."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return name, module
    raise InvalidInputError(f"cannot find the {count} decoder layers in {type(model).__name__}")


def _fill(module: torch.nn.Module, prefix: str, weights: WeightProvider, device: torch.device, dtype: torch.dtype) -> None:
    """Give every parameter of ``module`` its value from the provider (``prefix.param_name``)."""
    module.to_empty(device=device)
    with torch.no_grad():
        for name, param in module.named_parameters(recurse=True):
            value = weights(f"{prefix}.{name}" if prefix else name)
            if tuple(value.shape) != tuple(param.shape):
                raise InvalidInputError(f"tensor {prefix}.{name}: shape {list(value.shape)} but the model expects {list(param.shape)}")
            param.copy_(value.to(device=device, dtype=dtype))


def _rebuild_buffers(model: torch.nn.Module, config: Any, device: torch.device) -> None:
    """Recreate modules whose buffers are computed at init (rotary tables) outside the meta device."""
    for name, module in list(model.named_modules()):
        if any(True for _ in module.buffers(recurse=False)) and "rotary" in type(module).__name__.lower():
            fresh = type(module)(config=config).to(device)
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, fresh)


class _Accumulator:
    """Forward hooks that add XᵀX of each hooked linear's input, sharing identical inputs."""

    def __init__(self, modules: dict[str, torch.nn.Module], device: torch.device) -> None:
        self.device = device
        self.stats: dict[str, SecondMoment] = {}
        self.alias: dict[str, str] = {}
        self.select: torch.Tensor | None = None
        self._seen: list[tuple[torch.Tensor, str]] = []
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in modules.items()]

    def new_forward(self, select: torch.Tensor) -> None:
        self.select = select.reshape(-1).to(self.device)
        self._seen = []

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            x = inputs[0]
            for seen, owner in self._seen:
                if seen is x:
                    if name not in self.alias and name not in self.stats:
                        self.alias[name] = owner
                        self.stats[owner].modules.append(name)
                    return
            self._seen.append((x, name))
            owner = self.alias.get(name, name)
            flat = x.reshape(-1, x.shape[-1])
            if self.select is not None and self.select.numel() == flat.shape[0]:
                flat = flat[self.select]
            flat = flat.to(torch.float32)
            stat = self.stats.get(owner)
            if stat is None:
                stat = self.stats[owner] = SecondMoment(torch.zeros(x.shape[-1], x.shape[-1], device=self.device), 0, [owner])
            stat.xtx.addmm_(flat.T, flat)
            stat.tokens += flat.shape[0]

        return hook

    def by_module(self) -> dict[str, SecondMoment]:
        out = dict(self.stats)
        for name, owner in self.alias.items():
            out[name] = self.stats[owner]
        return out

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._seen = []


def load_config(model_dir: str | os.PathLike[str]) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(model_dir))
    except Exception as err:  # noqa: BLE001
        raise InvalidInputError(f"{model_dir}: cannot read config.json for the calibration pass ({type(err).__name__}: {err})") from None


def meta_model(config: Any) -> torch.nn.Module:
    """The model skeleton on the meta device (no weights allocated)."""
    from transformers import AutoModelForCausalLM

    import warnings

    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # transformers' own deprecation chatter
            model = AutoModelForCausalLM.from_config(config)
    except Exception as err:  # noqa: BLE001
        raise InvalidInputError(f"cannot build a {getattr(config, 'model_type', '?')} model from its config ({type(err).__name__}: {err})") from None
    return model.eval()


def linear_names(config: Any) -> list[str]:
    """Names (as in the checkpoint, without ``.weight``) of every linear inside a decoder layer, in model order."""
    model = meta_model(config)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    prefix, _ = _decoder_layers(model, text.num_hidden_layers)
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith(prefix + ".")]


def model_bytes(config: Any, dtype: torch.dtype = torch.float32) -> int:
    model = meta_model(config)
    size = torch.finfo(dtype).bits // 8
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("lm_head")) * size


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def second_moments(
    config: Any,
    weights: WeightProvider,
    batches: Sequence[CalibrationBatch],
    targets: set[str] | None = None,
    *,
    on_layer: LayerCallback | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    storage: torch.device | str | None = None,
    mode: str = "auto",
    progress: Progress | None = None,
) -> dict[str, SecondMoment]:
    """Second moments of the inputs of the ``targets`` linears (all decoder linears when None).

    ``weights(name)`` returns the checkpoint tensor ``name`` (any dtype/device). ``on_layer(i,
    stats)`` is called once per decoder layer with that layer's statistics (still on the device)
    so the caller can reduce them at once; then they are dropped and the return value is empty.
    Without a callback every statistic is returned (on the CPU).

    ``mode``: ``layerwise`` (one decoder layer on the device at a time), ``whole`` (load the model
    once), ``auto`` (whole when it takes under a quarter of the device's free memory).
    """
    progress = progress or NullProgress()
    device = torch.device(device)
    if mode not in ("auto", "layerwise", "whole"):
        raise UsageError(f"calibration mode {mode!r}: choose auto, layerwise or whole")
    if not batches:
        raise InvalidInputError("calibration data: no batches")
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    try:
        text._attn_implementation = "sdpa"  # eager is fine too; never flash (needs a GPU build)
    except Exception:  # noqa: BLE001
        pass
    model = meta_model(config)
    n_layers = int(text.num_hidden_layers)
    prefix, layers = _decoder_layers(model, n_layers)
    all_linear = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith(prefix + ".")}
    wanted = all_linear if targets is None else set(targets) & all_linear
    missing = set(targets or ()) - all_linear
    if missing:
        raise InvalidInputError(f"calibration: {sorted(missing)[0]!r} is not a linear layer inside a decoder layer of {type(model).__name__}")
    if mode == "auto":
        need = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("lm_head")) * (torch.finfo(dtype).bits // 8)
        mode = "whole" if need * 4 <= available_bytes(device) else "layerwise"
    collected: dict[str, SecondMoment] = {}

    def deliver(index: int, stats: dict[str, SecondMoment]) -> None:
        if on_layer is not None:
            on_layer(index, stats)
        else:
            seen: dict[int, SecondMoment] = {}
            for name, stat in stats.items():
                moved = seen.get(id(stat))
                if moved is None:
                    moved = seen[id(stat)] = SecondMoment(stat.xtx.cpu(), stat.tokens, list(stat.modules))
                collected[name] = moved

    try:
        if mode == "whole":
            _whole(model, config, prefix, layers, weights, batches, wanted, deliver, device, dtype, progress)
        else:
            _layerwise(model, config, prefix, layers, weights, batches, wanted, deliver, device, dtype, storage, progress)
    except torch.cuda.OutOfMemoryError as err:  # pragma: no cover - GPU only
        raise ResourceError(f"out of memory on {device} during the calibration pass ({mode}); try --calibration-mode layerwise or fewer/shorter samples") from err
    return collected


def _layer_targets(prefix: str, index: int, layer: torch.nn.Module, wanted: set[str]) -> dict[str, torch.nn.Module]:
    base = f"{prefix}.{index}"
    return {f"{base}.{n}": m for n, m in layer.named_modules() if f"{base}.{n}" in wanted}


def _front(model: torch.nn.Module, config: Any, prefix: str, weights: WeightProvider, device: torch.device, dtype: torch.dtype) -> None:
    """Materialise what runs before layer 0 (embeddings, rotary tables); leave the rest on meta."""
    _rebuild_buffers(model, config, device)
    for name, module in model.named_modules():
        if not name or name.startswith(prefix) or name.startswith("lm_head"):
            continue
        params = list(module.named_parameters(recurse=False))
        if params and all(p.is_meta for _, p in params) and isinstance(module, torch.nn.Embedding):
            _fill(module, name, weights, device, dtype)


def _layerwise(model, config, prefix, layers, weights, batches, wanted, deliver, device, dtype, storage, progress) -> None:
    storage = torch.device(storage) if storage is not None else torch.device("cpu")
    _front(model, config, prefix, weights, device, dtype)
    real_first = layers[0]
    catcher = Catcher()
    layers[0] = catcher
    captured: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    progress.stage("calibration: capture layer-0 inputs", len(batches))
    with torch.no_grad():
        for batch in batches:
            try:
                model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device), use_cache=False)
            except Catcher.Stop:
                pass
            if catcher.captured is None:
                raise InvalidInputError(f"{type(model).__name__}: the forward pass never reached decoder layer 0")
            args, kwargs = catcher.captured
            catcher.captured = None
            captured.append((_to(args, storage), _to(kwargs, storage)))
            progress.advance()
    layers[0] = real_first
    progress.stage("calibration: decoder layers", len(layers))
    with torch.no_grad():
        for index in range(len(layers)):
            layer = layers[index]
            _fill(layer, f"{prefix}.{index}", weights, device, dtype)
            acc = _Accumulator(_layer_targets(prefix, index, layer, wanted), device)
            try:
                for b, batch in enumerate(batches):
                    args, kwargs = captured[b]
                    acc.new_forward(batch.select)
                    out = layer(*_to(args, device), **_to(kwargs, device))
                    hidden = out[0] if isinstance(out, (tuple, list)) else out
                    captured[b] = ((hidden.to(storage),) + tuple(args[1:]), kwargs)
            finally:
                acc.close()
            deliver(index, acc.by_module())
            del acc
            layers[index] = layer.to("meta")
            progress.advance()


def _whole(model, config, prefix, layers, weights, batches, wanted, deliver, device, dtype, progress) -> None:
    _rebuild_buffers(model, config, device)
    backbone = model.base_model
    bb_prefix = next(n for n, m in model.named_modules() if m is backbone)
    _fill_all(backbone, bb_prefix, weights, device, dtype)
    targets: dict[str, torch.nn.Module] = {n: m for n, m in model.named_modules() if n in wanted}
    acc = _Accumulator(targets, device)
    progress.stage("calibration: forward passes", len(batches))
    try:
        with torch.no_grad():
            for batch in batches:
                acc.new_forward(batch.select)
                backbone(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device), use_cache=False)
                progress.advance()
    finally:
        acc.close()
    stats = acc.by_module()
    for index in range(len(layers)):
        base = f"{prefix}.{index}."
        deliver(index, {n: s for n, s in stats.items() if n.startswith(base)})


def _fill_all(module: torch.nn.Module, prefix: str, weights: WeightProvider, device: torch.device, dtype: torch.dtype) -> None:
    buffers = {n: b for n, b in module.named_buffers() if not b.is_meta}
    saved = {n: b.clone() for n, b in buffers.items()}
    _fill(module, prefix, weights, device, dtype)
    for name, value in saved.items():
        owner, _, attr = name.rpartition(".")
        target = module.get_submodule(owner) if owner else module
        target._buffers[attr] = value.to(device)


__all__ = [
    "CalibrationBatch",
    "Catcher",
    "SecondMoment",
    "linear_names",
    "load_config",
    "second_moments",
]
