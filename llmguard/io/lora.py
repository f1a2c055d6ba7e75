"""PEFT LoRA adapters read from their files alone: ΔW without instantiating the model.

ΔW = (B @ A) · s with s = α/r (α/√r under rsLoRA), per-module r/α from ``rank_pattern`` /
``alpha_pattern`` (PEFT's regex rule), transposed for ``fan_in_fan_out``; embedding adapters
store ``lora_embedding_A [r, vocab]`` and ``lora_embedding_B [dim, r]`` and give (B @ A)ᵀ · s.
Inner products between two adapters' deltas are computed in factor space (r×r matrices), so
comparing adapters never materialises a d×d matrix.

PEFT's ``target_parameters`` LoRA on transformers 5's fused MoE experts (one
``experts.lora_A`` of shape [r·E, in] and ``lora_B`` [out, r·E] per fused 3-D parameter, nested
as ``experts.base_layer.lora_*`` when two parameters are targeted) is a
:class:`ParameterLora`: its ΔW is [E, out, in] per PEFT's ``ParamWrapper`` rule and is split
into the checkpoint's per-expert tensors by the architecture layer. A saved
``embed_tokens.base_layer.weight`` (PEFT saves the embedding it adapted) is a full tensor of
the base, like ``modules_to_save``.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmguard.errors import InvalidInputError
from llmguard.io.records import read_json_object
from llmguard.io.safetensors_file import SafetensorsFile

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
KEY_PREFIX = "base_model.model."
_FACTOR = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.weight)?$")


def is_adapter_dir(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def pattern_key(patterns: dict[str, Any], module: str) -> str | None:
    """PEFT's ``get_pattern_key``: the first key that matches the end of the module name."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_rank(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def read_adapter_config(path: Path) -> dict[str, Any]:
    """``adapter_config.json``, with every field the delta math reads type-checked (exit 3 naming
    the file and the field), so a hand-edited config never reaches the math as a string or 0."""
    config = read_json_object(path, "the adapter config")
    if "r" in config and not _is_rank(config["r"]):
        raise InvalidInputError(f"{path}: field 'r' must be a positive integer, got {config['r']!r}")
    if "lora_alpha" in config and not _is_number(config["lora_alpha"]):
        raise InvalidInputError(f"{path}: field 'lora_alpha' must be a number, got {config['lora_alpha']!r}")
    for field, check, what in (("rank_pattern", _is_rank, "a positive integer"), ("alpha_pattern", _is_number, "a number")):
        pattern = config.get(field)
        if pattern is None:
            continue
        if not isinstance(pattern, dict):
            raise InvalidInputError(f"{path}: field '{field}' must be an object (module pattern -> value), got {type(pattern).__name__}")
        for key, value in pattern.items():
            if not check(value):
                raise InvalidInputError(f"{path}: field '{field}' entry {key!r} must be {what}, got {value!r}")
            try:
                re.compile(key)
            except re.error as err:
                raise InvalidInputError(f"{path}: field '{field}' key {key!r} is not a valid pattern ({err})") from None
    for field in ("use_rslora", "fan_in_fan_out", "use_dora"):
        if field in config and config[field] is not None and not isinstance(config[field], bool):
            raise InvalidInputError(f"{path}: field '{field}' must be true or false, got {config[field]!r}")
    base = config.get("base_model_name_or_path")
    if base is not None and not isinstance(base, str):
        raise InvalidInputError(f"{path}: field 'base_model_name_or_path' must be a string, got {base!r}")
    targets = config.get("target_modules")
    if targets is not None and not (isinstance(targets, str) or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))):
        raise InvalidInputError(f"{path}: field 'target_modules' must be a string or a list of strings, got {targets!r}")
    return config


@dataclass
class ParameterLora:
    """LoRA on a fused 3-D parameter (``target_parameters``): E experts of rank ``rank`` each."""

    key: str  # module path in the adapter, e.g. model.layers.0.mlp.experts.base_layer
    owner: str  # the module holding the parameter, e.g. model.layers.0.mlp.experts
    a_key: str
    b_key: str
    rank: int
    experts: int
    alpha: float
    scaling: float
    parameter: str | None = None  # resolved in-memory parameter, e.g. ….experts.gate_up_proj
    stored_out_in: bool = True  # parameter is [E, out, in] (transformers' default), else [E, in, out]


