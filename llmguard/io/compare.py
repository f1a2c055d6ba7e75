"""``diff``: per-module cosine similarity and relative change between two models.

Two checkpoints are compared weight against weight, or (with a base) delta against delta.
Two adapters are compared in ΔW space straight from their factors: ⟨B₁A₁, B₂A₂⟩ needs only
r×r products, so no d×d matrix is formed. An adapter and a checkpoint are compared in delta
space against the adapter's base. This per-module similarity is the signal NLSR selects on.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from llmguard.errors import InvalidInputError
from llmguard.io.dtypes import is_floating
from llmguard.io.lora import factor_inner
from llmguard.io.sources import WeightSource, open_source
from llmguard.io.stream import read_ahead
from llmguard.progress import NullProgress, Progress


@dataclass
class ModuleDiff:
    module: str
    shape: list[int]
    cosine: float | None
    relative_change: float | None
    norm_a: float
    norm_b: float
    note: str = ""


def _module_name(tensor: str) -> str:
    return tensor.removesuffix(".weight")


def _stats(dot: float, norm_a2: float, norm_b2: float) -> tuple[float | None, float | None]:
    norm_a, norm_b = math.sqrt(max(norm_a2, 0.0)), math.sqrt(max(norm_b2, 0.0))
    cosine = dot / (norm_a * norm_b) if norm_a > 0 and norm_b > 0 else None
    diff2 = max(norm_a2 + norm_b2 - 2 * dot, 0.0)
    relative = math.sqrt(diff2) / norm_a if norm_a > 0 else None
    return cosine, relative


def compare(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    *,
    base: str | os.PathLike[str] | None = None,
    allow_pickle: bool = False,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Compare ``a`` and ``b``; returns the mode, every module row and a summary."""
    progress = progress or NullProgress()
    src_a = open_source(a, base=base, allow_pickle=allow_pickle, role="A")
    src_b = open_source(b, base=base, allow_pickle=allow_pickle, role="B")
    if src_a.is_adapter and src_b.is_adapter:
        rows = _compare_adapters(src_a, src_b, device, progress)
        mode = "adapter-delta"
    elif src_a.is_adapter or src_b.is_adapter or base is not None:
        reference = src_a.base if src_a.is_adapter else src_b.base if src_b.is_adapter else None
        if reference is None:
            reference = open_source(base, allow_pickle=allow_pickle, role="base").base  # type: ignore[arg-type]
        rows = _compare_deltas(src_a, src_b, reference, device, progress)
        mode = "delta"
    else:
        rows = _compare_weights(src_a, src_b, device, progress)
        mode = "weights"
    valid = [r.cosine for r in rows if r.cosine is not None]
    return {
        "a": str(Path(a)),
        "b": str(Path(b)),
        "base": str(base) if base else None,
        "mode": mode,
        "modules": [asdict(r) for r in rows],
        "summary": {
            "modules": len(rows),
            "mean_cosine": sum(valid) / len(valid) if valid else None,
            "min_cosine": min(valid) if valid else None,
            "least_similar": min((r for r in rows if r.cosine is not None), key=lambda r: r.cosine, default=None).module  # type: ignore[union-attr]
            if valid
            else None,
        },
    }


