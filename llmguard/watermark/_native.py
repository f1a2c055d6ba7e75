"""Optional native accelerator for exact CPU green lists (a few dozen lines of C, built on first use).

``torch.randperm(V, generator)`` on CPU is MT19937 (seeded with the low 32 bits of the seed) driving a
forward Fisher–Yates shuffle, ``z = mt() % (V - i); swap(r[i], r[i + z])``. The green list is the
first ``int(V*γ)`` entries, which are final after that many swaps: the C routine below runs only
those swaps (and keeps the inverse permutation, so membership is one lookup), about 5-10× less work
than the full ``randperm``.

It is used only when (1) a C compiler is available to build it into ``$LLMGUARD_CACHE/native``
(under a file lock), and (2) a self-test against ``torch.randperm`` on random seeds and sizes has
passed for this library and torch version (a marker file beside the library records the pass, so
later runs need not import torch); otherwise everything falls back to calling ``torch.randperm``. Set
``LLMGUARD_NO_NATIVE=1`` to disable it.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

C_SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MT_N 624
#define MT_M 397
#define MIXBITS(u, v) (((u) & 0x80000000u) | ((v) & 0x7fffffffu))
#define TWIST(u, v) ((MIXBITS(u, v) >> 1) ^ (((v) & 1u) ? 0x9908b0dfu : 0u))

/* at::mt19937: init_with_uint32, next_state, tempering (identical to the reference MT19937). */
static void mt_seed(uint32_t *s, uint32_t seed) {
    s[0] = seed;
    for (int j = 1; j < MT_N; j++) s[j] = 1812433253u * (s[j - 1] ^ (s[j - 1] >> 30)) + (uint32_t)j;
}

static void mt_block(uint32_t *s, uint32_t *out) {
    int k;
    for (k = 0; k < MT_N - MT_M; k++) s[k] = s[k + MT_M] ^ TWIST(s[k], s[k + 1]);
    for (; k < MT_N - 1; k++) s[k] = s[k + MT_M - MT_N] ^ TWIST(s[k], s[k + 1]);
    s[MT_N - 1] = s[MT_M - 1] ^ TWIST(s[MT_N - 1], s[0]);
    for (k = 0; k < MT_N; k++) {
        uint32_t y = s[k];
        y ^= (y >> 11);
        y ^= (y << 7) & 0x9d2c5680u;
        y ^= (y << 15) & 0xefc60000u;
        y ^= (y >> 18);
        out[k] = y;
    }
}

/* For each seed k: the first gl swaps of torch's CPU randperm (z = mt() % (V - i); swap r[i], r[i+z]),
   then out[q] = token[q] in r[0:gl] for the queries q in [offsets[k], offsets[k+1]).
   r stays the identity between seeds (restored from the list of touched positions). */
int green_queries(int64_t K, const uint32_t *seeds, int64_t V, int64_t gl,
                  const int64_t *offsets, const int64_t *tokens, uint8_t *out) {
    int32_t *r = (int32_t *)malloc(sizeof(int32_t) * V);
    int32_t *touched = (int32_t *)malloc(sizeof(int32_t) * (gl + 1));
    uint8_t *bits = (uint8_t *)calloc((size_t)(V / 8 + 1), 1);
    uint32_t st[MT_N], buf[MT_N];
    if (!r || !touched || !bits) { free(r); free(touched); free(bits); return -1; }
    for (int64_t i = 0; i < V; i++) r[i] = (int32_t)i;
    int64_t steps = gl < V - 1 ? gl : V - 1;
    for (int64_t k = 0; k < K; k++) {
        mt_seed(st, seeds[k]);
        int idx = MT_N;
        for (int64_t i = 0; i < steps; i++) {
            if (idx == MT_N) { mt_block(st, buf); idx = 0; }
            uint32_t z = buf[idx++] % (uint32_t)(V - i);
            int64_t j = i + (int64_t)z;
            int32_t a = r[i];
            r[i] = r[j];
            r[j] = a;
            touched[i] = (int32_t)j;
        }
        for (int64_t i = 0; i < gl; i++) { uint32_t t = (uint32_t)r[i]; bits[t >> 3] |= (uint8_t)(1u << (t & 7)); }
        for (int64_t q = offsets[k]; q < offsets[k + 1]; q++) {
            int64_t t = tokens[q];
            out[q] = (t >= 0 && t < V) ? ((bits[t >> 3] >> (t & 7)) & 1) : 0;
        }
        for (int64_t i = 0; i < gl; i++) { uint32_t t = (uint32_t)r[i]; bits[t >> 3] = 0; }
        for (int64_t i = 0; i < steps; i++) { int32_t j = touched[i]; r[j] = j; }
        for (int64_t i = 0; i < steps; i++) r[i] = (int32_t)i;
    }
    free(r); free(touched); free(bits);
    return 0;
}
"""

