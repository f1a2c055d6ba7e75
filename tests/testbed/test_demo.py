"""``llmguard demo``: the step registry and an end-to-end run of the eval-safety step."""

from __future__ import annotations

import json

import pytest

from cli_utils import run_cli  # noqa: E402

pytestmark = pytest.mark.slow


def test_registry_runs_registered_steps_and_reports_failures(testbed, tmp_path):
    from llmguard.testbed import demo

    @demo.register_step("zz-test-ok", order=999)
    def _ok(ctx):
        assert ctx.testbed.root == testbed.root and ctx.work == tmp_path
        return [demo.DemoRow(step="probe", model="aligned", harmful_rate=0.0)]

    @demo.register_step("zz-test-broken", order=1000)
    def _broken(ctx):
        ctx.cli("eval", "safety", "--model", tmp_path / "missing", "--prompts", testbed.data["harmful_test"])
        return []

    @demo.register_step("zz-test-unavailable", order=1001, available=lambda: False)
    def _never(ctx):
        raise AssertionError("must not run")

    try:
        res = demo.run_demo(work=tmp_path, only=["zz-test-ok", "zz-test-broken", "zz-test-unavailable"])
    finally:
        for name in ("zz-test-ok", "zz-test-broken", "zz-test-unavailable"):
            demo.STEPS.pop(name, None)
    assert [r.step for r in res.rows] == ["probe", "zz-test-broken"]
    assert res.rows[0].ok and not res.rows[1].ok and "exited 3" in res.rows[1].note
    assert res.skipped == {"zz-test-unavailable": "verb not available in this build"}
    assert not res.ok


def test_verb_exists():
    from llmguard.testbed.demo import verb_exists

    assert verb_exists("eval", "safety") and verb_exists("demo")
    assert not verb_exists("eval", "no-such-verb")


