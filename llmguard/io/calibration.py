"""Layer-wise calibration: run data through a model one decoder layer at a time.

Activation-aware methods (NLSR's ActSVD and Wanda scores, pruning, GPTQ-style quantisation)
need statistics of the inputs of every linear layer on some calibration text. The naive way
loads the whole model and stores every activation; this module instead

1. builds the model skeleton (``llmguard.io.architecture``: parameters on ``meta``, buffers
   computed for real, float32, the attention implementation the model supports), materialises
   only what runs before the decoder layers, and records *all* positional and keyword arguments
   of *every* decoder layer with pass-through :class:`LayerRecorder` stand-ins, one set per
   batch (transformers 5 layers take ``position_embeddings``, a prepared 4-D mask,
   ``position_ids`` ...; Gemma-style models alternate sliding-window and full attention, each
   with its own mask and rotary table, so layer 0's arguments are not every layer's);
2. then, for each decoder layer in turn, materialises that layer on the device from a weight
   provider (any ``name -> tensor`` callable, so the weights may be computed on the fly, e.g. an
   amplified reference model that never exists on disk), runs every batch through it with
   forward hooks that accumulate the second moment ``XᵀX`` of each hooked linear's input over
   the selected token positions, hands the statistics to a callback, and frees the layer.

Memory is one decoder layer, its ``d_in × d_in`` statistics and the hidden states of the
calibration set (the layer inputs, kept on ``storage``); no per-linear activation is ever
stored and the data pass is made once. When the model fits on the device, ``mode="whole"``
loads it whole and runs each batch once end to end (same statistics, no hidden-state storage).

Linears that receive the very same input tensor (q/k/v, gate/up) share one statistic. Linear
maps are those of :class:`~llmguard.io.architecture.Architecture` (``nn.Linear``, GPT-2's
``Conv1D``, MoE routers, and each expert of transformers 5's fused experts, whose inputs are
caught at the experts' own ``F.linear`` calls on the tokens routed to them). Statistics are
keyed by *checkpoint* module names (``…experts.3.gate_proj``), whatever the in-memory layout.
The batches come from the caller (NLSR tokenises its pairs in ``llmguard.realign.nlsr.calibration_data``);
this engine imports nothing above ``llmguard.io``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from llmguard.errors import InvalidInputError, ResourceError, UsageError
from llmguard.io.architecture import Architecture, load_config, meta_model
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


class LayerRecorder(torch.nn.Module):
    """Stands in for one decoder layer: records its arguments and passes the hidden states on.

    ``tuple_output``: return ``(hidden,)`` for models whose loop indexes the layer output.
    The last recorder stops the forward pass (nothing after the layers is needed).
    """

    class Stop(Exception):
        pass

    def __init__(self, index: int, last: bool, tuple_output: bool) -> None:
        super().__init__()
        self.index, self.last, self.tuple_output = index, last, tuple_output
        self.captured: tuple[tuple[Any, ...], dict[str, Any]] | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.captured = (args, kwargs)
        if self.last:
            raise LayerRecorder.Stop
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden,) if self.tuple_output else hidden


Catcher = LayerRecorder  # the old name


def _to(value: Any, device: torch.device | str, memo: dict[int, torch.Tensor] | None = None) -> Any:
    """``value`` with every tensor moved to ``device``; a tensor seen twice is moved once (``memo``)."""
    memo = {} if memo is None else memo
    if isinstance(value, torch.Tensor):
        moved = memo.get(id(value))
        if moved is None:
            moved = memo[id(value)] = value.to(device)
        return moved
    if isinstance(value, tuple):
        return tuple(_to(v, device, memo) for v in value)
    if isinstance(value, list):
        return [_to(v, device, memo) for v in value]
    if isinstance(value, dict):
        return {k: _to(v, device, memo) for k, v in value.items()}
    return value


def _materialise(arch: Architecture, module: torch.nn.Module, prefix: str, weights: WeightProvider, device: torch.device,
                 skip: Callable[[str], bool] = lambda name: False) -> None:
    """Give every parameter of ``module`` its float32 value, assembled from checkpoint tensors.

    In-memory names are translated to the checkpoint's own (fused MoE experts are stacked from
    the per-expert tensors) by :meth:`Architecture.memory_tensor`; buffers, computed at init,
    move to the device as they are.
    """
    with torch.no_grad():
        for name, param in list(module.named_parameters(recurse=True)):
            if skip(name):
                continue
            full = f"{prefix}.{name}" if prefix else name
            value = arch.memory_tensor(full, weights)
            if tuple(value.shape) != tuple(param.shape):
                raise InvalidInputError(f"tensor {full}: shape {list(value.shape)} but the model expects {list(param.shape)}")
            owner, _, attr = name.rpartition(".")
            target = module.get_submodule(owner) if owner else module
            target._parameters[attr] = torch.nn.Parameter(value.to(device=device, dtype=torch.float32), requires_grad=False)
        for name, buffer in list(module.named_buffers(recurse=True)):
            if skip(name):
                continue
            owner, _, attr = name.rpartition(".")
            target = module.get_submodule(owner) if owner else module
            target._buffers[attr] = buffer.to(device)


def _release(module: torch.nn.Module) -> None:
    """Put a materialised module's parameters back on meta (frees the layer)."""
    for sub in module.modules():
        for attr, param in list(sub._parameters.items()):
            if param is not None:
                sub._parameters[attr] = torch.nn.Parameter(param.to("meta"), requires_grad=False)


