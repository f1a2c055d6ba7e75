"""The JSONL/JSON/text reader never fails with anything but a one-line InvalidInputError naming the place."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmguard.errors import InvalidInputError, UsageError
from llmguard.watermark.data import parse_records

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(["text", "ids", "prompt", "id", "x"]), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(st.one_of(json_values.map(json.dumps), st.text(max_size=40)), max_size=8),
       skip=st.booleans(), ids=st.booleans(), suffix=st.sampled_from(["x.jsonl", "x.json", "x.txt", "-"]))
def test_reader_fuzz(lines, skip, ids, suffix):
    content = "\n".join(lines)
    kwargs = {"ids_field": "ids"} if ids else {"text_field": "text"}
    try:
        res = parse_records(content, suffix, prompt_field="prompt", skip_bad=skip, **kwargs)
    except InvalidInputError as err:
        assert not skip or "JSON" in err.message or "array" in err.message
        assert "\n" not in err.message
        name = "<stdin>" if suffix == "-" else suffix
        assert err.message.startswith(name)
        return
    except UsageError as err:  # --ids-field with plain text input
        assert ids and "\n" not in err.message
        return
    for rec in res.records:
        if rec.ids is not None:
            assert all(isinstance(i, int) and i >= 0 for i in rec.ids) and rec.ids
        else:
            assert isinstance(rec.text, str)
    if res.fmt == "jsonl":
        assert len(res.records) + len(res.skipped) <= len([ln for ln in content.splitlines() if ln.strip()])


@given(st.binary(max_size=200))
@settings(max_examples=200, deadline=None)
def test_reader_bytes(tmp_path_factory, data):
    from llmguard.watermark.data import read_texts

    p = tmp_path_factory.mktemp("fz") / "in.jsonl"
    p.write_bytes(data)
    try:
        read_texts(str(p), text_field="text", skip_bad=True)
    except InvalidInputError as err:
        assert "\n" not in err.message and str(p) in err.message


def test_line_numbers_are_reported():
    content = '{"text": "a b"}\n\n{"text": 3}\n'
    try:
        parse_records(content, "f.jsonl")
    except InvalidInputError as err:
        assert err.message.startswith("f.jsonl:3:") and "'text'" in err.message
    else:
        raise AssertionError("expected an error")
    res = parse_records(content, "f.jsonl", skip_bad=True)
    assert len(res.records) == 1 and res.skipped[0].startswith("f.jsonl:3:")
