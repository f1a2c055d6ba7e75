"""``inspect``: what a checkpoint or adapter contains, from headers and configs only.

``scan_values`` (``inspect --scan``) additionally reads every tensor, one at a time, and counts
NaN/Inf values: the only part of ``inspect`` whose cost grows with the model size.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from llmguard.errors import InvalidInputError
from llmguard.io.checkpoint import open_checkpoint
from llmguard.io.dtypes import ITEMSIZE
from llmguard.io.finite import count_nonfinite
from llmguard.io.lora import LoraAdapter, is_adapter_dir


def summarize(path: str | os.PathLike[str], *, allow_pickle: bool = False) -> dict[str, Any]:
    """A JSON-ready summary of a checkpoint directory/file or a PEFT LoRA adapter."""
    root = Path(path)
    if not root.exists():
        raise InvalidInputError(f"{root}: no such file or directory")
    if root.is_dir() and is_adapter_dir(root):
        return _summarize_adapter(LoraAdapter(root))
    return _summarize_checkpoint(root, allow_pickle)


def _summarize_checkpoint(root: Path, allow_pickle: bool) -> dict[str, Any]:
    ckpt = open_checkpoint(root, allow_pickle=allow_pickle)
    metas = list(ckpt.meta.values())
    params_by_dtype: Counter[str] = Counter()
    for meta in metas:
        params_by_dtype[meta.dtype] += meta.numel
    largest = max(metas, key=lambda m: m.numel * ITEMSIZE.get(m.dtype, 1), default=None)
    shards = []
    for file in ckpt.weight_files:
        inside = [m for m in metas if m.file == file]
        shards.append({"file": file.name, "bytes": file.stat().st_size, "tensors": len(inside)})
    config = ckpt.config or {}
    return {
        "path": str(root),
        "kind": "checkpoint",
        "format": "pickle" if ckpt.is_pickle else "safetensors",
        "architecture": ckpt.architecture,
        "model_type": config.get("model_type"),
        "parameters": sum(m.numel for m in metas),
        "tensors": len(metas),
        "dtypes": dict(params_by_dtype.most_common()),
        "shards": shards,
        "total_bytes": sum(s["bytes"] for s in shards),
        "largest_tensor": None
        if largest is None
        else {"name": largest.name, "shape": list(largest.shape), "dtype": largest.dtype, "bytes": largest.numel * ITEMSIZE.get(largest.dtype, 1)},
        "tied_embeddings": ckpt.tie_word_embeddings,
        "lm_head_stored": "lm_head.weight" in ckpt,
        "layers": config.get("num_hidden_layers"),
        "hidden_size": config.get("hidden_size"),
        "vocab_size": config.get("vocab_size"),
        "structure": _structure(root) if root.is_dir() and (root / "config.json").is_file() else None,
    }


def _structure(root: Path) -> dict[str, Any]:
    """What the verbs treat specially (linear maps, Conv1D, MoE experts, tied weights), or why not."""
    from llmguard.errors import LLMGuardError
    from llmguard.io.architecture import architecture_of

    try:
        return architecture_of(root).describe()
    except LLMGuardError as err:
        return {"unsupported": str(err)}


def _summarize_adapter(adapter: LoraAdapter) -> dict[str, Any]:
    dtypes: Counter[str] = Counter()
    for info in adapter.file.tensors.values():
        dtypes[info.dtype] += info.numel
    ranks = Counter(m.rank for m in adapter.modules.values())
    suffixes = sorted({name.rsplit(".", 1)[-1] for name in adapter.modules})
    return {
        "path": str(adapter.root),
        "kind": "lora_adapter",
        "base_model": adapter.base_model_name_or_path,
        "rank": adapter.rank,
        "alpha": adapter.alpha,
        "rslora": adapter.use_rslora,
        "scaling": (adapter.alpha / adapter.rank ** 0.5) if adapter.use_rslora else adapter.alpha / adapter.rank,
        "fan_in_fan_out": adapter.fan_in_fan_out,
        "target_modules": adapter.target_modules,
        "adapted_module_types": suffixes,
        "modules": len(adapter.modules),
        "ranks": {str(r): n for r, n in sorted(ranks.items())},
        "rank_pattern": adapter.rank_pattern,
        "alpha_pattern": adapter.alpha_pattern,
        "modules_to_save": sorted(adapter.full_tensors),
        "expert_parameter_modules": {m.key: {"experts": m.experts, "rank": m.rank} for m in adapter.parameter_modules.values()},
        "parameters": adapter.parameter_count,
        "dtypes": dict(dtypes.most_common()),
        "bytes": adapter.file.path.stat().st_size,
        "task_type": adapter.config.get("task_type"),
    }


def scan_values(path: str | os.PathLike[str], *, allow_pickle: bool = False, limit: int = 20) -> dict[str, Any]:
    """Read every tensor once (streamed: one tensor in memory at a time) and count NaN/Inf values.

    Returns the number of tensors scanned, the total of non-finite values, and the first
    ``limit`` offending tensors with their counts.
    """
    root = Path(path)
    if not root.exists():
        raise InvalidInputError(f"{root}: no such file or directory")
    if root.is_dir() and is_adapter_dir(root):
        adapter = LoraAdapter(root)
        names, read = list(adapter.file.tensors), adapter.file.read
    else:
        ckpt = open_checkpoint(root, allow_pickle=allow_pickle)
        names, read = ckpt.names(), ckpt.read
    offenders: list[dict[str, Any]] = []
    tensors_bad = 0
    total = 0
    for name in names:
        bad = count_nonfinite(read(name))
        if bad:
            tensors_bad += 1
            total += bad
            if len(offenders) < limit:
                offenders.append({"name": name, "nonfinite": bad})
    return {"tensors_scanned": len(names), "tensors_nonfinite": tensors_bad, "nonfinite_values": total, "first_nonfinite": offenders}


def run_inspect(options: Any) -> dict[str, Any]:
    """``inspect`` from its ``InspectOptions``: the summary, with ``scan`` when asked for."""
    summary = summarize(options.path, allow_pickle=options.allow_pickle)
    if options.scan:
        summary["scan"] = scan_values(options.path, allow_pickle=options.allow_pickle)
    return summary
