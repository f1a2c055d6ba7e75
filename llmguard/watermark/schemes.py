"""Watermark schemes, one class per (scheme, profile), in a registry.

A *profile* names the implementation a scheme must match bit for bit (docs/watermark.md):

=============  ===========  ==============================================================
scheme         profile      reference
=============  ===========  ==============================================================
``kgw``        ``hf``       transformers ``WatermarkLogitsProcessor`` / ``WatermarkDetector``
``kgw``        ``kirchenbauer`` jwkirchenbauer/lm-watermarking ``extended_watermark_processor``
``kgw``        ``markllm``  THU-BPM/MarkLLM ``watermark/kgw/kgw.py``
``kgw``        ``fast``     native: keyed hash of (context, token), no permutation
``unigram``    ``zhao``     XuandongZhao/Unigram-Watermark ``gptwm.py`` (also MarkLLM's Unigram)
``unigram``    ``markllm``  same construction, MarkLLM's default key
=============  ===========  ==============================================================

Every scheme scores *n-grams*: ``prefix_len`` context tokens followed by the scored token. The first
``prefix_len`` tokens of a text are never scored. ``green(ngrams)`` is vectorised over rows;
``generation_green(prefix, scores)`` gives the green ids to bias for one sequence during generation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from llmguard.errors import UsageError
from llmguard.watermark import greenlist as gl

DEFAULT_HASH_KEY = 15485863  # the millionth prime, every reference's default


@dataclass
class SchemeParams:
    """User-facing parameters; ``None`` means the profile's default."""

    vocab_size: int
    gamma: float | None = None
    delta: float | None = None
    key: int | None = None
    seeding: str | None = None
    context_width: int | None = None
    rng_device: str = "cpu"
    workers: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


