"""Knowledge distillation of a student on an SFT dataset, with transformers' ``Trainer``.

The defaults are CDG-KD's recipe (LLaMA-Factory ``stage: sft``, full fine-tune, 1 epoch, learning
rate 1e-5, cosine schedule, warm-up ratio 0.1, loss on the response tokens only). The Trainer runs
on accelerate, so ``accelerate launch -m llmguard watermark distill ...`` spreads it over several
GPUs (or DeepSpeed) without code of ours. The output is a Hugging Face model directory (full
fine-tune) or a PEFT adapter directory (``--lora``) whose ``base_model_name_or_path`` is the init.

``distill`` also makes a *weak reference*: ``--dilute F --dilute-with PLAIN`` replaces a fraction
``F`` of the watermarked records by plain ones before training.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmguard.errors import InvalidInputError
from llmguard.progress import NullProgress, Progress
from llmguard.watermark.attack_options import DistillOptions, TrainFields
from llmguard.watermark.sft import SFTRecord, dilute, read_sft, write_sft

@dataclass
class TrainResult:
    """What one distillation run did."""

    output: str
    records: int
    steps: int
    seconds: float
    final_loss: float | None
    losses: list[float]
    kind: str  # "full" or "lora"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def encode_sft(tokenizer: Any, records: Sequence[SFTRecord], template: str, max_length: int) -> list[tuple[list[int], int]]:
    """``prompt ids + output ids + EOS`` and where the output starts.

    The prompt is tokenised exactly as generation tokenises it (same template, same special-token
    rule), so the student learns the continuation of the ids it will see at inference.
    """
    from llmguard.inference.generate import format_prompt, tokenize_prompts

    prompts = [format_prompt(tokenizer, r.prompt, template) for r in records]
    prompt_ids = tokenize_prompts(tokenizer, prompts)
    eos = tokenizer.eos_token_id
    out = []
    for p_ids, rec in zip(prompt_ids, records):
        r_ids = tokenizer(rec.output, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
        ids = (list(p_ids) + list(r_ids))[:max_length]
        if len(ids) <= len(p_ids):
            continue  # the prompt alone fills max_length: nothing to learn
        out.append((ids, len(p_ids)))
    if not out:
        raise InvalidInputError(f"no record leaves room for its output within --max-length {max_length}")
    return out


class _Collator:
    """Right-pad a batch; labels are −100 on the prompt and the padding."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(b["ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["ids"])
            row = torch.tensor(b["ids"], dtype=torch.long)
            ids[i, :n] = row
            mask[i, :n] = 1
            labels[i, b["start"]:n] = row[b["start"]:]
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0


