"""``realign safelora``: Safe LoRA's projection, one module at a time, LoRA in → LoRA out.

For every adapted module (Hsu et al., NeurIPS 2024, and the authors' code):

    V = W_aligned − W_base                       (the alignment update of that weight)
    C = V Vᵀ / ‖V‖_F                             (the paper's projection matrix, d_out × d_out)
    cos = cos(C·B·A, B·A)                        (flattened; LoRA scale does not change it)
    B ← C·B   if cos ≤ threshold  (or the module is among the K lowest cosines)

C is never formed: C·B = V (Vᵀ B) / ‖V‖_F costs O(d·r) memory, and the cosine uses factor-space
inner products (r × r), so memory is one weight pair at a time (for fused MoE experts, one fused
parameter's V) plus the factors. Note that
C is not an orthogonal projector (its eigenvalues are σᵢ²/‖V‖_F); this is the formula of the paper
and of its code, kept exactly.

Every unit is a linear map in (out × in) orientation with ΔW = B·A: a weight stored (in × out)
(GPT-2's ``Conv1D`` under ``fan_in_fan_out``, an embedding seen as the map token → vector) has V
transposed to match. LoRA on fused MoE experts (PEFT ``target_parameters``: A [r·E, in], B
[out, r·E]) is E linear maps, one per expert: each expert's columns of B are projected with that
expert's own V (assembled from the checkpoint's per-expert tensors by the architecture layer) and
each expert is a row of the table, selected on its own cosine. A full replacement tensor
(``modules_to_save``) has no low-rank update to project and is refused; a saved copy of the base
tensor (PEFT saves an adapted embedding) is passed through.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

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


@dataclass
class _Unit:
    """One linear map to project: ΔW = B·A (out × in), V in the same orientation."""

    name: str
    b_key: str
    a: torch.Tensor
    b: torch.Tensor
    v: Callable[[], torch.Tensor]
    write: Callable[[torch.Tensor], torch.Tensor] = lambda b: b  # full B of b_key ← this unit's projected columns
    expert: int | None = None
    tensors: list[str] | None = None
    projected: torch.Tensor | None = None


class _Layouts:
    """How each input checkpoint stores what the adapter's base calls ``name``: the adapter is
    resolved against its own base; the aligned and base checkpoints may store the same
    in-memory parameter under other names (no base-model prefix, experts fused on disk). The
    translation goes through the in-memory name, each checkpoint's architecture bound to it."""

    def __init__(self, adapter: Any, finetuned_base: Any) -> None:
        self.adapter_arch = adapter._architecture or self._arch(finetuned_base)

    @staticmethod
    def _arch(ckpt: Any) -> Any:
        from llmguard.io.architecture import architecture_of

        return architecture_of(ckpt.root) if (Path(ckpt.root) / "config.json").is_file() else None

    def arch(self, ckpt: Any) -> Any:
        return self._arch(ckpt) or self.adapter_arch

    def tensor(self, ckpt: Any, name: str) -> str:
        """The name ``ckpt`` stores adapter-base tensor ``name`` under."""
        if name in ckpt.meta or self.adapter_arch is None:
            return name
        arch = self._arch(ckpt)
        memory = self.adapter_arch.checkpoint_to_memory.get(name)
        if arch is None or memory is None or memory not in arch.parameters or arch.is_converted(memory):
            return name
        return next(iter(arch.checkpoint_layout(memory)))


