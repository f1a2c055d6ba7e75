"""Task vectors τ_i = F_i − A, read one tensor at a time, in LoRA-factor or weight space.

*Factor space* (the paper's setting): when the aligned model is a LoRA adapter and every
fine-tune continues it (same base checkpoint, same modules, ranks, scales, and A factors still
close to the aligned ones), τ_i is the elementwise difference of the ``lora_A``/``lora_B``
factors and the result is again an adapter of the same shape. *Weight space* otherwise (full
fine-tunes, a LoRA fine-tune on the merged aligned model, a fresh adapter): τ_i = W(F_i) − W(A)
for every floating tensor where some fine-tune differs from the aligned model, W = base + ΔW of
an adapter; the result is a checkpoint.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from llmguard.errors import InvalidInputError, UsageError
from llmguard.io.dtypes import is_floating
from llmguard.io.lora import LoraAdapter, is_adapter_dir
from llmguard.io.sources import WeightSource, open_source
from llmguard.realign.arithmetic import LinearCombination, Term

#: Median cosine between fine-tuned and aligned A factors above which a fine-tune "continues" the
#: aligned adapter (a fresh adapter starts from an unrelated random A: cosine near 0).
CONTINUATION_COSINE = 0.5


def _open(path: Path, base: Path | None, allow_pickle: bool, role: str) -> WeightSource:
    if is_adapter_dir(path) and base is None:
        hint = LoraAdapter(path).base_model_name_or_path
        if not (hint and Path(hint).is_dir()):
            raise UsageError(f"{role} {path} is a LoRA adapter of {hint!r}, which is not a local directory; pass --base PATH")
    return open_source(path, base=base if is_adapter_dir(path) else None, allow_pickle=allow_pickle, role=role)


@dataclass
class TaskVectors:
    """The aligned source, the fine-tuned sources, the space and the masked tensor names."""

    aligned: WeightSource
    finetuned: list[WeightSource]
    space: str  # "factor" or "weight"
    names: list[str]  # adapter keys (factor space) or checkpoint tensor names (weight space)
    shapes: dict[str, tuple[int, ...]]
    continuation_cosine: float | None = None

    @property
    def output_is_adapter(self) -> bool:
        return self.space == "factor"

    # -- reading ------------------------------------------------------------------------------
    def aligned_value(self, name: str, device: torch.device) -> torch.Tensor:
        """A's value of ``name`` in float32: the aligned factor, or W(A)."""
        if self.space == "factor":
            assert self.aligned.adapter is not None
            return self.aligned.adapter.file.read(name).to(device=device, dtype=torch.float32)
        return weight(self.aligned, name, device)

    def taus(self, name: str, device: torch.device, aligned: torch.Tensor | None = None) -> list[torch.Tensor]:
        """[F_i − A] for ``name`` in float32."""
        a = self.aligned_value(name, device) if aligned is None else aligned
        if self.space == "factor":
            return [src.adapter.file.read(name).to(device=device, dtype=torch.float32) - a for src in self.finetuned]  # type: ignore[union-attr]
        return [weight(src, name, device) - a for src in self.finetuned]

    def stored_dtype(self, name: str) -> str:
        if self.space == "factor":
            assert self.aligned.adapter is not None
            return self.aligned.adapter.file.tensors[name].dtype
        return self.aligned.base.meta[name].dtype

    def all_names(self) -> list[str]:
        """Every tensor of the output (masked or copied from A)."""
        if self.space == "factor":
            assert self.aligned.adapter is not None
            return list(self.aligned.adapter.file.tensors)
        return self.aligned.base.names()

    def input_paths(self) -> list[Path]:
        paths = [self.aligned.path, self.aligned.base.root]
        for src in self.finetuned:
            paths += [src.path, src.base.root]
        return paths


def weight(source: WeightSource, name: str, device: torch.device) -> torch.Tensor:
    value = source.base.read(name).to(device=device, dtype=torch.float32)
    delta = source.delta(name, device)
    return value if delta is None else value + delta