def train_student(records: Sequence[SFTRecord], out_dir: Path, options: TrainFields, *, template: str = "none",
                  device: str = "auto", dtype: str = "float32", progress: Progress | None = None) -> TrainResult:
    """Fine-tune ``options.student_init`` on ``records`` and save it (or its adapter) into ``out_dir``."""
    import torch
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    from llmguard.inference.loading import load_causal_lm, resolve_device

    progress = progress or NullProgress()
    t0 = time.perf_counter()
    dev = resolve_device(device)
    model, tokenizer = load_causal_lm(options.student_init, device="cpu", dtype=dtype, padding_side="right")
    examples = encode_sft(tokenizer, records, template, options.max_length)
    if options.lora:
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=options.lora_r, lora_alpha=options.lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                         bias="none", task_type="CAUSAL_LM")
        torch.manual_seed(options.train_seed)
        model = get_peft_model(model, cfg)
    dataset = [{"ids": ids, "start": start} for ids, start in examples]
    per_epoch = math.ceil(len(dataset) / (options.train_batch_size * options.grad_accum))
    total_steps = max(1, math.ceil(per_epoch * options.epochs))

    class _Progress(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            progress.advance(1)

    args = TrainingArguments(
        output_dir=str(out_dir / ".trainer"), num_train_epochs=options.epochs, learning_rate=options.learning_rate,
        lr_scheduler_type=options.lr_scheduler, warmup_steps=options.warmup_ratio,
        per_device_train_batch_size=options.train_batch_size, gradient_accumulation_steps=options.grad_accum,
        weight_decay=options.weight_decay, logging_steps=max(1, total_steps // 20), save_strategy="no",
        report_to="none", disable_tqdm=True, use_cpu=dev == "cpu", seed=options.train_seed,
        data_seed=options.train_seed, dataloader_num_workers=0, remove_unused_columns=False,
        bf16=dtype == "bfloat16" and dev != "cpu", fp16=dtype == "float16" and dev != "cpu",
    )
    progress.stage("distill", total=total_steps)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=_Collator(tokenizer.pad_token_id or 0),
                      callbacks=[_Progress()])
    trainer.remove_callback(PrinterCallback)  # it prints the loss dicts on stdout, which carries results only
    trainer.train()
    losses = [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]
    model = trainer.model
    model.eval()
    if _is_main_process():
        if options.lora:
            model.save_pretrained(str(out_dir))
            _point_adapter_at(out_dir, options.student_init)
        else:
            model.save_pretrained(str(out_dir))
        tokenizer.padding_side = "left"
        tokenizer.save_pretrained(str(out_dir))
    import shutil

    shutil.rmtree(out_dir / ".trainer", ignore_errors=True)
    return TrainResult(output=str(out_dir), records=len(dataset), steps=int(trainer.state.global_step),
                       seconds=round(time.perf_counter() - t0, 2), final_loss=losses[-1] if losses else None,
                       losses=losses, kind="lora" if options.lora else "full")


def _point_adapter_at(out_dir: Path, base: str) -> None:
    """Record the init as an absolute path, so the adapter loads from anywhere."""
    import json

    cfg_path = out_dir / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    if Path(base).exists():
        cfg["base_model_name_or_path"] = str(Path(base).resolve())
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")


@dataclass
class DistillResult:
    options: DistillOptions
    train: TrainResult
    records: int
    diluted: int

    def to_dict(self) -> dict[str, Any]:
        return {"verb": DistillOptions.verb, "output": self.options.output, "records": self.records,
                "diluted_records": self.diluted, "train": self.train.to_dict()}


def distill(options: DistillOptions, progress: Progress | None = None) -> DistillResult:
    """The ``distill`` verb: read (and optionally dilute) the data, train, write OUT atomically."""
    from llmguard.io.manifest import Manifest
    from llmguard.io.staging import StagedDirectory

    inputs = [Path(options.data), Path(options.student_init)]
    if options.dilute_with:
        inputs.append(Path(options.dilute_with))
    stage = StagedDirectory(options.output, [p for p in inputs if p.exists()], force=options.force)
    stage.check()
    records = read_sft(options.data, "--data")
    diluted = 0
    if options.dilute is not None:
        plain = read_sft(options.dilute_with, "--dilute-with")
        records = dilute(records, plain, options.dilute, seed=options.train_seed)
        diluted = sum(1 for r in records if r.provenance.get("dilution") == "plain")
    init = Path(options.student_init)
    if not init.exists() and not _looks_like_hub_id(options.student_init):
        raise InvalidInputError(f"--student-init {init}: model directory does not exist")
    manifest = Manifest(verb=options.verb, parameters=options.to_manifest())
    manifest.add_input("data", Path(options.data))
    with stage:
        with manifest.stage("distill") as st:
            result = train_student(records, stage.path, options, template=options.template,
                                   device=options.device, dtype=options.dtype, progress=progress)
            st["steps"] = result.steps
        if options.dilute is not None:
            write_sft(stage.path / "training-data.jsonl", records)
        manifest.extra["result"] = result.to_dict()
        _write_manifest(stage.path / "llmguard.json", manifest)
    return DistillResult(options, result, len(records), diluted)


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~", "/"))


def _write_manifest(path: Path, manifest: Any) -> None:
    import json

    path.write_text(json.dumps(manifest.to_dict(), indent=2, default=str) + "\n")