def test_demo_cli_eval_safety_step(testbed, tmp_path):
    result = run_cli("demo", "--steps", "eval-safety", "--out", tmp_path, "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["ok"] and doc["testbed"] == str(testbed.root)
    rows = {r["model"]: r for r in doc["rows"]}
    assert rows["base"]["harmful_rate"] >= 0.6 and rows["aligned"]["harmful_rate"] <= 0.1
    assert rows["finetuned-lora"]["harmful_rate"] >= 0.4 and rows["finetuned-lora"]["task_accuracy"] >= 0.8
    assert rows["finetuned-arith-lora"]["task"] == "arith"


def test_demo_reruns_into_its_own_work_directory(testbed, tmp_path):
    """A second demo over the same --out rewrites its own work files (the output-safety path
    refuses an existing --records file without --force; the demo passes it)."""
    for _ in range(2):
        result = run_cli("demo", "--steps", "judge-guard", "--out", tmp_path, "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["ok"]


def test_demo_list_and_unknown_step():
    listed = run_cli("demo", "--list")
    assert listed.returncode == 0 and "eval-safety" in listed.stdout and "realign-resta" in listed.stdout
    bad = run_cli("demo", "--steps", "nope")
    assert bad.returncode == 2 and "unknown step" in bad.stderr


def test_in_process_second_process_and_isolated_runs_give_the_same_rows(testbed, tmp_path):
    """The demo runs its verbs in-process (one torch import) and, on two cores, the steps that need
    no Llama testbed in a second process; ``--isolated`` runs every verb as its own
    ``python -m llmguard`` subprocess, as a user would. The rows are the same, byte for byte."""
    from dataclasses import asdict

    from llmguard.cli import demo_runner as demo

    class Logs:
        lines: list[str] = []

        def stage(self, name, total=None): pass
        def advance(self, n=1): pass
        def note(self, text): pass
        def log(self, message): self.lines.append(message)
        def close(self): pass

    def rows(res, work):
        return [{k: (v.replace(str(work), "<work>") if isinstance(v, str) else v) for k, v in asdict(r).items()}
                for r in res.rows]

    fast = demo.run_demo(work=tmp_path / "fast", only=["resta", "hdc"], jobs=2, progress=Logs())
    isolated = demo.run_demo(work=tmp_path / "slow", only=["resta"], jobs=1, isolated=True)  # 3 subprocesses
    one = demo.run_demo(work=tmp_path / "slow", only=["hdc"], jobs=1)  # one process, in-process
    assert fast.ok and isolated.ok and one.ok, [r.note for r in fast.rows + isolated.rows + one.rows if not r.ok]
    assert rows(fast, tmp_path / "fast") == rows(isolated, tmp_path / "slow") + rows(one, tmp_path / "slow")
    assert [s.name for s in fast.steps] == ["realign-resta", "judge-hdc"]  # the registry's order, each step once
    for name in ("realign-resta", "judge-hdc"):  # run by one of the two processes (whichever took it first)
        assert sum(line.startswith("ok [") and f"] {name} " in line for line in Logs.lines) == 1, Logs.lines
    assert not (tmp_path / "fast" / demo.SHARED_DIR).exists()  # the run's claims are cleaned up
    assert all(s.cpu_seconds is not None and s.cpu_seconds > 0 for s in fast.steps + isolated.steps + one.steps)


def test_two_process_schedule_starts_with_what_each_can_run_longest_first():
    from llmguard.cli.demo_runner import load_steps, schedule

    steps = load_steps()
    units = [u for step in steps.values() for u in step.units()]
    main, second = schedule(steps, units, testbed_first=True), schedule(steps, units, testbed_first=False)
    side = [u for u in units if not steps[u.step].needs_testbed]
    assert {u.step for u in side} == {"judge-hdc", "watermark-radioactivity", "watermark-attacks"}
    assert second[:len(side)] == sorted(side, key=lambda u: -u.cost) and set(main[-len(side):]) == set(side)
    assert main[0].key == "realign-somf@finetuned-lora"  # the longest unit first
    assert sorted(u.key for u in main) == sorted(u.key for u in second) == sorted(u.key for u in units)
    assert len({u.key for u in units}) == len(units) == 18  # every step's parts are distinct units


def test_stored_result_key_covers_every_input_byte_and_flag(tmp_path, monkeypatch):
    """A stored demo result is reused only for the identical command: another flag value, one
    changed byte of an input file, or a changed file in an input directory gives another key."""
    from llmguard.cli import demo_cache

    monkeypatch.setenv("LLMGUARD_CACHE", str(tmp_path / "cache"))
    data, model = tmp_path / "prompts.jsonl", tmp_path / "student"
    data.write_text('{"prompt": "a"}\n')
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"\x00" * 64)
    args = ["watermark", "scrub", "--prompts", str(data), "--student", str(model), "--beta", "0.5", "-o", "<output>"]
    key = demo_cache.command_key(args)
    assert demo_cache.command_key(list(args)) == key
    assert demo_cache.command_key([a if a != "0.5" else "0.6" for a in args]) != key
    data.write_text('{"prompt": "b"}\n')
    assert demo_cache.command_key(args) != key
    data.write_text('{"prompt": "a"}\n')
    (model / "model.safetensors").write_bytes(b"\x00" * 63 + b"\x01")
    assert demo_cache.command_key(args) != key
    (model / "model.safetensors").write_bytes(b"\x00" * 64)
    assert demo_cache.command_key(args) == key
    out = tmp_path / "out"
    out.mkdir()
    (out / "result.txt").write_text("measured")
    assert demo_cache.load(key, tmp_path / "again") is None  # nothing stored yet
    demo_cache.store(key, {"z": 1.5}, out)
    assert demo_cache.load(key, tmp_path / "again") == {"z": 1.5}
    assert (tmp_path / "again" / "result.txt").read_text() == "measured"  # the output directory comes back
    assert demo_cache.load(demo_cache.command_key(args[:-2]), tmp_path / "other") is None
