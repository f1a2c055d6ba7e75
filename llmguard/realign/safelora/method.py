"""``realign safelora``: Safe LoRA's projection, one module at a time, LoRA in → LoRA out.

For every adapted module (Hsu et al., NeurIPS 2024, and the authors' code):

    V = W_aligned − W_base                       (the alignment update of that weight)
    C = V Vᵀ / ‖V‖_F                             (the paper's projection matrix, d_out × d_out)
    cos = cos(C·B·A, B·A)                        (flattened; LoRA scale does not change it)
    B ← C·B   if cos ≤ threshold  (or the module is among the K lowest cosines)

C is never formed: C·B = V (Vᵀ B) / ‖V‖_F costs O(d·r) memory, and the cosine uses factor-space
inner products (r × r), so memory is one weight pair and one module's factors at a time. Note that
C is not an orthogonal projector (its eigenvalues are σᵢ²/‖V‖_F); this is the formula of the paper
and of its code, kept exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmguard.errors import InvalidInputError
from llmguard.io.device import resolve_device
from llmguard.io.dtypes import TORCH_TO_SAFETENSORS, parse_dtype_option
from llmguard.io.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, factor_inner, is_adapter_dir
from llmguard.io.manifest import MANIFEST_NAME, Manifest
from llmguard.io.checkpoint import open_checkpoint
from llmguard.io.sources import open_source
from llmguard.io.writer import StreamingWriter, TensorPlan
from llmguard.progress import NullProgress, Progress
from llmguard.realign.safelora.options import SafeLoraOptions

MODULE_TABLE = "safelora_modules.json"
_SIDE_SKIP = {"README.md", MANIFEST_NAME, MODULE_TABLE, ADAPTER_CONFIG}


@dataclass
class SafeLoraResult:
    output: Path | None
    modules: list[dict[str, Any]]
    projected: int
    rule: str
    manifest: dict
    dry_run: bool = False


def project_b(v: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """C·B with C = V Vᵀ / ‖V‖_F, without forming C."""
    return v @ (v.T @ b) / torch.linalg.matrix_norm(v)


def projected_cosine(a: torch.Tensor, b: torch.Tensor, cb: torch.Tensor) -> float:
    """cos(C·B·A, B·A) in factor space."""
    inner = factor_inner(a, cb, a, b)
    norm = torch.sqrt(factor_inner(a, cb, a, cb) * factor_inner(a, b, a, b))
    return float(inner / norm) if float(norm) > 0 else 1.0


def run_safelora(options: SafeLoraOptions, progress: Progress | None = None) -> SafeLoraResult:
    o = options
    progress = progress or NullProgress()
    device = resolve_device(o.device)
    out_dtype = parse_dtype_option(o.dtype)
    manifest = Manifest(verb=o.verb, parameters=o.to_manifest())
    with manifest.stage("open inputs"):
        if not is_adapter_dir(o.finetuned):
            raise InvalidInputError(f"finetuned {o.finetuned}: Safe LoRA projects LoRA adapters; this is not one (no {ADAPTER_CONFIG})")
        finetuned = open_source(o.finetuned, allow_pickle=o.allow_pickle, role="finetuned")
        aligned = open_source(o.aligned, allow_pickle=o.allow_pickle, role="aligned")
        base = open_checkpoint(o.base, allow_pickle=o.allow_pickle)
        adapter = finetuned.adapter
        assert adapter is not None
        if adapter.full_tensors:
            raise InvalidInputError(f"finetuned {o.finetuned}: adapters with modules_to_save are not supported by Safe LoRA")
        if adapter.parameter_modules:
            raise InvalidInputError(f"finetuned {o.finetuned}: LoRA on fused MoE expert parameters is not supported by Safe LoRA")
        for name, module in adapter.modules.items():
            if module.embedding or adapter.fan_in_fan_out:
                raise InvalidInputError(f"finetuned {o.finetuned}: module {name!r} is not a plain linear LoRA module")
            for ckpt, role in ((aligned.base, "aligned"), (base, "base")):
                meta = ckpt.meta.get(module.target)
                if meta is None or tuple(meta.shape) != adapter.delta_shape(module):
                    raise InvalidInputError(f"{role} {ckpt.root}: weight {module.target!r} is "
                                            f"{list(meta.shape) if meta else 'missing'}, the adapter's delta is {list(adapter.delta_shape(module))}")
        for role, path in (("aligned", aligned.path), ("base", base.root), ("finetuned", finetuned.path)):
            manifest.add_input(role, path)
    rows: list[dict[str, Any]] = []
    projected_b: dict[str, torch.Tensor] = {}
    with manifest.stage("cosines") as record:
        progress.stage("Safe LoRA cosines", len(adapter.modules))
        for name, module in adapter.modules.items():
            w_al = aligned.base.read(module.target).to(device=device, dtype=torch.float32)
            delta = aligned.delta(module.target, device)
            if delta is not None:
                w_al = w_al + delta
            v = w_al - base.read(module.target).to(device=device, dtype=torch.float32)
            a = adapter.file.read(module.a_key).to(device=device, dtype=torch.float32)
            b = adapter.file.read(module.b_key).to(device=device, dtype=torch.float32)
            if float(torch.linalg.matrix_norm(v)) == 0:
                raise InvalidInputError(f"aligned and base are identical at {module.target!r}: there is no alignment subspace")
            cb = project_b(v, b)
            rows.append({"module": name, "cosine": round(projected_cosine(a, b, cb), 6)})
            projected_b[module.b_key] = cb.cpu()
            progress.advance()
        cosines = [r["cosine"] for r in rows]
        if o.top_k is not None:
            cut = sorted(cosines)[min(o.top_k, len(cosines)) - 1]
            rule = f"the {o.top_k} lowest cosines (≤ {cut:.4f})"
        else:
            cut = o.threshold
            rule = f"cosine ≤ {o.threshold}"
        for row in rows:
            row["projected"] = row["cosine"] <= cut
        count = sum(r["projected"] for r in rows)
        record.update(modules=len(rows), projected=count)
    manifest.extra.update(rule=rule, modules_projected=count, modules_total=len(rows))
    if o.dry_run:
        progress.close()
        return SafeLoraResult(None, rows, count, rule, manifest.to_dict(), dry_run=True)
    selected = {adapter.modules[r["module"]].b_key for r in rows if r["projected"]}
    plan = [TensorPlan(k, tuple(i.shape), TORCH_TO_SAFETENSORS[out_dtype] if out_dtype is not None else i.dtype)
            for k, i in adapter.file.tensors.items()]
    out = Path(o.output)  # type: ignore[arg-type]
    writer = StreamingWriter(out, plan, force=o.force, inputs=[finetuned.path, aligned.path, aligned.base.root, base.root],
                             single_file_name=ADAPTER_WEIGHTS)
    with writer:
        with manifest.stage("write") as record:
            for item in plan:
                writer.write(item.name, projected_b[item.name] if item.name in selected else adapter.file.read(item.name))
            record["tensors"] = len(plan)
        for path in sorted(finetuned.path.iterdir()):
            if path.is_file() and not path.name.endswith(".safetensors") and path.name not in _SIDE_SKIP and not path.name.startswith("."):
                writer.copy_file(path)
        writer.copy_file(finetuned.path / ADAPTER_CONFIG)
        writer.write_json(MODULE_TABLE, rows)
        writer.write_text("README.md", "\n".join([
            "# Safe LoRA-projected adapter", "",
            "Written by `llmguard realign safelora`: for the selected modules B ← C·B with C = V Vᵀ / ‖V‖_F, V = W_aligned − W_base.", "",
            f"- fine-tuned: `{finetuned.path}`", f"- aligned: `{aligned.path}`; base `{base.root}`",
            f"- rule: {rule}; projected {count} of {len(rows)} modules", "",
            f"`{MODULE_TABLE}` lists every module's cosine; `llmguard.json` has every parameter and timing.", ""]))
        manifest.extra["output"] = str(out)
        payload = manifest.to_dict()
        writer.write_json(MANIFEST_NAME, payload)
    progress.close()
    return SafeLoraResult(out, rows, count, rule, payload)
