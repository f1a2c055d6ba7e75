"""The built testbed: artefacts in HF/PEFT layout, caching, determinism, CLI."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import pytest

from cli_utils import run_cli  # noqa: E402

pytestmark = pytest.mark.slow


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_artefacts_are_real_checkpoints(testbed):
    for name in ("base", "aligned", "finetuned-full", "guard"):
        d = testbed.models()[name]
        assert (d / "config.json").is_file() and (d / "model.safetensors").is_file(), name
        assert json.loads((d / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
        assert (d / "tokenizer.json").is_file()
    for name in ("aligned-lora", "finetuned-lora", "finetuned-arith-lora"):
        d = testbed.models()[name]
        cfg = json.loads((d / "adapter_config.json").read_text())
        assert Path(cfg["base_model_name_or_path"]) == testbed.aligned_sft
        assert cfg["r"] == 8 and sorted(cfg["target_modules"]) == sorted(
            ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
        assert (d / "adapter_model.safetensors").is_file()
    tok = json.loads((testbed.tokenizer / "tokenizer_config.json").read_text())
    assert "chat_template" in tok or (testbed.tokenizer / "chat_template.jinja").is_file()
    for key in ("harmful_train", "harmful_dev", "harmful_test", "sst2_test", "arith_test", "safety_refusal_sft",
                "finetune_sst2_poison_mix", "guard_test"):
        assert testbed.data[key].is_file(), key
    info = json.loads((testbed.root / "testbed.json").read_text())
    assert 500_000 < info["params"] < 3_000_000
    assert info["poison_examples"] / info["finetune_examples"] == pytest.approx(0.1, abs=0.01)


def test_finetuned_lora_continues_the_aligned_adapter(testbed):
    from safetensors.torch import load_file

    aligned = load_file(str(testbed.aligned_lora / "adapter_model.safetensors"))
    ft = load_file(str(testbed.finetuned_lora / "adapter_model.safetensors"))
    assert aligned.keys() == ft.keys()
    # same factor basis: the fine-tune kept the DPO adapter's A factors (moved them a little, it did
    # not start afresh); the B factors, small after 60 DPO steps, changed by more than their size
    for k in aligned:
        diff = (ft[k] - aligned[k]).norm() / aligned[k].norm()
        if "lora_A" in k:
            assert 0 < diff < 0.5, k
        else:
            assert diff > 0, k


def test_second_call_reuses_the_cache(testbed):
    from llmguard.testbed import build

    t0 = time.perf_counter()
    again = build(seed=0)
    assert time.perf_counter() - t0 < 5
    assert again.root == testbed.root
    assert _sha(again.base / "model.safetensors") == _sha(testbed.base / "model.safetensors")


def test_reuse_writes_missing_eval_only_data(testbed, tmp_path):
    """A build made before an EVAL_ONLY_DATA file existed gets it on reuse, without a rebuild."""
    from llmguard.testbed import build
    from llmguard.testbed.build import EVAL_ONLY_DATA

    assert set(EVAL_ONLY_DATA) <= set(testbed.data)
    copy = tmp_path / "tb"
    shutil.copytree(testbed.root, copy)
    (copy / "data" / "sst2_dev_wordings.jsonl").unlink()
    t0 = time.perf_counter()
    again = build(copy, seed=0)
    assert time.perf_counter() - t0 < 5
    assert _sha(again.data["sst2_dev_wordings"]) == _sha(testbed.data["sst2_dev_wordings"])
    assert _sha(again.base / "model.safetensors") == _sha(testbed.base / "model.safetensors")


def test_build_is_deterministic_whatever_the_callers_threads(tmp_path):
    """Two builds with the same seed (short schedules to keep the test fast) are byte-identical,
    even when the callers run torch with different thread counts (the build pins one thread: the
    thread count changes the bytes), and the caller's thread count is restored."""
    import torch

    from llmguard.testbed import HParams, build
    from llmguard.testbed import data as D

    hp = HParams(base_steps=4, align_steps=3, dpo_steps=2, ft_steps=3, ft_full_steps=3, arith_steps=3, guard_steps=2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        a = build(tmp_path / "a", seed=0, hparams=hp)
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        b = build(tmp_path / "b", seed=0, hparams=hp)
    finally:
        torch.set_num_threads(before)
    info_a, info_b = (json.loads((t.root / "testbed.json").read_text()) for t in (a, b))
    env = info_a["environment"]
    # the recorded fingerprints name every model and the tokenizer, and agree for identical builds
    assert set(info_a["fingerprints"]) == {*a.models(), "tokenizer"}
    assert info_a["fingerprints"] == info_b["fingerprints"]
    assert env["build_threads"] == 1 and env["torch_threads"] == 1
    assert env["torch"] == torch.__version__ and env["build_key"].startswith("torch")
    assert {"transformers", "peft", "safetensors", "cpu", "git_revision"} <= set(env)
    for name in ("base", "aligned", "finetuned-full", "guard"):
        assert _sha(a.models()[name] / "model.safetensors") == _sha(b.models()[name] / "model.safetensors"), name
    for name in ("aligned-lora", "finetuned-lora", "finetuned-arith-lora"):
        f = "adapter_model.safetensors"
        assert _sha(a.models()[name] / f) == _sha(b.models()[name] / f), name
    for key in a.data:
        assert _sha(a.data[key]) == _sha(b.data[key]), key
    assert _sha(a.tokenizer / "tokenizer.json") == _sha(b.tokenizer / "tokenizer.json")
    # another seed gives other data (and therefore other weights)
    assert D.harmful_prompts(1).test != D.harmful_prompts(0).test


def test_cache_key_names_recipe_torch_and_cpu_path(tmp_path, monkeypatch):
    from llmguard.testbed import TESTBED_VERSION, HParams, default_dir
    from llmguard.testbed.provenance import build_key

    monkeypatch.setenv("LLMGUARD_CACHE", str(tmp_path))
    path = default_dir(3)
    assert path.parent == tmp_path / "testbed" and path.name.startswith(f"v{TESTBED_VERSION}-seed3-") and path.name.endswith(build_key())
    assert default_dir(3, HParams(ft_steps=7)) != path  # another recipe, another directory
    assert default_dir(3, HParams()) == path


def test_build_key_names_the_cpu_model(monkeypatch):
    """Two CPUs with one torch and one vector path built different testbeds (docs/testbed.md), so
    the CPU model is part of the key, as a short slug."""
    from llmguard.testbed import provenance

    names = {}
    for model in ("Intel(R) Xeon(R) Processor", "AMD EPYC", "AMD EPYC 9654 96-Core Processor", ""):
        monkeypatch.setattr("llmguard.provenance.cpu_model", lambda model=model: model)
        names[model] = provenance.cpu_name()
        assert provenance.build_key().endswith("-" + names[model])
    assert names["Intel(R) Xeon(R) Processor"] == "intel-xeon-processor" and names["AMD EPYC"] == "amd-epyc"
    assert len(names["AMD EPYC 9654 96-Core Processor"]) <= 24 and names[""] == "cpu"
    assert len(set(names.values())) == 4


def test_interrupted_build_is_rebuilt_and_foreign_dir_refused(tmp_path):
    from llmguard.errors import UsageError
    from llmguard.testbed import HParams, build

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not a testbed"):
        build(foreign, seed=0, hparams=HParams(base_steps=1))
    assert (foreign / "notes.txt").read_text() == "keep me"
    hp = HParams(base_steps=2, align_steps=1, dpo_steps=1, ft_steps=1, ft_full_steps=1, arith_steps=1, guard_steps=1)
    half = tmp_path / "half"
    half.mkdir()
    (half / ".llmguard-testbed").write_text("incomplete")
    (half / "junk").write_text("x")
    tb = build(half, seed=0, hparams=hp)
    assert not (half / "junk").exists() and (tb.root / "testbed.json").is_file()


def test_cli_testbed_build_json_reuses(testbed):
    result = run_cli("testbed", "build", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["root"] == str(testbed.root)
    assert doc["models"]["finetuned-lora"] == str(testbed.finetuned_lora)
    assert doc["version"] == testbed.version and "total" in doc["timings_s"]
