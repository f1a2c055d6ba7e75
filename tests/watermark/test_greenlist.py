"""Green-list engines: the native partial Fisher–Yates equals torch.randperm; caching counts distinct seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmguard.watermark import _native
from llmguard.watermark.greenlist import PermutationGreenlist, keyed_hash_green, keyed_hash_green_row


def torch_green(seed: int, vocab: int, gamma: float) -> np.ndarray:
    g = torch.Generator()
    g.manual_seed(seed)
    mask = np.zeros(vocab, dtype=bool)
    mask[torch.randperm(vocab, generator=g)[: int(vocab * gamma)].numpy()] = True
    return mask


@pytest.mark.skipif(_native.native() is None, reason="no C compiler: the torch fallback is used (tested below)")
@pytest.mark.parametrize("vocab,gamma", [(2, 0.5), (97, 0.25), (5000, 0.5), (50272, 0.25)])
def test_native_equals_torch_randperm(vocab, gamma):
    rng = np.random.default_rng(vocab)
    seeds = np.concatenate([rng.integers(0, 2**32, size=4, dtype=np.uint64), np.array([0, 2**32 - 1], np.uint64)])
    tokens = np.tile(np.arange(vocab, dtype=np.int64), len(seeds))
    offsets = np.arange(0, len(tokens) + 1, vocab, dtype=np.int64)
    got = _native.green_queries(seeds.astype(np.uint32), offsets, tokens, vocab, int(vocab * gamma))
    for k, s in enumerate(seeds.tolist()):
        assert np.array_equal(got[k * vocab : (k + 1) * vocab], torch_green(int(s), vocab, gamma))


def test_is_green_paths_agree_and_count_distinct_seeds():
    vocab, gamma = 3000, 0.25
    rng = np.random.default_rng(0)
    seeds = rng.integers(0, 50, size=400).astype(np.uint64) * np.uint64(15485863) + np.uint64(2**33)
    tokens = rng.integers(0, vocab, size=400)
    a = PermutationGreenlist(vocab, gamma)
    fast = a.is_green(seeds, tokens)
    b = PermutationGreenlist(vocab, gamma)
    table = b.bitmaps(np.unique(seeds & np.uint64(0xFFFFFFFF)).tolist())  # the torch.randperm path
    slow = np.array([np.unpackbits(table[int(s) & 0xFFFFFFFF])[t] for s, t in zip(seeds.tolist(), tokens)], bool)
    assert np.array_equal(fast, slow)
    want = np.array([torch_green(int(s), vocab, gamma)[t] for s, t in zip(seeds.tolist(), tokens)])
    assert np.array_equal(fast, want)  # seeds ≥ 2**32 behave as their low 32 bits on a CPU generator
    assert a.randperm_calls == len(np.unique(seeds))


def test_green_ids_cached():
    p = PermutationGreenlist(1000, 0.5)
    ids = p.green_ids(15485863 * 7)
    assert len(ids) == 500 and np.array_equal(np.sort(ids), np.flatnonzero(torch_green(15485863 * 7, 1000, 0.5)))
    calls = p.randperm_calls
    p.green_ids(15485863 * 7)
    assert p.randperm_calls == calls


def test_fast_hash_rate_and_consistency():
    rng = np.random.default_rng(1)
    ctx = rng.integers(0, 32000, size=(200_000, 1))
    tok = rng.integers(0, 32000, size=200_000)
    green = keyed_hash_green(15485863, 0.25, ctx, tok)
    assert abs(green.mean() - 0.25) < 0.005
    row = keyed_hash_green_row(15485863, 0.25, ctx[0], 32000)
    assert row[tok[0]] == green[0]
    other = keyed_hash_green(42, 0.25, ctx, tok)
    assert abs((green & other).mean() - 0.0625) < 0.005  # keys are independent
