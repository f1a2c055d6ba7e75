"""Resource limits and the rules behind the corpus: a full disk, one huge calibration record, the
output lock, stale temporaries, and the adapter recorded for another base."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmguard.errors import ResourceError, UsageError
from llmguard.io.output_safety import OutputLock, check_output, remove_stale_temps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import invoke  # noqa: E402


def _limited_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.parametrize("verb", ["resta", "generate"])
def test_disk_full_names_the_output_exit_4_and_leaves_nothing(testbed, tmp_path: Path, verb: str) -> None:
    root = Path(testbed.root)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join((root / "data" / "harmful_test.jsonl").read_text().splitlines()[:2]) + "\n")
    if verb == "resta":
        args = ["realign", "resta", "-f", root / "finetuned-full", "-a", root / "aligned", "-u", root / "base", "-o", "out", "--device", "cpu"]
        limit = 1_000_000  # the 3.6 MB checkpoint does not fit
    else:
        args = ["watermark", "generate", "-m", root / "base", "-p", prompts, "-o", "out", "--max-new-tokens", "8", "--device", "cpu"]
        limit = 200  # the two records do not fit
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "300"}
    result = subprocess.run([sys.executable, "-m", "llmguard", *map(str, args)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            preexec_fn=_limited_file_size(limit), timeout=600)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 4, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: out:") and "File too large" in lines[0], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.jsonl"]


def test_a_60_mb_calibration_record_is_cut_before_tokenising(testbed) -> None:
    from transformers import AutoTokenizer

    from llmguard.realign.nlsr.calibration_data import encode_pairs

    tok = AutoTokenizer.from_pretrained(str(Path(testbed.root) / "base"))
    huge = "the shelf is clean . " * 3_000_000  # 63 MB
    t0 = time.perf_counter()
    batches = encode_pairs(tok, [("how do i clean a shelf ?", huge)], max_length=512, max_response_tokens=256)
    seconds = time.perf_counter() - t0
    same = encode_pairs(tok, [("how do i clean a shelf ?", huge[:20_000])], max_length=512, max_response_tokens=256)
    assert batches[0].input_ids.equal(same[0].input_ids)  # cutting changed no token
    assert seconds < 5, seconds  # the whole string tokenised took minutes and GBs


def test_the_lock_is_reentrant_in_one_process_and_exclusive_across_processes(tmp_path: Path) -> None:
    out = tmp_path / "result.jsonl"
    with OutputLock(out):
        with OutputLock(out):  # the verb holds it for the run, the writer takes it again
            assert (tmp_path / ".result.jsonl.llmguard-lock").exists()
        assert (tmp_path / ".result.jsonl.llmguard-lock").exists()  # still held by the outer user
        other = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from llmguard.io.output_safety import OutputLock;"
                                f"OutputLock(Path({str(out)!r})).acquire()"], capture_output=True, text=True, env=os.environ)
        assert other.returncode != 0 and "another llmguard run is writing" in other.stderr
    assert not (tmp_path / ".result.jsonl.llmguard-lock").exists()
    with pytest.raises(ResourceError, match="another llmguard run"):
        import fcntl

        fd = os.open(tmp_path / ".result.jsonl.llmguard-lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            OutputLock(out).acquire()
        finally:
            os.close(fd)


def test_stale_temporaries_of_dead_runs_only(tmp_path: Path) -> None:
    out = tmp_path / "out"
    dead = tmp_path / ".out.llmguard-tmp-999999999"
    dead.mkdir()
    alive = tmp_path / f".out.llmguard-tmp-{os.getppid()}"  # a live process that is not us
    alive.write_text("another run's")
    other = tmp_path / ".other.llmguard-tmp-999999999"
    other.write_text("another output's")
    assert remove_stale_temps(out) == [dead]
    assert alive.exists() and other.exists()
    assert remove_stale_temps(out, lock_held=True) == [alive]  # holding OUT's lock, no one else writes it
    assert other.exists()


def test_output_overlap_rules(tmp_path: Path) -> None:
    data = tmp_path / "prompts.jsonl"
    data.write_text("{}\n")
    model = tmp_path / "model"
    model.mkdir()
    (tmp_path / "link").symlink_to(data)
    os.link(data, tmp_path / "hard")
    for out in (data, tmp_path / "link", tmp_path / "hard"):
        with pytest.raises(UsageError, match="refusing to overwrite"):
            check_output(out, [data], force=True)
    with pytest.raises(UsageError, match="into the input directory"):
        check_output(model / "x", [model], force=True, kind="dir")
    with pytest.raises(UsageError, match="holds the input"):
        check_output(tmp_path, [data], force=True, kind="dir")
    check_output(tmp_path / "next-to-it.jsonl", [data])  # beside a data file is fine


def test_adapter_recorded_for_another_base_warns(testbed, tmp_path: Path) -> None:
    root = Path(testbed.root)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text((root / "data" / "harmful_test.jsonl").read_text().splitlines()[0] + "\n")
    code, _stdout, stderr = invoke(["eval", "safety", "-m", str(root / "base"), "-a", str(root / "finetuned-lora"), "-p", str(prompts),
                                    "--max-new-tokens", "2", "--device", "cpu", "--json"])
    assert code == 0, stderr
    assert "warning:" in stderr and "base_model_name_or_path" in stderr and "aligned-sft" in stderr
    code, _stdout, stderr = invoke(["eval", "safety", "-m", str(root / "aligned-sft"), "-a", str(root / "finetuned-lora"), "-p", str(prompts),
                                    "--max-new-tokens", "2", "--device", "cpu", "--json"])
    assert code == 0 and "warning:" not in stderr, stderr
