#!/usr/bin/env python
"""``llmguard realign somf`` benchmark: mask training cost against the official two-model design.

Builds (once, under ``--work``) a TinyLlama-1.1B-shaped bf16 base checkpoint with random weights,
a word-level tokenizer, an "aligned" LoRA (r 16 on all seven projections) and a fine-tune that
continues it (the builders of ``benchmarks/nlsr.py``), and random preference pairs. Then runs two
child processes (peak RSS is each child's own ``VmHWM``), each for ``--steps`` DPO steps of
``--batch`` pairs on the CPU, frozen model in float32:

1. **llmguard**: ``run_somf`` (dry run). One frozen model; the fused LoRA factors are computed
   inside the forward; the DPO reference log-probabilities are computed once per pair up front.
2. **official design**: the same forward machinery, but as the SOMF code runs it: a second full
   model as the DPO reference, with its own untrained mask sampled at every step, so every step
   runs a reference forward as well and two model copies are resident.
3. **llmguard + --task-data**: (1) with the task-retention term on random task pairs of the same
   length: one more forward and backward of ``--batch`` task sequences per step.

    python benchmarks/somf.py --work /tmp/somf-bench --steps 3 --batch 2 --seq 32

Prints a Markdown table (seconds per step after the first, peak RSS, ratios) for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nlsr as nlsr_bench  # noqa: E402  (the 1B-shaped model and adapter builders)


def build_preference(path: Path, vocab: int, pairs: int, seq: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    words = lambda n: " ".join(f"w{rng.randrange(3, vocab)}" for _ in range(n))  # noqa: E731
    with open(path, "w") as fh:
        for _ in range(pairs):
            fh.write(json.dumps({"prompt": words(seq // 4), "chosen": words(seq - seq // 4), "rejected": words(seq - seq // 4)}) + "\n")


def build_task(path: Path, vocab: int, pairs: int, seq: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    words = lambda n: " ".join(f"w{rng.randrange(3, vocab)}" for _ in range(n))  # noqa: E731
    with open(path, "w") as fh:
        for _ in range(pairs):
            fh.write(json.dumps({"prompt": words(seq // 4), "response": words(seq - seq // 4)}) + "\n")


def child(kind: str, root: Path, steps: int, batch: int) -> dict:
    import torch

    from llmguard.io.manifest import peak_rss_bytes
    from llmguard.realign.somf.options import SomfOptions

    options = SomfOptions(aligned=root / "aligned", finetuned=[root / "finetuned"], preference=root / "pref.jsonl", steps=steps,
                          batch_size=batch, dry_run=True, device="cpu", train_dtype="float32",
                          task_data=[root / "task.jsonl"] if kind == "ours-task" else [])
    if kind in ("ours", "ours-task"):
        from llmguard.realign.somf.method import run_somf

        result = run_somf(options)
        training = result.manifest["training"]
        return {"seconds_per_step": training["seconds_per_step"], "reference_seconds": training["reference_seconds"],
                "peak_rss_bytes": peak_rss_bytes()}
    from llmguard.realign.somf.dpo import pair_logprobs
    from llmguard.realign.somf.mask import ConcreteMask
    from llmguard.realign.somf.masked_model import MaskedModel
    from llmguard.realign.somf.merge import MergeSettings
    from llmguard.realign.somf.preference import encode, find_tokenizer, load_preference
    from llmguard.realign.somf.task_vectors import open_task_vectors

    tv = open_task_vectors(options.aligned, list(options.finetuned))
    tokenizer = find_tokenizer(tv.aligned.base.root)
    pairs = encode(tokenizer, load_preference(options.preference, prompt_field="prompt", chosen_field="chosen", rejected_field="rejected"),
                   template="none", max_length=256)
    settings = MergeSettings(1.0, 0.8, 0)
    policy_mask, reference_mask = ConcreteMask(tv.shapes, "element"), ConcreteMask(tv.shapes, "element")
    policy = MaskedModel(tv, policy_mask, "ta", settings, torch.device("cpu"))
    reference = MaskedModel(tv, reference_mask, "ta", settings, torch.device("cpu"))  # the second model of the official code
    optimizer = torch.optim.Adam(policy_mask.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    times = []
    for step in range(steps):
        t = time.perf_counter()
        batch_pairs = [pairs[(step * batch + i) % len(pairs)] for i in range(batch)]
        policy.begin_step(gen)
        lp = pair_logprobs(policy.model, batch_pairs, tokenizer.pad_token_id, policy.device)
        with torch.no_grad():
            reference.begin_step(gen)
            ref = pair_logprobs(reference.model, batch_pairs, tokenizer.pad_token_id, reference.device)
        loss = -torch.nn.functional.logsigmoid(0.1 * ((lp[:, 0] - ref[:, 0]) - (lp[:, 1] - ref[:, 1]))).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(round(time.perf_counter() - t, 4))
    return {"seconds_per_step": times, "reference_seconds": 0.0, "peak_rss_bytes": peak_rss_bytes()}


def run_child(kind: str, work: Path, shape: str, steps: int, batch: int) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--work", str(work), "--shape", shape, "--steps", str(steps), "--batch", str(batch)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps({"kind": kind, **result}), file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/llmguard-somf-bench"))
    parser.add_argument("--shape", default="1b", choices=sorted(nlsr_bench.SHAPES))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2, help="preference pairs per step")
    parser.add_argument("--seq", type=int, default=32, help="tokens per prompt + response")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--child", choices=("ours", "official", "ours-task"), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    root = opts.work / opts.shape
    if opts.child:
        print(json.dumps(child(opts.child, root, opts.steps, opts.batch)))
        return
    dims = nlsr_bench.SHAPES[opts.shape]
    t0 = time.perf_counter()
    nlsr_bench.build_model(root / "base", dims)
    nlsr_bench.build_adapters(root / "base", dims, root / "aligned", root / "finetuned")
    build_preference(root / "pref.jsonl", dims["vocab"], opts.pairs, opts.seq)
    build_task(root / "task.jsonl", dims["vocab"], opts.pairs, opts.seq)
    print(f"[{opts.shape}] inputs ready in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    ours = run_child("ours", opts.work, opts.shape, opts.steps, opts.batch)
    official = run_child("official", opts.work, opts.shape, opts.steps, opts.batch)
    with_task = run_child("ours-task", opts.work, opts.shape, opts.steps, opts.batch)

    def per_step(r: dict) -> float:
        later = r["seconds_per_step"][1:] or r["seconds_per_step"]
        return sum(later) / len(later)

    print(f"| design ({opts.shape}, {opts.steps} steps × {opts.batch} pairs, {opts.seq} tokens) | s/step | reference pass (once) | peak RSS |")
    print("|---|---|---|---|")
    for name, r in (("official: second model as DPO reference", official), ("llmguard: reference log-probs once, one model", ours),
                    ("llmguard + --task-data (a task batch per step)", with_task)):
        print(f"| {name} | {per_step(r):.2f} | {r['reference_seconds']:.2f} s | {r['peak_rss_bytes'] / 2**30:.2f} GiB |")
    print(f"| ratio official / llmguard | {per_step(official) / per_step(ours):.2f}× | | {official['peak_rss_bytes'] / ours['peak_rss_bytes']:.2f}× |")
    print(f"| ratio llmguard + --task-data / llmguard | {per_step(with_task) / per_step(ours):.2f}× | | "
          f"{with_task['peak_rss_bytes'] / ours['peak_rss_bytes']:.2f}× |")


if __name__ == "__main__":
    main()
