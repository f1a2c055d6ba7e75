"""A tokenizer-only ``watermark detect`` starts without torch or transformers, with the same ids."""

from __future__ import annotations

import json
import subprocess
import sys

from llmguard.watermark.light_tokenizer import LightTokenizer, load_light_tokenizer

TEXTS = ["babe bace bada", "  bade, babe!  bace\nbada <s> unknownword", ""]


def _same_as_transformers(path) -> None:
    from transformers import AutoTokenizer

    light, full = load_light_tokenizer(path), AutoTokenizer.from_pretrained(str(path))
    assert isinstance(light, LightTokenizer)
    assert len(light) == len(full) and light.bos_token_id == full.bos_token_id
    for text in TEXTS:
        a = light(text, add_special_tokens=False, return_offsets_mapping=True)
        b = full(text, add_special_tokens=False, return_offsets_mapping=True)
        assert a["input_ids"] == list(b["input_ids"]) and a["offset_mapping"] == [tuple(o) for o in b["offset_mapping"]]
        assert [light.decode([t]) for t in a["input_ids"]] == [full.decode([t]) for t in a["input_ids"]]


def test_light_tokenizer_matches_transformers(word_tokenizer_dir, testbed) -> None:
    _same_as_transformers(word_tokenizer_dir)
    _same_as_transformers(testbed.tokenizer)  # the Llama testbed's BPE tokenizer with extra special tokens


def test_model_specific_tokenizers_go_through_transformers(word_tokenizer_dir, tmp_path) -> None:
    cfg = json.loads((word_tokenizer_dir / "tokenizer_config.json").read_text())
    other = tmp_path / "tok"
    other.mkdir()
    (other / "tokenizer.json").write_text((word_tokenizer_dir / "tokenizer.json").read_text())
    (other / "tokenizer_config.json").write_text(json.dumps({**cfg, "tokenizer_class": "LlamaTokenizer"}))
    assert load_light_tokenizer(other) is None
    (other / "tokenizer_config.json").write_text(json.dumps({**cfg, "extra_special_tokens": ["<not-in-vocab>"]}))
    assert load_light_tokenizer(other) is None


def test_detect_with_a_generic_tokenizer_imports_no_torch(word_tokenizer_dir, tmp_path) -> None:
    texts = tmp_path / "t.jsonl"
    texts.write_text(json.dumps({"text": "babe bace bada " * 20}) + "\n")
    code = ("import sys; from llmguard.cli.app import app\n"
            "try:\n    app(['watermark', 'detect', sys.argv[1], '--tokenizer', sys.argv[2], '--profile', 'hf', '--json'])\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "print('HEAVY', [m for m in ('torch', 'transformers') if m in sys.modules], file=sys.stderr)")
    runs = [subprocess.run([sys.executable, "-c", code, str(texts), str(word_tokenizer_dir)], capture_output=True, text=True)
            for _ in range(2)]  # the first may import torch once: the native library's self-test
    last = runs[-1]
    assert last.returncode == 0, last.stderr
    assert "HEAVY []" in last.stderr, last.stderr
    assert json.loads(last.stdout)["records"][0]["num_tokens"] == 60
