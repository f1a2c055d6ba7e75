"""Peak memory of a streamed realign does not grow with model size.

Three checkpoints of 48 tensors × 8 MB (384 MB each, 1.15 GB of inputs) are combined; the
engine's working set is about one tensor per input times the read-ahead depth plus the write
queue (< 100 MB). The run's peak RSS (from its manifest) must exceed a tiny model's run by far
less than one model, let alone all three.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_utils import run_cli  # noqa: E402

TENSOR = (1024, 2048)  # 8 MB in float32
COUNT = 48


def _checkpoint(path: Path, seed: int, count: int, shape: tuple[int, int]) -> Path:
    path.mkdir()
    gen = torch.Generator().manual_seed(seed)
    half = count // 2
    names = [f"layers.{i}.weight" for i in range(count)]
    for part, chunk in enumerate((names[:half], names[half:]), start=1):
        save_file({n: torch.randn(shape, generator=gen) for n in chunk}, path / f"model-0000{part}-of-00002.safetensors", metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {n: f"model-0000{1 if i < half else 2}-of-00002.safetensors" for i, n in enumerate(names)}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    return path


def _peak(tmp: Path, tag: str, count: int, shape: tuple[int, int]) -> tuple[int, int]:
    f, a, u = (_checkpoint(tmp / f"{tag}-{r}", s, count, shape) for s, r in enumerate("fau"))
    out = tmp / f"{tag}-out"
    result = run_cli("realign", "resta", "-f", f, "-a", a, "-u", u, "-o", out, "--json")
    assert result.returncode == 0, result.stderr
    manifest = json.loads(result.stdout)
    size = sum(p.stat().st_size for p in f.iterdir())
    for d in (f, a, u, out):
        for p in d.iterdir():
            p.unlink()
    return manifest["peak_rss_bytes"], size


def test_peak_rss_independent_of_model_size(tmp_path: Path) -> None:
    small_peak, _ = _peak(tmp_path, "small", 4, (16, 16))
    big_peak, model_bytes = _peak(tmp_path, "big", COUNT, TENSOR)
    growth = big_peak - small_peak
    assert model_bytes > 380e6
    assert growth < 160e6, f"peak RSS grew by {growth / 1e6:.0f} MB ({small_peak / 1e6:.0f} → {big_peak / 1e6:.0f}) for 3 × {model_bytes / 1e6:.0f} MB of inputs"