@dataclass
class _HookPlan:
    """Which in-memory modules to hook and the checkpoint module names their inputs belong to."""

    linear: dict[str, list[str]] = field(default_factory=dict)  # module → checkpoint names
    experts: dict[str, dict[tuple[str, int], list[str]]] = field(default_factory=dict)  # module → (param, expert) → names

    @classmethod
    def of(cls, arch: Architecture, wanted: set[str], layer: int | None = None) -> "_HookPlan":
        plan = cls()
        for m in arch.linear_maps:
            if m.name not in wanted or (layer is not None and m.layer != layer):
                continue
            if m.parameter is None:
                plan.linear.setdefault(m.module, []).append(m.name)
            else:
                attr = m.parameter.rpartition(".")[2]
                plan.experts.setdefault(m.module, {}).setdefault((attr, int(m.expert)), []).append(m.name)  # type: ignore[arg-type]
        return plan


class _Accumulator:
    """Forward hooks that add XᵀX of each hooked linear map's input, sharing identical inputs.

    Plain modules are hooked at their input. A fused experts module is re-run, inside its own
    forward hook, on the selected tokens only, with ``F.linear`` intercepted: each call on a
    slice of one of its 3-D parameters is expert ``e``'s projection, and its input is exactly
    the tokens routed to ``e`` (after the activation, for ``down_proj``).
    """

    def __init__(self, model: torch.nn.Module, plan: _HookPlan, device: torch.device) -> None:
        self.device = device
        self.plan = plan
        self.stats: dict[str, SecondMoment] = {}  # source key → statistic
        self.alias: dict[str, str] = {}
        self.select: torch.Tensor | None = None
        self._seen: list[tuple[torch.Tensor, str]] = []
        self.expert_calls: dict[str, int] = {}
        self._handles = [model.get_submodule(n).register_forward_hook(self._hook(n)) for n in plan.linear]
        self._handles += [model.get_submodule(n).register_forward_hook(self._experts_hook(n), with_kwargs=True) for n in plan.experts]

    def new_forward(self, select: torch.Tensor) -> None:
        self.select = select.reshape(-1).to(self.device)
        self._seen = []

    def _add(self, key: str, names: list[str], x: torch.Tensor, apply_select: bool = True) -> None:
        flat = x.reshape(-1, x.shape[-1])
        if apply_select and self.select is not None and self.select.numel() == flat.shape[0]:
            flat = flat[self.select]
        flat = flat.to(torch.float32)
        stat = self.stats.get(key)
        if stat is None:
            stat = self.stats[key] = SecondMoment(torch.zeros(x.shape[-1], x.shape[-1], device=self.device), 0, list(names))
        stat.xtx.addmm_(flat.T, flat)
        stat.tokens += flat.shape[0]

    def _hook(self, name: str) -> Callable[..., None]:
        names = self.plan.linear[name]

        def hook(module: torch.nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            x = inputs[0]
            for seen, owner in self._seen:
                if seen is x:
                    if name not in self.alias and name not in self.stats:
                        self.alias[name] = owner
                        self.stats[owner].modules.extend(names)
                    return
            self._seen.append((x, name))
            self._add(self.alias.get(name, name), names, x)

        return hook

    def _experts_hook(self, name: str) -> Callable[..., None]:
        targets = self.plan.experts[name]

        def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            hidden, *rest = list(args) + list(kwargs.values())  # (hidden [N, d], top-k index, top-k weights)
            if hidden.dim() != 2:
                raise InvalidInputError(f"calibration: the experts of {name!r} ({type(module).__name__}) take {hidden.dim()}-D inputs; "
                                        "activation statistics of fused experts are not supported for this model (use --scorer magnitude)")
            n = hidden.shape[0]
            picked = [hidden, *rest]
            if self.select is not None and self.select.numel() == n:  # re-run on the selected tokens only
                picked = [v[self.select] if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == n else v for v in picked]
            params = {attr: getattr(module, attr) for attr, _ in targets}
            calls = 0

            def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
                nonlocal calls
                for attr, param in params.items():
                    if weight.dim() == 2 and weight.untyped_storage().data_ptr() == param.untyped_storage().data_ptr():
                        expert = (weight.storage_offset() - param.storage_offset()) // param.stride(0)
                        names = targets.get((attr, expert))
                        calls += 1
                        if names is not None:
                            self._add(f"{name}.{attr}[{expert}]", names, x, apply_select=False)
                        break
                return original(x, weight, bias)

            original = torch.nn.functional.linear
            torch.nn.functional.linear = linear  # type: ignore[assignment]
            try:
                module.forward(*picked)
            finally:
                torch.nn.functional.linear = original  # type: ignore[assignment]
            if calls == 0 and picked[0].shape[0] > 0:
                raise InvalidInputError(
                    f"calibration: the experts of {name!r} ({type(module).__name__}) are not applied through F.linear per expert; "
                    "activation statistics of fused experts are not supported for this model (use --scorer magnitude)"
                )

        return hook

    def by_module(self) -> dict[str, SecondMoment]:
        """Checkpoint module name → its statistic (shared objects for shared inputs)."""
        out: dict[str, SecondMoment] = {}
        for stat in self.stats.values():
            for name in stat.modules:
                out[name] = stat
        return out

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._seen = []


def linear_names(config: Any) -> list[str]:
    """Checkpoint module names (without ``.weight``) of every linear map inside a decoder layer, in model order."""
    return [m.name for m in Architecture(config).linear_maps]


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
    stored: Mapping[str, tuple[int, ...]] | None = None,
) -> dict[str, SecondMoment]:
    """Second moments of the inputs of the ``targets`` linear maps (all of them when None).

    ``targets`` and the keys of the result are checkpoint module names (tensor name without
    ``.weight``); ``weights(name)`` returns the checkpoint tensor ``name`` (any dtype/device).
    ``on_layer(i, stats)`` is called once per decoder layer with that layer's statistics (still
    on the device) so the caller can reduce them at once; then they are dropped and the return
    value is empty. Without a callback every statistic is returned (on the CPU).

    The forward pass is float32 whatever the checkpoint stores (``dtype`` is kept for callers;
    only float32 is accepted). ``mode``: ``layerwise`` (one decoder layer on the device at a
    time), ``whole`` (load the model once), ``auto`` (whole when it takes under a quarter of the
    device's free memory). ``stored``: the checkpoint's tensor names and shapes, so that older
    layouts transformers still loads (names without the base model's prefix) are read as stored.
    """
    progress = progress or NullProgress()
    device = torch.device(device)
    if mode not in ("auto", "layerwise", "whole"):
        raise UsageError(f"calibration mode {mode!r}: choose auto, layerwise or whole")
    if dtype != torch.float32:
        raise UsageError(f"calibration dtype {dtype}: the statistics are computed in float32")
    if not batches:
        raise InvalidInputError("calibration data: no batches")
    arch = Architecture(config, stored=stored)
    model = arch.model
    all_linear = {m.name for m in arch.linear_maps}
    if not all_linear:
        raise InvalidInputError(f"calibration: {arch.class_name} has no linear map inside its decoder layers")
    missing = set(targets or ()) - all_linear
    if missing:
        raise InvalidInputError(f"calibration: {sorted(missing)[0]!r} is not a linear map inside a decoder layer of {arch.class_name}")
    wanted = all_linear if targets is None else set(targets)
    if mode == "auto":
        need = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("lm_head")) * 4
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
            _whole(arch, weights, batches, wanted, deliver, device, progress)
        else:
            _layerwise(arch, weights, batches, wanted, deliver, device, storage, progress)
    except torch.cuda.OutOfMemoryError as err:  # pragma: no cover - GPU only
        raise ResourceError(f"out of memory on {device} during the calibration pass ({mode}); try --calibration-mode layerwise or fewer/shorter samples") from err
    return collected