class Scheme:
    """Base class. Subclasses set the class attributes and implement ``green``."""

    scheme: ClassVar[str] = ""
    profile: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    default_gamma: ClassVar[float] = 0.25
    default_delta: ClassVar[float] = 2.0
    default_key: ClassVar[int] = DEFAULT_HASH_KEY
    default_seeding: ClassVar[str] = ""
    default_dedup: ClassVar[str] = "none"
    seedings: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: SchemeParams) -> None:
        if params.vocab_size is None or int(params.vocab_size) < 2:
            raise UsageError(f"vocabulary size must be at least 2, got {params.vocab_size}")
        self.vocab_size = int(params.vocab_size)
        self.gamma = float(self.default_gamma if params.gamma is None else params.gamma)
        if not 0.0 < self.gamma < 1.0:
            raise UsageError(f"--gamma must be strictly between 0 and 1, got {self.gamma}")
        self.delta = float(self.default_delta if params.delta is None else params.delta)
        self.key = int(self.default_key if params.key is None else params.key)
        self.seeding = params.seeding or self.default_seeding
        if self.seedings and not self._seeding_ok(self.seeding):
            raise UsageError(
                f"--seeding {self.seeding!r} is not known to {self.scheme} --profile {self.profile}; "
                f"choose one of: {', '.join(self.seedings)}"
            )
        if params.rng_device not in ("cpu", "cuda") and not params.rng_device.startswith("cuda:"):
            raise UsageError(f"--rng-device must be cpu or cuda, got {params.rng_device!r}")
        if params.rng_device != "cpu":
            import torch

            if not torch.cuda.is_available():
                from llmguard.errors import ResourceError

                raise ResourceError(f"--rng-device {params.rng_device} requested but no CUDA device is available")
        self.rng_device = params.rng_device
        self.workers = params.workers
        self._setup(params)

    def _seeding_ok(self, seeding: str) -> bool:
        return seeding in self.seedings

    def _setup(self, params: SchemeParams) -> None:  # pragma: no cover - overridden
        pass

    # -- shape of the scored unit
    prefix_len: int = 1  # context tokens before the scored token
    context_width: int = 1  # h as the reference names it

    def green(self, ngrams: np.ndarray) -> np.ndarray:
        """Boolean per row of ``ngrams`` (shape (N, prefix_len + 1)): is the last token green."""
        raise NotImplementedError

    def generation_green(self, prefix: np.ndarray, scores: Any) -> np.ndarray | None:
        """Green token ids to bias after ``prefix`` (1-D ids); ``scores`` is that row's logits.

        ``None`` means "no bias at this step" (context too short), as the references do.
        """
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The effective configuration, written into every result record."""
        return {
            "scheme": self.scheme,
            "profile": self.profile,
            "reference": self.reference,
            "seeding": self.seeding,
            "gamma": self.gamma,
            "delta": self.delta,
            "key": self.key,
            "context_width": self.context_width,
            "self_salt": bool(getattr(self, "self_salt", False)),
            "prefix_len": self.prefix_len,
            "vocab_size": self.vocab_size,
            "greenlist_size": int(self.vocab_size * self.gamma),
            "rng_device": self.rng_device,
        }


REGISTRY: dict[tuple[str, str], type[Scheme]] = {}
DEFAULT_PROFILE = {"kgw": "hf", "unigram": "zhao"}


def register(cls: type[Scheme]) -> type[Scheme]:
    REGISTRY[(cls.scheme, cls.profile)] = cls
    return cls


def build_scheme(scheme: str, profile: str | None, params: SchemeParams) -> Scheme:
    """Instantiate a registered scheme/profile, or raise a usage error naming the valid pairs."""
    scheme = scheme.lower()
    if scheme not in DEFAULT_PROFILE:
        raise UsageError(f"unknown --scheme {scheme!r}; choose one of: {', '.join(sorted(DEFAULT_PROFILE))}")
    profile = (profile or DEFAULT_PROFILE[scheme]).lower()
    cls = REGISTRY.get((scheme, profile))
    if cls is None:
        valid = ", ".join(p for s, p in sorted(REGISTRY) if s == scheme)
        raise UsageError(f"--scheme {scheme} has no --profile {profile!r}; valid profiles: {valid}")
    return cls(params)


def _mul_seed(key: int, tokens: np.ndarray) -> np.ndarray:
    """``(key * token) % (2**64-1)`` exactly, vectorised when no overflow is possible."""
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.size == 0:
        return np.zeros(0, dtype=np.uint64)
    if 0 <= key and int(tokens.max()) * key < 2**63 and int(tokens.min()) >= 0:
        return (np.int64(key) * tokens).astype(np.uint64)
    uniq, inv = np.unique(tokens, return_inverse=True)
    return _seed_u64([key * int(t) for t in uniq])[inv.reshape(-1)]


def _seed_u64(values: list[int] | np.ndarray) -> np.ndarray:
    return np.array([gl.seed_mod(int(v)) for v in values], dtype=np.uint64)


# ============================================================================ transformers


@register
class HFKGW(Scheme):
    """transformers ``WatermarkLogitsProcessor``/``WatermarkDetector`` (5.x).

    lefthash: ``seed = key * ids[-1]`` (only the last token, whatever ``context_width``).
    selfhash: ``seed = min(key * T[w] * T[w[-1]])`` over the window ``w`` (which ends with the scored
    token), ``T = randperm(1_000_003)`` seeded with the *hashing key* on the RNG device (+1), int64 wrap.
    The detector scores ``(context_width + 1 - selfhash)``-grams; ``vocab_size`` is the model's.
    """

    scheme = "kgw"
    profile = "hf"
    reference = "transformers WatermarkLogitsProcessor/WatermarkDetector"
    default_seeding = "lefthash"
    seedings = ("lefthash", "selfhash")
    default_dedup = "none"

    def _setup(self, params: SchemeParams) -> None:
        self.context_width = int(params.context_width or 1)
        if self.context_width < 1:
            raise UsageError("--context-width must be at least 1")
        self.self_salt = self.seeding == "selfhash"
        self.prefix_len = self.context_width - int(self.self_salt)
        self.perms = gl.PermutationGreenlist(self.vocab_size, self.gamma, self.rng_device, workers=self.workers)

    def _table(self) -> np.ndarray:
        return gl.fixed_table(self.key, self.rng_device)

    def seeds(self, windows: np.ndarray) -> np.ndarray:
        """uint64 ``seed % (2**64-1)`` for each window (rows end with the token seeding the list)."""
        windows = np.asarray(windows, dtype=np.int64)
        if self.seeding == "lefthash":
            return _mul_seed(self.key, windows[:, -1])
        t = self._table()
        w = windows[:, -self.context_width :]
        a = t[w % gl.TABLE_SIZE] + 1
        b = t[w[:, -1] % gl.TABLE_SIZE] + 1
        with np.errstate(over="ignore"):
            prod = (np.int64(self.key) * a) * b[:, None]
        return gl.int64_seeds_to_mod(prod.min(axis=1))

    def green(self, ngrams: np.ndarray) -> np.ndarray:
        ngrams = np.asarray(ngrams, dtype=np.int64)
        window = ngrams if self.self_salt else ngrams[:, :-1]
        return self.perms.is_green(self.seeds(window), ngrams[:, -1])

    def generation_green(self, prefix: np.ndarray, scores: Any) -> np.ndarray | None:
        if len(prefix) < self.context_width:
            return None  # transformers logs a warning and skips seeding
        if not self.self_salt:
            return self.perms.green_ids(int(self.seeds(prefix[None, -1:])[0]))
        _, order = scores.sort(dim=-1, descending=True)
        cands = order[:40].cpu().numpy().astype(np.int64)
        windows = np.concatenate(
            [np.broadcast_to(prefix[-(self.context_width - 1) :] if self.context_width > 1 else prefix[:0],
                             (len(cands), self.context_width - 1)), cands[:, None]], axis=1
        )
        keep = self.perms.is_green(self.seeds(windows), cands)
        return cands[keep]


# ============================================================================ reference repo


def _ref_hashint(x: np.ndarray) -> np.ndarray:
    return gl.fixed_table(gl.REFERENCE_TABLE_SEED, "cpu")[np.asarray(x, dtype=np.int64) % gl.TABLE_SIZE] + 1


def _prf_additive(w: np.ndarray, key: int) -> list[int]:
    return [key * int(s) for s in w.sum(axis=1)]


def _prf_multiplicative(w: np.ndarray, key: int) -> list[int]:
    with np.errstate(over="ignore"):
        prods = np.prod(w, axis=1, dtype=np.int64)
    return [key * int(p) for p in prods]


def _prf_minfunc(w: np.ndarray, key: int) -> list[int]:
    return [key * int(m) for m in w.min(axis=1)]


def _prf_skipgram(w: np.ndarray, key: int) -> list[int]:
    return [int(v) for v in _ref_hashint(np.int64(key) * w[:, 0])]


def _prf_anchored_skipgram(w: np.ndarray, key: int) -> list[int]:
    with np.errstate(over="ignore"):
        v = _ref_hashint(np.int64(key) * w[:, 0]) * _ref_hashint(np.int64(key) * w[:, -1])
    return [int(x) for x in v]


def _prf_minhash(w: np.ndarray, key: int) -> list[int]:
    return [int(x) for x in _ref_hashint(np.int64(key) * w).min(axis=1)]


def _prf_anchored_minhash(w: np.ndarray, key: int) -> list[int]:
    with np.errstate(over="ignore"):
        v = (np.int64(key) * _ref_hashint(w)) * _ref_hashint(w[:, -1])[:, None]
    return [int(x) for x in v.min(axis=1)]


def _prf_simple_skip(w: np.ndarray, key: int) -> list[int]:
    with np.errstate(over="ignore"):
        v = np.prod(_ref_hashint(np.int64(key) * w[:, ::2]), axis=1, dtype=np.int64)
    return [int(x) for x in v]


def _prf_position(w: np.ndarray, key: int) -> list[int]:
    with np.errstate(over="ignore"):
        v = (np.int64(key) * w * np.arange(1, w.shape[1] + 1, dtype=np.int64)).sum(axis=1)
    return [int(x) for x in v]


REFERENCE_PRFS = {
    "additive_prf": _prf_additive,
    "multiplicative_prf": _prf_multiplicative,
    "minfunc_prf": _prf_minfunc,
    "simple_skip_prf": _prf_simple_skip,
    "skipgram_prf": _prf_skipgram,
    "anchored_skipgram_prf": _prf_anchored_skipgram,
    "minhash_prf": _prf_minhash,
    "anchored_minhash_prf": _prf_anchored_minhash,
    "position_prf": _prf_position,
}

REFERENCE_SEEDINGS = {
    "simple_1": ("additive_prf", 1, False),
    "lefthash": ("additive_prf", 1, False),
    "selfhash": ("anchored_minhash_prf", 4, True),
    "algorithm-3": ("anchored_minhash_prf", 4, True),
    "minhash": ("minhash_prf", 4, False),
    "skipgram": ("skipgram_prf", 5, False),
}


@register
class KirchenbauerKGW(Scheme):
    """jwkirchenbauer/lm-watermarking ``extended_watermark_processor.py`` + ``alternative_prf_schemes.py``.

    ``seeding``: simple_1 (= lefthash), selfhash (= algorithm-3), minhash, skipgram, or the free form
    ``ff-<prf>-<h>-<True|False>[-<key>]``. ``hashint`` uses the repository's fixed table (CPU randperm
    of 1_000_003 seeded 2971215073). Detector default: unique n-grams only (``ignore_repeated_ngrams``).
    """

    scheme = "kgw"
    profile = "kirchenbauer"
    reference = "jwkirchenbauer/lm-watermarking extended_watermark_processor"
    default_seeding = "selfhash"
    seedings = ("simple_1", "lefthash", "selfhash", "algorithm-3", "minhash", "skipgram", "ff-<prf>-<h>-<True|False>[-key]")
    default_dedup = "ngram"

    def _seeding_ok(self, seeding: str) -> bool:
        return seeding in REFERENCE_SEEDINGS or seeding.startswith("ff-")

    def _setup(self, params: SchemeParams) -> None:
        if self.seeding.startswith("ff-"):
            parts = self.seeding.split("-")
            try:
                prf, width, salt = parts[1], int(parts[2]), parts[3] == "True"
                key = int(parts[4]) if len(parts) == 5 else DEFAULT_HASH_KEY
            except (IndexError, ValueError):
                raise UsageError(f"--seeding {self.seeding!r}: expected ff-<prf>-<h>-<True|False>[-key]") from None
            if prf not in REFERENCE_PRFS:
                raise UsageError(f"--seeding {self.seeding!r}: prf must be one of {', '.join(REFERENCE_PRFS)}")
            if params.key is None:
                self.key = key
        else:
            prf, width, salt = REFERENCE_SEEDINGS[self.seeding]
        if params.context_width is not None and params.context_width != width:
            raise UsageError(
                f"--context-width {params.context_width} conflicts with --seeding {self.seeding} (h={width}); "
                "use a free-form seeding ff-<prf>-<h>-<salt> to change h"
            )
        self.prf_type = prf
        self.context_width = width
        self.self_salt = salt
        self.prefix_len = width - int(salt)
        self.perms = gl.PermutationGreenlist(self.vocab_size, self.gamma, self.rng_device, workers=self.workers)

    def seeds(self, windows: np.ndarray) -> np.ndarray:
        w = np.asarray(windows, dtype=np.int64)[:, -self.context_width :]
        return _seed_u64(REFERENCE_PRFS[self.prf_type](w, self.key))

    def green(self, ngrams: np.ndarray) -> np.ndarray:
        ngrams = np.asarray(ngrams, dtype=np.int64)
        window = ngrams if self.self_salt else ngrams[:, :-1]
        useq, inv = np.unique(window, axis=0, return_inverse=True)
        seeds = self.seeds(useq)[inv.reshape(-1)]
        return self.perms.is_green(seeds, ngrams[:, -1])

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg["prf_type"] = self.prf_type
        return cfg

    def generation_green(self, prefix: np.ndarray, scores: Any) -> np.ndarray | None:
        if not self.self_salt:
            if len(prefix) < self.context_width:
                return None
            return self.perms.green_ids(int(self.seeds(prefix[None, -self.context_width :])[0]))
        if len(prefix) + 1 < self.context_width:
            return None
        _, order = scores.sort(dim=-1, descending=True)
        cands = order[:41].cpu().numpy().astype(np.int64)  # idx 0..40 ("fixed_compute" stops at idx == 40)
        ctx = prefix[len(prefix) - (self.context_width - 1) :] if self.context_width > 1 else prefix[:0]
        windows = np.concatenate([np.broadcast_to(ctx, (len(cands), len(ctx))), cands[:, None]], axis=1)
        keep = self.perms.is_green(self.seeds(windows), cands)
        return cands[keep]


# ============================================================================ MarkLLM


MARKLLM_F = ("time", "additive", "skip", "min")


@register
class MarkLLMKGW(Scheme):
    """THU-BPM/MarkLLM ``KGWUtils``: ``prf = randperm(V, seed=key)``; ``f`` of the prefix through prf;
    left window: ``seed = (key * f) % V``; self window: ``seed_k = (f * prf[k]) % V``. No dedup,
    ``prefix_length`` tokens unscored, vocab_size = ``len(tokenizer)`` unless given.
    ``seeding``: ``time`` | ``additive`` | ``skip`` | ``min``, with ``-self`` for the self window.
    """

    scheme = "kgw"
    profile = "markllm"
    reference = "THU-BPM/MarkLLM watermark/kgw/kgw.py"
    default_gamma = 0.5
    default_seeding = "time"
    seedings = tuple(MARKLLM_F) + tuple(f + "-self" for f in MARKLLM_F)
    default_dedup = "none"

    def _setup(self, params: SchemeParams) -> None:
        self.context_width = int(params.context_width or 1)
        if self.context_width < 1:
            raise UsageError("--context-width (MarkLLM prefix_length) must be at least 1")
        self.prefix_len = self.context_width
        self.f_scheme, _, window = self.seeding.partition("-")
        self.window_scheme = window or "left"
        self.self_salt = False
        self.prf = gl.seeded_permutation(self.key, self.vocab_size, self.rng_device)
        self.perms = gl.PermutationGreenlist(self.vocab_size, self.gamma, self.rng_device, workers=self.workers)

    def f(self, prefixes: np.ndarray) -> np.ndarray:
        p = np.asarray(prefixes, dtype=np.int64)[:, -self.context_width :]
        v = self.vocab_size
        if self.f_scheme == "time":
            acc = np.ones(len(p), dtype=np.int64)
            for j in range(p.shape[1]):
                acc = (acc * (p[:, j] % v)) % v
            return self.prf[acc]
        if self.f_scheme == "additive":
            return self.prf[p.sum(axis=1) % v]
        if self.f_scheme == "skip":
            return self.prf[p[:, 0]]
        return self.prf[p].min(axis=1)

    def seeds(self, prefixes: np.ndarray, tokens: np.ndarray | None = None) -> np.ndarray:
        f = self.f(prefixes)
        v = self.vocab_size
        if self.window_scheme == "left":
            return ((self.key % v) * f % v).astype(np.uint64)
        return ((f % v) * (self.prf[np.asarray(tokens, dtype=np.int64)] % v) % v).astype(np.uint64)

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg.update(f_scheme=self.f_scheme, window_scheme=self.window_scheme, prefix_length=self.context_width)
        return cfg

    def green(self, ngrams: np.ndarray) -> np.ndarray:
        ngrams = np.asarray(ngrams, dtype=np.int64)
        return self.perms.is_green(self.seeds(ngrams[:, :-1], ngrams[:, -1]), ngrams[:, -1])

    def generation_green(self, prefix: np.ndarray, scores: Any) -> np.ndarray | None:
        if len(prefix) < self.context_width:
            return None
        ctx = prefix[None, -self.context_width :]
        if self.window_scheme == "left":
            return self.perms.green_ids(int(self.seeds(ctx)[0]))
        tokens = np.arange(self.vocab_size, dtype=np.int64)
        seeds = self.seeds(np.broadcast_to(ctx, (self.vocab_size, ctx.shape[1])), tokens)
        return tokens[self.perms.is_green(seeds, tokens)]


# ============================================================================ native fast


@register
class FastKGW(Scheme):
    """Native KGW: green iff ``splitmix64(H(key, context) ^ token * φ) < γ·2**64``. Same statistics as KGW
    (each token green with probability γ under H0), no permutation, so detection is pure vector math."""

    scheme = "kgw"
    profile = "fast"
    reference = "llmguard native keyed hash (splitmix64)"
    default_seeding = "hash"
    seedings = ("hash",)
    default_dedup = "ngram"

    def _setup(self, params: SchemeParams) -> None:
        self.context_width = int(1 if params.context_width is None else params.context_width)
        if self.context_width < 0:
            raise UsageError("--context-width must be at least 0")
        self.prefix_len = self.context_width
        self.self_salt = False

    def green(self, ngrams: np.ndarray) -> np.ndarray:
        ngrams = np.asarray(ngrams, dtype=np.int64)
        return gl.keyed_hash_green(self.key, self.gamma, ngrams[:, :-1], ngrams[:, -1])

    def generation_green(self, prefix: np.ndarray, scores: Any) -> np.ndarray | None:
        if len(prefix) < self.context_width:
            return None
        ctx = prefix[len(prefix) - self.context_width :]
        return np.flatnonzero(gl.keyed_hash_green_row(self.key, self.gamma, ctx, self.vocab_size))


# ============================================================================ Unigram


def unigram_mask(vocab_size: int, gamma: float, key: int) -> np.ndarray:
    """Zhao et al. ``gptwm.py`` (and MarkLLM ``UnigramUtils``): a fixed shuffled mask."""
    size = int(gamma * vocab_size)
    mask = np.array([True] * size + [False] * (vocab_size - size))
    seed = int.from_bytes(hashlib.sha256(np.int64(key)).digest()[:4], "little")
    np.random.default_rng(seed).shuffle(mask)
    return mask


@register
class ZhaoUnigram(Scheme):
    """Unigram-Watermark (Zhao et al.): one global green list; every token scored (``unidetect`` = dedup ngram)."""

    scheme = "unigram"
    profile = "zhao"
    reference = "XuandongZhao/Unigram-Watermark gptwm.py"
    default_gamma = 0.5
    default_delta = 2.0
    default_key = 0
    default_seeding = "global"
    seedings = ("global",)
    default_dedup = "none"

    def _setup(self, params: SchemeParams) -> None:
        self.context_width = 0
        self.prefix_len = 0
        self.self_salt = False
        self.mask = unigram_mask(self.vocab_size, self.gamma, self.key)

    def green(self, ngrams: np.ndarray) -> np.ndarray:
        tok = np.asarray(ngrams, dtype=np.int64)[:, -1]
        ok = (tok >= 0) & (tok < self.vocab_size)
        return self.mask[np.where(ok, tok, 0)] & ok

    def generation_green(self, prefix: np.ndarray, scores: Any) -> np.ndarray | None:
        return np.flatnonzero(self.mask)


@register
class MarkLLMUnigram(ZhaoUnigram):
    """MarkLLM's Unigram: Zhao's mask construction, MarkLLM's default key 15485863."""

    profile = "markllm"
    reference = "THU-BPM/MarkLLM watermark/unigram/unigram.py"
    default_key = DEFAULT_HASH_KEY
