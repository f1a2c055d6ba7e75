"""Green-list engines: the part of a KGW-family watermark that decides "is token t green after context c".

Two engines:

- :class:`PermutationGreenlist` reproduces the reference implementations exactly: the green list of
  a context is the first ``int(V*gamma)`` entries of ``torch.randperm(V, generator)`` after
  ``generator.manual_seed(seed(context))``. It calls ``torch.randperm`` itself, so it is bit-exact
  by construction; speed comes from computing each distinct seed once per call (batching all
  texts together), an LRU cache of green bitmaps across calls, the observation that a CPU
  generator only uses the low 32 bits of the seed (``at::mt19937`` is initialised from a uint32),
  and optional worker processes for many distinct seeds.
- :func:`keyed_hash_green` is the native ``fast`` profile: green iff a keyed 64-bit hash of
  (context, token) falls below ``gamma * 2**64``. No permutation, fully vectorised.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from functools import lru_cache
from typing import Iterable

import numpy as np

MASK64 = (1 << 64) - 1
TABLE_SIZE = 1_000_003
REFERENCE_TABLE_SEED = 2971215073  # jwkirchenbauer/lm-watermarking alternative_prf_schemes.py


def seed_mod(seed: int) -> int:
    """The references call ``manual_seed(seed % (2**64 - 1))`` on a Python int."""
    return int(seed) % (2**64 - 1)


def wrap_int64(values: np.ndarray) -> np.ndarray:
    """Python ints or int64 arithmetic as torch does it (two's-complement wrap)."""
    return np.asarray(values).astype(np.int64)


def int64_seeds_to_mod(values: np.ndarray) -> np.ndarray:
    """``int(v) % (2**64-1)`` for int64 ``v`` (possibly negative after wrap), as uint64."""
    v = np.asarray(values, dtype=np.int64)
    u = v.view(np.uint64).copy()
    neg = v < 0
    # a negative v maps to v + 2**64 - 1 == (v as uint64) - 1
    u[neg] -= np.uint64(1)
    return u


@lru_cache(maxsize=8)
def fixed_table(seed: int, device: str = "cpu") -> np.ndarray:
    """``torch.randperm(1_000_003)`` under ``manual_seed(seed)`` (the selfhash/minhash tables)."""
    import torch

    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return torch.randperm(TABLE_SIZE, generator=g, device=device).cpu().numpy().astype(np.int64)


@lru_cache(maxsize=8)
def seeded_permutation(seed: int, n: int, device: str = "cpu") -> np.ndarray:
    """``torch.randperm(n)`` after ``manual_seed(seed)`` (MarkLLM's ``prf`` table)."""
    import torch

    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return torch.randperm(n, generator=g, device=device).cpu().numpy().astype(np.int64)


def _perm_dtype(n: int):
    import torch

    # randperm draws the same numbers whatever the dtype; smaller ints are faster (cache)
    if n <= 32767:
        return torch.int16
    if n <= 2**31 - 1:
        return torch.int32
    return torch.int64


def _green_bitmaps(seeds: list[int], vocab_size: int, greenlist_size: int, device: str, tail: bool) -> np.ndarray:
    """Packed green bitmaps (one row per seed) computed with ``torch.randperm``."""
    import torch

    g = torch.Generator(device=device)
    dtype = _perm_dtype(vocab_size) if device == "cpu" else torch.int64
    out = np.zeros((len(seeds), (vocab_size + 7) // 8), dtype=np.uint8)
    row = np.zeros(vocab_size, dtype=bool)
    for k, seed in enumerate(seeds):
        g.manual_seed(seed)
        perm = torch.randperm(vocab_size, generator=g, device=device, dtype=dtype)
        ids = perm[vocab_size - greenlist_size :] if tail else perm[:greenlist_size]
        ids = ids.cpu().numpy()
        row[ids] = True
        out[k] = np.packbits(row)
        row[ids] = False
    return out


def _worker(args: tuple) -> np.ndarray:
    import torch

    torch.set_num_threads(1)
    return _green_bitmaps(*args)


class PermutationGreenlist:
    """Exact green lists from seeded ``torch.randperm``, cached per seed.

    ``greenlist_size = int(vocab_size * gamma)`` as every reference computes it. ``tail=True`` takes
    the last entries of the permutation (the reference's legacy ``select_green_tokens=False``).
    """

    def __init__(
        self,
        vocab_size: int,
        gamma: float,
        device: str = "cpu",
        tail: bool = False,
        cache_bytes: int = 256 << 20,
        workers: int = 1,
    ) -> None:
        self.vocab_size = int(vocab_size)
        self.gamma = float(gamma)
        self.greenlist_size = int(self.vocab_size * self.gamma)
        self.device = device
        self.tail = tail
        self.workers = max(1, int(workers))
        self._row_bytes = (self.vocab_size + 7) // 8
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_rows = max(16, cache_bytes // self._row_bytes)
        self.randperm_calls = 0

    # A CPU generator is an mt19937 seeded with the low 32 bits only; CUDA (Philox) uses all 64.
    def _canonical(self, seeds: np.ndarray) -> np.ndarray:
        seeds = np.asarray(seeds, dtype=np.uint64)
        if self.device == "cpu":
            return seeds & np.uint64(0xFFFFFFFF)
        return seeds

    def bitmaps(self, seeds: Iterable[int]) -> dict[int, np.ndarray]:
        """Packed green bitmap per (canonical) seed."""
        seeds = [int(s) for s in seeds]
        found: dict[int, np.ndarray] = {}
        missing = []
        for s in seeds:
            row = self._cache.get(s)
            if row is None:
                missing.append(s)
            else:
                self._cache.move_to_end(s)
                found[s] = row
        if missing:
            rows = self._compute(missing)
            for s, row in zip(missing, rows):
                found[s] = row
                self._cache[s] = row
            while len(self._cache) > self._cache_rows:
                self._cache.popitem(last=False)
        return found

    def _compute(self, seeds: list[int]) -> np.ndarray:
        self.randperm_calls += len(seeds)
        args = (self.vocab_size, self.greenlist_size, self.device, self.tail)
        workers = min(self.workers, os.cpu_count() or 1)
        if workers <= 1 or len(seeds) < 512 or self.device != "cpu":
            return _green_bitmaps(seeds, *args)
        import multiprocessing as mp

        chunks = [seeds[i::workers] for i in range(workers)]
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        with ctx.Pool(workers) as pool:
            parts = pool.map(_worker, [(c, *args) for c in chunks])
        out = np.empty((len(seeds), self._row_bytes), dtype=np.uint8)
        for i in range(workers):
            out[i::workers] = parts[i]
        return out

    def is_green(self, seeds: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Vectorised membership: ``tokens[i]`` in the green list of ``seeds[i]`` (uint64 seeds)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.size == 0:
            return np.zeros(0, dtype=bool)
        canon = self._canonical(seeds)
        if self._use_native():
            return self._is_green_native(canon, tokens)
        useeds, inverse = np.unique(canon, return_inverse=True)
        table = self.bitmaps(useeds.tolist())
        rows = np.stack([table[int(s)] for s in useeds.tolist()])
        in_range = (tokens >= 0) & (tokens < self.vocab_size)
        safe = np.where(in_range, tokens, 0)
        byte = rows[inverse.reshape(-1), safe >> 3]
        bit = (byte >> (7 - (safe & 7)).astype(np.uint8)) & 1
        return (bit.astype(bool)) & in_range

    def _use_native(self) -> bool:
        if self.device != "cpu" or self.tail or self.vocab_size >= 2**31 or self.vocab_size >= (2**32 - 1) // 20:
            return False
        from llmguard.watermark import _native

        return _native.native() is not None

    def _is_green_native(self, canon: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Exact membership via the native partial Fisher–Yates (see ``_native``), one pass per distinct seed."""
        from llmguard.watermark import _native

        order = np.argsort(canon, kind="stable")
        sorted_seeds = canon[order]
        starts = np.flatnonzero(np.r_[True, sorted_seeds[1:] != sorted_seeds[:-1]])
        offsets = np.r_[starts, len(order)].astype(np.int64)
        self.randperm_calls += len(starts)
        got = _native.green_queries(sorted_seeds[starts].astype(np.uint32), offsets, tokens[order],
                                    self.vocab_size, self.greenlist_size)
        out = np.empty(len(tokens), dtype=bool)
        out[order] = got
        return out

    def green_ids(self, seed: int) -> np.ndarray:
        """The green token ids of one seed (for generation)."""
        canon = int(self._canonical(np.array([seed], dtype=np.uint64))[0])
        row = self.bitmaps([canon])[canon]
        return np.flatnonzero(np.unpackbits(row)[: self.vocab_size])

    def green_mask(self, seed: int) -> np.ndarray:
        canon = int(self._canonical(np.array([seed], dtype=np.uint64))[0])
        row = self.bitmaps([canon])[canon]
        return np.unpackbits(row)[: self.vocab_size].astype(bool)


# ----------------------------------------------------------------------------- native fast hash

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser, vectorised on uint64 arrays (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = x + _GOLD
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def context_hash(key: int, contexts: np.ndarray) -> np.ndarray:
    """Keyed hash of each row of ``contexts`` (shape (N, h)); h may be 0."""
    contexts = np.asarray(contexts, dtype=np.int64)
    h = splitmix64(np.full(contexts.shape[0], np.uint64(key & MASK64), dtype=np.uint64))
    for j in range(contexts.shape[1]):
        h = splitmix64(h ^ contexts[:, j].astype(np.uint64))
    return h


def keyed_hash_green(key: int, gamma: float, contexts: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """``fast`` profile: green iff splitmix64(hash(key, context) ^ token) < gamma * 2**64."""
    ctx = context_hash(key, contexts)
    with np.errstate(over="ignore"):
        v = splitmix64(ctx ^ (np.asarray(tokens, dtype=np.uint64) * _GOLD))
    threshold = np.uint64(min(int(gamma * 2**64), MASK64))
    return v < threshold


def keyed_hash_green_row(key: int, gamma: float, context: np.ndarray, vocab_size: int) -> np.ndarray:
    """The whole green mask of one context (generation)."""
    ctx = context_hash(key, np.asarray(context, dtype=np.int64).reshape(1, -1))[0]
    tokens = np.arange(vocab_size, dtype=np.uint64)
    with np.errstate(over="ignore"):
        v = splitmix64(np.uint64(ctx) ^ (tokens * _GOLD))
    return v < np.uint64(min(int(gamma * 2**64), MASK64))
