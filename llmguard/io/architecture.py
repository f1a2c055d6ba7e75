"""What a checkpoint's tensors *are*: derived from its config and transformers' own module tree.

Verbs that treat some tensors specially (NLSR patches linear maps, the calibration pass hooks
them, LoRA deltas are added to them) ask this module instead of keeping a list per model:

- **linear maps**: every 2-D weight inside a decoder layer (``nn.Linear``, routers that call
  ``F.linear`` on their own ``weight``) in (out × in) orientation; transformers' GPT-2 style
  ``Conv1D`` stores (in × out) and is marked ``transposed``.
- **fused tensors**: transformers 5 keeps MoE experts fused in memory (``experts.gate_up_proj``
  of shape [experts, 2·inter, hidden]) while ``save_pretrained`` writes one tensor per expert
  and projection (``experts.3.gate_proj.weight``, Mixtral's ``block_sparse_moe.experts.3.w1``).
  The mapping between the two layouts is transformers' own conversion mapping (the one
  ``from_pretrained`` and ``save_pretrained`` apply), run here one parameter group at a time on
  tensors we pass in: :meth:`Architecture.memory_tensor` assembles an in-memory parameter from
  checkpoint tensors, :meth:`Architecture.checkpoint_tensors` splits one (or a delta of one)
  back into checkpoint tensors.
- **tied** weights: the model's ``_tied_weights_keys`` (``lm_head.weight`` → the input
  embeddings) when the config ties them.

The model skeleton is built with parameters on the ``meta`` device and buffers computed for real
on the CPU (rotary tables, Gemma's ``embed_scale``): buffers are part of the architecture, not
of the checkpoint, and an uninitialised one silently corrupts every activation.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from copy import deepcopy
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

from llmguard.errors import InvalidInputError

Reader = Callable[[str], torch.Tensor]


@dataclass(frozen=True)
class LinearMap:
    """One stored tensor that is the weight of a linear map inside a decoder layer."""

    tensor: str  # checkpoint tensor name, e.g. model.layers.0.mlp.experts.3.gate_proj.weight
    module: str  # in-memory module that applies it (the fused experts module for experts)
    layer: int
    transposed: bool = False  # stored (in × out): transformers' Conv1D
    parameter: str | None = None  # in-memory fused parameter it is a slice of (MoE experts)
    expert: int | None = None  # the expert index inside ``parameter``

    @property
    def name(self) -> str:
        """The checkpoint module name (the tensor name without ``.weight``)."""
        return self.tensor.removesuffix(".weight")


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Create every parameter on ``meta`` while buffers are computed on the CPU as at init.

    ``torch.device("meta")`` would also put buffers on meta, and ``to_empty()`` then leaves them
    as uninitialised memory (Gemma3's ``embed_scale`` became 1.4e14 instead of √hidden).
    """
    original = torch.nn.Module.register_parameter

    def register(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            value = module._parameters[name]
            module._parameters[name] = torch.nn.Parameter(value.to("meta"), requires_grad=value.requires_grad)

    torch.nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original  # type: ignore[method-assign]


def text_config(config: Any) -> Any:
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def load_config(model_dir: str | os.PathLike[str]) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(model_dir))
    except Exception as err:  # noqa: BLE001
        raise InvalidInputError(f"{model_dir}: cannot read config.json ({type(err).__name__}: {err})") from None


def _attention_for(config: Any) -> None:
    """sdpa where the model class supports it, else eager; never flash (needs a GPU build)."""
    from transformers import AutoModelForCausalLM

    try:
        cls = AutoModelForCausalLM._model_mapping[type(config)]
    except Exception:  # noqa: BLE001 - unknown model: let from_config refuse it
        return
    impl = "sdpa" if getattr(cls, "_supports_sdpa", False) else "eager"
    for cfg in {id(config): config, id(text_config(config)): text_config(config)}.values():
        with contextlib.suppress(Exception):
            cfg._attn_implementation = impl
        with contextlib.suppress(Exception):
            if hasattr(cfg, "_experts_implementation"):
                cfg._experts_implementation = "eager"  # per-expert F.linear calls: the calibration pass hooks them


