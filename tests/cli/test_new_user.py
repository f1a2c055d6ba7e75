"""What a new user meets first: bare ``llmguard``, usage errors, help labels, ``--json`` on every
verb (one document, errors included), piped output width, the demo table at 80 columns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_utils import run_cli  # noqa: E402


def invoke(*args: object):
    """``llmguard ARGS`` in-process (same app, same exit codes); stdout and stderr apart."""
    from typer.testing import CliRunner

    from llmguard.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args], env={"NO_COLOR": "1", "COLUMNS": "200"})


def leaf_commands() -> dict[str, object]:
    import typer.main

    from llmguard.cli.app import app

    out: dict[str, object] = {}

    def walk(command: object, path: tuple[str, ...]) -> None:
        subs = getattr(command, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, path + (name,))
        else:
            out[" ".join(path)] = command

    walk(typer.main.get_command(app), ())
    return out


def test_bare_llmguard_prints_help_and_exits_0() -> None:
    r = run_cli()
    assert r.returncode == 0, r.stderr
    assert "Usage: llmguard" in r.stdout and "realign" in r.stdout


def test_usage_error_is_one_line_and_a_json_document_under_json() -> None:
    r = run_cli("realign", "resta", "--bogus")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["error: No such option: --bogus (Possible options: --base) (see 'llmguard realign resta -h')"]
    assert r.stdout == ""
    r = run_cli("-v", "2")  # -v is a counter: "2" is read as a verb, and the error says so on one line
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "No such command '2'" in r.stderr
    r = run_cli("realign", "resta", "--json", "-f", "x")
    assert r.returncode == 2
    doc = json.loads(r.stdout)
    assert doc["error"]["exit_code"] == 2 and "--aligned" in doc["error"]["message"]


def test_help_has_no_bool_or_int_placeholders_and_names_real_gates() -> None:
    root = invoke("--help")
    assert root.exit_code == 0
    assert "<bool>" not in root.stdout and "<int>" not in root.stdout
    assert "counter" in root.stdout and "[default: 0]" not in root.stdout
    assert "--fail-on " not in root.stdout and "--fail-on-detect" in root.stdout
    resta = invoke("realign", "resta", "--help").stdout
    assert "<bool>" not in resta and "--force" in resta
    assert "loaded in" in invoke("eval", "safety", "--help").stdout


def test_completions_help_prints_usage_and_creates_nothing(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "llmguard.cli.completions", "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0 and "usage:" in r.stdout
    assert list(tmp_path.iterdir()) == []


def test_every_verb_with_json_prints_one_json_document_even_on_error(tmp_path: Path) -> None:
    """Each verb that takes --json, given an input that does not exist (or a bad flag), prints a
    JSON error document on stdout, one line on stderr, and the documented exit code."""
    missing = tmp_path / "missing"
    commands = leaf_commands()
    with_json = {name for name, cmd in commands.items() if any("--json" in p.opts for p in cmd.params)}
    assert with_json == set(commands), f"verbs without --json: {sorted(set(commands) - with_json)}"
    runtime_errors = {  # verbs whose first required input is easy to point at a missing path
        "inspect": ["inspect", missing], "diff": ["diff", missing, missing],
        "realign resta": ["realign", "resta", "-f", missing, "-a", missing, "-u", missing, "-o", tmp_path / "o"],
        "realign revert": ["realign", "revert", missing, "-o", tmp_path / "o"],
        "eval agree": ["eval", "agree", "--pred", missing, "--human", missing],
        "watermark detect": ["watermark", "detect", missing, "--tokenizer", missing],
    }
    for name in sorted(commands):
        args = runtime_errors.get(name, [*name.split(), "--no-such-flag"])
        r = invoke(*args, "--json")
        assert r.exit_code in (2, 3), (name, r.exit_code, r.stdout, r.stderr)
        doc = json.loads(r.stdout)  # one document, nothing else on stdout
        assert doc["error"]["exit_code"] == r.exit_code, name
        assert [ln for ln in r.stderr.splitlines() if ln.strip()][-1].startswith("error:"), (name, r.stderr)


def test_json_success_documents_of_the_quick_verbs(testbed, tmp_path: Path) -> None:
    cases = [
        ["inspect", testbed.finetuned_lora],
        ["diff", testbed.aligned_lora, testbed.finetuned_lora],
        ["demo", "--list"],
        ["testbed", "build"],
        ["realign", "resta", "-f", testbed.finetuned_lora, "-a", testbed.aligned_lora, "-u", testbed.aligned_sft,
         "--base", testbed.aligned_sft, "-o", tmp_path / "resta"],
    ]
    for args in cases:
        r = invoke(*args, "--json")
        assert r.exit_code == 0, (args, r.stdout, r.stderr)
        assert isinstance(json.loads(r.stdout), dict), args
    env = json.loads((tmp_path / "resta" / "llmguard.json").read_text())["environment"]  # provenance of the output
    assert all(env[lib] for lib in ("torch", "transformers", "peft", "safetensors", "python", "llmguard"))
    assert env["devices"] == ["cpu"] and env["torch_threads"] >= 1 and env["cpu"] and env["accelerator"]["cuda_build"] is None
    assert env["git_revision"]  # this checkout's revision (None only for a wheel install)
    extras = json.loads(invoke("testbed", "build", "--json").stdout)["extras"]  # every artefact, not only the Llama ones
    assert set(extras) == {"watermark", "tiny_hdc_judge", "tiny_llava"}
    assert all(Path(p).exists() for p in [extras["tiny_hdc_judge"], extras["tiny_llava"], *extras["watermark"].values()])
    steps = json.loads(invoke("demo", "--list", "--json").stdout)["steps"]
    assert {"name": "realign-resta", "aliases": ["resta"]}.items() <= next(s for s in steps if s["name"] == "realign-resta").items()


def test_piped_tables_are_not_squeezed_to_80_columns(testbed) -> None:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env["NO_COLOR"] = "1"
    r = subprocess.run([sys.executable, "-m", "llmguard", "diff", str(testbed.aligned_lora), str(testbed.finetuned_lora), "--top", "28"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert max(map(len, lines)) > 80  # laid out for its content, not for an 80-column terminal
    modules = [ln.split("│")[1].strip() for ln in lines if ln.startswith("│")]
    assert len(modules) == 28 and all(m.startswith("model.layers.") and m.endswith("_proj") for m in modules), modules


def _demo_result():
    from llmguard.cli.demo_runner import DemoResult, DemoRow, StepTiming

    long = "realign nlsr --search: α=0.9 mask=0.3 budget=0.5 unit=weight scorer=actsvd (12 modules)"
    rows = [
        DemoRow(step="eval safety", model="finetuned-arith-lora", harmful_rate=0.014, refusal_rate=0.0, task="arith",
                task_accuracy=0.971, step_name="eval-safety"),
        DemoRow(step=long, model="finetuned-full", output="nlsr-finetuned-full-searched", harmful_rate=0.083, refusal_rate=0.9,
                task="sst2", task_accuracy=0.953, before={"harmful_rate": 1.0, "refusal_rate": 0.0, "task_accuracy": 1.0},
                step_name="realign-nlsr"),
        DemoRow(step="eval safety --judge guard", model="finetuned-lora", harmful_rate=0.9, refusal_rate=0.1, task="sst2",
                task_accuracy=1.0, guard_vs_keyword=0.958, step_name="judge-guard"),
        DemoRow(step="eval hdc + agree", model="tiny-hdc-judge", judge_vs_labels_r=0.87, step_name="judge-hdc"),
        DemoRow(step="watermark scrub", model="wm-student", output="watermark-scrub/student", watermark_z=0.51,
                before={"watermark_z": 8.12}, step_name="watermark-attacks"),
    ]
    timings = [StepTiming(name, seconds, True, 1) for name, seconds in
               (("eval-safety", 56.4), ("realign-nlsr", 184.2), ("judge-guard", 20.0), ("judge-hdc", 30.0), ("watermark-attacks", 50.0))]
    return DemoResult(Path("/tb"), Path("/work"), rows, {}, 340.0, timings)


def test_demo_table_reads_at_80_columns() -> None:
    from llmguard.cli.demo_table import render

    text = render(_demo_result(), width=80)
    lines = text.splitlines()
    assert max(map(len, lines)) <= 80
    assert "…" not in text
    assert "100 → 8.3" in text and "0 → 90" in text and "sst2 100 → 95.3" in text  # before → after on one row
    assert "→ nlsr-finetuned-full-searched" in text  # the output model is labelled
    assert "z 8.1 → 0.5" in text and "guard=kw 95.8" in text and "r 0.87" in text  # two agreement names
    assert text.count("184 s") == 1 and "· 56 s" in text  # each step's time once
    assert "lower is better" in text and "z > 4" in text  # legend: direction and threshold
    assert all(word in text for word in ("finetuned-arith-lora", "arith 97.1"))
    wide = render(_demo_result(), width=None)  # piped: nothing wraps
    assert any("unit=weight scorer=actsvd (12 modules) · 184 s" in ln for ln in wide.splitlines())


def test_demo_json_has_steps_rows_and_legend() -> None:
    doc = json.loads(json.dumps(_demo_result().to_dict()))
    assert [s["name"] for s in doc["steps"]][:2] == ["eval-safety", "realign-nlsr"]
    assert "seconds" not in doc["rows"][0] and doc["rows"][1]["before"]["harmful_rate"] == 1.0
    assert "harmful %" in doc["legend"]


def test_demo_steps_accept_short_aliases() -> None:
    from llmguard.cli.demo_runner import load_steps, resolve_steps
    from llmguard.errors import UsageError

    steps = load_steps()
    assert list(resolve_steps(["resta", "safety"], steps)) == ["eval-safety", "realign-resta"]
    with pytest.raises(UsageError, match="realign-resta \\(resta\\)"):
        resolve_steps(["nope"], steps)


class RecordingProgress:
    """A Progress that keeps what it was told (the demo's screen, as data)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def stage(self, name: str, total: int | None = None) -> None:
        self.events.append(("stage", name))

    def advance(self, n: int = 1) -> None:
        pass

    def note(self, text: str) -> None:
        self.events.append(("note", text))

    def log(self, message: str) -> None:
        self.events.append(("log", message))

    def close(self) -> None:
        self.events.append(("close", ""))


def test_demo_screen_says_what_runs_and_each_step_start_and_end(testbed, tmp_path: Path) -> None:
    from llmguard.cli import demo_runner as demo

    @demo.register_step("zz-screen-a", order=998)
    def _a(ctx):
        ctx.cli("inspect", testbed.finetuned_lora, "--json")
        return [demo.DemoRow(step="probe a", model="finetuned-lora")]

    @demo.register_step("zz-screen-b", order=999)
    def _b(ctx):
        raise demo.StepFailed("broken on purpose")

    progress = RecordingProgress()
    try:
        res = demo.run_demo(work=tmp_path, only=["zz-screen-a", "zz-screen-b"], progress=progress)
    finally:
        for name in ("zz-screen-a", "zz-screen-b"):
            demo.STEPS.pop(name, None)
    logs = [text for kind, text in progress.events if kind == "log"]
    assert logs[0].startswith("testbed:") and logs[1].startswith("testbed ready")
    assert logs[2].startswith("> [1/2] zz-screen-a") and logs[3].startswith("ok [1/2] zz-screen-a in ")
    assert logs[4].startswith("> [2/2] zz-screen-b") and logs[5].startswith("FAILED [2/2] zz-screen-b in ")
    assert ("stage", "step 1/2 zz-screen-a") in progress.events and ("note", "llmguard inspect finetuned-lora") in progress.events
    assert [kind for kind, _ in progress.events].count("close") == 1 and progress.events[-1] == ("close", "")  # the build did not close it
    assert [(s.name, s.ok, s.rows) for s in res.steps] == [("zz-screen-a", True, 1), ("zz-screen-b", False, 1)]


def test_rich_progress_logs_lines_notes_the_running_command_and_survives_reopening(monkeypatch) -> None:
    import io

    from rich.console import Console

    import llmguard.cli.progress as cli_progress

    buf = io.StringIO()
    monkeypatch.setattr(cli_progress, "stderr", Console(file=buf, force_terminal=True, width=80, color_system=None))
    p = cli_progress.RichStageProgress()
    p.stage("load", total=3)
    p.advance(3)
    p.close()  # a callee closes it (the testbed build does) ...
    p.log("> [1/2] step-a: something")
    p.stage("step 1/2 step-a")  # ... and the next stage reopens it
    p.note("llmguard eval safety")
    p.log("ok [1/2] step-a in 0 s")
    p.stage("step 2/2 step-b")  # the finished unknown-length stage is removed, not left as 0/0
    p.close()
    p.close()
    text = buf.getvalue()
    assert "> [1/2] step-a: something" in text and "ok [1/2] step-a in 0 s" in text
    assert "step 1/2 step-a · llmguard eval safety" in text and "3/3" in text and "0/0" not in text