@dataclass(frozen=True)
class LoraModule:
    """One adapted module: its factor keys and effective rank, alpha and scale."""

    name: str  # module path as in the base checkpoint, e.g. model.layers.0.self_attn.q_proj
    a_key: str
    b_key: str
    embedding: bool
    rank: int
    alpha: float
    scaling: float

    @property
    def target(self) -> str:
        """The base checkpoint tensor this module's delta applies to."""
        return f"{self.name}.weight"


class LoraAdapter:
    """A PEFT LoRA adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.root = Path(path)
        config_path = self.root / ADAPTER_CONFIG
        if not config_path.is_file():
            raise InvalidInputError(f"{self.root}: not a PEFT adapter (no {ADAPTER_CONFIG})")
        self.config: dict[str, Any] = read_adapter_config(config_path)
        peft_type = str(self.config.get("peft_type", "LORA")).upper()
        if peft_type != "LORA":
            raise InvalidInputError(f"{config_path}: peft_type {peft_type} is not supported (LoRA only)")
        if self.config.get("use_dora"):
            raise InvalidInputError(f"{config_path}: DoRA adapters are not supported (their delta depends on the base weight norm)")
        weights = self.root / ADAPTER_WEIGHTS
        if not weights.is_file():
            bins = [p for p in (self.root / "adapter_model.bin",) if p.is_file()]
            what = f"only the pickle file {bins[0].name}" if bins else f"no {ADAPTER_WEIGHTS}"
            raise InvalidInputError(f"{self.root}: {what}; llmguard reads adapters in safetensors format")
        self.file = SafetensorsFile(weights)
        self.rank: int = self.config.get("r", 8)
        self.alpha: float = float(self.config.get("lora_alpha", self.rank))
        self.use_rslora: bool = bool(self.config.get("use_rslora", False))
        self.fan_in_fan_out: bool = bool(self.config.get("fan_in_fan_out", False))
        self.rank_pattern: dict[str, int] = dict(self.config.get("rank_pattern") or {})
        self.alpha_pattern: dict[str, float] = dict(self.config.get("alpha_pattern") or {})
        self.target_parameters: list[str] = list(self.config.get("target_parameters") or [])
        self.parameter_modules: dict[str, ParameterLora] = {}
        self.parameter_targets: dict[str, ParameterLora] = {}  # checkpoint tensor → the module whose ΔW changes it
        self._architecture: Any = None
        self._split_cache: tuple[str, dict[str, torch.Tensor]] | None = None
        self.modules, self.full_tensors = self._index_keys()

    # -- structure --------------------------------------------------------------------------
    @property
    def base_model_name_or_path(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    @property
    def target_modules(self) -> Any:
        return self.config.get("target_modules")

    def _index_keys(self) -> tuple[dict[str, LoraModule], dict[str, str]]:
        factors: dict[str, dict[str, str]] = {}
        full: dict[str, str] = {}
        for key in self.file.tensors:
            bare = key[len(KEY_PREFIX):] if key.startswith(KEY_PREFIX) else key
            match = _FACTOR.match(bare)
            if match:
                factors.setdefault(match["module"], {})[match["kind"]] = key
            elif bare.endswith(".lora_magnitude_vector") or ".lora_magnitude_vector." in bare:
                raise InvalidInputError(f"{self.file.path}: DoRA magnitude vectors are not supported ({key})")
            else:
                # modules_to_save / trainable tokens: a full replacement tensor of the base.
                target = bare.replace(".modules_to_save.", ".").replace(".original_module.", ".").replace(".base_layer.", ".")
                full[target] = key
        modules: dict[str, LoraModule] = {}
        for name, kinds in sorted(factors.items()):
            embedding = "lora_embedding_A" in kinds or "lora_embedding_B" in kinds
            a_key = kinds.get("lora_embedding_A" if embedding else "lora_A")
            b_key = kinds.get("lora_embedding_B" if embedding else "lora_B")
            if a_key is None or b_key is None:
                raise InvalidInputError(f"{self.file.path}: module {name!r} has only one LoRA factor")
            a_shape = self.file.tensors[a_key].shape
            b_shape = self.file.tensors[b_key].shape
            rank = a_shape[0]
            if len(a_shape) != 2 or len(b_shape) != 2 or b_shape[1] != rank:
                raise InvalidInputError(
                    f"{self.file.path}: module {name!r} has inconsistent factor shapes A{list(a_shape)} B{list(b_shape)}"
                )
            owner = re.sub(r"(\.base_layer)+$", "", name)
            rkey = pattern_key(self.rank_pattern, owner)
            akey = pattern_key(self.alpha_pattern, owner)
            cfg_rank = int(self.rank_pattern[rkey]) if rkey is not None else self.rank
            alpha = float(self.alpha_pattern[akey]) if akey is not None else self.alpha
            if self.target_parameters and not embedding and rank != cfg_rank and rank % cfg_rank == 0 and self._targets_parameter(owner):
                scaling = alpha / math.sqrt(cfg_rank) if self.use_rslora else alpha / cfg_rank
                self.parameter_modules[name] = ParameterLora(name, owner, a_key, b_key, cfg_rank, rank // cfg_rank, alpha, scaling)
                continue
            if cfg_rank != rank:
                raise InvalidInputError(
                    f"{self.file.path}: module {name!r} stores rank {rank} but adapter_config.json says r={cfg_rank}"
                )
            scaling = alpha / math.sqrt(rank) if self.use_rslora else alpha / rank
            modules[name] = LoraModule(name, a_key, b_key, embedding, rank, alpha, scaling)
        return modules, full

    def _targets_parameter(self, owner: str) -> bool:
        """Whether ``target_parameters`` names a parameter of module ``owner`` (PEFT's suffix match)."""
        for target in self.target_parameters:
            module = target.rpartition(".")[0]
            if not module or owner == module or owner.endswith("." + module):
                return True
        return False

    def module_for_tensor(self, tensor_name: str) -> LoraModule | None:
        """The adapted module whose delta applies to a base checkpoint tensor, if any."""
        if not tensor_name.endswith(".weight"):
            return None
        return self.modules.get(tensor_name[: -len(".weight")])

    def resolve_targets(self, base_names: set[str]) -> None:
        """Map module names onto the base checkpoint's tensor names (``model.`` prefix drift).

        Adapters trained on a bare backbone name modules without the ``model.`` prefix that a
        ``*ForCausalLM`` checkpoint has (and vice versa); a checkpoint saved from the bare backbone
        (GPT-2 on the Hub: ``h.0.attn.c_attn``) stores names without the base model's prefix
        (``transformer.``) that PEFT's keys carry. Raise if a module has no target.
        """
        remapped: dict[str, LoraModule] = {}
        for name, module in self.modules.items():
            candidates = [name, f"model.{name}", name.removeprefix("model."), name.partition(".")[2]]
            found = next((c for c in candidates if f"{c}.weight" in base_names), None)
            if found is None:
                raise InvalidInputError(f"{self.root}: adapter module {name!r} has no weight {name}.weight in the base checkpoint")
            remapped[found] = LoraModule(found, module.a_key, module.b_key, module.embedding, module.rank, module.alpha, module.scaling)
        self.modules = remapped
        if self.parameter_modules:
            self._resolve_parameters(base_names)
        full: dict[str, str] = {}
        for target, key in self.full_tensors.items():
            candidates = [target, f"model.{target}", target.removeprefix("model."), target.partition(".")[2]]
            found = next((c for c in candidates if c in base_names), None)
            if found is None:
                tied = " (the base ties it to the input embeddings and stores no separate copy)" if target.endswith("lm_head.weight") else ""
                raise InvalidInputError(f"{self.root}: adapter tensor {key!r} has no counterpart in the base checkpoint{tied}")
            full[found] = key
        self.full_tensors = full

    def check_shapes(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Every module's ΔW (and every full tensor) must have its base tensor's shape (exit 3),
        checked from the headers before any math: a factor of the wrong size otherwise fails
        deep inside a matrix product, or PEFT reports it as a state-dict error."""
        for module in self.modules.values():
            want = shapes.get(module.target)
            got = self.delta_shape(module)
            if want is not None and tuple(want) != tuple(got):
                raise InvalidInputError(f"{self.file.path}: module {module.name!r} gives a {list(got)} delta but the base "
                                        f"tensor {module.target} is {list(want)}")
        for target, key in self.full_tensors.items():
            want = shapes.get(target)
            got = self.file.tensors[key].shape
            if want is not None and tuple(want) != tuple(got):
                raise InvalidInputError(f"{self.file.path}: tensor {key!r} is {list(got)} but the base tensor {target} is {list(want)}")

    def use_architecture(self, architecture: Any) -> None:
        """The base model's :class:`~llmguard.io.architecture.Architecture` (needed for ``target_parameters`` LoRA)."""
        self._architecture = architecture

    def _resolve_parameters(self, base_names: set[str]) -> None:
        """Find the fused parameter each :class:`ParameterLora` adapts and the checkpoint tensors it changes."""
        arch = self._architecture
        if arch is None:
            raise InvalidInputError(f"{self.root}: LoRA on fused expert parameters needs the base model's config.json")
        self.parameter_targets = {}
        for module in self.parameter_modules.values():
            a_in = self.file.tensors[module.a_key].shape[1]
            b_out = self.file.tensors[module.b_key].shape[0]
            owner = next((c for c in (module.owner, f"model.{module.owner}", module.owner.removeprefix("model."))
                          if any(p.startswith(c + ".") for p in arch.parameters)), None)
            if owner is None:
                raise InvalidInputError(f"{self.root}: adapter module {module.owner!r} is not a module of {arch.class_name}")
            out_in = not getattr(arch.model.get_submodule(owner), "is_transposed", False)
            matches = []
            for pname, param in arch.parameters.items():
                if pname.rpartition(".")[0] != owner or param.dim() != 3 or param.shape[0] != module.experts:
                    continue
                out, inp = (param.shape[1], param.shape[2]) if out_in else (param.shape[2], param.shape[1])
                if (out, inp) == (b_out, a_in):
                    matches.append(pname)
            if len(matches) != 1:
                raise InvalidInputError(
                    f"{self.root}: cannot tell which fused parameter of {owner!r} the LoRA {module.key!r} adapts "
                    f"({len(matches)} of shape [{module.experts}, {b_out}, {a_in}])"
                )
            module.parameter, module.stored_out_in = matches[0], out_in
            for tensor in arch.checkpoint_layout(matches[0]):
                if tensor not in base_names:
                    raise InvalidInputError(f"{self.root}: adapter module {module.key!r} changes {tensor!r}, which the base checkpoint lacks")
                self.parameter_targets[tensor] = module

    def parameter_delta(self, module: ParameterLora, device: torch.device | str = "cpu") -> torch.Tensor:
        """ΔW of a fused parameter in its in-memory layout ([E, out, in]; PEFT's ParamWrapper rule)."""
        a = self.file.read(module.a_key).to(device=device, dtype=torch.float32)
        b = self.file.read(module.b_key).to(device=device, dtype=torch.float32)
        a = a.reshape(module.experts, module.rank, a.shape[-1])  # e r i
        b = b.reshape(b.shape[0], module.rank, module.experts)  # o r e
        spec = "o r e, e r i -> e o i" if module.stored_out_in else "o r e, e r i -> e i o"
        return torch.einsum(spec, b, a) * module.scaling

    def tensor_delta(self, tensor_name: str, device: torch.device | str = "cpu") -> torch.Tensor | None:
        """ΔW of one checkpoint tensor from the LoRA factors (None where no factor changes it)."""
        module = self.module_for_tensor(tensor_name)
        if module is not None:
            return self.delta(module, device)
        pmod = self.parameter_targets.get(tensor_name)
        if pmod is None:
            return None
        assert pmod.parameter is not None
        if self._split_cache is None or self._split_cache[0] != pmod.key:
            split = self._architecture.checkpoint_tensors(pmod.parameter, self.parameter_delta(pmod, "cpu"))
            self._split_cache = (pmod.key, split)
        return self._split_cache[1][tensor_name].to(device).clone()

    # -- math -------------------------------------------------------------------------------
    def factors(self, module: LoraModule, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) in float32 with the scale folded into B, oriented so ΔW = B @ A (or its transpose)."""
        a = self.file.read(module.a_key).to(device=device, dtype=torch.float32)
        b = self.file.read(module.b_key).to(device=device, dtype=torch.float32) * module.scaling
        return a, b

    def delta(self, module: LoraModule, device: torch.device | str = "cpu") -> torch.Tensor:
        """ΔW in float32, in the orientation of the base weight tensor."""
        a, b = self.factors(module, device)
        delta = b @ a
        if module.embedding or self.fan_in_fan_out:
            delta = delta.T
        return delta.contiguous()

    def read_full(self, target: str) -> torch.Tensor:
        return self.file.read(self.full_tensors[target])

    @property
    def parameter_count(self) -> int:
        return sum(info.numel for info in self.file.tensors.values())

    def delta_shape(self, module: LoraModule) -> tuple[int, int]:
        a_shape = self.file.tensors[module.a_key].shape
        b_shape = self.file.tensors[module.b_key].shape
        shape = (b_shape[0], a_shape[1])
        return (shape[1], shape[0]) if (module.embedding or self.fan_in_fan_out) else shape


def factor_inner(a1: torch.Tensor, b1: torch.Tensor, a2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """⟨B1A1, B2A2⟩_F = Σ (B1ᵀB2) ⊙ (A1A2ᵀ), in O(r²·d) without forming d×d matrices."""
    return ((b1.T @ b2) * (a1 @ a2.T)).sum()
