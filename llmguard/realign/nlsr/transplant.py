"""Stage 5: copy the masked reference values into the selected modules and write OUT.

Element units: OUT is a PEFT adapter shaped exactly like the fine-tuned one; in each selected
module ``A ← A_ft ⊙ ¬M_A + A_ref ⊙ M_A`` and ``B ← B_ft ⊙ ¬M_B + B_ref ⊙ M_B`` (stored values,
B_ref expressed in the fine-tuned adapter's α/r). The values come from the *unprojected*
reference, as in the official code.

Row and weight units: OUT is a full checkpoint (the fine-tuned model, merged when it was an
adapter) in which the masked rows (or single weights) of each selected module's weight are
replaced by the reference model's values (θ_base + ΔW_ref). Every other value is copied bit for
bit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from llmguard.io.dtypes import TORCH_TO_SAFETENSORS, is_floating
from llmguard.io.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from llmguard.io.writer import StreamingWriter, TensorPlan
from llmguard.progress import Progress
from llmguard.realign.nlsr.analysis import ModuleResult
from llmguard.realign.nlsr.inputs import NlsrInputs
from llmguard.realign.nlsr.patch import PatchRecorder
from llmguard.realign.nlsr.reference import Reference, source_weight

_SIDE_SKIP = {"README.md", "llmguard.json", "realign_patch.json", "nlsr_modules.json", "model.safetensors.index.json"}


def _dtype_name(stored: str, out_dtype: torch.dtype | None) -> str:
    return TORCH_TO_SAFETENSORS[out_dtype] if out_dtype is not None and is_floating(stored) else stored


def plan(inputs: NlsrInputs, out_dtype: torch.dtype | None) -> tuple[list[TensorPlan], str | None]:
    """Output tensors and the single file name (adapters) or None (sharded checkpoint)."""
    if inputs.output_is_adapter:
        adapter = inputs.finetuned.adapter
        assert adapter is not None
        return [TensorPlan(k, tuple(i.shape), _dtype_name(i.dtype, out_dtype)) for k, i in adapter.file.tensors.items()], ADAPTER_WEIGHTS
    base = inputs.finetuned.base
    return [TensorPlan(n, base.meta[n].shape, _dtype_name(base.meta[n].dtype, out_dtype)) for n in base.names()], None


def side_files(inputs: NlsrInputs) -> Iterable[Path]:
    """Config/tokenizer files to copy next to the output."""
    if inputs.output_is_adapter:
        root = inputs.finetuned.path
        return [p for p in sorted(root.iterdir()) if p.is_file() and not p.name.endswith(".safetensors") and p.name not in _SIDE_SKIP and not p.name.startswith(".")]
    return inputs.finetuned.base.auxiliary_files()


def _to_dtype(tensor: torch.Tensor, dtype: str) -> torch.Tensor:
    target = {v: k for k, v in TORCH_TO_SAFETENSORS.items()}[dtype]
    return tensor.to(target)


def patch_plan(inputs: NlsrInputs, selected: list[ModuleResult], tensor_plan: list[TensorPlan]) -> list[TensorPlan]:
    """Every patch tensor the transplant will write, from the masks alone (before any value)."""
    dtypes = {p.name: p.dtype for p in tensor_plan}
    plan: list[TensorPlan] = []
    if inputs.output_is_adapter:
        adapter = inputs.finetuned.adapter
        assert adapter is not None
        for result in selected:
            module = adapter.modules[result.name]
            for key, mask in ((module.a_key, result.mask_a), (module.b_key, result.mask_b)):
                assert mask is not None
                count = int(mask.sum())
                plan += PatchRecorder.entry_plan(key, count, (count,), dtypes[key])
        return plan
    for result in selected:
        key = f"{result.name}.weight"
        shape = inputs.finetuned.base.meta[key].shape
        d_in = shape[0] if inputs.stored_orientation(result.name) else shape[1]
        row_width = (d_in,) if inputs.strategy.whole_rows else ()  # a row unit holds d_in values
        plan += PatchRecorder.entry_plan(key, result.masked, (result.masked, *row_width), dtypes[key])
    return plan


def write_elements(
    inputs: NlsrInputs, reference: Reference, selected: list[ModuleResult], tensor_plan: list[TensorPlan],
    writer: StreamingWriter, recorder: PatchRecorder, device: torch.device, progress: Progress,
) -> int:
    adapter = inputs.finetuned.adapter
    assert adapter is not None
    dtypes = {p.name: p.dtype for p in tensor_plan}
    jobs: dict[str, tuple[ModuleResult, str]] = {}
    for result in selected:
        module = adapter.modules[result.name]
        jobs[module.a_key] = (result, "a")
        jobs[module.b_key] = (result, "b")
    progress.stage("transplant + write", len(tensor_plan))
    for key in adapter.file.tensors:
        stored = _to_dtype(adapter.file.read(key), dtypes[key])
        job = jobs.get(key)
        if job is not None:
            result, which = job
            module = adapter.modules[result.name]
            a_ref, b_ref = reference.factors(result.name, "cpu")
            values, mask = (a_ref, result.mask_a) if which == "a" else (b_ref / module.scaling, result.mask_b)
            assert mask is not None
            index = mask.reshape(-1).nonzero().squeeze(1)
            stored = stored.clone()
            flat = stored.view(-1)
            original = flat[index].clone()
            patched = values.reshape(-1)[index].to(stored.dtype)
            flat[index] = patched
            recorder.record(key, index, original, patched)
        writer.write(key, stored)
        progress.advance()
    return len(tensor_plan)


def unit_view(inputs: NlsrInputs, module: str, mask: torch.Tensor) -> tuple[Callable[[torch.Tensor], torch.Tensor], bool]:
    """How a ΔW mask indexes the stored weight: a view whose first dimension is the unit, and
    whether the units are columns. Row units index output rows of the map (columns of a
    transposed Conv1D weight); weight units index the flattened entries of the stored weight."""
    columns = mask.dim() == 1 and inputs.stored_orientation(module)
    if columns:
        return (lambda t: t.T), True
    return ((lambda t: t) if mask.dim() == 1 else (lambda t: t.reshape(-1))), False


def transplant_delta(inputs: NlsrInputs, reference: Reference, result: ModuleResult, tensor: torch.Tensor,
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """Overwrite the masked units of one module's weight ``tensor`` (stored layout, contiguous,
    changed in place) with the reference's values; returns (index, original, patched, columns)."""
    name = f"{result.name}.weight"
    mask = result.unit_mask()
    units, columns = unit_view(inputs, result.name, mask)
    index = units(mask).nonzero().squeeze(1)
    view = units(tensor)  # a view (tensor is contiguous): writing into it patches tensor
    original = view[index].clone()
    patched = units(reference.weight(name, device))[index.to(device)].to(device=tensor.device, dtype=tensor.dtype)
    view[index] = patched
    return index, original, patched.cpu(), columns


