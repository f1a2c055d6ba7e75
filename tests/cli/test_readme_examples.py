"""Every command of README.md's ``bash`` examples, run as written on the testbed.

README.md says which testbed artefact each example name stands for (``base/`` is the testbed's
base, ``./student`` the watermark testbed's student, ...). Each fenced block runs in its own
fresh directory holding those names (models as symlinks into the cache, data files as short
copies of the testbed's, so the long examples run on small inputs) through ``bash``, exactly as
written, in order: a later line may read what an earlier one wrote. A command may exit 0, or
10 when it carries a ``--fail-*`` gate (the gate is the point of the example).

Some lines are not run here, each for a stated reason (``NOT_RUN``); the long ones that
need smaller settings than the example's get them appended (``SMALL``), so they still run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

#: lines a test cannot run as written, and where what they do is tested instead
NOT_RUN = {
    "pip install": "installs the package (docs/install.md; the venv of this run is that install)",
    "python -m pytest": "the test suite itself",
    "llmguard watermark spoof --student ./student --reference ./reference --prompts instructions.jsonl --data-only --resume":
        "resumes an interrupted run; tests/watermark/test_cli_attack.py interrupts one and resumes it",
    "llmguard watermark generate --model ./model --prompts prompts.jsonl --format sft -o sft.jsonl --resume":
        "resumes an interrupted run; tests/reliability/test_interrupts.py kills one mid-way and resumes it",
}
#: appended to long examples so they run on small settings (the example's flags stay as written)
SMALL = {
    "llmguard demo": ["--steps", "resta"],  # the full demo is minutes long; `--steps` picks one step
    "llmguard realign somf": ["--steps", "2"],  # 150 mask-training steps by default
    "llmguard watermark generate": ["--max-new-tokens", "8"],
    "llmguard watermark scrub": ["--max-new-tokens", "8", "--eval-max-new-tokens", "8"],
    "llmguard watermark spoof": ["--max-new-tokens", "8", "--eval-max-new-tokens", "8"],
}
#: lines of data per copied file (small inputs)
DATA_LINES = 8


def readme_blocks() -> list[tuple[str, list[str]]]:
    """(section heading, commands) of every ``bash`` block; continuation lines joined."""
    text = (ROOT / "README.md").read_text()
    blocks: list[tuple[str, list[str]]] = []
    heading = ""
    for part in re.split(r"(^```bash\n.*?^```\n)", text, flags=re.M | re.S):
        if part.startswith("```bash"):
            body = part.split("\n", 1)[1].rsplit("```", 1)[0].replace("\\\n", " ")
            commands = [ln.strip() for ln in body.splitlines() if ln.strip() and not ln.strip().startswith("#")]
            blocks.append((heading, commands))
        else:
            found = re.findall(r"^##+ (.*)$", part, flags=re.M)
            heading = found[-1] if found else heading
    return blocks


def _copy_lines(src: Path, dst: Path, n: int = DATA_LINES) -> None:
    lines = [ln for ln in src.read_text().splitlines() if ln.strip()][:n]
    dst.write_text("\n".join(lines) + "\n")


def _link(dst: Path, src: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src, target_is_directory=src.is_dir())


def _workspace(where: Path, heading: str, tb, wm, judge: Path, llava: Path) -> Path:
    """A directory with every name the README's examples use, for the block under ``heading``."""
    where.mkdir(parents=True)
    data = tb.data
    if heading.startswith("`llmguard watermark"):  # the watermark section: the watermark testbed's names
        # no ./reference: the distill example makes it (a weak reference by dilution) for scrub and spoof
        for name, src in {"tokenizer": wm.tokenizer, "model": wm.student, "base": wm.base, "student": wm.student}.items():
            _link(where / name, src)
        for name, src in {"outputs.jsonl": wm.teacher_data, "prompts.jsonl": wm.prompts, "teacher-sft.jsonl": wm.teacher_sft,
                          "plain-sft.jsonl": wm.plain_sft, "instructions.jsonl": wm.attack_prompts, "heldout.jsonl": wm.prompts,
                          "clean.jsonl": wm.clean_text}.items():
            _copy_lines(src, where / name, 16 if "sft" in name else DATA_LINES)
        return where
    for name, src in {"my-model": tb.finetuned_full, "my-lora": tb.finetuned_lora, "base": tb.base, "aligned": tb.aligned,
                      "aligned-sft": tb.aligned_sft, "aligned-lora": tb.aligned_lora, "finetuned": tb.finetuned_full,
                      "finetuned-full": tb.finetuned_full, "ft": tb.finetuned_full, "finetuned-lora": tb.finetuned_lora,
                      "ft-lora": tb.finetuned_lora, "ft-sst2": tb.finetuned_lora, "ft-arith": tb.finetuned_arith_lora,
                      "guard-model": tb.guard, "models/judge": judge, "models/HDCEval_PQR": judge, "models/HDCEval_MKC": judge,
                      "models/HDCEval_EXP": judge, "models/llava-judge": llava, "models/llava": llava,
                      "models/ACE-M3_EXP": llava, "models/ACE-M3_Conclusion": llava}.items():
        _link(where / name, src)
    if heading.startswith("`llmguard eval safety"):  # "gate the realigned model": any model, here the aligned one
        _link(where / "realigned", tb.aligned)
    for name, key in {"safe_pairs.jsonl": "safety_refusal_sft", "harmful_dev.jsonl": "harmful_dev",
                      "sst2_dev_wordings.jsonl": "sst2_dev_wordings", "harmful_test.jsonl": "harmful_test",
                      "sst2_test.jsonl": "sst2_test", "preference.jsonl": "realign_preference",
                      "sst2_train.jsonl": "sst2_train", "arith_train.jsonl": "arith_train"}.items():
        _copy_lines(Path(data[key]), where / name)
    from llmguard.testbed import judge as tj

    items = tj.judge_items(4)
    tj.write_items(items, where / "items.jsonl")
    tj.write_labels(items, where / "doctors.jsonl")
    tj.write_items(tj.pairwise_items(2), where / "pairs.jsonl")
    (where / "img").mkdir()
    rows = []
    for i in range(2):
        tj.write_png(where / "img" / f"{i}.png", seed=i)
        rows.append({"id": f"v{i}", "image": f"img/{i}.png", "question": "What does the image show?",
                     "answer": "A normal chest x-ray.", "reference": "Normal chest radiograph."})
    (where / "vqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return where


def _not_run(command: str) -> str | None:
    first = command.split("&&")[0].strip()
    return next((why for prefix, why in NOT_RUN.items() if first.startswith(prefix)), None)


def _small(command: str) -> str:
    """``command`` with its long-run settings made small (appended flags win in Click)."""
    for prefix, extra in SMALL.items():
        if command.startswith(prefix) and extra:
            head, sep, tail = command.partition("  #")  # a trailing comment stays a comment
            return f"{head.rstrip()} {shlex.join(extra)}{' ' + sep + tail if sep else ''}"
    return command


def _code(command: str) -> str:
    """``command`` without its trailing ``  # comment``."""
    return command.split("  #")[0].rstrip()


def _pipes_to_sh(command: str) -> bool:
    return _code(command).endswith("| sh")


_SHELL = re.compile(r"[|<>;&$`]|^(?!llmguard )")


def _run(command: str, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> subprocess.CompletedProcess[str]:
    """A plain ``llmguard ...`` line runs in-process (the same program, without a Python and torch
    start per line); a line that needs the shell (a pipe, a redirect, another program) runs in bash."""
    if not _SHELL.search(_code(command)):
        from typer.testing import CliRunner

        from llmguard.cli.app import app

        monkeypatch.chdir(cwd)
        argv = shlex.split(_small(command), comments=True)[1:]
        res = CliRunner().invoke(app, argv, env={"NO_COLOR": "1", "COLUMNS": "200"})
        return subprocess.CompletedProcess(argv, res.exit_code, res.stdout, res.stderr)
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if _pipes_to_sh(command):  # the three attacks are run by tests/watermark/test_attack_testbed.py;
        command = _code(command)[: -len("| sh")] + "> attacks.sh"  # here: the script it pipes is written and checked
    return subprocess.run(["bash", "-eo", "pipefail", "-c", _small(command)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)


BLOCKS = readme_blocks()


def test_readme_has_runnable_examples() -> None:
    assert len(BLOCKS) >= 10 and sum(len(c) for _, c in BLOCKS) >= 30


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"{i}-{h[:30]}" for i, (h, _) in enumerate(BLOCKS)])
def test_readme_block_runs_as_written(index: int, testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmguard.testbed import judge as tj
    from llmguard.testbed import watermark as tw

    heading, commands = BLOCKS[index]
    where = _workspace(tmp_path / "work", heading, testbed, tw.build(), tj.tiny_judge_path(), tj.tiny_llava_path())
    ran = 0
    for command in commands:
        if _not_run(command):
            continue
        if command.startswith("from ") or command.startswith("import "):
            continue
        result = _run(command, where, monkeypatch)
        allowed = {0}
        if "--fail-" in command:
            allowed.add(10)  # the gate may trip: that is what the example shows
        if command.startswith(("llmguard eval hdc", "llmguard eval ace-m3")) and "did not parse" in result.stderr:
            allowed.add(1)  # the documented exit for unparsed outputs: the testbed's tiny judges are imperfect (LLaVA: random)
        assert result.returncode in allowed, (command, result.returncode, result.stdout[-2000:], result.stderr[-2000:])
        if _pipes_to_sh(command):
            script = (where / "attacks.sh").read_text().splitlines()
            assert len([ln for ln in script if ln.startswith("llmguard watermark ")]) == 3, script
        ran += 1
    assert ran or all(_not_run(c) for c in commands), heading
