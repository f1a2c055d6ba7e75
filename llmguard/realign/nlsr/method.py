"""``realign nlsr``: the five stages end to end (research/realign.md §2, SPEC §3)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llmguard.errors import InvalidInputError, UsageError
from llmguard.io.device import resolve_device
from llmguard.io.dtypes import parse_dtype_option
from llmguard.io.manifest import MANIFEST_NAME, Manifest
from llmguard.io.writer import DEFAULT_MAX_SHARD_BYTES, StreamingWriter, parse_size
from llmguard.progress import NullProgress, Progress
from llmguard.realign.nlsr.analysis import Analyzer, ModuleResult
from llmguard.realign.nlsr.inputs import NlsrInputs, open_inputs, order_inputs
from llmguard.realign.nlsr.mask_store import MaskStore
from llmguard.realign.nlsr.patch import PatchRecorder
from llmguard.realign.nlsr.reference import Reference
from llmguard.realign.nlsr.scoring import ACTIVATION_SCORERS, SCORERS, check_ratio
from llmguard.realign.nlsr.selection import Selection, select
from llmguard.realign.nlsr.transplant import patch_plan, plan as plan_output, write_output

MODULE_TABLE = "nlsr_modules.json"


@dataclass
class NlsrResult:
    output: Path | None
    unit: str
    modules: list[dict[str, Any]]
    selection_rule: str
    patched: int
    parameters_changed: int
    manifest: dict
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)


def _tokenizer(inputs: NlsrInputs) -> Any:
    from transformers import AutoTokenizer

    candidates = [inputs.base.root, inputs.finetuned.path, inputs.finetuned.base.root]
    if inputs.aligned is not None:
        candidates.append(inputs.aligned.path)
    for candidate in candidates:
        if Path(candidate).is_dir() and any((Path(candidate) / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
            try:
                tokenizer = AutoTokenizer.from_pretrained(str(candidate))
            except Exception:  # noqa: BLE001 - try the next candidate
                continue
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token
            return tokenizer
    raise InvalidInputError(f"no tokenizer next to {inputs.base.root} or the fine-tuned model: the calibration data cannot be tokenised")


def _module_table(inputs: NlsrInputs, results: list[ModuleResult], selection: Selection) -> list[dict[str, Any]]:
    order = sorted(range(len(results)), key=lambda i: (results[i].similarity, i))
    rank = {i: r + 1 for r, i in enumerate(order)}
    table = []
    for i, (result, patched) in enumerate(zip(results, selection.patched)):
        row: dict[str, Any] = {
            "module": result.name,
            "similarity": round(result.similarity, 6),
            "rank_least_similar": rank[i],
            "patched": bool(patched),
            "masked_units": result.masked,
            "units": result.units,
            "unit": inputs.unit,
            "parameters_masked": result.parameters_masked,
        }
        if selection.probabilities is not None:
            row["probability"] = selection.probabilities[i]
        if result.calibration_tokens is not None:
            row["calibration_tokens"] = result.calibration_tokens
        table.append(row)
    return table


def nlsr(
    finetuned: str | os.PathLike[str],
    output: str | os.PathLike[str] | None,
    *,
    aligned: str | os.PathLike[str] | None = None,
    base: str | os.PathLike[str] | None = None,
    reference: str | os.PathLike[str] | None = None,
    calibration: str | os.PathLike[str] | None = None,
    calibration_pairs: list[tuple[str, str]] | None = None,
    alpha: float = 0.9,
    amplify_mode: str = "expo",
    scorer: str = "actsvd",
    mask_ratio: float = 0.2,
    actsvd_keep: float = 0.8,
    unit: str = "auto",
    select_mode: str = "least-similar",
    budget: str | float | int | None = None,
    threshold: float | None = None,
    prune_rate: float = 0.5,
    epsilon: float = 0.2,
    seed: int = 42,
    prompt_field: str = "prompt",
    response_field: str = "response",
    template: str = "auto",
    calibration_samples: int | None = 512,
    max_length: int = 512,
    max_response_tokens: int = 256,
    batch_tokens: int = 8192,
    calibration_mode: str = "auto",
    skip_bad: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    max_shard_size: str | int = DEFAULT_MAX_SHARD_BYTES,
    force: bool = False,
    allow_pickle: bool = False,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> NlsrResult:
    """Realign ``finetuned`` with NLSR and write the result to ``output`` (unless ``dry_run``)."""
    progress = progress or NullProgress()
    if scorer not in SCORERS:
        raise UsageError(f"--scorer {scorer!r}: choose {', '.join(SCORERS)}")
    check_ratio(mask_ratio)
    check_ratio(actsvd_keep, "--actsvd-keep")
    if alpha < 0:
        raise UsageError(f"--alpha {alpha}: must be non-negative")
    if output is None and not dry_run:
        raise UsageError("-o/--output is required (or pass --dry-run)")
    if calibration_samples is not None and calibration_samples < 1:
        raise UsageError(f"--calibration-samples {calibration_samples}: must be at least 1")
    needs_data = scorer in ACTIVATION_SCORERS
    if needs_data and calibration is None and calibration_pairs is None:
        raise UsageError(f"--scorer {scorer} needs calibration data: pass --calibration FILE (or use --scorer magnitude)")
    torch_device = resolve_device(device)
    out_dtype = parse_dtype_option(dtype)
    parameters = {
        "aligned": str(aligned) if aligned else None, "base": str(base) if base else None, "reference": str(reference) if reference else None,
        "alpha": alpha, "amplify_mode": amplify_mode, "scorer": scorer, "mask_ratio": mask_ratio, "actsvd_keep": actsvd_keep,
        "unit": unit, "select": select_mode, "budget": budget, "threshold": threshold, "prune_rate": prune_rate, "epsilon": epsilon,
        "seed": seed, "calibration": str(calibration) if calibration else None, "prompt_field": prompt_field,
        "response_field": response_field, "template": template, "calibration_samples": calibration_samples, "max_length": max_length,
        "max_response_tokens": max_response_tokens, "batch_tokens": batch_tokens, "calibration_mode": calibration_mode,
        "device": device, "dtype": dtype, "max_shard_size": max_shard_size, "dry_run": dry_run,
    }
    manifest = Manifest(verb="realign nlsr", parameters=parameters)
    progress.stage("open inputs")
    with manifest.stage("open inputs") as record:
        inputs = open_inputs(
            aligned=Path(aligned) if aligned else None, finetuned=Path(finetuned), base=Path(base) if base else None,
            reference=Path(reference) if reference else None, unit=unit, allow_pickle=allow_pickle,
        )
        config = None
        config_dir = _config_dir(aligned, base, finetuned)
        if config_dir is not None:  # model order (official selection draws in it) and the calibration architecture
            from llmguard.io.calibration import linear_names, load_config

            config = load_config(config_dir)
            order_inputs(inputs, linear_names(config))
        record.update(unit=inputs.unit, modules=len(inputs.modules), continuation_cosine=inputs.continuation_cosine)
        for role, src in (("finetuned", inputs.finetuned), ("aligned", inputs.aligned), ("reference", inputs.prepared)):
            if src is not None:
                manifest.add_input(role, src.path)
        manifest.add_input("base", inputs.base.root)
    with manifest.stage("reference") as record:
        ref = Reference(inputs.base, inputs.aligned, inputs.prepared, alpha=alpha, mode=amplify_mode)
        record.update(ref.describe())
    with _mask_store(inputs, output, dry_run) as masks:
        analyzer = Analyzer(inputs, ref, scorer, mask_ratio, actsvd_keep, torch_device, masks=masks)
        if needs_data:
            if config is None:
                raise InvalidInputError(f"{inputs.base.root}: no config.json; the calibration pass needs the model architecture")
            with manifest.stage("calibration data") as record:
                from llmguard.io.calibration import encode_pairs, load_pairs

                if calibration_pairs is None:
                    assert calibration is not None
                    loaded = load_pairs(calibration, prompt_field=prompt_field, response_field=response_field, limit=calibration_samples, seed=seed, skip_bad=skip_bad)
                    pairs, skipped = loaded.pairs, loaded.skipped
                    manifest.add_input("calibration", Path(calibration))
                else:
                    pairs, skipped = list(calibration_pairs)[:calibration_samples], 0
                    if not pairs:
                        raise InvalidInputError("calibration data: no usable rows")
                batches = encode_pairs(_tokenizer(inputs), pairs, template=template, max_length=max_length, max_response_tokens=max_response_tokens, batch_tokens=batch_tokens)
                record.update(pairs=len(pairs), skipped=skipped, batches=len(batches), response_tokens=sum(b.tokens for b in batches))
            with manifest.stage("calibration pass + scoring") as record:
                from llmguard.io.calibration import second_moments

                second_moments(
                    config, lambda name: ref.weight(name, torch_device), batches, set(inputs.modules),
                    on_layer=analyzer.on_layer, device=torch_device, mode=calibration_mode, progress=progress,
                )
                record.update(mode=calibration_mode, scoring_seconds=round(analyzer.seconds, 4))
            missing = [m for m in inputs.modules if m not in analyzer.results]
            if missing:
                raise InvalidInputError(f"module {missing[0]!r} saw no calibration input (not a linear layer of the model?)")
        else:
            with manifest.stage("scoring") as record:
                progress.stage("score + similarity", len(inputs.modules))
                for name in inputs.modules:
                    analyzer.analyze(name, None)
                    progress.advance()
        results = [analyzer.results[m] for m in inputs.modules]
        with manifest.stage("select") as record:
            selection = select([r.similarity for r in results], mode=select_mode, budget=budget, threshold=threshold, prune_rate=prune_rate, epsilon=epsilon, seed=seed)
            record.update(rule=selection.rule, patched=selection.count, modules=len(results))
        table = _module_table(inputs, results, selection)
        selected = [r for r, p in zip(results, selection.patched) if p]
        masked_params = sum(r.parameters_masked for r in selected)
        manifest.extra.update(unit=inputs.unit, selection_rule=selection.rule, modules_patched=selection.count, modules_total=len(results))
        if dry_run:
            progress.close()
            return NlsrResult(None, inputs.unit, table, selection.rule, selection.count, masked_params, manifest.to_dict(), dry_run=True)
        out = Path(str(output))
        tensor_plan, single = plan_output(inputs, out_dtype)
        input_paths = [inputs.finetuned.path, inputs.base.root, inputs.finetuned.base.root]
        input_paths += [s.path for s in (inputs.aligned, inputs.prepared) if s is not None]
        recorder = PatchRecorder("rows" if inputs.unit == "row" else "elements")  # weight units: flat indices, like elements
        writer = StreamingWriter(out, tensor_plan, max_shard_bytes=parse_size(max_shard_size), force=force, inputs=input_paths, single_file_name=single)
        with writer:
            with manifest.stage("transplant + write") as record, recorder.writing(writer.tmp, patch_plan(inputs, selected, tensor_plan)):
                written = write_output(inputs, ref, selected, tensor_plan, writer, recorder, torch_device, progress)
                record.update(tensors=written, values_overwritten=recorder.values_overwritten, values_changed=recorder.values_changed)
            recorder.save(writer.tmp, {"verb": "realign nlsr", "finetuned": str(inputs.finetuned.path), "modules": [r.name for r in selected]})
            writer.write_json(MODULE_TABLE, table)
            writer.write_text("README.md", _model_card(inputs, ref, selection, table, recorder))
            manifest.extra.update(output=str(out), device_used=str(torch_device), values_overwritten=recorder.values_overwritten, values_changed=recorder.values_changed)
            payload = manifest.to_dict()
            writer.write_json(MANIFEST_NAME, payload)
        progress.close()
        return NlsrResult(out, inputs.unit, table, selection.rule, selection.count, recorder.values_changed, payload)


def _mask_store(inputs: NlsrInputs, output: Any, dry_run: bool) -> Any:
    """Weight units keep their masks on disk next to OUT until the transplant (mask_store.py)."""
    if inputs.unit != "weight" or dry_run:
        return contextlib.nullcontext(None)
    return MaskStore.beside(Path(str(output)))


def _config_dir(*candidates: Any) -> Path | None:
    from llmguard.io.lora import LoraAdapter, is_adapter_dir

    for candidate in candidates:
        if candidate is None:
            continue
        path = Path(candidate)
        if is_adapter_dir(path):
            hint = LoraAdapter(path).base_model_name_or_path
            path = Path(hint) if hint else path
        if (path / "config.json").is_file():
            return path
    return None


def _model_card(inputs: NlsrInputs, ref: Reference, selection: Selection, table: list[dict], recorder: PatchRecorder) -> str:
    kind = "LoRA adapter" if inputs.output_is_adapter else "checkpoint"
    lines = [
        f"# NLSR-realigned {kind}",
        "",
        "Written by `llmguard realign nlsr` (neuron-level safety realignment).",
        "",
        f"- fine-tuned: `{inputs.finetuned.path}`",
        f"- aligned: `{inputs.aligned.path if inputs.aligned else None}`; base `{inputs.base.root}`",
        f"- reference: {ref.describe()}",
        f"- unit: {inputs.unit}; selection: {selection.rule}",
        f"- modules patched: {selection.count} of {len(table)}; values overwritten {recorder.values_overwritten}, changed {recorder.values_changed}",
        "",
        "`realign_patch.safetensors` + `realign_patch.json` undo the transplant exactly: `llmguard realign revert THIS_DIR -o OUT`.",
        f"`{MODULE_TABLE}` lists every module's similarity and whether it was patched; `llmguard.json` has every parameter and timing.",
        "",
    ]
    return "\n".join(lines)
