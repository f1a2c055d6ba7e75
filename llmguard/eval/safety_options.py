"""Options of ``eval safety`` (importable without torch: the CLI derives its flags from them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from llmguard.errors import UsageError
from llmguard.options import PANEL_DANGER, PANEL_INPUT, PANEL_METHOD, PANEL_OUTPUT, PANEL_PERF, Options, option

TASKS = ("sst2", "arith")


@dataclass(frozen=True, kw_only=True)
class EvalSafetyOptions(Options):
    """Every parameter of ``eval safety``: the model, harmful prompts and task items, the judge and the gate."""

    verb: ClassVar[str] = "eval safety"

    model: str = option(help="Model directory (HF layout), adapter directory, or hub id.", short="-m", panel=PANEL_INPUT)
    prompts: Path | None = option(None, help="Harmful prompts (JSONL/JSON/CSV/Parquet) with a prompt field and an optional category field.",
                                  short="-p", panel=PANEL_INPUT)
    prompt_records: tuple[dict[str, Any], ...] | None = option(
        None, help="In-memory prompt records instead of --prompts (library use).", cli=False, manifest=False)
    adapter: Path | None = option(None, help="PEFT adapter applied on top of --model.", short="-a", panel=PANEL_INPUT)
    judge: str = option("keyword", short="-j", panel=PANEL_METHOD,
                        help="'keyword' (refusal phrases + compliance markers, offline), 'keyword:FILE' (plus the harmful "
                        "content phrases in FILE) or a moderation model (Llama-Guard / beaver-dam layout).")
    task: str | None = option(None, help="Task of --task-data: sst2 or arith (exact match).", panel=PANEL_INPUT)
    task_data: Path | None = option(None, help="Task items (prompt + answer fields) for exact-match accuracy.", panel=PANEL_INPUT)
    task_records: tuple[dict[str, Any], ...] | None = option(
        None, help="In-memory task items instead of --task-data (library use).", cli=False, manifest=False)
    prompt_field: str = option("prompt", help="Field holding the prompt.", panel=PANEL_INPUT)
    category_field: str = option("category", help="Field holding the harm category (optional in the data).", panel=PANEL_INPUT)
    answer_field: str = option("answer", help="Field holding the reference answer of task items.", panel=PANEL_INPUT)
    limit: int | None = option(None, help="Evaluate only the first N prompts / task items.", panel=PANEL_INPUT)
    fail_above: float | None = option(None, help="Exit 10 when the harmful rate is above RATE (0-1).", panel=PANEL_METHOD)
    template: str = option("auto", help="Prompt format: auto (chat template if any, else plain), chat, plain, none.", panel=PANEL_METHOD)
    records: Path | None = option(None, help="Also write every response with its verdict to this JSONL file.", panel=PANEL_OUTPUT)
    batch_size: int = option(32, help="Prompts per generation batch.", panel=PANEL_PERF)
    max_new_tokens: int = option(48, help="Tokens generated per answer.", panel=PANEL_PERF)
    device: str = option("auto", help="Where the math runs: auto, cpu, cuda or cuda:N.", envvar="LLMGUARD_DEVICE", panel=PANEL_PERF)
    dtype: str = option("auto", help="Dtype the model is loaded in: auto (as stored), float32, bfloat16 or float16.",
                        panel=PANEL_PERF)
    load_in_4bit: bool = option(False, help="Load the model in 4 bit (bitsandbytes, GPU).", panel=PANEL_PERF)
    load_in_8bit: bool = option(False, help="Load the model in 8 bit (bitsandbytes, GPU).", panel=PANEL_PERF)
    trust_remote_code: bool = option(False, help="Allow custom modelling code from the checkpoint.", panel=PANEL_DANGER)

    def validate(self) -> None:
        if self.prompts is not None and self.prompt_records is not None:
            raise UsageError("give --prompts or in-memory prompt records, not both")
        if self.task_data is not None and self.task_records is not None:
            raise UsageError("give --task-data or in-memory task records, not both")
        has_prompts = self.prompts is not None or self.prompt_records is not None
        has_items = self.task_data is not None or self.task_records is not None
        if self.fail_above is not None and not 0 <= self.fail_above <= 1:
            raise UsageError(f"--fail-above: {self.fail_above} is not a rate between 0 and 1")
        if self.fail_above is not None and not has_prompts:
            raise UsageError("--fail-above needs --prompts (it gates the harmful rate)")
        if self.task is not None and self.task not in TASKS and not has_items:
            raise UsageError(f"--task: {self.task!r} is not one of {', '.join(TASKS)}")
        if self.task is not None and not has_items:
            raise UsageError("--task needs --task-data (the items to score)")
        if not has_prompts and not has_items:
            raise UsageError("give --prompts (harmful prompts) and/or --task-data")
        if self.records is not None and self.records.is_dir():
            raise UsageError(f"--records: {self.records} is a directory")

    @property
    def task_name(self) -> str | None:
        """The task's label in the report: --task, or ``task`` for unnamed --task-data."""
        has_items = self.task_data is not None or self.task_records is not None
        return self.task or ("task" if has_items else None)
