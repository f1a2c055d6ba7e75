"""Regenerate the golden vectors in this directory from the upstream implementations themselves.

Not run by the test suite. Usage (each DIR a checkout of the named repository):

    python tests/watermark/data/make_golden.py --kirchenbauer DIR --markllm DIR --zhao DIR

- transformers: the installed ``transformers`` (``WatermarkDetector``, ``WatermarkLogitsProcessor``)
- jwkirchenbauer/lm-watermarking: ``extended_watermark_processor.WatermarkDetector``/``WatermarkLogitsProcessor``
- THU-BPM/MarkLLM: ``watermark.kgw.kgw.KGWUtils`` and ``watermark.unigram.unigram.UnigramUtils``
- XuandongZhao/Unigram-Watermark: ``gptwm.GPTWatermarkDetector``

Token ids are drawn here (Zipf-like, so n-grams repeat) plus sequences produced by the reference
processor on random logits (so they are mostly green). Only data is written, no upstream code.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

HERE = Path(__file__).parent


COMMITS: dict[str, str] = {}


def git_head(path: str) -> str:
    if path in COMMITS:
        return COMMITS[path]
    try:
        return subprocess.check_output(["git", "-C", path, "rev-parse", "HEAD"], text=True).strip()
    except Exception:  # noqa: BLE001
        return "unknown"


def scores_from_seed(seed: int, vocab: int) -> torch.Tensor:
    """Logits the tests can rebuild: numpy default_rng(seed).normal, float32, shape (1, vocab)."""
    return torch.tensor(np.random.default_rng(seed).normal(size=(1, vocab)).astype(np.float32))


def zipf_ids(rng, vocab, n, length, a=1.2):
    out = []
    for _ in range(n):
        x = rng.zipf(a, size=length) - 1
        out.append([int(v) % vocab for v in x])
    return out


def greedy_with(processor, vocab, length, rng, start):
    ids = torch.tensor([start], dtype=torch.long)
    for _ in range(length):
        scores = torch.tensor(rng.normal(size=(1, vocab)), dtype=torch.float32)
        scores = processor(ids, scores)
        nxt = int(scores[0].argmax())
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return ids[0].tolist()


def hf_cases(rng):
    import transformers
    from transformers import WatermarkDetector, WatermarkingConfig
    from transformers.generation.logits_process import WatermarkLogitsProcessor

    cfg = SimpleNamespace(bos_token_id=None, is_encoder_decoder=False, vocab_size=None)
    cases = []
    for vocab, seeding, cw, gamma, dedup in [
        (1000, "lefthash", 1, 0.25, False),
        (1000, "lefthash", 1, 0.25, True),
        (1000, "selfhash", 1, 0.25, False),
        (1000, "selfhash", 4, 0.5, True),
        (32000, "lefthash", 1, 0.25, False),
        (1000, "lefthash", 3, 0.25, False),
    ]:
        cfg.vocab_size = vocab
        cfg.bos_token_id = vocab + 7  # never present
        wc = WatermarkingConfig(greenlist_ratio=gamma, bias=2.0, seeding_scheme=seeding, context_width=cw)
        proc = WatermarkLogitsProcessor(vocab, "cpu", gamma, 2.0, 15485863, seeding, cw)
        texts = zipf_ids(rng, vocab, 3, 80) + [greedy_with(proc, vocab, 40, rng, [1, 2, 3, 4])]
        det = WatermarkDetector(cfg, "cpu", wc, ignore_repeated_ngrams=dedup)
        rows = []
        for ids in texts:
            out = det(torch.tensor([ids]), return_dict=True, z_threshold=4.0)
            rows.append(
                {
                    "ids": ids,
                    "num_tokens_scored": int(out.num_tokens_scored[0]),
                    "num_green_tokens": int(out.num_green_tokens[0]),
                    "z_score": float(out.z_score[0]),
                    "p_value": float(out.p_value[0]),
                }
            )
        # generation: green ids chosen by the processor for a few contexts/logits
        gen = []
        for _ in range(3):
            ctx = [int(v) for v in rng.integers(0, vocab, size=6)]
            seed = int(rng.integers(0, 2**31))
            scores = scores_from_seed(seed, vocab)
            biased = proc(torch.tensor([ctx]), scores.clone())
            green = torch.nonzero(biased[0] != scores[0]).flatten().tolist()
            gen.append({"context": ctx, "scores_seed": seed, "green_ids": green})
        cases.append(
            {
                "profile": "hf",
                "params": {"vocab_size": vocab, "seeding": seeding, "context_width": cw, "gamma": gamma,
                           "key": 15485863},
                "dedup": "ngram" if dedup else "none",
                "texts": rows,
                "generation": gen,
            }
        )
    return {"source": "transformers WatermarkDetector / WatermarkLogitsProcessor",
            "version": transformers.__version__, "cases": cases}


def kirchenbauer_cases(rng, path):
    sys.path.insert(0, path)
    import extended_watermark_processor as ewp

    cases = []
    for vocab, seeding, gamma, dedup in [
        (1000, "simple_1", 0.25, True),
        (1000, "simple_1", 0.25, False),
        (1000, "selfhash", 0.25, True),
        (1000, "selfhash", 0.5, False),
        (1000, "minhash", 0.25, True),
        (1000, "skipgram", 0.25, True),
        (1000, "ff-anchored_skipgram_prf-3-False", 0.25, False),
        (1000, "ff-multiplicative_prf-2-False", 0.25, False),
        (32000, "simple_1", 0.25, False),
    ]:
        vocab_list = list(range(vocab))
        det = ewp.WatermarkDetector(vocab=vocab_list, gamma=gamma, seeding_scheme=seeding, device="cpu",
                                    tokenizer=SimpleNamespace(bos_token_id=None), normalizers=[],
                                    ignore_repeated_ngrams=dedup)
        proc = ewp.WatermarkLogitsProcessor(vocab=vocab_list, gamma=gamma, delta=2.0, seeding_scheme=seeding)
        texts = zipf_ids(rng, vocab, 3, 80) + [greedy_with(proc, vocab, 30, rng, [5, 6, 7, 8, 9])]
        rows = []
        for ids in texts:
            out = det.detect(tokenized_text=torch.tensor(ids), return_green_token_mask=True, z_threshold=4.0)
            rows.append(
                {
                    "ids": ids,
                    "num_tokens_scored": int(out["num_tokens_scored"]),
                    "num_green_tokens": int(out["num_green_tokens"]),
                    "z_score": float(out["z_score"]),
                    "p_value": float(out["p_value"]),
                    "green_token_mask": [bool(b) for b in out["green_token_mask"]],
                }
            )
        gen = []
        for _ in range(2):
            ctx = [int(v) for v in rng.integers(0, vocab, size=6)]
            seed = int(rng.integers(0, 2**31))
            scores = scores_from_seed(seed, vocab)
            biased = proc(torch.tensor([ctx]), scores.clone())
            green = torch.nonzero(biased[0] != scores[0]).flatten().tolist()
            gen.append({"context": ctx, "scores_seed": seed, "green_ids": green})
        cases.append(
            {
                "profile": "kirchenbauer",
                "params": {"vocab_size": vocab, "seeding": seeding, "gamma": gamma},
                "dedup": "ngram" if dedup else "none",
                "texts": rows,
                "generation": gen,
            }
        )
    return {"source": "jwkirchenbauer/lm-watermarking extended_watermark_processor.py", "commit": git_head(path),
            "cases": cases}


def markllm_cases(rng, path):
    sys.path.insert(0, path)
    from watermark.kgw.kgw import KGWUtils
    from watermark.unigram.unigram import UnigramUtils

    cases = []
    for vocab, f, window, h, gamma in [
        (1000, "time", "left", 1, 0.5),
        (1000, "time", "left", 2, 0.5),
        (1000, "additive", "left", 3, 0.25),
        (1000, "skip", "left", 2, 0.5),
        (1000, "min", "left", 2, 0.5),
        (200, "time", "self", 1, 0.5),
        (32000, "time", "left", 1, 0.5),
    ]:
        cfg = SimpleNamespace(gamma=gamma, hash_key=15485863, vocab_size=vocab, device="cpu", prefix_length=h,
                              f_scheme=f, window_scheme=window)
        utils = KGWUtils(cfg)
        texts = zipf_ids(rng, vocab, 3, 60 if window == "left" else 25)
        rows = []
        for ids in texts:
            z, flags = utils.score_sequence(torch.tensor(ids))
            rows.append({"ids": ids, "z_score": float(z), "green_token_flags": [int(x) for x in flags]})
        cases.append({"profile": "markllm", "scheme": "kgw",
                      "params": {"vocab_size": vocab, "seeding": f if window == "left" else f + "-self",
                                 "context_width": h, "gamma": gamma, "key": 15485863},
                      "dedup": "none", "texts": rows})
    for vocab, gamma, key in [(1000, 0.5, 15485863), (50257, 0.25, 7)]:
        cfg = SimpleNamespace(gamma=gamma, hash_key=key, vocab_size=vocab)
        utils = UnigramUtils(cfg)
        texts = zipf_ids(rng, vocab, 3, 60)
        rows = []
        for ids in texts:
            z, flags = utils.score_sequence(torch.tensor(ids))
            rows.append({"ids": ids, "z_score": float(z), "green_token_flags": [int(x) for x in flags]})
        cases.append({"profile": "markllm", "scheme": "unigram",
                      "params": {"vocab_size": vocab, "gamma": gamma, "key": key}, "dedup": "none", "texts": rows})
    return {"source": "THU-BPM/MarkLLM watermark/kgw/kgw.py KGWUtils, watermark/unigram/unigram.py UnigramUtils",
            "commit": git_head(path), "cases": cases}


def zhao_cases(rng, path):
    import transformers

    if not hasattr(transformers, "LogitsWarper"):  # removed in transformers 5; gptwm only subclasses it
        transformers.LogitsWarper = object
    sys.path.insert(0, path)
    import gptwm

    cases = []
    for vocab, frac, key in [(50257, 0.5, 0), (1000, 0.25, 42)]:
        det = gptwm.GPTWatermarkDetector(fraction=frac, strength=2.0, vocab_size=vocab, watermark_key=key)
        texts = zipf_ids(rng, vocab, 3, 60)
        rows = [{"ids": ids, "z_detect": float(det.detect(ids)), "z_unidetect": float(det.unidetect(ids))}
                for ids in texts]
        cases.append({"profile": "zhao", "scheme": "unigram",
                      "params": {"vocab_size": vocab, "gamma": frac, "key": key}, "texts": rows})
    return {"source": "XuandongZhao/Unigram-Watermark gptwm.py GPTWatermarkDetector", "commit": git_head(path),
            "cases": cases}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kirchenbauer")
    ap.add_argument("--markllm")
    ap.add_argument("--zhao")
    ap.add_argument("--commit", action="append", default=[], help="DIR=SHA when DIR is an export, not a checkout")
    args = ap.parse_args()
    for item in args.commit:
        d, _, sha = item.partition("=")
        COMMITS[d] = sha
    rng = np.random.default_rng(20260101)
    (HERE / "golden_hf.json").write_text(json.dumps(hf_cases(rng)))
    if args.kirchenbauer:
        (HERE / "golden_kirchenbauer.json").write_text(json.dumps(kirchenbauer_cases(rng, args.kirchenbauer)))
    if args.markllm:
        (HERE / "golden_markllm.json").write_text(json.dumps(markllm_cases(rng, args.markllm)))
    if args.zhao:
        (HERE / "golden_zhao.json").write_text(json.dumps(zhao_cases(rng, args.zhao)))


if __name__ == "__main__":
    main()
