"""CDG-KD scrubbing and spoofing end to end: contrastive data, distillation, closed loop.

``run_attack(ScrubOptions(...) | SpoofOptions(...))``:

1. loads the student S (strong inherited watermark) and the reference R (weak one) once, checks
   that they share a tokenizer, and writes contrastive continuations of the prompts as an SFT
   dataset (``OUT/data.jsonl``, whole batches appended and fsynced, per-record provenance);
2. generates from S and R on the held-out prompts (detection and perplexity, while they are
   loaded), then frees them;
3. distils a fresh student (``--student-init``) on the dataset (``OUT/student``);
4. generates from the new student on the held-out prompts and detects the teacher's watermark
   (``OUT/report.json``).

OUT is built in a hidden partial directory and appears only when complete; the partial directory
survives a failure, and ``--resume`` continues it at the first unwritten batch (with the same
generation parameters, checked against ``run.json``) and skips a finished distillation.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmguard.errors import InvalidInputError, UsageError
from llmguard.progress import NullProgress, Progress
from llmguard.watermark.attack_options import AttackOptions, ScrubOptions, SpoofOptions
from llmguard.watermark.closed_loop import ModelReport
from llmguard.watermark.distill import TrainResult

__all__ = ["AttackOptions", "AttackResult", "ScrubOptions", "SpoofOptions", "run_attack"]

@dataclass
class AttackResult:
    """What ``scrub``/``spoof`` produced."""

    mode: str
    output: str
    data: str
    records: int
    resumed_records: int
    generation_seconds: float
    tokens_per_second: float
    train: TrainResult | None = None
    models: dict[str, ModelReport] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("train", "models")}
        d["train"] = self.train.to_dict() if self.train else None
        d["models"] = {k: v.to_dict() for k, v in self.models.items()}
        return d


def _vocab_size(model: Any) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


def _load_pair(gen: AttackOptions) -> tuple[Any, Any, Any, list[str]]:
    from llmguard.inference.loading import load_causal_lm
    from llmguard.watermark.contrastive import check_tokenizers

    kw = dict(device=gen.device, dtype=gen.dtype, load_in_4bit=gen.load_in_4bit, load_in_8bit=gen.load_in_8bit)
    student, s_tok = load_causal_lm(gen.student, **kw)
    reference, r_tok = load_causal_lm(gen.reference, **kw)
    warnings = check_tokenizers(s_tok, r_tok, _vocab_size(student), _vocab_size(reference), gen.force_vocab)
    return student, reference, s_tok, warnings


def _prompt_ids(tokenizer: Any, prompts: list[str], template: str) -> list[list[int]]:
    from llmguard.inference.generate import format_prompt, tokenize_prompts

    return tokenize_prompts(tokenizer, [format_prompt(tokenizer, p, template) for p in prompts])


def _read_clean_texts(path: str) -> list[str]:
    from llmguard.watermark.data import read_source, read_texts

    p = Path(path)
    if p.suffix.lower() not in (".jsonl", ".json") and read_source(path).lstrip()[:1] not in ("{", "["):
        lines = [ln for ln in read_source(path).splitlines() if ln.strip()]
        if not lines:
            raise InvalidInputError(f"{path}: no text (--eval-text)")
        return lines
    return [r.text for r in read_texts(path, text_field="text").records]


def _check_resume(stage_dir: Path, gen: AttackOptions) -> None:
    run = stage_dir / "run.json"
    want = gen.generation_key()
    if run.is_file():
        have = json.loads(run.read_text())
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        if diff:
            raise UsageError(f"--resume: the unfinished run used different {', '.join(diff)}; "
                             "rerun with the same options or drop --resume")
    run.write_text(json.dumps(want, indent=2) + "\n")


def run_attack(options: AttackOptions, progress: Progress | None = None) -> AttackResult:
    """Generate the contrastive dataset, distil a new student, and close the loop (see module doc)."""
    import torch

    from llmguard import __version__
    from llmguard.io.manifest import Manifest
    from llmguard.io.staging import StagedDirectory
    from llmguard.watermark.closed_loop import detection_report, held_out_texts, perplexity
    from llmguard.watermark.contrastive import Sampling, contrastive_generate
    from llmguard.watermark.distill import train_student
    from llmguard.watermark.sft import SFTRecord, SFTWriter, read_prompts, read_sft

    progress = progress or NullProgress()
    gen = train = loop = options  # one flat options object: generation, distillation and closed-loop fields
    inputs = [Path(p) for p in (gen.student, gen.reference, gen.prompts, train.student_init, loop.eval_prompts,
                                loop.eval_text) if p]
    stage = StagedDirectory(gen.output, [p for p in inputs if p.exists()], force=gen.force, resume=gen.resume,
                            keep_on_error=True)
    stage.check()
    prompts = read_prompts(gen.prompts, gen.prompt_field)
    eval_prompts = read_prompts(loop.eval_prompts, "prompt", "--eval-prompts") if loop.eval_prompts and not gen.data_only else []
    clean = _read_clean_texts(loop.eval_text) if loop.eval_text and not gen.data_only else None
    if not gen.data_only and not Path(train.student_init).exists():
        raise InvalidInputError(f"--student-init {train.student_init}: model directory does not exist")

    manifest = Manifest(verb=options.verb, parameters=options.to_manifest())
    manifest.add_input("prompts", Path(gen.prompts))
    with manifest.stage("load"):
        student, reference, tokenizer, warnings = _load_pair(gen)
    ids = _prompt_ids(tokenizer, prompts, gen.template)
    sampling = Sampling(gen.sample, gen.temperature, gen.top_p, gen.seed)
    result = AttackResult(options.mode, str(Path(gen.output)), str(Path(gen.output) / "data.jsonl"), 0, 0, 0.0, 0.0,
                          warnings=warnings)
    with stage:
        _check_resume(stage.path, gen)
        data_path = stage.path / "data.jsonl"
        writer = SFTWriter(data_path)
        done = writer.open(resume=stage.resumed)
        first_batch = done // gen.batch_size
        if done % gen.batch_size:  # a torn batch: keep whole batches only
            writer.close()
            lines = data_path.read_text(encoding="utf-8").splitlines(keepends=True)[: first_batch * gen.batch_size]
            data_path.write_text("".join(lines), encoding="utf-8")
            writer.open(resume=True)
        result.resumed_records = first_batch * gen.batch_size
        base_prov = {"attack": options.mode, "student": gen.student, "reference": gen.reference, "alpha": gen.alpha,
                     "beta": gen.beta, "sampling": asdict(sampling), "max_new_tokens": gen.max_new_tokens,
                     "tool": f"llmguard {__version__}"}
        t0 = time.perf_counter()
        new_tokens = 0
        with manifest.stage("contrastive generate") as st, writer:
            for batch in contrastive_generate(student, reference, tokenizer, ids, mode=options.mode, alpha=gen.alpha,
                                              beta=gen.beta, sampling=sampling, max_new_tokens=gen.max_new_tokens,
                                              batch_size=gen.batch_size, first_batch=first_batch, progress=progress):
                recs = [SFTRecord(prompts[batch.start + j], text, "",
                                  {**base_prov, "index": batch.start + j, "batch": batch.index,
                                   "new_tokens": len(batch.token_ids[j])})
                        for j, text in enumerate(batch.texts)]
                writer.write_batch(recs)
                new_tokens += sum(len(t) for t in batch.token_ids)
            st["records"] = len(prompts)
        result.generation_seconds = round(time.perf_counter() - t0, 3)
        result.tokens_per_second = round(new_tokens / max(result.generation_seconds, 1e-9), 1)
        result.records = len(prompts)

        if not gen.data_only:
            scheme = loop.scheme_for(tokenizer, int(student.config.get_text_config().vocab_size)) if eval_prompts else None
            eval_ids = _prompt_ids(tokenizer, eval_prompts, gen.template) if eval_prompts else []
            if eval_prompts:
                with manifest.stage("closed loop: student and reference"):
                    for name, model in (("student", student), ("reference", reference)):
                        texts = held_out_texts(model, tokenizer, eval_ids, max_new_tokens=loop.eval_max_new_tokens,
                                               seed=loop.eval_seed, batch_size=gen.batch_size, progress=progress)
                        rep = detection_report(name, scheme, tokenizer, texts, loop.z_threshold)
                        if clean:
                            rep.perplexity = perplexity(model, tokenizer, clean)
                        result.models[name] = rep
            del student, reference
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            student_dir = stage.path / "student"
            done_marker = stage.path / "train.json"
            with manifest.stage("distill"):
                if stage.resumed and done_marker.is_file() and student_dir.is_dir():
                    result.train = TrainResult(**json.loads(done_marker.read_text()))
                else:
                    if student_dir.exists():
                        import shutil

                        shutil.rmtree(student_dir)
                    student_dir.mkdir()
                    result.train = train_student(read_sft(data_path, "the contrastive dataset"), student_dir, train,
                                                 template=gen.template, device=gen.device,
                                                 dtype="float32" if gen.dtype == "auto" else gen.dtype,
                                                 progress=progress)
                    result.train.output = str(Path(gen.output) / "student")
                    done_marker.write_text(json.dumps(result.train.to_dict(), indent=2) + "\n")
            if eval_prompts:
                from llmguard.inference.loading import load_causal_lm

                with manifest.stage("closed loop: new student"):
                    new, new_tok = load_causal_lm(str(student_dir), device=gen.device)
                    texts = held_out_texts(new, new_tok, eval_ids, max_new_tokens=loop.eval_max_new_tokens,
                                           seed=loop.eval_seed, batch_size=gen.batch_size, progress=progress)
                    rep = detection_report(options.mode, scheme, new_tok, texts, loop.z_threshold)
                    if clean:
                        rep.perplexity = perplexity(new, new_tok, clean)
                    result.models[options.mode] = rep
                    base = result.models["student"].perplexity
                    for r in result.models.values():
                        if base and r.perplexity is not None:
                            r.perplexity_vs_student = r.perplexity / base
                (stage.path / "report.json").write_text(json.dumps(
                    {"mode": options.mode, "scheme": scheme.config(), "models": {k: v.to_dict() for k, v in result.models.items()}},
                    indent=2) + "\n")
        manifest.extra["result"] = result.to_dict()
        (stage.path / "llmguard.json").write_text(json.dumps(manifest.to_dict(), indent=2, default=str) + "\n")
    return result