def _backbone(arch: Architecture) -> tuple[torch.nn.Module, str]:
    backbone = arch.model.base_model
    return backbone, next(n for n, m in arch.model.named_modules() if m is backbone)


def _front(arch: Architecture, weights: WeightProvider, device: torch.device) -> None:
    """Materialise what runs outside the decoder layers (embeddings, final norm), not the head."""
    backbone, bb_prefix = _backbone(arch)
    inside = arch.layers_prefix + "."
    skip = lambda name: (f"{bb_prefix}.{name}" if bb_prefix else name).startswith(inside)  # noqa: E731
    _materialise(arch, backbone, bb_prefix, weights, device, skip=skip)


def _record_layer_inputs(arch: Architecture, batches: Sequence[CalibrationBatch], device: torch.device, storage: torch.device,
                         progress: Progress) -> list[list[tuple[tuple[Any, ...], dict[str, Any]]]]:
    """Per batch, the arguments of every decoder layer (layer 0's hidden states included)."""
    backbone, _ = _backbone(arch)
    layers = arch.layers
    real = list(layers)
    captured: list[list[tuple[tuple[Any, ...], dict[str, Any]]]] = []
    progress.stage("calibration: capture layer inputs", len(batches))
    try:
        for tuple_output in (False, True):
            recorders = [LayerRecorder(i, i == len(real) - 1, tuple_output) for i in range(len(real))]
            for i, recorder in enumerate(recorders):
                layers[i] = recorder
            captured = []
            consistent = True
            with torch.no_grad():
                for batch in batches:
                    try:
                        backbone(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device), use_cache=False)
                    except LayerRecorder.Stop:
                        pass
                    if any(r.captured is None for r in recorders):
                        raise InvalidInputError(f"{arch.class_name}: the forward pass did not reach every decoder layer")
                    first = recorders[0].captured[0][0] if recorders[0].captured[0] else recorders[0].captured[1]["hidden_states"]  # type: ignore[index]
                    memo: dict[int, torch.Tensor] = {}
                    per_layer = []
                    for r in recorders:
                        args, kwargs = r.captured  # type: ignore[misc]
                        hidden = args[0] if args else kwargs["hidden_states"]
                        consistent &= tuple(hidden.shape) == tuple(first.shape)
                        per_layer.append((_to(args, storage, memo), _to(kwargs, storage, memo)))
                        r.captured = None
                    captured.append(per_layer)
                    progress.advance()
            if consistent:
                break
        else:
            raise InvalidInputError(f"{arch.class_name}: cannot replay its decoder layers one at a time (use --calibration-mode whole)")
    finally:
        for i, layer in enumerate(real):
            layers[i] = layer
    return captured


