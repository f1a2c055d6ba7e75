"""Hypothesis fuzzing of every parser llmguard owns: each either accepts its input (and then the
result satisfies the parser's promises) or raises one of llmguard's errors with a one-line message,
never another exception. The shapes that once broke a parser are kept as explicit examples.

Budgeted for CI: a few hundred examples each, no deadline (a loaded machine), all in-memory or in
one temporary directory per example.
"""

from __future__ import annotations

import json
import math
import struct
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from llmguard.errors import InvalidInputError, LLMGuardError, UsageError

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

DTYPES = ["F32", "F16", "BF16", "I32", "I64", "U8", "BOOL", "F64", "F99", "", None, 3]
json_scalars = st.none() | st.booleans() | st.integers(-3, 2**40) | st.floats(allow_nan=True) | st.text(max_size=12)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=10)


def _one_line(err: LLMGuardError) -> None:
    assert err.message.strip()
    assert "Traceback" not in err.message


# ----------------------------------------------------------------------------- safetensors header

entries = st.fixed_dictionaries({
    "dtype": st.sampled_from(DTYPES),
    "shape": st.one_of(st.lists(st.integers(-1, 6), max_size=3), json_scalars),
    "data_offsets": st.one_of(st.lists(st.integers(-2, 400), min_size=0, max_size=3), json_scalars),
})


@FUZZ
@given(header=st.dictionaries(st.text(min_size=1, max_size=6), st.one_of(entries, json_values), max_size=5),
       data_len=st.integers(0, 400), header_len_delta=st.sampled_from([0, 0, 0, -1, 7, 10**9]), garbage=st.booleans())
@example(header={"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
         data_len=8, header_len_delta=0, garbage=False)  # two tensors sharing bytes: once accepted
@example(header={"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}, "b": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]}},
         data_len=12, header_len_delta=0, garbage=False)  # partial overlap
def test_safetensors_header(header, data_len, header_len_delta, garbage) -> None:
    from llmguard.io.safetensors_file import SafetensorsFile

    blob = b"\xff\xfe{" if garbage else json.dumps(header).encode()
    raw = struct.pack("<Q", max(0, len(blob) + header_len_delta)) + blob + bytes(data_len)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.safetensors"
        path.write_bytes(raw)
        try:
            parsed = SafetensorsFile(path)
        except InvalidInputError as err:
            _one_line(err)
            return
        size = len(raw)
        spans = sorted((t.start, t.start + t.nbytes) for t in parsed.tensors.values() if t.nbytes)
        for (b0, e0), (b1, _e1) in zip(spans, spans[1:]):
            assert b1 >= e0, "overlapping tensors accepted"
        for t in parsed.tensors.values():
            assert 0 <= t.start and t.start + t.nbytes <= size
            assert t.nbytes == math.prod(t.shape) * {"F32": 4, "F16": 2, "BF16": 2, "I32": 4, "I64": 8, "U8": 1, "BOOL": 1, "F64": 8}[t.dtype]
            parsed.read(t.name)  # every accepted tensor is readable
        parsed.close()


# ----------------------------------------------------------------------------- index + confinement

@FUZZ
@given(weight_map=st.one_of(json_values, st.dictionaries(st.text(min_size=1, max_size=5), st.one_of(
    st.sampled_from(["model-1.safetensors", "../outside.safetensors", "/etc/passwd", "sub/../model-1.safetensors", "link.safetensors",
                     "missing.safetensors", "", "."]), json_scalars), max_size=4)),
       wrap=st.booleans())
@example(weight_map={"w": "../outside.safetensors"}, wrap=True)
@example(weight_map={"w": "link.safetensors"}, wrap=True)  # a symlink out of the directory
@example(weight_map={"": "\x00"}, wrap=True)  # a NUL byte in a shard name: once exit 1 (ValueError)
def test_index_weight_map_is_confined(weight_map, wrap) -> None:
    import torch
    from safetensors.torch import save_file

    from llmguard.io.checkpoint import open_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "model"
        root.mkdir()
        save_file({"w": torch.zeros(2)}, root / "model-1.safetensors")
        save_file({"w": torch.zeros(2)}, Path(tmp) / "outside.safetensors")
        (root / "link.safetensors").symlink_to(Path(tmp) / "outside.safetensors")
        (root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map} if wrap else weight_map))
        try:
            ckpt = open_checkpoint(root)
        except InvalidInputError as err:
            _one_line(err)
            return
        for file in ckpt.weight_files:
            assert root.resolve() in file.resolve().parents, f"{file} is outside the model directory"
        ckpt.close()


# ----------------------------------------------------------------------------- adapter config

adapter_configs = st.one_of(
    json_values,
    st.fixed_dictionaries({}, optional={
        "r": json_scalars | st.integers(-2, 64), "lora_alpha": json_scalars | st.integers(-2, 64), "rank_pattern": json_values,
        "alpha_pattern": json_values, "use_rslora": json_scalars, "fan_in_fan_out": json_scalars, "peft_type": json_scalars,
        "base_model_name_or_path": json_scalars, "target_modules": json_values, "use_dora": json_scalars,
    }),
)