def open_task_vectors(aligned: Path, finetuned: list[Path], *, base: Path | None = None, allow_pickle: bool = False,
                      space: str = "auto") -> TaskVectors:
    """Open A and every F_i, check they fit together, pick the space and the masked tensors."""
    aligned_src = _open(aligned, base, allow_pickle, "aligned")
    sources = [_open(path, base, allow_pickle, f"finetuned #{i + 1}") for i, path in enumerate(finetuned)]
    for i, src in enumerate(sources):
        if src.path.resolve() == aligned_src.path.resolve():
            raise UsageError(f"finetuned #{i + 1} {src.path} is the aligned model itself")
    terms = [Term(1.0, aligned_src, "aligned")] + [Term(1.0, s, f"finetuned #{i + 1}") for i, s in enumerate(sources)]
    LinearCombination(terms)  # architectures, tensor shapes and adapter targets must agree (exit 3)
    decided, cosine = _decide_space(aligned_src, sources)
    if space == "factor" and decided != "factor":
        raise InvalidInputError("--space factor needs every fine-tune to be a LoRA adapter continuing the aligned adapter "
                                f"(same base, modules, ranks; median A-factor cosine {cosine if cosine is not None else 'n/a'})")
    if space == "auto":  # several adapters merged factor by factor multiply into cross terms τB_i·τA_j: fuse ΔW instead
        space = "weight" if len(sources) > 1 else decided
    if space == "factor":
        adapter = aligned_src.adapter
        assert adapter is not None
        names = [k for m in adapter.modules.values() for k in (m.a_key, m.b_key)]
        shapes = {k: tuple(adapter.file.tensors[k].shape) for k in names}
    else:
        names, shapes = _changed_tensors(aligned_src, sources)
        if not names:
            raise InvalidInputError("the fine-tuned models equal the aligned model: there is no task vector to mask")
    return TaskVectors(aligned_src, sources, space, names, shapes, cosine)


def _decide_space(aligned: WeightSource, sources: list[WeightSource]) -> tuple[str, float | None]:
    al = aligned.adapter
    if al is None or any(s.adapter is None for s in sources):
        return "weight", None
    if any(s.base.root.resolve() != aligned.base.root.resolve() for s in sources):
        return "weight", None
    if al.full_tensors or al.parameter_modules or any(m.embedding for m in al.modules.values()):
        return "weight", None
    cosines = []
    for src in sources:
        ft = src.adapter
        assert ft is not None
        if set(ft.modules) != set(al.modules) or ft.full_tensors or ft.parameter_modules:
            return "weight", None
        for name, module in al.modules.items():
            other = ft.modules[name]
            if (other.rank, other.scaling) != (module.rank, module.scaling):
                return "weight", None
            if ft.file.tensors[other.a_key].shape != al.file.tensors[module.a_key].shape:
                return "weight", None
            a1 = ft.file.read(other.a_key).float().reshape(-1)
            a2 = al.file.read(module.a_key).float().reshape(-1)
            cosines.append(torch.nn.functional.cosine_similarity(a1, a2, dim=0).item())
        # the keys must be the aligned adapter's (factor-space output is written under them)
        if {(m.a_key, m.b_key) for m in ft.modules.values()} != {(m.a_key, m.b_key) for m in al.modules.values()}:
            return "weight", None
    cosine = statistics.median(cosines) if cosines else 0.0
    return ("factor" if cosine >= CONTINUATION_COSINE else "weight"), cosine


def _changed_tensors(aligned: WeightSource, sources: list[WeightSource]) -> tuple[list[str], dict[str, tuple[int, ...]]]:
    """Floating tensors where some fine-tune differs from A (adapters: only their targets can)."""
    cpu = torch.device("cpu")
    candidates = [n for n in aligned.base.names() if is_floating(aligned.base.meta[n].dtype)]
    all_adapters = aligned.adapter is not None and all(s.adapter is not None for s in sources) and all(
        s.base.root.resolve() == aligned.base.root.resolve() for s in sources)
    names = []
    for name in candidates:
        if all_adapters and not any(
            src.adapter.module_for_tensor(name) is not None or name in src.adapter.full_tensors  # type: ignore[union-attr]
            or name in src.adapter.parameter_targets  # type: ignore[union-attr]
            for src in [aligned, *sources]
        ):
            continue
        a = weight(aligned, name, cpu)
        if any(not torch.equal(weight(src, name, cpu), a) for src in sources):
            names.append(name)
    return names, {n: tuple(aligned.base.meta[n].shape) for n in names}
