"""Real interrupts of real CLI processes: SIGINT, a double SIGINT and SIGKILL in the middle of a write,
Ctrl-C while the libraries are still being imported, and an eval killed mid-way then resumed.

The checkpoint is a plain 128 MB safetensors file (RESTA needs no model class), large enough that
the write takes a moment to catch; the interrupt is sent once the writer's temporary directory
exists, i.e. mid-write.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import invoke  # noqa: E402


def run_in_process(*args: object) -> tuple[int, str]:
    """A rerun where the subprocess is not the point: the CLI in this process (exit code, stderr)."""
    code, _stdout, stderr = invoke([str(a) for a in args])
    return code, stderr


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("big") / "model"
    root.mkdir()
    gen = torch.Generator().manual_seed(0)
    tensors = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(2048, 2048, generator=gen) * 0.02 for i in range(8)}
    save_file(tensors, root / "model.safetensors", metadata={"format": "pt"})
    (root / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    return root


def _start(*args: object, cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", "llmguard", *map(str, args)], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(predicate, proc: subprocess.Popen[str], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the run ended before the interrupt: {proc.communicate()}"
        assert time.monotonic() < deadline, "timed out waiting for the run to start writing"
        time.sleep(0.002)


def _temps(root: Path, name: str) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(f".{name}.llmguard-"))


def _resta(model: Path, out: str, *extra: str) -> list[object]:
    return ["realign", "resta", "-f", model, "-a", model, "-u", model, "--gamma", "0.3", "-o", out, "--device", "cpu", *extra]


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    return lines[0]


@pytest.mark.parametrize("signals", [1, 2], ids=["sigint", "double-sigint"])
def test_sigint_mid_write_leaves_nothing_and_rerun_succeeds(big_checkpoint: Path, tmp_path: Path, signals: int) -> None:
    proc = _start(*_resta(big_checkpoint, "out"), cwd=tmp_path)
    _wait_for(lambda: any("tmp" in t for t in _temps(tmp_path, "out")), proc)  # the writer's temporary: mid-write
    for _ in range(signals):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.02)
    _stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted" in _one_error_line(stderr)
    assert not (tmp_path / "out").exists() and _temps(tmp_path, "out") == []
    code, stderr = run_in_process(*_resta(big_checkpoint, str(tmp_path / "out")))
    assert code == 0, stderr
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_sigkill_mid_force_rewrite_keeps_the_previous_output_and_the_next_run_cleans_up(big_checkpoint: Path, tmp_path: Path) -> None:
    code, stderr = run_in_process(*_resta(big_checkpoint, str(tmp_path / "out")))
    assert code == 0, stderr
    previous = (tmp_path / "out" / "model.safetensors").read_bytes()
    proc = _start(*_resta(big_checkpoint, "out", "--force", "--dtype", "bfloat16"), cwd=tmp_path)
    _wait_for(lambda: bool([t for t in _temps(tmp_path, "out") if "tmp" in t]), proc)
    proc.kill()
    proc.communicate(timeout=60)
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == previous  # the previous complete version
    assert [t for t in _temps(tmp_path, "out") if "tmp" in t], "a SIGKILL cannot clean up: the temporary stays until the next run"
    code, stderr = run_in_process(*_resta(big_checkpoint, str(tmp_path / "out"), "--force", "--dtype", "bfloat16"))
    assert code == 0, stderr
    assert _temps(tmp_path, "out") == [], "the next run removes a killed run's temporaries"
    assert (tmp_path / "out" / "model.safetensors").read_bytes() != previous


def test_ctrl_c_while_the_libraries_import_is_one_line_and_exit_130(big_checkpoint: Path, tmp_path: Path) -> None:
    """The interrupt lands during the interpreter's imports (llmguard.cli, then torch inside the
    verb); torch's import swallows a KeyboardInterrupt raised in its numpy import, which once let
    the run finish with exit 0."""
    for delay in (0.15, 0.6):
        proc = _start("inspect", big_checkpoint, "--scan", cwd=tmp_path)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 130, (delay, stderr)
        assert "interrupted" in _one_error_line(stderr)


def _comparable(path: Path) -> dict[tuple[str, str], tuple]:
    out = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        out[(rec["id"], rec["criterion"])] = (rec.get("raw_output"), rec.get("parse_status"), json.dumps(rec.get("scores"), sort_keys=True))
    return out


def test_eval_killed_mid_way_resumes_to_the_records_of_an_uninterrupted_run(tmp_path: Path) -> None:
    from llmguard.testbed import judge as tj

    items = tj.write_items(tj.judge_items(16), tmp_path / "items.jsonl")
    judge = tj.tiny_judge_path()
    args = ["eval", "hdc", items, "--judge", judge, "--no-cache", "--device", "cpu", "--batch-size", "1", "--aspects", "REL,COR"]
    proc = _start(*args, "-o", "killed.jsonl", cwd=tmp_path)
    results = tmp_path / "killed.jsonl"
    _wait_for(lambda: results.exists() and results.read_text().count("\n") >= 3, proc)
    proc.kill()
    proc.communicate(timeout=60)
    done = results.read_text().count("\n")
    assert 3 <= done < 32, done
    code, stderr = run_in_process(*args, "-o", results, "--resume")
    assert code == 0, stderr
    code, stderr = run_in_process(*args, "-o", tmp_path / "whole.jsonl")
    assert code == 0, stderr
    assert _comparable(results) == _comparable(tmp_path / "whole.jsonl")
    assert len(_comparable(results)) == 32
    assert _temps(tmp_path, "killed.jsonl") == []


def test_generate_killed_mid_way_resumes_to_the_records_of_an_uninterrupted_run(testbed, tmp_path: Path) -> None:
    """Sampling with a watermark: the RNG state saved after each finished batch makes the resumed
    run draw exactly what the uninterrupted one draws."""
    root = Path(testbed.root)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join((root / "data" / "harmful_test.jsonl").read_text().splitlines()[:24]) + "\n")
    args = ["watermark", "generate", "-m", root / "base", "-p", prompts, "--max-new-tokens", "16", "--batch-size", "2", "--seed", "7",
            "--device", "cpu"]
    proc = _start(*args, "-o", "killed.jsonl", cwd=tmp_path)
    state = tmp_path / ".killed.jsonl.llmguard-partial.state.json"
    _wait_for(lambda: state.exists() and json.loads(state.read_text() or "{}").get("batches", 0) >= 2, proc)
    proc.kill()
    proc.communicate(timeout=60)
    assert not (tmp_path / "killed.jsonl").exists()
    code, stderr = run_in_process(*args, "-o", tmp_path / "killed.jsonl", "--resume")
    assert code == 0, stderr
    code, stderr = run_in_process(*args, "-o", tmp_path / "whole.jsonl")
    assert code == 0, stderr
    resumed = (tmp_path / "killed.jsonl").read_text()
    assert resumed == (tmp_path / "whole.jsonl").read_text() and resumed.count("\n") == 24
    assert _temps(tmp_path, "killed.jsonl") == [] and _temps(tmp_path, "whole.jsonl") == []
    code, stderr = run_in_process(*args, "-o", tmp_path / "whole.jsonl", "--resume")
    assert code == 2 and "no unfinished run" in stderr
