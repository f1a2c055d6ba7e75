"""``llmguard.io.records``: one reader for JSONL, JSON, CSV/TSV and Parquet records."""

from __future__ import annotations

import json

import pytest

from llmguard.errors import InvalidInputError
from llmguard.io.records import iter_rows, read_records


def test_formats_give_the_same_records(tmp_path):
    rows = [{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": "2"}]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    (tmp_path / "r.json").write_text(json.dumps({"items": rows}))
    (tmp_path / "r.csv").write_text("prompt,answer\na,1\nb,2\n")
    (tmp_path / "r.tsv").write_text("prompt\tanswer\na\t1\nb\t2\n")
    import datasets

    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "r.parquet"))
    for name in ("r.jsonl", "r.json", "r.csv", "r.tsv", "r.parquet"):
        assert read_records(tmp_path / name, required=["prompt", "answer"]) == rows, name
    assert [r.where for r in iter_rows(tmp_path / "r.json")] == [f"{tmp_path / 'r.json'}: record {i}" for i in (1, 2)]
    assert [r.number for r in iter_rows(tmp_path / "r.csv")] == [2, 3]


def test_a_bad_line_is_a_row_error_or_one_line_exit_3(tmp_path):
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"prompt": "a"}\n{"prompt": \n[1]\n')
    rows = list(iter_rows(bad))
    assert rows[1].error and rows[1].error.startswith("not valid JSON") and rows[1].where.endswith("b.jsonl:2")
    with pytest.raises(InvalidInputError, match=r"b.jsonl:2: not valid JSON") as info:
        read_records(bad)
    assert info.value.exit_code == 3
    bad.write_text('{"prompt": "a"}\n[1]\n')
    with pytest.raises(InvalidInputError, match=r"b.jsonl:2: expected a JSON object, got list"):
        read_records(bad)
    bad.write_text('{"prompt": "  "}\n')
    with pytest.raises(InvalidInputError, match=r"field 'prompt' is empty"):
        read_records(bad, required=["prompt"])
    (tmp_path / "latin1.jsonl").write_bytes('{"prompt": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(InvalidInputError, match="not UTF-8"):
        read_records(tmp_path / "latin1.jsonl")
