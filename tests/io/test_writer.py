"""The streaming writer: exact layout, atomic rename, nothing left behind on failure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from llmguard.errors import UsageError
from llmguard.io.writer import StreamingWriter, TensorPlan, parse_size


def _plan(n: int, shape: tuple[int, ...] = (64, 64)) -> list[TensorPlan]:
    return [TensorPlan(f"t{i}", shape, "F32") for i in range(n)]


def test_shards_written_out_of_order_read_back_with_safetensors(tmp_path: Path) -> None:
    out = tmp_path / "out"
    values = {f"t{i}": torch.randn(64, 64) for i in range(5)}
    with StreamingWriter(out, _plan(5), max_shard_bytes=40_000) as writer:
        for name in reversed(list(values)):
            writer.write(name, values[name].to(torch.bfloat16).float())  # any dtype in, planned dtype out
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 5 * 64 * 64 * 4
    assert len(set(index["weight_map"].values())) == 3
    for name, file in index["weight_map"].items():
        with safe_open(out / file, "pt") as handle:
            assert handle.metadata() == {"format": "pt"}
            assert torch.equal(handle.get_tensor(name), values[name].to(torch.bfloat16).float())


def test_failure_midway_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with StreamingWriter(out, _plan(3)) as writer:
            writer.write("t0", torch.zeros(64, 64))
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_unwritten_tensor_fails_finalize_and_existing_output_survives(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious").write_text("keep")
    with pytest.raises(RuntimeError, match="never written"):
        with StreamingWriter(out, _plan(2), force=True) as writer:
            writer.write("t0", torch.zeros(64, 64))
    assert (out / "precious").read_text() == "keep"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_output_rules(tmp_path: Path) -> None:
    src = tmp_path / "model"
    src.mkdir()
    with pytest.raises(UsageError, match="into the input"):
        StreamingWriter(src / "derived", _plan(1), inputs=[src])
    with pytest.raises(UsageError, match="into the input"):
        StreamingWriter(src, _plan(1), inputs=[src], force=True)
    with pytest.raises(UsageError, match="already exists"):
        StreamingWriter(src, _plan(1))


@pytest.mark.parametrize("text,value", [("5GB", 5_000_000_000), ("500MB", 500_000_000), ("1GiB", 2**30), ("123", 123), (77, 77)])
def test_parse_size(text: str | int, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "five", "-1GB", "0", "3XB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_size(text)
