"""The frozen model with the fused, masked task vectors applied inside its forward pass.

Only one model is ever loaded: A (aligned) with every weight frozen. In factor space each adapted
``nn.Linear`` (or GPT-2 ``Conv1D``) gets a LoRA branch whose factors are A's plus Merge({τ̃_i}); in
weight space each masked weight gets a parametrization W_A + Merge({τ̃_i}). Task vectors and masks
live in the checkpoint's layout (one tensor per MoE expert and projection); the architecture layer
maps them onto the in-memory parameters (fused experts assembled differentiably, renamed and tied
weights). The fused tensors are recomputed from
the mask once per step (``begin_step``) and never written back, so there is no copy of the model
per step and no second (reference) model: :meth:`MaskedModel.reference` turns the task vectors off
(the aligned model itself), which is the DPO reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch.nn.utils import parametrize

from llmguard.errors import InvalidInputError
from llmguard.realign.somf.mask import ConcreteMask
from llmguard.realign.somf.merge import MERGES, MergeSettings, merge_masked
from llmguard.realign.somf.scales import TaskScales
from llmguard.realign.somf.task_vectors import TaskVectors, weight


class _LoraBranch(torch.nn.Module):
    """y = base(x) + s · (x Aᵀ) Bᵀ with A, B provided by the owning :class:`MaskedModel` per step."""

    def __init__(self, base: torch.nn.Linear, a_key: str, b_key: str, scaling: float, value: Callable[[str], torch.Tensor]) -> None:
        super().__init__()
        self.base = base
        self.a_key, self.b_key, self.scaling = a_key, b_key, scaling
        self._value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self._value(self.a_key), self._value(self.b_key)
        return self.base(x) + self.scaling * torch.nn.functional.linear(torch.nn.functional.linear(x, a.to(x.dtype)), b.to(x.dtype))


class _AddDelta(torch.nn.Module):
    """Parametrization W ↦ W + Δ(step) of one frozen in-memory parameter."""

    def __init__(self, delta: Callable[[], torch.Tensor]) -> None:
        super().__init__()
        self._delta = delta

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + self._delta().to(w.dtype)


def load_frozen_model(root: Path, device: torch.device, dtype: torch.dtype = torch.float32, checkpointing: bool = False) -> Any:
    from transformers import AutoModelForCausalLM

    if not (root / "config.json").is_file():
        raise InvalidInputError(f"{root}: no config.json; SOMF trains its mask through the model's forward pass")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(root), dtype=dtype)
    except Exception as err:  # noqa: BLE001 - an unloadable model is the user's input
        raise InvalidInputError(f"{root}: cannot load the model for mask training ({type(err).__name__}: {err})") from None
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if checkpointing:  # non-reentrant: the logits are reached through closures, not through inputs
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name; the old one warns
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()  # transformers checkpoints only in training mode; dropout is switched off below
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
            if isinstance(getattr(module, "attention_dropout", None), float):
                module.attention_dropout = 0.0
    return model


class MaskedModel:
    """A frozen model + task vectors + a :class:`ConcreteMask`; ``begin_step`` samples a new mask."""

    def __init__(self, tv: TaskVectors, mask: ConcreteMask, merge: str, settings: MergeSettings, device: torch.device,
                 rescale: bool = True, dtype: torch.dtype = torch.float32, checkpointing: bool = False,
                 scales: TaskScales | None = None) -> None:
        self.tv, self.mask, self.device, self.rescale, self.scales = tv, mask, device, rescale, scales
        self.merge, self.settings = MERGES[merge], settings
        self.model = load_frozen_model(tv.aligned.base.root, device, dtype, checkpointing)
        from llmguard.io.architecture import architecture_of

        self.arch = architecture_of(tv.aligned.base.root)
        self.aligned: dict[str, torch.Tensor] = {}
        self.taus: dict[str, list[torch.Tensor]] = {}
        for name in tv.names:
            a = tv.aligned_value(name, device)
            self.taus[name] = tv.taus(name, device, a)
            if tv.space == "factor":
                self.aligned[name] = a
        self._mode = "reference"
        self._generator: torch.Generator | None = None
        self._cache: dict[str, torch.Tensor] = {}
        self.fixed: dict[str, torch.Tensor] | None = None
        if tv.space == "factor":
            self._install_branches()
        else:
            self._install_parametrizations()

    # -- installation -------------------------------------------------------------------------
    def _memory_name(self, tensor: str) -> str:
        """The in-memory parameter a checkpoint tensor is (part of): transformers' renamings and
        fused MoE experts come from the architecture layer."""
        return self.arch.checkpoint_to_memory.get(tensor, tensor)

    def _install_branches(self) -> None:
        from transformers.pytorch_utils import Conv1D

        adapter = self.tv.aligned.adapter
        assert adapter is not None
        for name, module in adapter.modules.items():
            memory = self._memory_name(module.target).removesuffix(".weight")
            try:
                target = self.model.get_submodule(memory)
            except AttributeError:
                raise InvalidInputError(f"adapter module {name!r} is not a module of {self.tv.aligned.base.root}") from None
            # PEFT applies x·Aᵀ·Bᵀ to both; fan_in_fan_out only says Conv1D stores its weight (in × out)
            plain = isinstance(target, torch.nn.Linear) and not adapter.fan_in_fan_out
            if not (plain or (isinstance(target, Conv1D) and adapter.fan_in_fan_out)):
                raise InvalidInputError(f"adapter module {name!r}: factor-space SOMF supports LoRA on nn.Linear and Conv1D "
                                        f"(fan_in_fan_out) modules only, not {type(target).__name__}")
            parent_name, _, child = memory.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            setattr(parent, child, _LoraBranch(target, module.a_key, module.b_key, module.scaling, self.value))

    def _install_parametrizations(self) -> None:
        """W ↦ W + Δ on every in-memory parameter some masked checkpoint tensor belongs to: a
        renamed tensor directly, per-expert tensors assembled into their fused parameter, a tied
        weight on every module that shares it."""
        arch = self.arch
        params = dict(self.model.named_parameters(remove_duplicate=False))
        groups: dict[str, list[str]] = {}
        for name in self.tv.names:
            groups.setdefault(self._memory_name(name), []).append(name)
        missing = [names[0] for memory, names in groups.items() if memory not in params or memory not in arch.parameters]
        if missing:
            raise InvalidInputError(f"tensor {missing[0]!r} is not a parameter of the model at {self.tv.aligned.base.root}")
        if self.tv.aligned.adapter is not None:  # the loaded weights are the base's: make them W(A)
            adapter = self.tv.aligned.adapter
            targets = {m.target for m in adapter.modules.values()} | set(adapter.full_tensors) | set(adapter.parameter_targets)
            changed = {self._memory_name(n) for n in targets}
            with torch.no_grad():
                for memory in changed:
                    if memory in params:
                        value = arch.memory_tensor(memory, lambda n: weight(self.tv.aligned, n, self.device))
                        params[memory].copy_(value.to(params[memory].dtype))
        done: set[int] = set()
        for memory, names in groups.items():
            if id(params[memory]) in done:  # a tied weight stored twice: its first copy drives the forward pass
                continue
            done.add(id(params[memory]))
            if arch.is_converted(memory):
                delta = (lambda memory=memory, names=names: self._fused(memory, names))
            else:
                delta = (lambda name=names[0]: self.value(name))
            shared = params[memory]
            for alias, p in params.items():  # a tied weight: every module that holds it sees the delta
                if p is shared:
                    module_name, _, attr = alias.rpartition(".")
                    parametrize.register_parametrization(self.model.get_submodule(module_name), attr, _AddDelta(delta), unsafe=True)

    def _fused(self, memory: str, names: list[str]) -> torch.Tensor:
        """Δ of a fused in-memory parameter, assembled from its masked checkpoint tensors."""
        if self._mode == "reference":
            return torch.zeros((), device=self.device)
        return self.arch.assemble(memory, {n: self.value(n) for n in names})

    # -- per-step values ----------------------------------------------------------------------
    def reference(self) -> None:
        """Task vectors off: the model is A (the DPO reference)."""
        self._mode, self._cache = "reference", {}

    def begin_step(self, generator: torch.Generator) -> None:
        """Sample a fresh relaxed mask and fuse every tensor for the next forward pass.

        Fused up front, outside the model's forward, so that gradient checkpointing recomputes
        only the layers (the fused tensors are inputs of the checkpointed regions, not part of them).
        """
        self._mode, self._generator, self._cache = "train", generator, {}
        for name in self.tv.names:
            self.value(name)

    def use_binary(self, masks: dict[str, torch.Tensor]) -> None:
        """Apply a fixed binary mask (evaluation of the final mask without writing it)."""
        self._mode, self.fixed, self._cache = "fixed", masks, {}

    def value(self, name: str) -> torch.Tensor:
        cached = self._cache.get(name)
        if cached is not None:
            return cached
        if self._mode == "reference":
            delta = torch.zeros((), device=self.device)
        else:
            if self._mode == "train":
                assert self._generator is not None
                m = self.mask.sample(name, self._generator)
            else:
                assert self.fixed is not None
                m = self.fixed[name].to(self.device, torch.float32)
            weights = self.scales.of(name) if self.scales is not None else None
            delta = merge_masked(name, self.taus[name], m, self.merge, self.settings, self.rescale, weights)
        out = self.aligned[name] + delta if self.tv.space == "factor" else delta
        self._cache[name] = out
        return out