_LIB = None
_TRIED = False


def _cache_dir() -> Path:
    return Path(os.environ.get("LLMGUARD_CACHE") or Path.home() / ".cache" / "llmguard").expanduser() / "native"


def _build() -> Path | None:
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return None
    digest = hashlib.sha256(C_SOURCE.encode()).hexdigest()[:16]
    out_dir = _cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / f"mtperm-{digest}.so"
    if lib.is_file():
        return lib
    from filelock import FileLock

    with FileLock(str(out_dir / f".mtperm-{digest}.lock")):
        if lib.is_file():
            return lib
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            src = Path(tmp) / "mtperm.c"
            src.write_text(C_SOURCE)
            so = Path(tmp) / "mtperm.so"
            res = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(so), str(src)],
                                 capture_output=True, timeout=120)
            if res.returncode != 0 or not so.is_file():
                return None
            os.replace(so, lib)
    return lib


def _self_test_marker(lib_path: Path) -> Path:
    """The file that says the self-test passed for this library and this torch version.

    Why: the self-test imports torch (about 4 s), which a tokenizer-only ``watermark detect``
    otherwise never needs; torch's ``randperm`` can only change with its version, so one pass
    per (library, torch version, machine) is enough."""
    import importlib.metadata as md
    import platform

    try:
        torch_version = md.version("torch")
    except md.PackageNotFoundError:
        torch_version = "none"
    tag = hashlib.sha256(f"{torch_version}|{platform.machine()}".encode()).hexdigest()[:12]
    return lib_path.with_name(f"{lib_path.stem}.selftest-{tag}.ok")


def _write_marker(path: Path) -> None:
    if not path.is_file():
        try:
            path.write_text("self-test against torch.randperm passed\n")
        except OSError:
            pass  # a read-only cache only costs the self-test next time


def _self_test(lib) -> bool:
    import torch

    rng = np.random.default_rng(1234)
    g = torch.Generator()
    for V, gamma in ((50, 0.25), (1000, 0.5), (32000, 0.25), (70000, 0.1)):
        gl = int(V * gamma)
        seeds = rng.integers(0, 2**32, size=3, dtype=np.uint64).astype(np.uint32)
        tokens = np.tile(np.arange(V, dtype=np.int64), 3)
        offsets = np.arange(0, 3 * V + 1, V, dtype=np.int64)
        out = np.zeros(3 * V, dtype=np.uint8)
        _call(lib, seeds, V, gl, offsets, tokens, out)
        for k, s in enumerate(seeds.tolist()):
            g.manual_seed(int(s))
            want = np.zeros(V, dtype=np.uint8)
            want[torch.randperm(V, generator=g)[:gl].numpy()] = 1
            if not np.array_equal(out[k * V : (k + 1) * V], want):
                return False
    return True


def _call(lib, seeds, V, gl, offsets, tokens, out) -> None:
    p = ctypes.c_void_p
    rc = lib.green_queries(
        ctypes.c_int64(len(seeds)), seeds.ctypes.data_as(p), ctypes.c_int64(V), ctypes.c_int64(gl),
        offsets.ctypes.data_as(p), tokens.ctypes.data_as(p), out.ctypes.data_as(p),
    )
    if rc != 0:
        raise MemoryError("native green-list routine could not allocate its scratch arrays")


def native():
    """The loaded, self-tested library, or ``None`` (then callers use torch.randperm)."""
    global _LIB, _TRIED
    if _TRIED:
        return _LIB
    _TRIED = True
    if os.environ.get("LLMGUARD_NO_NATIVE"):
        return None
    try:
        path = _build()
        if path is None:
            return None
        lib = ctypes.CDLL(str(path))
        lib.green_queries.restype = ctypes.c_int
        passed = _self_test_marker(path)
        if passed.is_file() or _self_test(lib):
            _LIB = lib
            _write_marker(passed)
    except Exception:  # noqa: BLE001 - any failure means "use torch"
        _LIB = None
    return _LIB


def green_queries(seeds_u32: np.ndarray, offsets: np.ndarray, tokens: np.ndarray, vocab_size: int, greenlist_size: int) -> np.ndarray:
    """Membership of ``tokens`` grouped by seed (``offsets`` delimit each seed's queries)."""
    lib = native()
    if lib is None:
        raise RuntimeError("native routine unavailable")
    seeds = np.ascontiguousarray(seeds_u32, dtype=np.uint32)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    tokens = np.ascontiguousarray(tokens, dtype=np.int64)
    out = np.zeros(len(tokens), dtype=np.uint8)
    _call(lib, seeds, int(vocab_size), int(greenlist_size), offsets, tokens, out)
    return out.astype(bool)