def meta_model(config: Any) -> torch.nn.Module:
    """The model skeleton in float32: parameters on meta (no memory), buffers real on the CPU."""
    from transformers import AutoModelForCausalLM

    config = deepcopy(config)
    _attention_for(config)
    for cfg in {id(config): config, id(text_config(config)): text_config(config)}.values():
        with contextlib.suppress(Exception):
            cfg.dtype = torch.float32  # statistics are float32 whatever the checkpoint stores
    try:
        with parameters_on_meta(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # transformers' own deprecation chatter
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    except Exception as err:  # noqa: BLE001
        raise InvalidInputError(f"cannot build a {getattr(config, 'model_type', '?')} model from its config ({type(err).__name__}: {err})") from None
    return model.eval()


def _natural(key: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


class Architecture:
    """The tensor-level description of one model architecture (see the module docstring)."""

    def __init__(self, config: Any, stored: Mapping[str, tuple[int, ...]] | None = None) -> None:
        self.config = config
        #: the tensor names (and shapes) one real checkpoint stores: layouts are bound to them
        self.stored = {k: tuple(v) for k, v in stored.items()} if stored is not None else None
        self._canonical: dict[str, str] = {}  # stored name → transformers' save_pretrained name
        self.model = meta_model(config)
        text = text_config(config)
        self.num_layers = int(text.num_hidden_layers)
        self.layers_prefix, self.layers = self._decoder_layers()
        self.parameters = {n: p for n, p in self.model.named_parameters(remove_duplicate=False)}
        self._to_checkpoint: dict[str, dict[str, tuple[int, ...]]] = {}
        self._index: dict[str, tuple[list[str], torch.Tensor]] = {}

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str]) -> "Architecture":
        """The architecture of a model directory, bound to the tensors its checkpoint stores (if any)."""
        return cls(load_config(path), stored=stored_shapes(path))

    @property
    def class_name(self) -> str:
        return type(self.model).__name__

    def _decoder_layers(self) -> tuple[str, torch.nn.ModuleList]:
        for name, module in self.model.named_modules():
            if isinstance(module, torch.nn.ModuleList) and len(module) == self.num_layers:
                return name, module
        raise InvalidInputError(f"cannot find the {self.num_layers} decoder layers in {type(self.model).__name__}")

    def layer_of(self, memory_name: str) -> int | None:
        head = self.layers_prefix + "."
        if not memory_name.startswith(head):
            return None
        index = memory_name[len(head):].split(".", 1)[0]
        return int(index) if index.isdigit() else None

    # -- transformers' conversion mapping, one parameter group at a time ----------------------
    @cached_property
    def _conversions(self) -> tuple[list, list]:
        """(renamings, converters) of the load direction, as ``from_pretrained`` applies them."""
        try:
            from transformers.conversion_mapping import get_model_conversion_mapping
            from transformers.core_model_loading import PrefixChange, WeightConverter, WeightRenaming
        except ImportError:  # older transformers: checkpoints and memory share one layout
            return [], []
        conversions = [c for c in get_model_conversion_mapping(self.model, add_legacy=False) if not isinstance(c, PrefixChange)]
        return ([c for c in conversions if isinstance(c, WeightRenaming)], [c for c in conversions if isinstance(c, WeightConverter)])

    def _run(self, state: dict[str, torch.Tensor], reverse: bool) -> dict[str, torch.Tensor]:
        """Apply the conversion mapping (or its reverse) to ``state``; mirrors transformers' loader/saver."""
        renamings, converters = self._conversions
        if not renamings and not converters:
            return dict(state)
        from transformers.core_model_loading import WeightConverter, WeightRenaming, apply_converters, apply_renamings

        if reverse:
            flipped = [c.reverse_transform() for c in (renamings + converters)[::-1]]
            renamings = [c for c in flipped if isinstance(c, WeightRenaming)]
            converters = [c for c in flipped if isinstance(c, WeightConverter)]
        by_pattern = {k: c for c in converters for k in c.source_patterns}
        groups: dict[str, Any] = {}
        for key, tensor in sorted(state.items(), key=lambda kv: _natural(kv[0])):
            renamed = key if reverse else apply_renamings(key, renamings)
            renamed, pattern = apply_converters(renamed, converters)
            if pattern is not None:
                group = groups.setdefault(renamed, deepcopy(by_pattern[pattern]))
            else:
                renamed = apply_renamings(key, renamings) if reverse else renamed
                group = groups.setdefault(renamed, WeightRenaming(key, renamed))
                pattern = key
            group.add_tensor(renamed, key, pattern, tensor)
        out: dict[str, torch.Tensor] = {}
        for first, group in groups.items():
            for target, value in group.convert(first, model=self.model, config=self.model.config).items():
                if reverse and isinstance(group, WeightConverter):
                    target = apply_renamings(target, renamings)
                out[target] = value[0] if isinstance(value, list) else value
        return out

    def _canonical_layout(self, parameter: str) -> dict[str, tuple[int, ...]]:
        """The names (and shapes) ``save_pretrained`` of this transformers version writes for ``parameter``."""
        meta = self.parameters[parameter]
        return {k: tuple(v.shape) for k, v in self._run({parameter: meta}, reverse=True).items()}

    def _bind(self, parameter: str, layout: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """``layout`` as the bound checkpoint stores it: older layouts transformers still loads.

        - names without the base model's prefix (GPT-2 checkpoints on the Hub store ``h.0.…``,
          not ``transformer.h.0.…``; a bare backbone's ``layers.0.…`` for ``model.layers.0.…``);
        - fused experts stored in the in-memory layout (``mlp.experts.gate_up_proj`` [E, 2·I, H])
          instead of one tensor per expert.
        """
        stored = self.stored
        if stored is None or all(n in stored for n in layout):
            return layout
        prefix = f"{getattr(self.model, 'base_model_prefix', '') or ''}."
        if prefix != ".":
            stripped = {n.removeprefix(prefix): s for n, s in layout.items()}
            if all(n in stored for n in stripped):
                self._canonical.update({n.removeprefix(prefix): n for n in layout})
                return stripped
        shape = tuple(self.parameters[parameter].shape)
        for name in (parameter, parameter.removeprefix(prefix)):
            if stored.get(name) == shape:
                return {name: shape}
        return layout

    def checkpoint_layout(self, parameter: str) -> dict[str, tuple[int, ...]]:
        """Checkpoint tensor names (and shapes) that store in-memory ``parameter``."""
        layout = self._to_checkpoint.get(parameter)
        if layout is None:
            layout = self._to_checkpoint[parameter] = self._bind(parameter, self._canonical_layout(parameter))
        return layout

    def _stored_names(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self._canonical:
            return state
        back = {v: k for k, v in self._canonical.items()}
        return {back.get(k, k): v for k, v in state.items()}

    def _canonical_names(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {self._canonical.get(k, k): v for k, v in state.items()}

    def checkpoint_tensors(self, parameter: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split an in-memory parameter's value (or a delta of it) into checkpoint tensors."""
        if not self.is_converted(parameter):
            return {next(iter(self.checkpoint_layout(parameter))): value}
        return self._stored_names(self._run({parameter: value}, reverse=True))

    def memory_tensor(self, parameter: str, read: Reader) -> torch.Tensor:
        """Assemble in-memory ``parameter`` from the checkpoint tensors ``read`` returns."""
        names = list(self.checkpoint_layout(parameter))
        if not self.is_converted(parameter):
            return read(names[0])
        out = self._run(self._canonical_names({n: read(n) for n in names}), reverse=False)
        if parameter not in out:
            raise InvalidInputError(f"{self.class_name}: cannot assemble {parameter!r} from {names[0]!r} …")
        return out[parameter]

    def memory_index(self, parameter: str) -> tuple[list[str], torch.Tensor]:
        """The checkpoint tensors of ``parameter`` (in layout order) and, for every element of the
        in-memory parameter, its position in the concatenation of those tensors flattened.

        Found by running the conversion mapping once on position labels (int64), so it holds for
        any stacking, concatenation or transpose transformers applies.
        """
        cached = self._index.get(parameter)
        if cached is None:
            layout = self.checkpoint_layout(parameter)
            labels, offset = {}, 0
            for name, shape in layout.items():
                count = int(torch.Size(shape).numel())
                labels[name] = torch.arange(offset, offset + count, dtype=torch.int64).reshape(shape)
                offset += count
            if self.is_converted(parameter):
                index = self._run(self._canonical_names(labels), reverse=False).get(parameter)
            else:
                index = labels[next(iter(layout))]
            if index is None or tuple(index.shape) != tuple(self.parameters[parameter].shape):
                raise InvalidInputError(f"{self.class_name}: cannot assemble {parameter!r} from its checkpoint tensors")
            cached = self._index[parameter] = (list(layout), index)
        return cached

    def assemble(self, parameter: str, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """In-memory ``parameter`` from checkpoint tensor values, differentiably (autograd flows
        back to each value); a checkpoint tensor missing from ``values`` counts as zeros."""
        names, index = self.memory_index(parameter)
        layout = self.checkpoint_layout(parameter)
        some = next(iter(values.values()))
        flat = torch.cat([values[n].reshape(-1) if n in values else some.new_zeros(int(torch.Size(layout[n]).numel()))
                          for n in names])
        return flat[index.to(flat.device)]

    def is_converted(self, parameter: str) -> bool:
        """Whether the checkpoint stores ``parameter`` as something other than one same-shaped tensor."""
        layout = self.checkpoint_layout(parameter)
        return len(layout) != 1 or next(iter(layout.values())) != tuple(self.parameters[parameter].shape)

    @cached_property
    def checkpoint_to_memory(self) -> dict[str, str]:
        """Checkpoint tensor name → the in-memory parameter it is (part of)."""
        out: dict[str, str] = {}
        for parameter in self.parameters:
            for name in self.checkpoint_layout(parameter):
                out.setdefault(name, parameter)
        return out

    def expert_of(self, parameter: str) -> dict[str, int]:
        """For a fused experts parameter [E, …]: checkpoint tensor name → expert index."""
        meta = self.parameters[parameter]
        label = torch.arange(meta.shape[0], dtype=torch.float32).view(-1, *([1] * (meta.dim() - 1))).expand(meta.shape)
        split = self._stored_names(self._run({parameter: label}, reverse=True))
        return {name: int(t.reshape(-1)[0]) for name, t in split.items()}

    # -- tensor roles ---------------------------------------------------------------------------
    @cached_property
    def linear_maps(self) -> list[LinearMap]:
        """Every stored linear-map weight inside a decoder layer, in model order."""
        from transformers.pytorch_utils import Conv1D

        maps: list[LinearMap] = []
        for module_name, module in self.model.named_modules():
            layer = self.layer_of(module_name)
            if layer is None or isinstance(module, torch.nn.Embedding):
                continue
            for pname, param in module.named_parameters(recurse=False):
                full = f"{module_name}.{pname}"
                if pname == "weight" and param.dim() == 2:
                    for tensor in self.checkpoint_layout(full):
                        maps.append(LinearMap(tensor, module_name, layer, transposed=isinstance(module, Conv1D)))
                elif param.dim() == 3 and self.is_converted(full):  # fused experts [E, out, in]
                    experts = self.expert_of(full)
                    for tensor, shape in self.checkpoint_layout(full).items():
                        if len(shape) == 2:
                            maps.append(LinearMap(tensor, module_name, layer, parameter=full, expert=experts[tensor]))
        return maps

    @cached_property
    def linear_by_tensor(self) -> dict[str, LinearMap]:
        return {m.tensor: m for m in self.linear_maps}

    @cached_property
    def fused_parameters(self) -> list[str]:
        """In-memory parameters stored 3-D (fused experts) inside decoder layers."""
        return [n for n, p in self.parameters.items() if p.dim() == 3 and self.layer_of(n) is not None]

    def unsupported_fused(self) -> list[str]:
        """Fused in-memory parameters the checkpoint also stores fused (no per-expert 2-D tensors)."""
        return [p for p in self.fused_parameters if any(len(s) != 2 for s in self.checkpoint_layout(p).values())]

    @cached_property
    def tied(self) -> dict[str, str]:
        """Tied tensor → the tensor it shares storage with (only when the config ties them)."""
        keys = getattr(self.model, "_tied_weights_keys", None) or {}
        if not isinstance(keys, dict) or not getattr(text_config(self.config), "tie_word_embeddings", False):
            return {}
        return {k: v for k, v in keys.items()}

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary (``inspect`` shows it)."""
        maps = self.linear_maps
        return {
            "class": self.class_name,
            "decoder_layers": self.num_layers,
            "linear_maps": len(maps),
            "transposed_linear_maps": sum(m.transposed for m in maps),
            "expert_linear_maps": sum(m.expert is not None for m in maps),
            "fused_in_memory": sorted({m.parameter.split(".")[-1] for m in maps if m.parameter}),
            "attention": getattr(text_config(self.model.config), "_attn_implementation", None),
            "tied": self.tied,
            "experts_fused_on_disk": sorted(self.unsupported_fused()),
        }


def stored_shapes(path: str | os.PathLike[str]) -> dict[str, tuple[int, ...]] | None:
    """Tensor names and shapes a model directory's checkpoint stores (None: no checkpoint there)."""
    from llmguard.io.checkpoint import open_checkpoint

    try:
        checkpoint = open_checkpoint(path)
    except InvalidInputError:
        return None
    return {name: tuple(meta.shape) for name, meta in checkpoint.meta.items()}


_CACHE: dict[Path, Architecture] = {}


def architecture_of(model_dir: str | os.PathLike[str]) -> Architecture:
    """The :class:`Architecture` of a model directory (built once per directory and process)."""
    key = Path(model_dir).resolve()
    arch = _CACHE.get(key)
    if arch is None:
        arch = _CACHE[key] = Architecture.from_dir(key)
    return arch


__all__ = ["Architecture", "LinearMap", "architecture_of", "load_config", "meta_model", "parameters_on_meta", "stored_shapes", "text_config"]
