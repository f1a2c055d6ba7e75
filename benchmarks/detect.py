"""Benchmark: ``llmguard`` watermark detection vs transformers' ``WatermarkDetector`` (and MarkLLM's KGW).

Same token ids for every detector: Zipf-distributed ids (rank-frequency exponent ``--zipf``, ranks
mapped to ids by a fixed random permutation) cut into texts of ``--text-len`` tokens. For each
vocabulary size it prints tokens/s, the speed-up over transformers, and the largest |Δz| between
llmguard and each reference on the texts both scored (it must be 0: the z-scores are identical).

The references have no cache across texts, so their tokens/s is measured on the first
``--ref-tokens`` tokens (their cost per token is flat); llmguard scores the whole corpus.

    python benchmarks/detect.py                       # vocab 32000 and 128256, 120k tokens
    python benchmarks/detect.py --markllm PATH        # + MarkLLM KGWUtils from a MarkLLM checkout
    python benchmarks/detect.py --kirchenbauer PATH   # + the reference repo's detector (simple_1)

Not a test: timings are never asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from types import SimpleNamespace

import numpy as np


def zipf_corpus(vocab: int, n_tokens: int, text_len: int, a: float, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, vocab + 1, dtype=np.float64)
    p = ranks ** (-a)
    p /= p.sum()
    ids = rng.permutation(vocab)[rng.choice(vocab, size=n_tokens, p=p)]
    return [ids[i : i + text_len].tolist() for i in range(0, n_tokens - text_len + 1, text_len)]


def clock() -> float:
    """CPU seconds of this process (``--clock cpu``, robust on a shared machine) or wall seconds."""
    return time.process_time() if CLOCK == "cpu" else time.perf_counter()


CLOCK = "cpu"


def time_llmguard(texts, vocab, profile, workers=1, seeding=None, gamma=None, native=True):
    from llmguard.watermark.detect import detect
    from llmguard.watermark.options import DetectOptions
    from llmguard.watermark.schemes import build_scheme

    options = DetectOptions(token_ids=texts, vocab_size=str(vocab), profile=profile, seeding=seeding, gamma=gamma, workers=workers,
                            dedup="none")
    t0 = clock()
    scheme = build_scheme("kgw", profile, options.scheme_params(vocab, workers))
    if not native and hasattr(scheme, "perms"):
        scheme.perms._use_native = lambda: False  # the torch.randperm fallback path
    run = detect(options, scheme=scheme)
    dt = clock() - t0
    return dt, [r["z"] for r in run.records], getattr(getattr(scheme, "perms", None), "randperm_calls", 0)


def time_transformers(texts, vocab):
    import torch
    from transformers import WatermarkDetector, WatermarkingConfig

    cfg = SimpleNamespace(bos_token_id=vocab + 1, is_encoder_decoder=False, vocab_size=vocab)
    wc = WatermarkingConfig(greenlist_ratio=0.25, bias=2.0, seeding_scheme="lefthash", context_width=1)
    det = WatermarkDetector(cfg, "cpu", wc, ignore_repeated_ngrams=False)
    zs = []
    t0 = clock()
    for ids in texts:
        zs.append(float(det(torch.tensor([ids]), return_dict=True).z_score[0]))
    return clock() - t0, zs


def time_markllm(texts, vocab, path):
    import torch

    sys.path.insert(0, path)
    from watermark.kgw.kgw import KGWUtils  # noqa: PLC0415 - an external checkout

    cfg = SimpleNamespace(gamma=0.5, hash_key=15485863, vocab_size=vocab, device="cpu", prefix_length=1,
                          f_scheme="time", window_scheme="left")
    utils = KGWUtils(cfg)
    zs = []
    t0 = clock()
    for ids in texts:
        z, _ = utils.score_sequence(torch.tensor(ids))
        zs.append(float(z))
    return clock() - t0, zs


def time_kirchenbauer(texts, vocab, path):
    import torch

    sys.path.insert(0, path)
    import extended_watermark_processor as ewp  # noqa: PLC0415 - an external checkout

    det = ewp.WatermarkDetector(vocab=list(range(vocab)), gamma=0.25, seeding_scheme="simple_1", device="cpu",
                                tokenizer=SimpleNamespace(bos_token_id=None), normalizers=[],
                                ignore_repeated_ngrams=False)
    zs = []
    t0 = clock()
    for ids in texts:
        zs.append(float(det.detect(tokenized_text=torch.tensor(ids), return_prediction=False)["z_score"]))
    return clock() - t0, zs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, nargs="+", default=[32000, 128256])
    ap.add_argument("--tokens", type=int, default=120_000)
    ap.add_argument("--text-len", type=int, default=200)
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--ref-tokens", type=int, nargs="+", default=[10_000, 2_000],
                    help="tokens the slow references score, per vocab (flat cost per token)")
    ap.add_argument("--fast-tokens", type=int, default=1_000_000)
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="cpu: process CPU time, one torch thread everywhere (fair on a busy machine); wall: elapsed")
    ap.add_argument("--markllm")
    ap.add_argument("--kirchenbauer")
    args = ap.parse_args()
    global CLOCK
    CLOCK = args.clock

    import torch

    if args.clock == "cpu":
        torch.set_num_threads(1)
    from llmguard.watermark import _native

    have_native = _native.native() is not None

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"torch threads {torch.get_num_threads()}, python {platform.python_version()}, clock {args.clock}, "
          f"native green lists {'yes' if have_native else 'no (torch fallback)'}")
    for vi, vocab in enumerate(args.vocab):
        ref_tokens = args.ref_tokens[min(vi, len(args.ref_tokens) - 1)]
        texts = zipf_corpus(vocab, args.tokens, args.text_len, args.zipf, seed=vocab)
        n_tok = sum(len(t) for t in texts)
        n_ref = max(1, ref_tokens // args.text_len)
        print(f"\n## vocab {vocab}: {len(texts)} texts, {n_tok} tokens, Zipf a={args.zipf}; "
              f"distinct previous tokens {len(set(i for t in texts for i in t[:-1]))}")
        t_hf, z_hf = time_transformers(texts[:n_ref], vocab)
        hf_tps = n_ref * args.text_len / t_hf
        print(f"transformers WatermarkDetector (lefthash): {hf_tps:,.0f} tokens/s "
              f"({n_ref * args.text_len} tokens in {t_hf:.1f}s)")
        for label, native in (("native", True), ("torch.randperm fallback", False)):
            if native and not have_native:
                continue
            dt, z, calls = time_llmguard(texts, vocab, "hf", native=native)
            tps = n_tok / dt
            dz = max(abs(a - b) for a, b in zip(z, z_hf))
            print(f"llmguard --profile hf ({label}): {tps:,.0f} tokens/s ({dt:.2f}s, {calls} distinct seeds) "
                  f"= {tps / hf_tps:.1f}x transformers; max |dz| vs transformers {dz:.3g}")
        if args.kirchenbauer:
            t_kb, z_kb = time_kirchenbauer(texts[:n_ref], vocab, args.kirchenbauer)
            dt, z, _ = time_llmguard(texts, vocab, "kirchenbauer", seeding="simple_1")
            kb_tps = n_ref * args.text_len / t_kb
            print(f"reference repo detector (simple_1): {kb_tps:,.0f} tokens/s; llmguard kirchenbauer "
                  f"{n_tok / dt:,.0f} tokens/s = {n_tok / dt / kb_tps:.1f}x; max |dz| "
                  f"{max(abs(a - b) for a, b in zip(z, z_kb)):.3g}")
        if args.markllm:
            t_ml, z_ml = time_markllm(texts[:n_ref], vocab, args.markllm)
            dt, z, calls = time_llmguard(texts, vocab, "markllm")
            ml_tps = n_ref * args.text_len / t_ml
            print(f"MarkLLM KGW (time/left, gamma 0.5): {ml_tps:,.0f} tokens/s; llmguard markllm {n_tok / dt:,.0f} "
                  f"tokens/s ({calls} randperm calls) = {n_tok / dt / ml_tps:.1f}x; max |dz| "
                  f"{max(abs(a - b) for a, b in zip(z, z_ml)):.3g}")
        fast_texts = zipf_corpus(vocab, args.fast_tokens, args.text_len, args.zipf, seed=vocab + 1)
        n_fast = sum(len(t) for t in fast_texts)
        dt, _, _ = time_llmguard(fast_texts, vocab, "fast")
        print(f"llmguard --profile fast: {n_fast / dt:,.0f} tokens/s ({n_fast} tokens in {dt:.2f}s)")


if __name__ == "__main__":
    main()