def _pair_stats(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
    x = x.reshape(-1).to(torch.float64) if x.numel() < 1_000_000 else x.reshape(-1).float()
    y = y.reshape(-1).to(x.dtype)
    return float(torch.dot(x, y)), float(torch.dot(x, x)), float(torch.dot(y, y))


def _compare_weights(src_a: WeightSource, src_b: WeightSource, device: Any, progress: Progress) -> list[ModuleDiff]:
    names = [n for n in src_a.names() if n in src_b and is_floating(src_a.meta(n).dtype)]
    _check_shapes(src_a, src_b, names)
    progress.stage("compare weights", len(names))
    rows = []
    for name, (x, y) in read_ahead(names, lambda n: (src_a.base.read(n), src_b.base.read(n))):
        dot, na, nb = _pair_stats(x.to(device), y.to(device))
        cos, rel = _stats(dot, na, nb)
        rows.append(ModuleDiff(_module_name(name), list(x.shape), cos, rel, math.sqrt(na), math.sqrt(nb)))
        progress.advance()
    rows += _only_in(src_a, src_b)
    return rows


def _check_shapes(src_a: WeightSource, src_b: WeightSource, names: list[str]) -> None:
    for name in names:
        if src_a.meta(name).shape != src_b.meta(name).shape:
            raise InvalidInputError(
                f"shape mismatch for tensor {name!r}: A {list(src_a.meta(name).shape)} vs B {list(src_b.meta(name).shape)}"
            )


def _only_in(src_a: WeightSource, src_b: WeightSource) -> list[ModuleDiff]:
    rows = []
    for name in src_a.names():
        if name not in src_b:
            rows.append(ModuleDiff(_module_name(name), list(src_a.meta(name).shape), None, None, 0.0, 0.0, "only in A"))
    for name in src_b.names():
        if name not in src_a:
            rows.append(ModuleDiff(_module_name(name), list(src_b.meta(name).shape), None, None, 0.0, 0.0, "only in B"))
    return rows


def _compare_adapters(src_a: WeightSource, src_b: WeightSource, device: Any, progress: Progress) -> list[ModuleDiff]:
    ad_a, ad_b = src_a.adapter, src_b.adapter
    assert ad_a is not None and ad_b is not None
    modules = sorted(set(ad_a.modules) | set(ad_b.modules))
    progress.stage("compare adapter deltas", len(modules))
    rows = []
    for name in modules:
        ma, mb = ad_a.modules.get(name), ad_b.modules.get(name)
        if ma is None or mb is None:
            present = ma or mb
            owner = ad_a if ma else ad_b
            a_, b_ = owner.factors(present, device)  # type: ignore[arg-type]
            norm = math.sqrt(float(factor_inner(a_, b_, a_, b_)))
            rows.append(ModuleDiff(name, list(owner.delta_shape(present)), None, None, norm if ma else 0.0, 0.0 if ma else norm, "only in A" if ma else "only in B"))  # type: ignore[arg-type]
        else:
            shape_a, shape_b = ad_a.delta_shape(ma), ad_b.delta_shape(mb)
            if shape_a != shape_b:
                raise InvalidInputError(f"module {name!r}: ΔW shapes differ, A {list(shape_a)} vs B {list(shape_b)} (adapters for different bases?)")
            a1, b1 = ad_a.factors(ma, device)
            a2, b2 = ad_b.factors(mb, device)
            if ad_a.fan_in_fan_out != ad_b.fan_in_fan_out:
                d1, d2 = ad_a.delta(ma, device), ad_b.delta(mb, device)
                dot, na, nb = _pair_stats(d1, d2)
            else:
                a1, b1, a2, b2 = (t.double() for t in (a1, b1, a2, b2))
                dot = float(factor_inner(a1, b1, a2, b2))
                na = float(factor_inner(a1, b1, a1, b1))
                nb = float(factor_inner(a2, b2, a2, b2))
            cos, rel = _stats(dot, na, nb)
            rows.append(ModuleDiff(name, list(shape_a), cos, rel, math.sqrt(na), math.sqrt(nb)))
        progress.advance()
    return rows + _tensor_rows(src_a, src_b, _tensor_only(ad_a) | _tensor_only(ad_b), device)


def _tensor_only(adapter: Any) -> set[str]:
    """Checkpoint tensors an adapter changes outside plain LoRA modules: fused-expert LoRA, modules_to_save."""
    return set(adapter.parameter_targets) | set(adapter.full_tensors)


def _tensor_rows(src_a: WeightSource, src_b: WeightSource, names: set[str], device: Any) -> list[ModuleDiff]:
    """Delta-vs-delta rows for tensors compared as whole ΔW tensors (None: that side leaves it as is)."""
    rows = []
    for name in sorted(names):
        da, db = src_a.delta(name, device), src_b.delta(name, device)
        reference = src_a.base if name in src_a.base else src_b.base
        shape = list(reference.meta[name].shape)
        if da is None or db is None:
            present = da if da is not None else db
            norm = float(torch.linalg.vector_norm(present)) if present is not None else 0.0
            rows.append(ModuleDiff(_module_name(name), shape, None, None, norm if da is not None else 0.0,
                                   norm if db is not None else 0.0, "only in A" if da is not None else "only in B"))
            continue
        dot, na, nb = _pair_stats(da, db)
        cos, rel = _stats(dot, na, nb)
        rows.append(ModuleDiff(_module_name(name), shape, cos, rel, math.sqrt(na), math.sqrt(nb)))
    return rows


def _compare_deltas(src_a: WeightSource, src_b: WeightSource, reference: Any, device: Any, progress: Progress) -> list[ModuleDiff]:
    """Δ = θ − base for checkpoints, the adapter's ΔW for adapters; compared per tensor."""

    def delta(src: WeightSource, name: str) -> torch.Tensor | None:
        if src.is_adapter:
            return src.delta(name, device)
        return src.base.read(name).to(device=device, dtype=torch.float32) - reference.read(name).to(device=device, dtype=torch.float32)

    if src_a.is_adapter or src_b.is_adapter:
        adapters = [s.adapter for s in (src_a, src_b) if s.adapter is not None]
        names = sorted({m.target for ad in adapters for m in ad.modules.values()} | {n for ad in adapters for n in _tensor_only(ad)})
    else:
        names = [n for n in src_a.names() if n in src_b and n in reference and is_floating(src_a.meta(n).dtype)]
    progress.stage("compare deltas", len(names))
    rows = []
    for name in names:
        da, db = delta(src_a, name), delta(src_b, name)
        shape = list(reference.meta[name].shape)
        if da is None or db is None:
            present = da if da is not None else db
            norm = float(torch.linalg.vector_norm(present)) if present is not None else 0.0
            rows.append(ModuleDiff(_module_name(name), shape, None, None, norm if da is not None else 0.0, norm if db is not None else 0.0, "adapter leaves it unchanged"))
        else:
            dot, na, nb = _pair_stats(da, db)
            cos, rel = _stats(dot, na, nb)
            rows.append(ModuleDiff(_module_name(name), shape, cos, rel, math.sqrt(na), math.sqrt(nb)))
        progress.advance()
    return rows



def run_diff(options: Any, progress: Any = None) -> dict[str, Any]:
    """``diff`` from its ``DiffOptions``."""
    from llmguard.io.device import resolve_device

    return compare(options.a, options.b, base=options.base, allow_pickle=options.allow_pickle, device=resolve_device(options.device),
                   progress=progress)
