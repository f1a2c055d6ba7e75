"""``realign somf``: task vectors → Concrete mask trained with DPO → binary mask → fusion → output."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from llmguard.errors import InvalidInputError
from llmguard.io.checkpoint import copy_auxiliary_files
from llmguard.io.device import resolve_device
from llmguard.io.dtypes import TORCH_TO_SAFETENSORS, is_floating, parse_dtype_option
from llmguard.io.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from llmguard.io.manifest import MANIFEST_NAME, Manifest
from llmguard.io.writer import StreamingWriter, TensorPlan, parse_size
from llmguard.progress import NullProgress, Progress
from llmguard.realign.somf.mask import MASK_FILE, ConcreteMask, densities, load_mask, save_mask
from llmguard.realign.somf.merge import MERGES, MergeSettings, merge_masked
from llmguard.realign.somf.options import SomfOptions
from llmguard.realign.somf.scales import TaskScales, summary
from llmguard.realign.somf.task_vectors import TaskVectors, open_task_vectors

_SIDE_SKIP = {"README.md", MANIFEST_NAME, MASK_FILE, "model.safetensors.index.json", ADAPTER_CONFIG}


@dataclass
class SomfResult:
    output: Path | None
    space: str
    granularity: str
    mask_parameters: int
    mask_density: float
    module_density: dict[str, float]
    losses: list[float]  # DPO loss per step
    manifest: dict
    dry_run: bool = False
    task_losses: list[float] = field(default_factory=list)  # task NLL per step (--task-data)
    notes: list[str] = field(default_factory=list)  # warnings for the user (the CLI prints them on stderr)


def _settings(options: SomfOptions) -> MergeSettings:
    return MergeSettings(lam=options.effective_lambda, density=options.effective_density, seed=options.seed)


def final_mask(tv: TaskVectors, options: SomfOptions, device: torch.device, progress: Progress,
               manifest: Manifest) -> tuple[dict[str, torch.Tensor], dict[str, list[float]] | None, dict[str, Any]]:
    """Train the mask (or read ``--mask-file``) and return the binary mask, the merge scales
    (``None`` without ``--task-scales``) and the training log."""
    if options.mask_file is not None:
        with manifest.stage("read mask") as record:
            masks, meta = load_mask(options.mask_file, tv.shapes, options.granularity)
            manifest.add_input("mask_file", options.mask_file)
            record["granularity"] = meta.get("granularity")
            scales = _stored_scales(meta, tv, options.mask_file)
            record["task_scales"] = "tensor" if scales is not None else "none"
        return masks, scales, {"mask_file": str(options.mask_file), "granularity": meta.get("granularity", options.granularity)}
    from llmguard.realign.somf.dpo import train_mask
    from llmguard.realign.somf.masked_model import MaskedModel
    from llmguard.realign.somf.preference import encode, encode_task, find_tokenizer, load_preference, load_task

    with manifest.stage("preference data") as record:
        records = load_preference(options.preference, prompt_field=options.prompt_field, chosen_field=options.chosen_field,
                                  rejected_field=options.rejected_field)
        tokenizer = find_tokenizer(tv.aligned.path, tv.aligned.base.root, *[s.path for s in tv.finetuned])
        pairs = encode(tokenizer, records, template=options.template, max_length=options.max_length)
        manifest.add_input("preference", options.preference)
        record["pairs"] = len(pairs)
        task: list[tuple[list[int], int]] = []
        for i, path in enumerate(options.task_data):  # each file sampled alone: every fine-tune's task gets its share
            rows = load_task(path, prompt_field=options.task_prompt_field, response_field=options.task_response_field,
                             limit=options.task_samples, seed=options.seed)
            task += encode_task(tokenizer, rows, template=options.template, max_length=options.max_length)
            manifest.add_input("task_data" if len(options.task_data) == 1 else f"task_data_{i + 1}", path)
        if options.task_data:
            record["task_pairs"] = len(task)
    with manifest.stage("load model + task vectors") as record:
        torch.manual_seed(options.seed)
        mask = ConcreteMask(tv.shapes, options.granularity, options.temperature, options.init_logit).to(device)
        train_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(
            options.train_dtype, torch.bfloat16 if device.type == "cuda" else torch.float32)
        learned = TaskScales(tv.names, len(tv.finetuned)).to(device) if options.effective_task_scales == "tensor" else None
        masked = MaskedModel(tv, mask, options.merge, _settings(options), device, rescale=not options.no_rescale, dtype=train_dtype,
                             checkpointing=options.gradient_checkpointing, scales=learned)
        record.update(mask_parameters=mask.parameter_count,
                      task_scale_parameters=sum(p.numel() for p in learned.parameters()) if learned else 0,
                      model_parameters=sum(p.numel() for p in masked.model.parameters()),
                      train_dtype=str(train_dtype).removeprefix("torch."))
    with manifest.stage("train mask") as record:
        log = train_mask(masked, pairs, pad_id=tokenizer.pad_token_id, steps=options.effective_steps, lr=options.lr,
                         beta=options.beta, batch_size=options.batch_size, seed=options.seed, progress=progress,
                         task=task, task_weight=options.task_weight)
        record.update(steps=options.effective_steps, reference_seconds=log.reference_seconds,
                      seconds_per_step=round(sum(log.step_seconds) / max(1, len(log.step_seconds)), 5))
    masks = mask.binary(options.mask_mode, options.effective_keep_ratio, seed=options.seed + 2)
    scales = learned.to_dict() if learned is not None else None
    calibration = None
    if learned is not None and options.effective_scale_steps:
        from llmguard.realign.somf.dpo import calibrate_scales

        with manifest.stage("calibrate merge scales") as record:
            calibration = calibrate_scales(masked, masks, pairs, log.reference, pad_id=tokenizer.pad_token_id,
                                           steps=options.effective_scale_steps, lr=options.lr, beta=options.beta,
                                           batch_size=options.batch_size, seed=options.seed, task=task,
                                           task_weight=options.task_weight, progress=progress)
            before, scales = scales, learned.to_dict()
            record.update(steps=options.effective_scale_steps, mean_abs_change=round(
                sum(abs(x - y) for n in scales for x, y in zip(scales[n], before[n])) / max(1, sum(map(len, scales.values()))), 6))
    training = {
        "loss_per_step": log.losses, "task_loss_per_step": log.task_losses or None, "seconds_per_step": log.step_seconds,
        "peak_rss_bytes_per_step": log.peak_rss_bytes,
        "reference_seconds": log.reference_seconds, "mask_parameters": mask.parameter_count,
        "granularity": options.granularity,
        **({"scale_calibration": {"loss_per_step": calibration.losses, "task_loss_per_step": calibration.task_losses or None,
                                  "seconds_per_step": calibration.step_seconds}} if calibration is not None else {}),
    }
    del masked
    return masks, scales, training


def _stored_scales(meta: dict, tv: TaskVectors, path: Path) -> dict[str, list[float]] | None:
    """The merge scales a mask file was trained with (``None``: a mask without them)."""
    scales = meta.get("task_scales")
    if scales is None:
        return None
    if not isinstance(scales, dict) or set(scales) != set(tv.names) or any(
            not isinstance(v, list) or len(v) != len(tv.finetuned) for v in scales.values()):
        raise InvalidInputError(f"--mask-file {path}: its merge scales were trained for another set of fine-tunes "
                                f"(expected {len(tv.finetuned)} per tensor)")
    return {n: [float(x) for x in v] for n, v in scales.items()}


def fused_tensor(tv: TaskVectors, name: str, mask: torch.Tensor | None, merge: Callable, settings: MergeSettings,
                 device: torch.device, rescale: bool, scales: list[float] | None = None) -> torch.Tensor:
    """A + Merge({s_i · τ_i ⊙ m / mean(m)}) for one tensor, read from the inputs (streaming)."""
    a = tv.aligned_value(name, device)
    if mask is None:
        return a
    m = mask.to(device=device, dtype=torch.float32)
    weights = torch.tensor(scales, device=device, dtype=torch.float32) if scales is not None else None
    return a + merge_masked(name, tv.taus(name, device, a), m, merge, settings, rescale, weights)


def _plan(tv: TaskVectors, out_dtype: torch.dtype | None) -> list[TensorPlan]:
    plans = []
    for name in tv.all_names():
        stored = tv.stored_dtype(name)
        dtype = TORCH_TO_SAFETENSORS[out_dtype] if out_dtype is not None and is_floating(stored) else stored
        shape = tv.aligned.adapter.file.tensors[name].shape if tv.space == "factor" else tv.aligned.base.meta[name].shape  # type: ignore[union-attr]
        plans.append(TensorPlan(name, tuple(shape), dtype))
    return plans


def run_somf(options: SomfOptions, progress: Progress | None = None) -> SomfResult:
    """Realign (and fuse) fine-tunes with SOMF; write the result unless ``options.dry_run``."""
    progress = progress or NullProgress()
    device = resolve_device(options.device)
    out_dtype = parse_dtype_option(options.dtype)
    shard_bytes = parse_size(options.max_shard_size)
    manifest = Manifest(verb=options.verb, parameters=options.parameters())
    with manifest.stage("open inputs") as record:
        tv = open_task_vectors(Path(options.aligned), [Path(p) for p in options.finetuned], base=options.base,
                               allow_pickle=options.allow_pickle, space=options.space)
        record.update(space=tv.space, tensors_masked=len(tv.names), continuation_cosine=tv.continuation_cosine)
        manifest.add_input("aligned", tv.aligned.path)
        for i, src in enumerate(tv.finetuned):
            manifest.add_input(f"finetuned_{i + 1}", src.path)
    if options.output is not None and not options.dry_run:  # refuse a bad OUT before minutes of training
        from llmguard.io.output_safety import refuse_overlap
        from llmguard.io.writer import check_output_path

        if options.preference is not None:
            refuse_overlap(Path(options.output), [Path(options.preference)])
        check_output_path(Path(options.output), tv.input_paths(), options.force)
    notes = []
    if options.fusion and not options.task_data and options.mask_file is None:
        notes.append("fusing without --task-data: the mask sees only the safety pairs and can drop what each task needs "
                     "(pass each fine-tune's training pairs; docs/realign.md, fusion)")
    t_start = time.perf_counter()
    masks, scales, training = final_mask(tv, options, device, progress, manifest)
    per_module = densities(masks)
    sizes = {n: int(torch.Size(tv.shapes[n]).numel()) for n in tv.names}
    elements_kept = sum(per_module[n] * sizes[n] for n in tv.names)
    overall = round(elements_kept / max(1, sum(sizes.values())), 6)
    manifest.extra.update(space=tv.space, mask_density=overall, mask_density_per_module=per_module, training=training,
                          fine_tunes=len(tv.finetuned), merge=options.merge, effective_lambda=options.effective_lambda,
                          mask_seconds=round(time.perf_counter() - t_start, 4),
                          task_scales={"per_fine_tune": summary(scales), "per_tensor": scales} if scales is not None else None)
    result_args = dict(space=tv.space, granularity=str(training.get("granularity", options.granularity)),
                       mask_parameters=int(sum(m.numel() for m in masks.values())), mask_density=overall,
                       module_density=per_module, losses=list(training.get("loss_per_step", [])),
                       task_losses=list(training.get("task_loss_per_step") or []))
    if options.dry_run:
        progress.close()
        return SomfResult(None, manifest=manifest.to_dict(), dry_run=True, notes=notes, **result_args)  # type: ignore[arg-type]
    out = Path(options.output)  # type: ignore[arg-type]
    merge, settings = MERGES[options.merge], _settings(options)
    plan = _plan(tv, out_dtype)
    writer = StreamingWriter(out, plan, max_shard_bytes=shard_bytes, force=options.force, inputs=tv.input_paths(),
                             single_file_name=ADAPTER_WEIGHTS if tv.output_is_adapter else None)
    with writer:
        with manifest.stage("fuse + write") as record:
            progress.stage("fuse + write", len(plan))
            for item in plan:
                if tv.space == "weight" and not is_floating(item.dtype):
                    writer.write(item.name, tv.aligned.base.read(item.name))
                else:
                    writer.write(item.name, fused_tensor(tv, item.name, masks.get(item.name), merge, settings, device,
                                                         not options.no_rescale, (scales or {}).get(item.name)))
                progress.advance()
            record["tensors"] = len(plan)
        save_mask(writer.tmp / MASK_FILE, masks, {"granularity": result_args["granularity"], "space": tv.space,
                                                 "aligned": str(tv.aligned.path), "mode": options.mask_mode,
                                                 **({"task_scales": scales} if scales is not None else {})})
        _side_files(tv, writer, out_dtype)
        writer.write_text("README.md", _model_card(tv, options, overall, scales))
        manifest.extra["output"] = str(out)
        payload = manifest.to_dict()
        writer.write_json(MANIFEST_NAME, payload)
    progress.close()
    return SomfResult(out, manifest=payload, notes=notes, **result_args)  # type: ignore[arg-type]


def _side_files(tv: TaskVectors, writer: StreamingWriter, out_dtype: torch.dtype | None) -> None:
    if tv.output_is_adapter:
        root = tv.finetuned[0].path
        for path in sorted(root.iterdir()):
            if path.is_file() and not path.name.endswith(".safetensors") and path.name not in _SIDE_SKIP and not path.name.startswith("."):
                writer.copy_file(path)
        writer.copy_file(tv.aligned.path / ADAPTER_CONFIG)
    else:
        copy_auxiliary_files(tv.aligned.base, writer, out_dtype)


def _model_card(tv: TaskVectors, options: SomfOptions, overall: float, scales: dict[str, list[float]] | None) -> str:
    kind = "LoRA adapter" if tv.output_is_adapter else "checkpoint"
    lines = [
        f"# SOMF-realigned {kind}",
        "",
        "Written by `llmguard realign somf` (subspace-oriented model fusion): θ = A + Merge({s_i τ_i ⊙ m / mean(m)}),",
        "with τ_i = F_i − A, a binary mask m learned with a DPO loss on safety preference pairs, and s_i = 1 unless",
        "merge scales were learned (below).",
        "",
        f"- aligned (A): `{tv.aligned.path}`",
        *[f"- fine-tuned F_{i + 1}: `{s.path}`" for i, s in enumerate(tv.finetuned)],
        f"- space: {tv.space}; granularity: {options.granularity}; mask mode: {options.mask_mode}; kept {overall:.1%} of the units",
        f"- merge: {options.merge}, λ = {options.effective_lambda}, keep ratio {options.effective_keep_ratio}" + (f", density {options.effective_density}" if options.merge in ("ties", "dare") else ""),
        f"- DPO: β {options.beta}, {options.effective_steps} steps, lr {options.lr}, batch {options.batch_size}, seed {options.seed}",
        *([f"- learned merge scales s_i (one per tensor and fine-tune): " + "; ".join(
            f"F_{i + 1} mean {c['mean']} (min {c['min']}, max {c['max']})" for i, c in enumerate(summary(scales)))]
          if scales is not None else []),
        "",
        f"`{MASK_FILE}` holds the binary mask (bit-packed; reuse it with `--mask-file`); `llmguard.json` has every parameter,",
        "the loss per step, the mask density per tensor, peak memory and timings.",
        "",
    ]
    return "\n".join(lines)
