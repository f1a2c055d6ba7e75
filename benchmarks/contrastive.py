#!/usr/bin/env python
"""Contrastive generation (``watermark scrub|spoof``) vs plain batched generation of the student alone.

Contrastive decoding runs two models per token, so its floor is about 0.5× plain generation;
the target is ≥ 0.4×. Builds two random Llamas of the same shape (student and reference, same
word-level tokenizer), random prompts, and times, on the same prompts and the same number of new
tokens (no EOS, so every row runs the full length):

1. ``transformers.generate`` of the student alone (llmguard's ``inference.generate``: the plain
   batched baseline every other verb uses);
2. llmguard's driver with the student alone (``contrastive_generate(mode=None)``);
3. llmguard's driver with the contrast (``mode="scrub"``: both models, both KV caches).

Each measurement is the best of ``--repeat`` runs after one warm-up. Prints a Markdown table.

    python benchmarks/contrastive.py --shape small --prompts 64 --new-tokens 64
"""

from __future__ import annotations

import argparse
import os
import platform
import time

SHAPES = {
    "tiny": dict(hidden=64, intermediate=128, layers=2, heads=4, vocab=260),  # the watermark testbed's
    "small": dict(hidden=512, intermediate=1408, layers=8, heads=8, vocab=8000),
    "medium": dict(hidden=1024, intermediate=2816, layers=12, heads=16, vocab=32000),
}


def _model(shape: dict, seed: int, device: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=shape["vocab"], hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
                      num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                      num_key_value_heads=shape["heads"], max_position_embeddings=1024, bos_token_id=1,
                      eos_token_id=None, pad_token_id=0)
    return LlamaForCausalLM(cfg).to(device).eval()


class _Tok:
    """The tokenizer surface the generation loops use, over a word vocabulary (no EOS)."""

    pad_token_id = 0
    eos_token_id = None
    bos_token = None

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab

    def __call__(self, text: str, add_special_tokens: bool = True):
        return {"input_ids": [int(w) for w in text.split()]}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return " ".join(map(str, ids))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="small")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    import random

    import torch

    from llmguard.inference.generate import generate
    from llmguard.watermark.contrastive import Sampling, contrastive_generate

    if args.threads:
        torch.set_num_threads(args.threads)
    shape = SHAPES[args.shape]
    student, reference = _model(shape, 1, args.device), _model(shape, 2, args.device)
    tok = _Tok(shape["vocab"])
    rng = random.Random(0)
    ids = [[rng.randrange(3, shape["vocab"]) for _ in range(args.prompt_len)] for _ in range(args.prompts)]
    texts = [" ".join(map(str, r)) for r in ids]
    total = args.prompts * args.new_tokens

    def hf() -> None:
        generate(student, tok, texts, max_new_tokens=args.new_tokens, batch_size=args.batch_size,
                 add_special_tokens=False)

    def ours(mode: str | None) -> None:
        for _ in contrastive_generate(student, reference if mode else None, tok, ids, mode=mode,
                                      sampling=Sampling(False), max_new_tokens=args.new_tokens,
                                      batch_size=args.batch_size):
            pass

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(args.repeat):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return min(times)

    rows = [("transformers generate, student alone", best(hf)),
            ("llmguard driver, student alone", best(lambda: ours(None))),
            ("llmguard contrastive (student + reference)", best(lambda: ours("scrub")))]
    base = rows[0][1]
    params = sum(p.numel() for p in student.parameters())
    print(f"shape {args.shape} ({params / 1e6:.1f}M parameters per model), {args.prompts} prompts x "
          f"{args.new_tokens} new tokens, batch {args.batch_size}, device {args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print()
    print("| generation | tokens/s | vs transformers generate |")
    print("|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {total / seconds:,.0f} | {base / seconds:.2f}× |")


if __name__ == "__main__":
    main()
