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


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_tensor_aborts_the_output(tmp_path: Path, bad: float) -> None:
    from llmguard.io.finite import NonFiniteError

    out = tmp_path / "out"
    value = torch.zeros(64, 64)
    value[3, 5] = bad
    with pytest.raises(NonFiniteError, match="t1: 1 NaN/Inf value"):
        with StreamingWriter(out, _plan(3)) as writer:
            writer.write("t0", torch.zeros(64, 64))
            writer.write("t1", value)
            writer.write("t2", torch.zeros(64, 64))
    assert list(tmp_path.iterdir()) == []


def test_overflow_to_the_planned_dtype_is_caught(tmp_path: Path) -> None:
    from llmguard.io.finite import NonFiniteError

    out = tmp_path / "out"
    with pytest.raises(NonFiniteError, match="F16"):
        with StreamingWriter(out, [TensorPlan("t", (2,), "F16")]) as writer:
            writer.write("t", torch.tensor([1.0, 1e6]))  # finite in float32, Inf once rounded to fp16
    assert list(tmp_path.iterdir()) == []


def test_count_nonfinite_all_float_dtypes() -> None:
    from llmguard.io.finite import count_nonfinite

    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        t = torch.ones(1000, dtype=dtype)
        t[7], t[9] = float("nan"), float("inf")
        assert count_nonfinite(t) == 2
    assert count_nonfinite(torch.arange(10)) == 0
    f8 = torch.tensor([1.0, float("nan")]).to(torch.float8_e5m2)
    assert count_nonfinite(f8) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_count_nonfinite_finds_a_single_bad_value_anywhere(dtype: torch.dtype) -> None:
    from llmguard.io.finite import count_nonfinite

    for position in range(0, 67):
        for bad in (float("nan"), float("inf"), float("-inf")):
            t = torch.randn(67).to(dtype)
            t[position] = bad
            assert count_nonfinite(t) == 1, (position, bad)
