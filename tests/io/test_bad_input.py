"""Every malformed input gives one error line naming the file/tensor, exit 3, and no output."""

from __future__ import annotations

import json
import shutil
import struct
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_utils import assert_one_line_error, no_partial_output, run_cli, run_cli_in_process  # noqa: E402


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _shard(model: Path) -> Path:
    return model / "model.safetensors"


def truncated(model: Path) -> tuple[str, ...]:
    data = _shard(model).read_bytes()
    _shard(model).write_bytes(data[: len(data) - 512])
    return ("truncated",)


def header_beyond(model: Path) -> tuple[str, ...]:
    data = bytearray(_shard(model).read_bytes())
    data[:8] = struct.pack("<Q", 10**12)
    _shard(model).write_bytes(bytes(data))
    return ("header length", "beyond the file")


def invalid_json(model: Path) -> tuple[str, ...]:
    data = bytearray(_shard(model).read_bytes())
    data[8:12] = b"{{{{"
    _shard(model).write_bytes(bytes(data))
    return ("invalid header JSON",)


def unknown_dtype(model: Path) -> tuple[str, ...]:
    data = _shard(model).read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = data[8 : 8 + n].replace(b'"F32"', b'"F99"', 1)
    _shard(model).write_bytes(data[:8] + header + data[8 + n :])
    return ("unknown dtype 'F99'", "tensor")


def _to_sharded(model: Path) -> dict:
    from safetensors.torch import load_file

    tensors = load_file(_shard(model))
    _shard(model).unlink()
    names = sorted(tensors)
    half = len(names) // 2
    save_file({k: tensors[k] for k in names[:half]}, model / "model-00001-of-00002.safetensors", metadata={"format": "pt"})
    save_file({k: tensors[k] for k in names[half:]}, model / "model-00002-of-00002.safetensors", metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: f"model-0000{1 if i < half else 2}-of-00002.safetensors" for i, k in enumerate(names)}}
    return index


def index_escape(model: Path) -> tuple[str, ...]:
    index = _to_sharded(model)
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../../etc/passwd"
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    return ("points outside the model directory", first)


def index_missing_tensor(model: Path) -> tuple[str, ...]:
    index = _to_sharded(model)
    index["weight_map"]["model.layers.9.mlp.up_proj.weight"] = "model-00001-of-00002.safetensors"
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    return ("missing tensor", "model.layers.9.mlp.up_proj.weight")


def pickle_file(model: Path) -> tuple[str, ...]:
    from safetensors.torch import load_file

    torch.save(load_file(_shard(model)), model / "pytorch_model.bin")
    _shard(model).unlink()
    return ("pytorch_model.bin", "--allow-pickle")


CASES: dict[str, Callable[[Path], tuple[str, ...]]] = {
    "truncated": truncated,
    "header-beyond-file": header_beyond,
    "invalid-json": invalid_json,
    "unknown-dtype": unknown_dtype,
    "index-escape": index_escape,
    "index-missing-tensor": index_missing_tensor,
    "pickle": pickle_file,
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_finetuned_checkpoint(models: dict[str, Path], tmp_path: Path, case: str) -> None:
    broken = _copy(models["finetuned"], tmp_path / "broken")
    needles = CASES[case](broken)
    out = tmp_path / "out"
    result = run_cli_in_process("realign", "resta", "-f", broken, "-a", models["aligned"], "-u", models["base"], "-o", out)
    assert_one_line_error(result, 3, *needles)
    assert no_partial_output(out)


def test_pickle_loads_with_allow_pickle(models: dict[str, Path], tmp_path: Path) -> None:
    model = _copy(models["finetuned"], tmp_path / "pickled")
    pickle_file(model)
    result = run_cli_in_process("inspect", model, "--allow-pickle", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["format"] == "pickle" and summary["tensors"] == 21


def test_malicious_pickle_is_refused_even_with_allow_pickle(tmp_path: Path) -> None:
    import pickle

    class Evil:
        def __reduce__(self):  # noqa: D105
            return (print, ("pwned",))

    model = tmp_path / "evil"
    model.mkdir()
    with open(model / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"w": Evil()}, handle)
    result = run_cli("inspect", model, "--allow-pickle")
    assert_one_line_error(result, 3, "weights_only=True")
    assert "pwned" not in result.stdout


def _poison_one_weight(model: Path, name: str = "model.layers.0.mlp.up_proj.weight") -> str:
    from safetensors.torch import load_file

    tensors = load_file(_shard(model))
    tensors[name][0, 0] = float("nan")
    save_file(tensors, _shard(model), metadata={"format": "pt"})
    return name


def test_nan_weight_in_an_input_is_refused_and_nothing_is_written(models: dict[str, Path], tmp_path: Path) -> None:
    broken = _copy(models["finetuned"], tmp_path / "broken")
    name = _poison_one_weight(broken)
    out = tmp_path / "out"
    result = run_cli("realign", "resta", "-f", broken, "-a", models["aligned"], "-u", models["base"], "-o", out)
    assert_one_line_error(result, 3, name, "NaN/Inf")
    assert no_partial_output(out)


def test_inspect_scan_counts_nonfinite_values(models: dict[str, Path], tmp_path: Path) -> None:
    clean = run_cli_in_process("inspect", models["finetuned"], "--scan", "--json")
    assert clean.returncode == 0, clean.stderr
    assert json.loads(clean.stdout)["scan"] == {"tensors_scanned": 21, "tensors_nonfinite": 0, "nonfinite_values": 0, "first_nonfinite": []}
    broken = _copy(models["finetuned"], tmp_path / "broken")
    name = _poison_one_weight(broken)
    result = run_cli("inspect", broken, "--scan", "--json")
    assert result.returncode == 3
    scan = json.loads(result.stdout)["scan"]
    assert scan["nonfinite_values"] == 1 and scan["first_nonfinite"] == [{"name": name, "nonfinite": 1}]
    assert name in result.stderr and "NaN/Inf" in result.stderr
    table = run_cli_in_process("inspect", broken, "--scan")
    assert table.returncode == 3 and "1 in 1 of 21 tensors" in table.stdout