@FUZZ
@given(config=adapter_configs)
@example(config={"r": "eight"})
@example(config={"r": None})
@example(config={"r": 0})
@example(config={"lora_alpha": "16"})
@example(config={"rank_pattern": ["q_proj"]})
@example(config=[{"r": 8}])
@example(config={"rank_pattern": {"(": 4}})
def test_adapter_config(config, tmp_path_factory) -> None:
    import torch
    from safetensors.torch import save_file

    from llmguard.io.lora import LoraAdapter

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "adapter_config.json").write_text(json.dumps(config))
        save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 8),
                   "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(8, 4)},
                  root / "adapter_model.safetensors")
        try:
            adapter = LoraAdapter(root)
        except InvalidInputError as err:
            _one_line(err)
            return
        for module in adapter.modules.values():
            assert module.rank > 0 and math.isfinite(module.scaling)


# ----------------------------------------------------------------------------- data records

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(st.one_of(json_values.map(json.dumps), st.text(max_size=30), st.binary(max_size=20)), max_size=6),
       suffix=st.sampled_from([".jsonl", ".json", ".csv", ".tsv", ".txt", ".parquet"]))
@example(lines=[b'{"prompt": "caf\xe9"}'], suffix=".jsonl")  # not UTF-8: once exit 1 with no line
@example(lines=[b"PAR1\x00\x01garbage"], suffix=".parquet")  # once a datasets traceback in the log
def test_records_reader(lines, suffix) -> None:
    from llmguard.io.records import read_records

    raw = b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"data{suffix}"
        path.write_bytes(raw)
        try:
            records = read_records(path, required=["prompt"], what="prompts")
        except InvalidInputError as err:
            _one_line(err)
            assert str(path) in err.message or path.name in err.message
            return
        assert records and all(isinstance(r, dict) and "prompt" in r for r in records)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(st.one_of(json_values.map(json.dumps), st.text(max_size=30), st.binary(max_size=20)), max_size=6),
       skip_bad=st.booleans())
def test_judge_items_reader(lines, skip_bad) -> None:
    from llmguard.eval.items import FieldMap, read_items

    raw = b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "items.jsonl"
        path.write_bytes(raw)
        try:
            items = read_items(path, FieldMap(), skip_bad=skip_bad)
        except InvalidInputError as err:
            _one_line(err)
            return
        assert items and len({i.id for i in items if i.error is None}) == len([i for i in items if i.error is None])


# ----------------------------------------------------------------------------- judge outputs

SUBS = [("CONT", "Context Awareness"), ("COND", "Relevance to Patient's Condition"), ("CONC", None)]
judge_text = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(["Context Awareness (CONT):", "Analysis: fine.", "Score: 4", "Score: 9", "Score: -1", "Score: 4/5", "Score: nan",
                              "Score: 1e309", "CONC:", "Evaluation of Response 1:", "Evaluation of Response 2:", "Score:", "\n", "between 1 and 5"]),
             max_size=14).map("\n".join),
)


@settings(max_examples=300, deadline=None)
@given(text=judge_text, truncated=st.booleans())
@example(text="Score: 1e309\nScore: nan", truncated=False)
def test_judge_output_parsers(text, truncated) -> None:
    from llmguard.eval.parsing import parse_marked_score, parse_pairwise, parse_sub_aspects

    for result in (parse_sub_aspects(text, SUBS, (0, 5), truncated=truncated), parse_marked_score(text, "Score", (1, 5), truncated=truncated),
                   *parse_pairwise(text, SUBS, (0, 5), truncated=truncated).values()):
        assert isinstance(result.status, str)
        for value in (result.scores or {}).values():
            assert value is None or (math.isfinite(value) and 0 <= value <= 5)


# ----------------------------------------------------------------------------- watermark configuration

@settings(max_examples=200, deadline=None)
@given(scheme=st.sampled_from(["kgw", "unigram", "KGW", "nope"]), profile=st.sampled_from([None, "hf", "kirchenbauer", "markllm", "fast", "zhao", "x"]),
       seeding=st.sampled_from([None, "lefthash", "selfhash", "simple_1", "minhash", "skipgram", "bogus"]),
       gamma=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)), delta=st.one_of(st.none(), st.floats(allow_nan=True)),
       key=st.one_of(st.none(), st.integers(-2**70, 2**70)), width=st.one_of(st.none(), st.integers(-3, 12)),
       vocab=st.integers(1, 5000))
def test_watermark_configuration(scheme, profile, seeding, gamma, delta, key, width, vocab) -> None:
    from llmguard.watermark.options import DetectOptions
    from llmguard.watermark.schemes import build_scheme

    try:
        options = DetectOptions(source="-", scheme=scheme, profile=profile, seeding=seeding, gamma=gamma, delta=delta, key=key,
                                context_width=width, vocab_size=str(vocab))
        built = build_scheme(options.scheme, options.profile, options.scheme_params(vocab))
    except (UsageError, InvalidInputError) as err:
        _one_line(err)
        return
    config = built.config()
    json.dumps(config, allow_nan=False)  # what is recorded in every generated record and manifest is strict JSON
    g = config.get("gamma")
    assert g is None or 0 < g < 1