def _units(adapter: Any, aligned: Any, base: Any, device: torch.device, layouts: _Layouts) -> Iterator[_Unit]:
    """Every linear map the adapter updates, as a :class:`_Unit` (module order, experts in order)."""

    def aligned_weight(name: str) -> torch.Tensor:
        w = aligned.base.read(name).to(device=device, dtype=torch.float32)
        delta = aligned.delta(name, device)
        return w if delta is None else w + delta

    def base_weight(name: str) -> torch.Tensor:
        return base.read(name).to(device=device, dtype=torch.float32)

    for name, module in adapter.modules.items():
        # stored (in × out): Conv1D under fan_in_fan_out, and embeddings ([vocab, dim], ΔW = (B·A)ᵀ)
        transposed = module.embedding or adapter.fan_in_fan_out
        a = adapter.file.read(module.a_key).to(device=device, dtype=torch.float32)
        b = adapter.file.read(module.b_key).to(device=device, dtype=torch.float32)

        def v(target: str = module.target, transposed: bool = transposed) -> torch.Tensor:
            diff = aligned_weight(layouts.tensor(aligned.base, target)) - base_weight(layouts.tensor(base, target))
            return diff.T if transposed else diff

        unit = _Unit(name, module.b_key, a, b, v)
        unit.write = (lambda current, unit=unit: unit.projected)  # type: ignore[assignment,return-value]
        yield unit
    arch = layouts.arch(base)
    for pmod in adapter.parameter_modules.values():
        parameter = pmod.parameter
        a_all = adapter.file.read(pmod.a_key).to(device=device, dtype=torch.float32)
        b_all = adapter.file.read(pmod.b_key).to(device=device, dtype=torch.float32)
        a_e = a_all.reshape(pmod.experts, pmod.rank, a_all.shape[-1])  # PEFT's ParamWrapper layout: e r i
        b_e = b_all.reshape(b_all.shape[0], pmod.rank, pmod.experts)  # o r e
        by_expert: dict[int, list[str]] = {}
        for tensor, expert in (arch.expert_of(parameter).items() if arch.is_converted(parameter) else ()):
            by_expert.setdefault(expert, []).append(tensor)
        cache: dict[str, torch.Tensor] = {}

        def v_all(parameter: str = parameter, cache: dict = cache) -> torch.Tensor:
            if "v" not in cache:
                cache["v"] = (layouts.arch(aligned.base).memory_tensor(parameter, aligned_weight)
                              - layouts.arch(base).memory_tensor(parameter, base_weight))
            return cache["v"]

        for e in range(pmod.experts):
            def v(e: int = e, out_in: bool = pmod.stored_out_in, v_all=v_all, cache: dict = cache,
                  last: bool = e == pmod.experts - 1) -> torch.Tensor:
                value = v_all()[e] if out_in else v_all()[e].T
                if last:  # units are visited in order: the fused V is not needed past its last expert
                    cache.clear()
                return value

            tensors = sorted(by_expert.get(e, [])) if arch.is_converted(parameter) else [parameter]  # fused on disk: one tensor
            unit = _Unit(f"{parameter}[{e}]", pmod.b_key, a_e[e], b_e[:, :, e], v, expert=e, tensors=tensors)

            def write(current: torch.Tensor, unit: _Unit = unit, e: int = e, pmod: Any = pmod) -> torch.Tensor:
                out = current.reshape(current.shape[0], pmod.rank, pmod.experts).clone()
                out[:, :, e] = unit.projected
                return out.reshape(current.shape)

            unit.write = write  # type: ignore[assignment]
            yield unit


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
        for target, key in adapter.full_tensors.items():
            if not torch.equal(adapter.read_full(target), finetuned.base.read(target)):
                raise InvalidInputError(f"finetuned {o.finetuned}: adapter tensor {key!r} replaces {target!r} in full "
                                        "(modules_to_save); Safe LoRA projects low-rank updates only")
        if not adapter.modules and not adapter.parameter_modules:
            raise InvalidInputError(f"finetuned {o.finetuned}: no LoRA module to project")
        layouts = _Layouts(adapter, finetuned.base)
        for name, module in adapter.modules.items():
            for ckpt, role in ((aligned.base, "aligned"), (base, "base")):
                stored = layouts.tensor(ckpt, module.target)
                meta = ckpt.meta.get(stored)
                if meta is None or tuple(meta.shape) != adapter.delta_shape(module):
                    raise InvalidInputError(f"{role} {ckpt.root}: weight {stored!r} is "
                                            f"{list(meta.shape) if meta else 'missing'}, the adapter's delta is {list(adapter.delta_shape(module))}")
        for pmod in adapter.parameter_modules.values():
            assert pmod.parameter is not None
            for ckpt, role in ((aligned.base, "aligned"), (base, "base")):
                for tensor, shape in layouts.arch(ckpt).checkpoint_layout(pmod.parameter).items():
                    meta = ckpt.meta.get(tensor)
                    if meta is None or tuple(meta.shape) != tuple(shape):
                        raise InvalidInputError(f"{role} {ckpt.root}: expert weight {tensor!r} is "
                                                f"{list(meta.shape) if meta else 'missing'}, {pmod.parameter!r} needs {list(shape)}")
        for role, path in (("aligned", aligned.path), ("base", base.root), ("finetuned", finetuned.path)):
            manifest.add_input(role, path)
    rows: list[dict[str, Any]] = []
    units: list[_Unit] = []
    with manifest.stage("cosines") as record:
        units = list(_units(adapter, aligned, base, device, layouts))
        progress.stage("Safe LoRA cosines", len(units))
        for unit in units:
            v, a, b = unit.v(), unit.a, unit.b
            if float(torch.linalg.matrix_norm(v)) == 0:
                raise InvalidInputError(f"aligned and base are identical at {unit.name!r}: there is no alignment subspace")
            unit.projected = project_b(v, b)
            row: dict[str, Any] = {"module": unit.name, "cosine": round(projected_cosine(a, b, unit.projected), 6)}
            if unit.expert is not None:
                row.update(expert=unit.expert, tensors=unit.tensors)
            rows.append(row)
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
    projected_b: dict[str, torch.Tensor] = {}
    for unit, row in zip(units, rows):
        if row["projected"]:
            current = projected_b.get(unit.b_key)
            if current is None:
                current = adapter.file.read(unit.b_key).to(device=device, dtype=torch.float32)
            projected_b[unit.b_key] = unit.write(current)
    plan = [TensorPlan(k, tuple(i.shape), TORCH_TO_SAFETENSORS[out_dtype] if out_dtype is not None else i.dtype)
            for k, i in adapter.file.tensors.items()]
    out = Path(o.output)  # type: ignore[arg-type]
    writer = StreamingWriter(out, plan, force=o.force, inputs=[finetuned.path, aligned.path, aligned.base.root, base.root],
                             single_file_name=ADAPTER_WEIGHTS)
    with writer:
        with manifest.stage("write") as record:
            for item in plan:
                writer.write(item.name, projected_b[item.name].cpu() if item.name in projected_b else adapter.file.read(item.name))
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
