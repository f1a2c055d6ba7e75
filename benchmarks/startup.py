"""Start-up time of every verb: ``llmguard VERB --help``, and the tokenizer-only paths run for real.

Each command runs in a fresh process ``--repeat`` times (interleaved); the table reports the
median wall time and whether torch/transformers were imported (``-X importtime``). The real
runs use the watermark testbed's word tokenizer (a generic ``tokenizers`` backend) on three
texts, and ``inspect``/``diff`` on the testbed's LoRA adapters: what a CI job that checks a few
texts or one checkpoint pays before any work.

    python benchmarks/startup.py --repeat 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def verbs() -> list[list[str]]:
    import typer.main

    from llmguard.cli.app import app

    out: list[list[str]] = []

    def walk(command, path):
        subs = getattr(command, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, path + [name])
        else:
            out.append(path)

    walk(typer.main.get_command(app), [])
    return out


def heavy_imports(argv: list[str], env: dict[str, str]) -> str:
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "llmguard", *argv], capture_output=True, text=True, env=env)
    names = {line.rsplit("|", 1)[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    return ", ".join(m for m in ("torch", "transformers") if m in names) or "none"


def timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "llmguard", *argv], capture_output=True, env=env, check=False)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    from llmguard.testbed import build
    from llmguard.testbed import watermark as tw

    tb, wm = build(seed=0), tw.build(seed=0)
    tmp = Path(tempfile.mkdtemp())
    texts = tmp / "texts.jsonl"
    texts.write_text("".join(wm.teacher_data.read_text().splitlines(keepends=True)[:3]))
    env = {**os.environ, "NO_COLOR": "1"}
    cases: list[tuple[str, list[str]]] = [("llmguard --help", ["--help"])]
    cases += [(f"llmguard {' '.join(v)} --help", [*v, "--help"]) for v in verbs()]
    cases += [
        ("watermark detect --profile hf (3 texts)", ["watermark", "detect", str(texts), "--tokenizer", str(wm.tokenizer),
                                                      "--profile", "hf", "--json"]),
        ("inspect (LoRA adapter)", ["inspect", str(tb.finetuned_lora), "--json"]),
        ("diff (two LoRA adapters)", ["diff", str(tb.aligned_lora), str(tb.finetuned_lora), "--json"]),
    ]
    for _, argv in cases:  # warm the page cache and the native library's self-test marker
        timed(argv, env)
    times: dict[str, list[float]] = {name: [] for name, _ in cases}
    for _ in range(args.repeat):
        for name, argv in cases:
            times[name].append(timed(argv, env))
    print(f"| command | median wall s (n={args.repeat}) | torch/transformers imported |")
    print("|---|---:|---|")
    for name, argv in cases:
        print(f"| `{name}` | {statistics.median(times[name]):.2f} | {heavy_imports(argv, env)} |")


if __name__ == "__main__":
    main()
