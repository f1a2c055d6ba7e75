"""``realign nlsr``: the five stages end to end.

``analyze`` runs stages 1–3 (inputs, the amplified reference, per-module masks and similarities)
and ``realign`` stages 4–5 (selection, transplant + write); ``run_nlsr`` is both, and
``--search`` reuses one analysis for every grid point that changes only the selection.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llmguard.errors import InvalidInputError
from llmguard.io.device import resolve_device
from llmguard.io.dtypes import parse_dtype_option
from llmguard.io.manifest import MANIFEST_NAME, Manifest
from llmguard.io.writer import StreamingWriter, parse_size
from llmguard.progress import NullProgress, Progress
from llmguard.realign.nlsr.analysis import Analyzer, ModuleResult
from llmguard.realign.nlsr.inputs import NlsrInputs, open_inputs, order_inputs
from llmguard.realign.nlsr.mask_store import MaskStore
from llmguard.realign.nlsr.patch import PatchRecorder
from llmguard.realign.nlsr.reference import Reference
from llmguard.realign.nlsr.options import NlsrOptions
from llmguard.realign.nlsr.selection import Selection, select
from llmguard.realign.nlsr.stats_cache import StatisticsCache
from llmguard.realign.nlsr.task_guard import GuardResult
from llmguard.realign.nlsr.transplant import patch_plan, plan as plan_output, write_output

MODULE_TABLE = "nlsr_modules.json"
#: safe calibration pairs the task guard measures the safety cost of a revert on
GUARD_SAFETY_PAIRS = 64


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


def nlsr(finetuned: str | os.PathLike[str], output: str | os.PathLike[str] | None, *, progress: Progress | None = None,
         **options: Any) -> NlsrResult:
    """Realign ``finetuned`` into ``output``: :func:`run_nlsr` with ``NlsrOptions(**options)``."""
    return run_nlsr(NlsrOptions(finetuned=finetuned, output=output, **options), progress)


def run_nlsr(options: NlsrOptions, progress: Progress | None = None) -> NlsrResult:
    """Realign ``options.finetuned`` with NLSR and write ``options.output`` (unless ``dry_run``)."""
    progress = progress or NullProgress()
    if options.output is not None and not options.dry_run:  # refuse in a second, not after the calibration
        from llmguard.io.output_safety import refuse_overlap
        from llmguard.io.writer import check_output_path

        models = (options.finetuned, options.aligned, options.base, options.reference)
        data = (options.calibration, options.harmful_prompts)
        refuse_overlap(Path(str(options.output)), [Path(str(p)) for p in data if p is not None])
        check_output_path(Path(str(options.output)), [Path(str(p)) for p in models if p is not None], options.force)
    options = with_reference_calibration(options, progress)
    with analyze(options, progress) as analysis:
        return realign(options, analysis, progress)


def with_reference_calibration(options: NlsrOptions, progress: Progress) -> NlsrOptions:
    """``--calibration-from-reference N``: the options with the generated pairs in ``calibration_pairs``."""
    if options.calibration_from_reference is None or options.calibration_pairs is not None:
        return options
    from llmguard.realign.nlsr.calibration_set import pairs_from_reference

    o = options
    pairs = pairs_from_reference(
        aligned=o.aligned, base=o.base, reference=o.reference, harmful_prompts=o.harmful_prompts, count=o.calibration_from_reference,
        alpha=o.alpha, amplify_mode=o.amplify_mode, prompt_field=o.prompt_field, template=o.template, device=o.device, seed=o.seed,
        allow_pickle=o.allow_pickle, progress=progress,
    )
    return o.replace(calibration_pairs=tuple(pairs))


@dataclass
class Analysis:
    """Stages 1–3 of a run: the opened inputs, the reference and every module's similarity and
    mask. Everything here is fixed by ``NlsrOptions.analysis_key()``, so ``--search`` points that
    differ only in the selection reuse one Analysis (``realign`` never changes it)."""

    inputs: NlsrInputs
    reference: Reference
    results: list[ModuleResult]
    device: torch.device
    manifest: Manifest  # its inputs and stage records (open inputs … scoring)
    masks: MaskStore | None = None
    uses: int = 0

    def close(self) -> None:
        if self.masks is not None:
            self.masks.close()

    def __enter__(self) -> "Analysis":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def analyze(options: NlsrOptions, progress: Progress, masks_beside: Path | None = None,
            stats_cache: StatisticsCache | None = None) -> Analysis:
    """Open the inputs, build the reference, score and compare every module (stages 1–3).

    Weight-unit masks are spilled next to ``masks_beside`` (default: the output) until
    :meth:`Analysis.close`.
    """
    o = options
    torch_device = resolve_device(o.device)
    manifest = Manifest(verb=o.verb)
    progress.stage("open inputs")
    with manifest.stage("open inputs") as record:
        inputs = open_inputs(aligned=o.aligned, finetuned=o.finetuned, base=o.base, reference=o.reference, unit=o.unit,
                             allow_pickle=o.allow_pickle)
        config = None
        config_dir = _config_dir(o.aligned, o.base, o.finetuned)
        if config_dir is not None:  # model order (official selection draws in it) and the calibration architecture
            from llmguard.io.architecture import Architecture, load_config

            config = load_config(config_dir)
            architecture = Architecture(config, stored={n: tuple(m.shape) for n, m in inputs.base.meta.items()})
            fused = architecture.unsupported_fused()
            if fused:
                raise InvalidInputError(f"{architecture.class_name} stores its experts fused on disk ({fused[0]!r}, 3-D); "
                                        "NLSR patches 2-D linear weights only")
            order_inputs(inputs, architecture.linear_maps)
            record.update(architecture=architecture.class_name, linear_maps=len(architecture.linear_maps),
                          transposed_modules=len(inputs.transposed))
        record.update(unit=inputs.unit, modules=len(inputs.modules), continuation_cosine=inputs.continuation_cosine,
                      mask_ratio=inputs.mask_ratio(o.mask_ratio))
        for role, src in (("finetuned", inputs.finetuned), ("aligned", inputs.aligned), ("reference", inputs.prepared)):
            if src is not None:
                manifest.add_input(role, src.path)
        manifest.add_input("base", inputs.base.root)
    with manifest.stage("reference") as record:
        ref = Reference(inputs.base, inputs.aligned, inputs.prepared, alpha=o.alpha, mode=o.amplify_mode)
        record.update(ref.describe())
    masks = _mask_store(inputs, masks_beside or o.output, o.dry_run)
    try:
        analyzer = Analyzer(inputs, ref, o.scorer, inputs.mask_ratio(o.mask_ratio), o.actsvd_keep, torch_device, masks=masks)
        if o.needs_calibration:
            _calibrate(o, inputs, ref, config, analyzer, manifest, torch_device, progress, stats_cache)
        else:
            with manifest.stage("scoring"):
                progress.stage("score + similarity", len(inputs.modules))
                for name in inputs.modules:
                    analyzer.analyze(name, None)
                    progress.advance()
    except BaseException:
        if masks is not None:
            masks.close()
        raise
    return Analysis(inputs, ref, [analyzer.results[m] for m in inputs.modules], torch_device, manifest, masks)


def _calibrate(o: NlsrOptions, inputs: NlsrInputs, ref: Reference, config: Any, analyzer: Analyzer, manifest: Manifest,
               torch_device: torch.device, progress: Progress, stats_cache: StatisticsCache | None = None) -> None:
    """The calibration pass: input second moments per module, scored layer by layer (replayed
    from ``stats_cache`` when an earlier search point ran the same pass)."""
    if config is None:
        raise InvalidInputError(f"{inputs.base.root}: no config.json; the calibration pass needs the model architecture")
    cached = stats_cache.get(o, inputs.modules) if stats_cache is not None else None
    if cached is not None:
        if o.calibration_pairs is None and o.calibration is not None:
            manifest.add_input("calibration", o.calibration)
        with manifest.stage("calibration data") as record:
            record.update(cached.data_record, reused=True)
        with manifest.stage("calibration pass + scoring") as record:
            for index, stats in cached.layers:
                analyzer.on_layer(index, stats)
            record.update(mode=o.calibration_mode, scoring_seconds=round(analyzer.seconds, 4), statistics_reused=True)
    else:
        with manifest.stage("calibration data") as record:
            batches = _calibration_batches(o, inputs, manifest)
            record.update(pairs=batches.pairs, skipped=batches.skipped, **({"first_skipped": batches.first_skipped} if batches.skipped else {}),
                          batches=len(batches.batches),
                          response_tokens=sum(b.tokens for b in batches.batches))
        with manifest.stage("calibration pass + scoring") as record:
            from llmguard.io.calibration import second_moments

            recorder = stats_cache.recorder(o, {k: v for k, v in record_of(manifest, "calibration data").items()
                                                if k in ("pairs", "skipped", "batches", "response_tokens")}) if stats_cache else None

            def on_layer(index: int, stats: dict) -> None:
                if recorder is not None:
                    recorder.on_layer(index, stats)
                analyzer.on_layer(index, stats)

            second_moments(config, lambda name: ref.weight(name, torch_device), batches.batches, set(inputs.modules),
                           on_layer=on_layer, device=torch_device, mode=o.calibration_mode, progress=progress,
                           stored={n: tuple(m.shape) for n, m in inputs.base.meta.items()})
            if recorder is not None:
                recorder.commit()
            record.update(mode=o.calibration_mode, scoring_seconds=round(analyzer.seconds, 4))
    missing = [m for m in inputs.modules if m not in analyzer.results]
    if missing:
        expert = ".experts." in missing[0] or ".expert." in missing[0]
        why = ("no calibration token was routed to this expert; use more calibration data or --scorer magnitude" if expert
               else "not a linear map of the model?")
        raise InvalidInputError(f"module {missing[0]!r} saw no calibration input ({why})")


@dataclass
class _Batches:
    batches: list
    pairs: int
    skipped: int
    first_skipped: str | None = None


def _calibration_batches(o: NlsrOptions, inputs: NlsrInputs, manifest: Manifest) -> _Batches:
    """The calibration pairs (file or in memory), tokenised into padded batches."""
    from llmguard.realign.nlsr.calibration_data import encode_pairs, load_pairs

    if o.calibration_pairs is None:
        assert o.calibration is not None
        loaded = load_pairs(o.calibration, prompt_field=o.prompt_field, response_field=o.response_field, limit=o.calibration_samples,
                            seed=o.seed, skip_bad=o.skip_bad)
        pairs, skipped = loaded.pairs, loaded.skipped
        first_skipped = loaded.first_skipped
        manifest.add_input("calibration", o.calibration)
    else:
        pairs, skipped, first_skipped = list(o.calibration_pairs)[:o.calibration_samples], 0, None
        if not pairs:
            raise InvalidInputError("calibration data: no usable rows")
    batches = encode_pairs(_tokenizer(inputs), pairs, template=o.template, max_length=o.max_length,
                           max_response_tokens=o.max_response_tokens, batch_tokens=o.batch_tokens)
    return _Batches(batches, len(pairs), skipped, first_skipped)


def record_of(manifest: Manifest, stage: str) -> dict[str, Any]:
    return next(s for s in reversed(manifest.stages) if s["name"] == stage)


def realign(options: NlsrOptions, analysis: Analysis, progress: Progress) -> NlsrResult:
    """Select the modules and transplant (stages 4–5) from an :class:`Analysis` of these options."""
    o = options
    inputs, results = analysis.inputs, analysis.results
    reused = analysis.uses > 0
    analysis.uses += 1
    manifest = Manifest(verb=o.verb, parameters=o.to_manifest(), inputs=dict(analysis.manifest.inputs),
                        stages=[{**s, "reused": True} if reused else dict(s) for s in analysis.manifest.stages])
    if not reused:
        manifest.started = analysis.manifest.started
    with manifest.stage("select") as record:
        budget = inputs.budget(o.budget, o.threshold) if o.select_mode == "least-similar" else o.budget
        selection = select([r.similarity for r in results], mode=o.select_mode, budget=budget, threshold=o.threshold,
                           prune_rate=o.prune_rate, epsilon=o.epsilon, seed=o.seed)
        record.update(rule=selection.rule, patched=selection.count, modules=len(results))
    guarded = None
    analysed = results
    if o.task_data is not None and not o.dry_run:  # a dry run keeps no weight masks to transplant
        guarded = _task_guard(o, analysis, [r for r, p in zip(results, selection.patched) if p], manifest, progress)
        reverted = set(guarded.reverted)
        selection = Selection([p and r.name not in reverted for r, p in zip(results, selection.patched)],
                              f"{selection.rule}; task guard reverted {len(reverted)}", selection.probabilities)
        shrunk = {r.name: r for r in guarded.results}  # new results: the analysis's own stay as they are (--search)
        results = [shrunk.get(r.name, r) for r in results]
    table = _module_table(inputs, results, selection)
    if guarded is not None:
        for row, before, after in zip(table, analysed, results):
            row["task_guard_reverted"] = row["module"] in guarded.reverted
            row["task_guard_units_reverted"] = before.masked - after.masked if row["patched"] else 0
    selected = [r for r, p in zip(results, selection.patched) if p]
    try:
        return _write(o, analysis, selection, selected, table, manifest, progress)
    finally:
        if guarded is not None and analysis.masks is not None:  # the shrunk masks of this point, not the analysis's
            own = {r.name: r.delta_mask for r in analysed}
            for result in guarded.results:
                if result.delta_mask is not own[result.name]:
                    analysis.masks.discard(result.delta_mask)


def _write(o: NlsrOptions, analysis: Analysis, selection: Selection, selected: list[ModuleResult], table: list[dict[str, Any]],
           manifest: Manifest, progress: Progress) -> NlsrResult:
    """Stage 5: transplant ``selected`` and write OUT with its patch, module table, card and manifest."""
    inputs, ref, torch_device, results = analysis.inputs, analysis.reference, analysis.device, analysis.results
    masked_params = sum(r.parameters_masked for r in selected)
    manifest.extra.update(unit=inputs.unit, mask_ratio=inputs.mask_ratio(o.mask_ratio), selection_rule=selection.rule, modules_patched=selection.count, modules_total=len(results))
    if o.dry_run:
        progress.close()
        return NlsrResult(None, inputs.unit, table, selection.rule, selection.count, masked_params, manifest.to_dict(), dry_run=True)
    out = Path(str(o.output))
    tensor_plan, single = plan_output(inputs, parse_dtype_option(o.dtype))
    input_paths = [inputs.finetuned.path, inputs.base.root, inputs.finetuned.base.root]
    input_paths += [s.path for s in (inputs.aligned, inputs.prepared) if s is not None]
    recorder = PatchRecorder(inputs.strategy.patch_index)
    writer = StreamingWriter(out, tensor_plan, max_shard_bytes=parse_size(o.max_shard_size), force=o.force, inputs=input_paths,
                             single_file_name=single)
    with writer:
        with manifest.stage("transplant + write") as record, recorder.writing(writer.tmp, patch_plan(inputs, selected, tensor_plan)):
            written = write_output(inputs, ref, selected, tensor_plan, writer, recorder, torch_device, progress)
            record.update(tensors=written, values_overwritten=recorder.values_overwritten, values_changed=recorder.values_changed)
        recorder.save(writer.tmp, {"verb": o.verb, "finetuned": str(inputs.finetuned.path), "modules": [r.name for r in selected]})
        writer.write_json(MODULE_TABLE, table)
        writer.write_text("README.md", _model_card(inputs, ref, selection, table, recorder))
        manifest.extra.update(output=str(out), device_used=str(torch_device), values_overwritten=recorder.values_overwritten,
                              values_changed=recorder.values_changed)
        payload = manifest.to_dict()
        writer.write_json(MANIFEST_NAME, payload)
    progress.close()
    return NlsrResult(out, inputs.unit, table, selection.rule, selection.count, recorder.values_changed, payload)


def _task_guard(o: NlsrOptions, analysis: Analysis, selected: list[ModuleResult], manifest: Manifest,
                progress: Progress) -> "GuardResult":
    """``--task-data``: give the task back where the transplant costs it (task_guard.py)."""
    from llmguard.realign.nlsr.calibration_data import encode_pairs, load_pairs
    from llmguard.realign.nlsr.task_guard import guard

    inputs = analysis.inputs
    assert o.task_data is not None and inputs.strategy.delta_space, "validated: --task-data refuses --unit element"
    progress.stage("task guard")
    with manifest.stage("task guard") as record:
        tokenizer = _tokenizer(inputs)
        try:
            loaded = load_pairs(o.task_data, prompt_field=o.task_prompt_field, response_field=o.task_response_field,
                                limit=o.task_samples, seed=o.seed, skip_bad=o.skip_bad)
        except InvalidInputError as error:
            raise InvalidInputError(f"--task-data: {error.message} (see --task-prompt-field / --task-response-field)") from None
        manifest.add_input("task_data", o.task_data)
        task = encode_pairs(tokenizer, loaded.pairs, template=o.template, max_length=o.max_length,
                            max_response_tokens=o.max_response_tokens, batch_tokens=o.batch_tokens)
        if o.calibration_pairs is not None:
            safe_pairs = list(o.calibration_pairs)[:GUARD_SAFETY_PAIRS]
        elif o.calibration is not None:
            safe_pairs = load_pairs(o.calibration, prompt_field=o.prompt_field, response_field=o.response_field,
                                    limit=GUARD_SAFETY_PAIRS, seed=o.seed, skip_bad=o.skip_bad).pairs
        else:
            safe_pairs = []
        safety = encode_pairs(tokenizer, safe_pairs, template=o.template, max_length=o.max_length,
                              max_response_tokens=o.max_response_tokens, batch_tokens=o.batch_tokens) if safe_pairs else []
        result = guard(inputs, analysis.reference, selected, task, safety, tolerance=o.task_tolerance, device=analysis.device,
                       mode=o.task_guard_mode, masks=analysis.masks)
        record.update(task_pairs=len(loaded.pairs), safety_pairs=len(safe_pairs), **result.record)
    manifest.extra["task_guard"] = result.record
    return result


def _mask_store(inputs: NlsrInputs, beside: Path | None, dry_run: bool) -> MaskStore | None:
    """Weight units keep their masks on disk next to OUT until the transplant (mask_store.py)."""
    if not inputs.strategy.spills_masks or dry_run:
        return None
    assert beside is not None
    return MaskStore.beside(Path(str(beside)))


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