def write_delta_units(
    inputs: NlsrInputs, reference: Reference, selected: list[ModuleResult], tensor_plan: list[TensorPlan],
    writer: StreamingWriter, recorder: PatchRecorder, device: torch.device, progress: Progress,
) -> int:
    finetuned = inputs.finetuned
    jobs = {f"{r.name}.weight": r for r in selected}
    progress.stage("transplant + write", len(tensor_plan))
    for item in tensor_plan:
        name = item.name
        if finetuned.adapter is not None and is_floating(finetuned.base.meta[name].dtype) and finetuned.delta(name, torch.device("cpu")) is not None:
            tensor = _to_dtype(source_weight(finetuned, name, device), item.dtype).cpu()
        else:
            tensor = _to_dtype(finetuned.base.read(name), item.dtype)
        result = jobs.get(name)
        if result is not None:
            tensor = tensor.clone()
            index, original, patched, columns = transplant_delta(inputs, reference, result, tensor, device)
            recorder.record(name, index, original, patched, columns=columns)
        writer.write(name, tensor)
        progress.advance()
    return len(tensor_plan)


def write_output(
    inputs: NlsrInputs, reference: Reference, selected: list[ModuleResult], tensor_plan: list[TensorPlan],
    writer: StreamingWriter, recorder: PatchRecorder, device: torch.device, progress: Progress,
) -> int:
    run: Any = write_elements if inputs.output_is_adapter else write_delta_units
    written = run(inputs, reference, selected, tensor_plan, writer, recorder, device, progress)
    for path in side_files(inputs):
        writer.copy_file(path)
    if inputs.output_is_adapter and not (writer.tmp / ADAPTER_CONFIG).exists():
        writer.copy_file(inputs.finetuned.path / ADAPTER_CONFIG)
    return written
