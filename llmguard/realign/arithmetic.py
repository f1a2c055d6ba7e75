"""Streamed linear combinations of models: θ_out = Σ cᵢ·θᵢ, one tensor at a time.

RESTA (θ_F + γ(θ_A − θ_U)), ExPO amplification and task-arithmetic fusion are all linear
combinations of checkpoints and adapters. Inputs that share a base checkpoint read that base
tensor once, scaled by the sum of their coefficients; adapter deltas are added from their
factors. Math is float32 on the chosen device and rounded once to the output dtype.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmguard.errors import InvalidInputError, UsageError
from llmguard.io.checkpoint import Checkpoint
from llmguard.io.dtypes import SAFETENSORS_TO_TORCH, TORCH_TO_SAFETENSORS, is_floating
from llmguard.io.lora import KEY_PREFIX, LoraAdapter
from llmguard.io.sources import WeightSource
from llmguard.io.stream import read_ahead
from llmguard.io.writer import StreamingWriter, TensorPlan
from llmguard.progress import NullProgress, Progress

TIED_SOURCE = {"lm_head.weight": "model.embed_tokens.weight"}

#: Elements per float32 block of the CPU fast path: 1 MiB, so the block stays in cache while
#: every input is added into it (instead of whole-tensor float32 copies going through memory).
BLOCK_ELEMENTS = 1 << 18


@dataclass(frozen=True)
class Term:
    """One summand cᵢ·θᵢ."""

    coef: float
    source: WeightSource
    role: str


def _base_key(checkpoint: Checkpoint) -> Path:
    return checkpoint.root.resolve()


class LinearCombination:
    """Plans and executes Σ cᵢ·θᵢ over the tensor names of the first (primary) term."""

    def __init__(self, terms: list[Term], out_dtype: torch.dtype | None = None) -> None:
        if not terms:
            raise ValueError("no terms")
        self.terms = terms
        self.primary = terms[0]
        self.out_dtype = out_dtype
        bases: dict[Path, Checkpoint] = {}
        coefs: Counter[Path] = Counter()
        for term in terms:
            key = _base_key(term.source.base)
            bases.setdefault(key, term.source.base)
            coefs[key] += term.coef
        self.bases = bases
        self.base_coef = {k: c for k, c in coefs.items()}
        self._check_compatible()

    # -- planning ---------------------------------------------------------------------------
    def _lookup(self, base: Checkpoint, name: str) -> str:
        """The tensor to read for ``name`` in ``base`` (tied lm_head falls back to embeddings)."""
        if name in base:
            return name
        tied = TIED_SOURCE.get(name)
        if tied and tied in base and base.tie_word_embeddings:
            return tied
        raise InvalidInputError(f"{base.root}: missing tensor {name!r}")

    @staticmethod
    def _tied_in(checkpoint: Checkpoint, name: str) -> bool:
        """``name`` is absent from ``checkpoint`` only because its weights are tied to another tensor."""
        tied = TIED_SOURCE.get(name)
        return bool(tied and tied in checkpoint and checkpoint.tie_word_embeddings)

    def _check_compatible(self) -> None:
        primary = self.primary.source.base
        for term in self.terms[1:]:
            base = term.source.base
            arch_a, arch_b = primary.architecture, base.architecture
            if arch_a and arch_b and arch_a != arch_b:
                raise InvalidInputError(
                    f"{term.role} {term.source.path}: architecture {arch_b} differs from {self.primary.role}'s {arch_a}"
                )
            for name in primary.names():
                other = self._lookup(base, name)
                shape_a, shape_b = primary.meta[name].shape, base.meta[other].shape
                if shape_a != shape_b:
                    raise InvalidInputError(
                        f"shape mismatch for tensor {name!r}: {self.primary.role} {list(shape_a)} vs {term.role} {list(shape_b)} ({base.root})"
                    )
                dtype_a, dtype_b = primary.meta[name].dtype, base.meta[other].dtype
                if is_floating(dtype_a) != is_floating(dtype_b):
                    # an integer tensor is copied from the primary, so a float counterpart would be dropped silently
                    raise InvalidInputError(
                        f"dtype mismatch for tensor {name!r}: {self.primary.role} {dtype_a} vs {term.role} {dtype_b} ({base.root}); "
                        "one is an integer tensor, the other floating point"
                    )
            extra = [n for n in base.names() if n not in primary and not self._tied_in(primary, n)]
            if extra:
                # the output follows the primary's tensor names: a tensor it lacks would vanish from the result
                raise InvalidInputError(
                    f"{self.primary.role} {self.primary.source.path}: missing tensor {extra[0]!r} that {term.role} {base.root} has"
                    + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
                )
        for term in self.terms:
            adapter = term.source.adapter
            if adapter is None:
                continue
            for module in adapter.modules.values():
                shape = adapter.delta_shape(module)
                target = term.source.base.meta.get(module.target)
                if target is None or target.shape != shape:
                    raise InvalidInputError(
                        f"{term.role} {term.source.path}: adapter module {module.name!r} gives a {list(shape)} delta "
                        f"but the base tensor is {list(target.shape) if target else 'missing'}"
                    )

    def plan(self) -> list[TensorPlan]:
        primary = self.primary.source.base
        plans = []
        for name in primary.names():
            meta = primary.meta[name]
            dtype = meta.dtype
            if self.out_dtype is not None and is_floating(dtype):
                dtype = TORCH_TO_SAFETENSORS[self.out_dtype]
            plans.append(TensorPlan(name, meta.shape, dtype))
        return plans

    # -- execution --------------------------------------------------------------------------
    def _load(self, name: str, pool: "_BufferPool | None" = None) -> dict[Path, torch.Tensor]:
        """Read the base tensors needed for ``name`` (runs in the read-ahead threads)."""
        floating = is_floating(self.primary.source.base.meta[name].dtype)
        loaded = {}
        for key, base in self.bases.items():
            if floating and self.base_coef[key] == 0.0:
                continue
            if not floating and key != _base_key(self.primary.source.base):
                continue
            source = self._lookup(base, name)
            if pool is not None and floating and not base.is_pickle:
                meta = base.meta[source]
                loaded[key] = base.read(source, out=pool.take(meta.numel * SAFETENSORS_TO_TORCH[meta.dtype].itemsize))
            else:
                loaded[key] = base.read(source)
        return loaded

    def compute(self, name: str, loaded: dict[Path, torch.Tensor], device: torch.device) -> torch.Tensor:
        primary_key = _base_key(self.primary.source.base)
        if not is_floating(self.primary.source.base.meta[name].dtype):
            return loaded[primary_key]
        total: torch.Tensor | None = None
        for key, tensor in loaded.items():
            value = tensor.to(device=device, dtype=torch.float32, non_blocking=True)
            coef = self.base_coef[key]
            total = value.mul_(coef) if total is None else total.add_(value, alpha=coef)
        for term in self.terms:
            delta = term.source.delta(name, device)
            if delta is None or term.coef == 0.0:
                continue
            total = delta.mul_(term.coef) if total is None else total.add_(delta, alpha=term.coef)
        if total is None:  # every coefficient was zero
            shape = self.primary.source.base.meta[name].shape
            total = torch.zeros(shape, dtype=torch.float32, device=device)
        return total

    def run(self, writer: StreamingWriter, device: torch.device, progress: Progress | None = None, read_depth: int = 2) -> int:
        """Stream every tensor through compute into the writer; returns the number written."""
        progress = progress or NullProgress()
        names = self.primary.source.base.names()
        progress.stage("combine tensors", len(names))
        if device.type == "cpu" and all(term.source.adapter is None for term in self.terms):
            return self._run_blocked(names, writer, progress, read_depth)
        count = 0
        for name, loaded in read_ahead(names, self._load, depth=read_depth):
            writer.write(name, self.compute(name, loaded, device))
            count += 1
            progress.advance()
        return count

    # -- CPU fast path (full checkpoints only) ------------------------------------------------
    def _run_blocked(self, names: list[str], writer: StreamingWriter, progress: Progress, read_depth: int) -> int:
        """The same sum, rounded to the planned dtype block by block, with recycled read buffers.

        Bit-identical to :meth:`compute` followed by the writer's rounding: each element sees
        the same float32 operations in the same order. What changes is memory traffic: inputs
        are converted and accumulated one cache-sized block at a time, so no whole-tensor
        float32 temporaries are made, and input buffers are reused instead of freshly paged
        in for every tensor. Blocks are spread over ``torch.get_num_threads()`` workers, each
        running single-threaded torch ops (small ops under a shared OpenMP team pay a barrier
        per op, which costs more than the op when cores are busy).
        """
        pool = _BufferPool(keep=2 * len(self.bases))
        out_pool = _BufferPool(keep=4)  # result buffers come back once the writer has written them
        workers = max(1, torch.get_num_threads())
        scratch = threading.local()

        def load(name: str) -> dict[Path, torch.Tensor]:
            return self._load(name, pool)

        def combine(out: torch.Tensor, inputs: list[tuple[torch.Tensor, float]], begin: int, end: int) -> None:
            if getattr(scratch, "acc", None) is None:
                scratch.acc = torch.empty(BLOCK_ELEMENTS, dtype=torch.float32)
                scratch.tmp = torch.empty(BLOCK_ELEMENTS, dtype=torch.float32)
            for lo in range(begin, end, BLOCK_ELEMENTS):
                hi = min(end, lo + BLOCK_ELEMENTS)
                acc, tmp = scratch.acc[: hi - lo], scratch.tmp[: hi - lo]
                (first, coef), rest = inputs[0], inputs[1:]
                acc.copy_(first[lo:hi]).mul_(coef)
                for tensor, coef in rest:
                    if tensor.dtype == torch.float32:
                        acc.add_(tensor[lo:hi], alpha=coef)
                    else:
                        acc.add_(tmp.copy_(tensor[lo:hi]), alpha=coef)
                out[lo:hi].copy_(acc)

        count = 0
        with _single_threaded_torch(), ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llmguard-math") as math_pool:
            for name, loaded in read_ahead(names, load, depth=read_depth):
                meta = self.primary.source.base.meta[name]
                if not is_floating(meta.dtype) or not loaded:
                    writer.write(name, self.compute(name, loaded, torch.device("cpu")))
                else:
                    out_dtype = SAFETENSORS_TO_TORCH[writer.plan[name].dtype]
                    inputs = [(t.reshape(-1), self.base_coef[k]) for k, t in loaded.items()]
                    out = out_pool.take(meta.numel * out_dtype.itemsize)[: meta.numel * out_dtype.itemsize].view(out_dtype)
                    n = meta.numel
                    if workers == 1 or n <= BLOCK_ELEMENTS:
                        combine(out, inputs, 0, n)
                    else:  # one job per block: busy or descheduled workers do not hold up the rest
                        jobs = [math_pool.submit(combine, out, inputs, lo, min(n, lo + BLOCK_ELEMENTS)) for lo in range(0, n, BLOCK_ELEMENTS)]
                        for job in jobs:
                            job.result()
                    writer.write(name, out.view(meta.shape), release=out_pool.give)
                    del inputs
                    for tensor in loaded.values():
                        pool.give(tensor)
                del loaded
                count += 1
                progress.advance()
        return count


class _BufferPool:
    """Reusable uint8 buffers, so reads and results land in memory that is already paged in.

    ``take`` hands out the smallest free buffer that fits (or a new one); ``give`` returns it.
    Requests under 1 MiB bypass the pool (the allocator serves those from its heap cheaply).
    At most ``keep`` free buffers are kept, dropping the smallest first, so the pool settles
    on a few buffers the size of the largest tensors: after the first large tensors, reads
    and results reuse them instead of faulting in fresh pages (which costs more CPU than the
    arithmetic itself). The memory held is bounded by the largest tensors, the read-ahead
    depth and ``keep``, never by the model size.
    """

    SMALL = 1 << 20

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._free: list[torch.Tensor] = []
        self._lent: dict[int, torch.Tensor] = {}
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> torch.Tensor:
        if nbytes < self.SMALL:
            return torch.empty(max(nbytes, 1), dtype=torch.uint8)
        with self._lock:
            fits = [i for i, b in enumerate(self._free) if b.numel() >= nbytes]
            if fits:
                buffer = self._free.pop(min(fits, key=lambda i: self._free[i].numel()))
            else:
                buffer = torch.empty(nbytes, dtype=torch.uint8)
            self._lent[buffer.data_ptr()] = buffer
            return buffer

    def give(self, tensor: torch.Tensor) -> None:
        with self._lock:
            buffer = self._lent.pop(tensor.data_ptr(), None)
            if buffer is not None:
                self._free.append(buffer)
                if len(self._free) > self.keep:
                    self._free.sort(key=lambda b: b.numel(), reverse=True)
                    del self._free[self.keep :]


@contextmanager
def _single_threaded_torch():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# -- adapter output --------------------------------------------------------------------------
_FACTOR_KEYS = {False: ("lora_A.weight", "lora_B.weight"), True: ("lora_embedding_A", "lora_embedding_B")}


def _mixed_bases_message(terms: list[Term]) -> str:
    """Which input sits on which base, and the base expected (the adapters' own, when they agree)."""
    def where(t: Term) -> str:
        if t.source.adapter is not None:
            return f"{t.role} {t.source.path} is an adapter on {t.source.base.root}"
        return f"{t.role} {t.source.path} is a full checkpoint"

    adapter_bases = {_base_key(t.source.base) for t in terms if t.source.adapter is not None}
    expected = (f"; expected every input on {next(iter(adapter_bases))} (the adapters' base: pass that directory, "
                "not another checkpoint)") if len(adapter_bases) == 1 else "; the adapters themselves have different bases"
    return ("--as-adapter needs every input to be an adapter on the same base (or that base itself): "
            + ", ".join(where(t) for t in terms) + expected)


class AdapterCombination:
    """base + Σ cᵢ·ΔWᵢ written as one PEFT LoRA adapter, exactly.

    Representable when every term is either the shared base itself or an adapter on it and
    the coefficients sum to one. Factors are concatenated per module (rank Σ rᵢ, each term's
    coefficient and α/r folded into its B block), so no SVD and no approximation.
    """

    def __init__(self, terms: list[Term], out_dtype: torch.dtype | None = None) -> None:
        if len({_base_key(t.source.base) for t in terms}) != 1:
            raise UsageError(_mixed_bases_message(terms))
        if abs(sum(t.coef for t in terms) - 1.0) > 1e-9:
            raise UsageError("--as-adapter: the combination is not an adapter on the base (coefficients do not sum to 1)")
        self.adapter_terms = [t for t in terms if t.source.adapter is not None]
        if not self.adapter_terms:
            raise UsageError("--as-adapter needs at least one adapter input")
        if len({t.source.adapter.fan_in_fan_out for t in self.adapter_terms}) != 1:  # type: ignore[union-attr]
            raise InvalidInputError("--as-adapter: the adapters disagree on fan_in_fan_out")
        self.out_dtype = out_dtype
        self.parts: dict[str, list[tuple[float, LoraAdapter, Any]]] = {}
        for term in self.adapter_terms:
            adapter = term.source.adapter
            assert adapter is not None
            if adapter.parameter_modules:
                raise InvalidInputError(f"{term.role} {term.source.path}: LoRA on fused MoE expert parameters cannot be combined --as-adapter; "
                                        "write a full checkpoint instead")
            if adapter.full_tensors:
                raise InvalidInputError(
                    f"{term.role} {term.source.path}: adapters with modules_to_save cannot be combined --as-adapter; "
                    "write a full checkpoint instead"
                )
            for name, module in adapter.modules.items():
                self.parts.setdefault(name, []).append((term.coef, adapter, module))
        self.ranks = {name: sum(m.rank for _, _, m in parts) for name, parts in self.parts.items()}

    def _keys(self, name: str) -> tuple[str, str]:
        kind_a, kind_b = _FACTOR_KEYS[self.parts[name][0][2].embedding]
        return f"{KEY_PREFIX}{name}.{kind_a}", f"{KEY_PREFIX}{name}.{kind_b}"

    def plan(self) -> list[TensorPlan]:
        plans = []
        for name, parts in self.parts.items():
            adapter, module = parts[0][1], parts[0][2]
            a_info = adapter.file.tensors[module.a_key]
            b_info = adapter.file.tensors[module.b_key]
            dtype = TORCH_TO_SAFETENSORS[self.out_dtype] if self.out_dtype is not None else a_info.dtype
            key_a, key_b = self._keys(name)
            plans.append(TensorPlan(key_a, (self.ranks[name], a_info.shape[1]), dtype))
            plans.append(TensorPlan(key_b, (b_info.shape[0], self.ranks[name]), dtype))
        return plans

    def run(self, writer: StreamingWriter, device: torch.device, progress: Progress | None = None) -> int:
        progress = progress or NullProgress()
        progress.stage("concatenate LoRA factors", len(self.parts))
        for name, parts in self.parts.items():
            a_blocks, b_blocks = [], []
            for coef, adapter, module in parts:
                a, b = adapter.factors(module, device)
                a_blocks.append(a)
                b_blocks.append(b * coef)
            key_a, key_b = self._keys(name)
            writer.write(key_a, torch.cat(a_blocks, dim=0))
            writer.write(key_b, torch.cat(b_blocks, dim=1))
            progress.advance()
        return 2 * len(self.parts)

    def adapter_config(self) -> dict[str, Any]:
        """The first adapter's config with ranks set so every module's scale is exactly 1."""
        template = self.adapter_terms[0].source.adapter
        assert template is not None
        default_rank = Counter(self.ranks.values()).most_common(1)[0][0]
        config = dict(template.config)
        others = {re.escape(name): r for name, r in self.ranks.items() if r != default_rank}
        config.update(
            r=default_rank,
            lora_alpha=default_rank,
            use_rslora=False,
            rank_pattern=others,
            alpha_pattern=dict(others),
            target_modules=sorted({name.rsplit(".", 1)[-1] for name in self.ranks}),
        )
        return config


__all__ = ["AdapterCombination", "LinearCombination", "Term"]