def _layerwise(arch, weights, batches, wanted, deliver, device, storage, progress) -> None:
    storage = torch.device(storage) if storage is not None else torch.device("cpu")
    _front(arch, weights, device)
    captured = _record_layer_inputs(arch, batches, device, storage, progress)
    hidden_states = []
    for per_layer in captured:
        args, kwargs = per_layer[0]
        hidden_states.append(args[0] if args else kwargs["hidden_states"])
    progress.stage("calibration: decoder layers", len(arch.layers))
    with torch.no_grad():
        for index, layer in enumerate(arch.layers):
            prefix = f"{arch.layers_prefix}.{index}"
            _materialise(arch, layer, prefix, weights, device)
            acc = _Accumulator(arch.model, _HookPlan.of(arch, wanted, index), device)
            try:
                for b, batch in enumerate(batches):
                    args, kwargs = captured[b][index]
                    memo: dict[int, torch.Tensor] = {}
                    args, kwargs = _to(args, device, memo), _to(kwargs, device, memo)
                    hidden = hidden_states[b].to(device)
                    acc.new_forward(batch.select)
                    if args:
                        out = layer(hidden, *args[1:], **kwargs)
                    else:
                        out = layer(**{**kwargs, "hidden_states": hidden})
                    out = out[0] if isinstance(out, (tuple, list)) else out
                    hidden_states[b] = out.to(storage)
            finally:
                acc.close()
            deliver(index, acc.by_module())
            del acc
            _release(layer)
            progress.advance()


def _whole(arch, weights, batches, wanted, deliver, device, progress) -> None:
    backbone, bb_prefix = _backbone(arch)
    _materialise(arch, backbone, bb_prefix, weights, device)
    acc = _Accumulator(arch.model, _HookPlan.of(arch, wanted), device)
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
    layer_of = {m.name: m.layer for m in arch.linear_maps}
    for index in range(arch.num_layers):
        deliver(index, {n: s for n, s in stats.items() if layer_of.get(n) == index})


__all__ = [
    "CalibrationBatch",
    "Catcher",
    "LayerRecorder",
    "SecondMoment",
    "linear_names",
    "load_config",
    "second_moments",
]
