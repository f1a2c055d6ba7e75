"""The per-tensor safetensors reader agrees with the safetensors library and rejects bad files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st
from safetensors.torch import load_file, save_file

from llmguard.errors import InvalidInputError
from llmguard.io.safetensors_file import SafetensorsFile


def test_reads_every_dtype_like_the_safetensors_library(tmp_path: Path) -> None:
    tensors = {
        "f32": torch.randn(3, 5),
        "bf16": torch.randn(7, 2).to(torch.bfloat16),
        "f16": torch.randn(4).to(torch.float16),
        "i64": torch.arange(6).reshape(2, 3),
        "u8": torch.arange(10, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
    }
    path = tmp_path / "x.safetensors"
    save_file(tensors, path, metadata={"format": "pt"})
    expected = load_file(path)
    reader = SafetensorsFile(path)
    assert set(reader.tensors) == set(tensors)
    assert reader.metadata == {"format": "pt"}
    for name, value in expected.items():
        got = reader.read(name)
        assert got.dtype == value.dtype and got.shape == value.shape
        assert torch.equal(got, value), name


def _write_raw(path: Path, header: bytes, data: bytes = b"", length: int | None = None) -> Path:
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + data)
    return path


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    save_file({"w": torch.randn(64, 64)}, path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(InvalidInputError, match=r"truncated: tensor 'w'"):
        SafetensorsFile(path)


def test_header_length_beyond_file(tmp_path: Path) -> None:
    path = _write_raw(tmp_path / "h.safetensors", b"{}", length=10_000)
    with pytest.raises(InvalidInputError, match="header length 10000 is beyond the file"):
        SafetensorsFile(path)


def test_invalid_header_json(tmp_path: Path) -> None:
    path = _write_raw(tmp_path / "j.safetensors", b"{not json")
    with pytest.raises(InvalidInputError, match="invalid header JSON"):
        SafetensorsFile(path)


def test_unknown_dtype(tmp_path: Path) -> None:
    header = json.dumps({"w": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 2]}}).encode()
    path = _write_raw(tmp_path / "d.safetensors", header, b"\0\0")
    with pytest.raises(InvalidInputError, match=r"tensor 'w': unknown dtype 'Q7'"):
        SafetensorsFile(path)


def test_offsets_that_disagree_with_shape(tmp_path: Path) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode()
    path = _write_raw(tmp_path / "o.safetensors", header, b"\0" * 16)
    with pytest.raises(InvalidInputError, match="needs 16"):
        SafetensorsFile(path)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=256))
def test_header_parser_never_crashes_on_garbage(tmp_path_factory: pytest.TempPathFactory, blob: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "g.safetensors"
    path.write_bytes(blob)
    try:
        SafetensorsFile(path)
    except InvalidInputError:
        pass


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.fixed_dictionaries(
            {
                "dtype": st.sampled_from(["F32", "BF16", "I8", "X", 3]),
                "shape": st.lists(st.integers(min_value=-2, max_value=4), max_size=3),
                "data_offsets": st.lists(st.integers(min_value=-1, max_value=64), min_size=0, max_size=3),
            }
        ),
        max_size=3,
    ),
    st.integers(min_value=0, max_value=64),
)
def test_structured_headers_parse_or_fail_cleanly(tmp_path_factory: pytest.TempPathFactory, header: dict, data_len: int) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "s.safetensors"
    _write_raw(path, json.dumps(header).encode(), b"\0" * data_len)
    try:
        reader = SafetensorsFile(path)
    except InvalidInputError:
        return
    for name in reader.tensors:
        reader.read(name)
