#!/usr/bin/env python
"""GPU check: every weight-arithmetic and generation verb on ``--device cuda`` against ``--device cpu``,
then the streaming engine on a 7B-shaped bf16 checkpoint set. Run it through ``benchmarks/gpu.sh``.

1. Builds tiny real inputs in a temporary directory with the test suite's builders
   (``tests/helpers.py``): a Llama with a word-level tokenizer, a full fine-tune and a full aligned
   model, an aligned LoRA and a fine-tuned LoRA that continues it, calibration, preference and
   prompt files. No testbed, nothing downloaded.
2. Runs each verb once with ``--device cpu`` and once with ``--device cuda`` and compares:
   every output tensor bit for bit (inspect/diff: the JSON report; generate/detect/eval safety:
   the records). One PASS/FAIL line per verb.
3. Times the engine on three synthetic Llama-2-7B-shaped bf16 checkpoints (13.5 GB each, built on
   the GPU by ``benchmarks/stream.py``'s generator), the page cache dropped before each run when
   permitted: the cold read of one checkpoint (the floor), a bare torch loop on the device, and
   ``llmguard realign resta --device cuda``, with peak VRAM and host RSS.
4. Prints one table.

``--cpu-dry-run`` runs (1)-(2) with ``--device cpu`` on both sides and (3) on a tiny shape, so the
script itself can be checked on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import stream  # noqa: E402  (benchmarks/stream.py: synthetic checkpoints, bare loop, child timing)

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SHAPES = {
    # Llama-2-7B: 6.74B parameters, 13.5 GB in bf16.
    "7b": dict(hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32, vocab=32000),
    "tiny": dict(hidden=256, intermediate=688, layers=2, heads=4, kv_heads=4, vocab=4096),
}


# -- (1) tiny inputs ---------------------------------------------------------------------------
def build_tiny(root: Path) -> dict[str, Path]:
    import torch
    from helpers import make_llama, make_lora
    from safetensors.torch import load_file, save_file

    from llmguard.testbed.watermark import make_word_tokenizer, word_list

    tok_dir = root / "tokenizer"
    tok = make_word_tokenizer(60, tok_dir)
    vocab = len(tok)
    p: dict[str, Path] = {}
    for name, seed in (("base", 0), ("finetuned", 1), ("aligned", 2)):
        p[name] = make_llama(root / name, seed=seed, vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=0)
        tok.save_pretrained(p[name])
    p["lora_aligned"] = make_lora(p["base"], root / "lora_aligned", seed=3, targets=TARGETS)
    # a fine-tune that continues the aligned adapter: same config, factors plus noise
    ft = root / "lora_finetuned"
    ft.mkdir()
    g = torch.Generator().manual_seed(4)
    tensors = load_file(p["lora_aligned"] / "adapter_model.safetensors")
    save_file({k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in tensors.items()}, str(ft / "adapter_model.safetensors"), metadata={"format": "pt"})
    (ft / "adapter_config.json").write_text((p["lora_aligned"] / "adapter_config.json").read_text())
    p["lora_finetuned"] = ft

    words = word_list(60)
    sentence = lambda k, n: " ".join(words[(k * 7 + j * 3) % len(words)] for j in range(n))  # noqa: E731
    rows = {
        "calib.jsonl": [{"prompt": sentence(k, 6), "response": sentence(k + 11, 10)} for k in range(12)],
        "pref.jsonl": [{"prompt": sentence(k, 6), "chosen": sentence(k + 5, 8), "rejected": sentence(k + 9, 8)} for k in range(8)],
        "prompts.jsonl": [{"prompt": sentence(k, 6), "category": ["weapons", "fraud"][k % 2]} for k in range(6)],
    }
    for name, items in rows.items():
        p[name.split(".")[0]] = root / name
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in items))
    return p


# -- (2) verbs on two devices ------------------------------------------------------------------
def cli(args: list[str], log: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "llmguard", "-q", *args], capture_output=True, text=True)
    log.write_text(f"$ llmguard -q {' '.join(args)}\nexit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:] or ''} (log {log})")
    return proc


def tensors_equal(a: Path, b: Path) -> tuple[bool, str]:
    """Every tensor of every .safetensors file under ``a`` equals (bit for bit) the one under ``b``."""
    import torch
    from safetensors import safe_open

    fa = sorted(x.relative_to(a) for x in a.rglob("*.safetensors"))
    fb = sorted(x.relative_to(b) for x in b.rglob("*.safetensors"))
    if not fa or fa != fb:
        return False, f"files differ: {[str(x) for x in fa]} vs {[str(x) for x in fb]}"
    n, worst, worst_name = 0, 0.0, ""
    for rel in fa:
        with safe_open(a / rel, framework="pt") as ha, safe_open(b / rel, framework="pt") as hb:
            if set(ha.keys()) != set(hb.keys()):
                return False, f"{rel}: tensor names differ"
            for k in ha.keys():
                x, y = ha.get_tensor(k), hb.get_tensor(k)
                n += 1
                if x.dtype != y.dtype or x.shape != y.shape:
                    return False, f"{k}: {y.dtype}{list(y.shape)} vs {x.dtype}{list(x.shape)}"
                if x.reshape(-1).contiguous().view(torch.uint8).equal(y.reshape(-1).contiguous().view(torch.uint8)):
                    continue
                rel_err = ((x.double() - y.double()).abs().max() / x.double().abs().max().clamp_min(1e-30)).item()
                if rel_err >= worst:
                    worst, worst_name = rel_err, k
    if worst_name:
        return False, f"not bit-identical: worst max|Δ|/max|ref| {worst:.2e} ({worst_name})"
    return True, f"{n} tensors bit-identical"


def strip_volatile(obj):
    """Drop fields that legitimately differ between two runs (timings, paths, devices)."""
    volatile = {"seconds", "elapsed", "elapsed_s", "duration_s", "wall_s", "time", "timestamp", "device", "output", "path", "created", "started", "finished", "version", "host", "where"}
    if isinstance(obj, dict):
        return {k: strip_volatile(v) for k, v in obj.items() if k not in volatile and not k.endswith(("_s", "_seconds", "_path", "_dir"))}
    if isinstance(obj, list):
        return [strip_volatile(v) for v in obj]
    return obj


def json_lines(text: str) -> list:
    text = text.strip()
    try:
        return [json.loads(text)]
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def records_equal(a: list, b: list) -> tuple[bool, str]:
    a, b = strip_volatile(a), strip_volatile(b)
    if a == b:
        return True, f"{len(a)} records equal"
    same = sum(x == y for x, y in zip(a, b))
    return False, f"{len(a) - same} of {len(a)} records differ"


def verb_checks(p: dict[str, Path], work: Path, devices: tuple[str, str]) -> list[tuple[str, bool, str]]:
    """Run each verb on both devices; (verb, ok, detail)."""
    rows: list[tuple[str, bool, str]] = []
    dirs = [work / "out-0", work / "out-1"]  # one per side: the same device may be on both sides
    logs = work / "logs"
    for d in (*dirs, logs):
        d.mkdir(parents=True)

    def both(name: str, compare, make_args) -> None:
        try:
            results = [cli(make_args(dev, dirs[k]), logs / f"{len(rows):02d}-{k}-{dev}.log") for k, dev in enumerate(devices)]
            ok, detail = compare(results)
        except Exception as exc:  # noqa: BLE001 - one verb failing must not hide the others
            ok, detail = False, f"error: {exc}"
        rows.append((name, ok, detail))
        print(f"  {'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)

    by_json = lambda res: records_equal(json_lines(res[0].stdout), json_lines(res[1].stdout))  # noqa: E731
    by_tensors = lambda sub: (lambda res: tensors_equal(dirs[0] / sub, dirs[1] / sub))  # noqa: E731
    by_records = lambda sub: (lambda res: records_equal(json_lines((dirs[0] / sub).read_text()), json_lines((dirs[1] / sub).read_text())))  # noqa: E731

    # inspect has no --device flag (it does no math on a device): run twice, compare the scan.
    both("inspect --scan", by_json, lambda dev, d: ["inspect", str(p["finetuned"]), "--scan", "--json"])
    both("diff", by_json, lambda dev, d: ["diff", str(p["base"]), str(p["finetuned"]), "--json", "--device", dev])
    both("realign resta", by_tensors("resta"), lambda dev, d: [
        "realign", "resta", "-f", str(p["finetuned"]), "-a", str(p["aligned"]), "-u", str(p["base"]), "-o", str(d / "resta"),
        "--device", dev, "--json"])  # fmt: skip
    both("realign resta (LoRA)", by_tensors("resta-lora"), lambda dev, d: [
        "realign", "resta", "-f", str(p["lora_finetuned"]), "-a", str(p["lora_aligned"]), "-u", str(p["base"]),
        "--base", str(p["base"]), "-o", str(d / "resta-lora"), "--device", dev, "--json"])  # fmt: skip
    # magnitude scoring: weight space only (no forward pass), so bit identity is expected
    both("realign nlsr (magnitude)", by_tensors("nlsr-mag"), lambda dev, d: [
        "realign", "nlsr", "-f", str(p["lora_finetuned"]), "-a", str(p["lora_aligned"]), "--base", str(p["base"]),
        "--scorer", "magnitude", "-o", str(d / "nlsr-mag"), "--device", dev, "--json"])  # fmt: skip
    # actsvd runs the calibration forward pass on the device: matmul order may differ on a GPU
    both("realign nlsr (actsvd)", by_tensors("nlsr"), lambda dev, d: [
        "realign", "nlsr", "-f", str(p["lora_finetuned"]), "-a", str(p["lora_aligned"]), "--base", str(p["base"]),
        "-c", str(p["calib"]), "--template", "plain", "-o", str(d / "nlsr"), "--device", dev, "--json"])  # fmt: skip
    both("realign revert", by_tensors("revert"), lambda dev, d: ["realign", "revert", str(d / "nlsr"), "-o", str(d / "revert"), "--json"])
    both("realign somf --steps 2", by_tensors("somf"), lambda dev, d: [
        "realign", "somf", "-a", str(p["lora_aligned"]), "-f", str(p["lora_finetuned"]), "-p", str(p["pref"]), "--base", str(p["base"]),
        "--template", "plain", "--steps", "2", "--batch-size", "4", "--train-dtype", "float32", "-o", str(d / "somf"),
        "--device", dev, "--json"])  # fmt: skip
    both("realign safelora", by_tensors("safelora"), lambda dev, d: [
        "realign", "safelora", "-a", str(p["aligned"]), "--base", str(p["base"]), "-f", str(p["lora_finetuned"]),
        "-o", str(d / "safelora"), "--device", dev, "--json"])  # fmt: skip
    both("watermark generate --greedy", by_records("gen.jsonl"), lambda dev, d: [
        "watermark", "generate", "-m", str(p["base"]), "-p", str(p["prompts"]), "-o", str(d / "gen.jsonl"), "--greedy",
        "--max-new-tokens", "16", "--dtype", "float32", "--device", dev])  # fmt: skip
    # detect has no --device flag: it scores each side's generations (equal texts, equal scores).
    both("watermark detect", by_json, lambda dev, d: ["watermark", "detect", str(d / "gen.jsonl"), "-t", str(p["base"]), "--model", str(p["base"]), "--jsonl", "--workers", "1"])
    both("eval safety", by_records("safety.jsonl"), lambda dev, d: [
        "eval", "safety", "-m", str(p["base"]), "-p", str(p["prompts"]), "--template", "plain", "--records", str(d / "safety.jsonl"),
        "--max-new-tokens", "16", "--dtype", "float32", "--device", dev, "--json"])  # fmt: skip
    return rows


# -- (3) engine timing -------------------------------------------------------------------------
VRAM_WRAPPER = r"""
import atexit, json, runpy, sys, torch
out = sys.argv[1]
def _report():
    peak = torch.cuda.max_memory_reserved() if torch.cuda.is_available() and torch.cuda.is_initialized() else 0
    open(out, "w").write(json.dumps({"max_memory_reserved": peak}))
atexit.register(_report)
sys.argv = ["llmguard"] + sys.argv[2:]
runpy.run_module("llmguard", run_name="__main__", alter_sys=True)
"""


class GpuMemoryPoll:
    """Largest ``nvidia-smi`` memory.used seen while a child runs, minus the value before (MiB)."""

    def __init__(self) -> None:
        self.ok = shutil.which("nvidia-smi") is not None
        self.base = self.peak = self._read() if self.ok else 0
        self._stop = threading.Event()

    def _read(self) -> int:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"], capture_output=True, text=True, timeout=5)
            return int(out.stdout.strip().splitlines()[0])
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            self.ok = False
            return 0

    def __enter__(self):
        if self.ok:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(0.25):
            self.peak = max(self.peak, self._read())

    def __exit__(self, *exc) -> None:
        self._stop.set()

    @property
    def used_mib(self) -> int | None:
        return self.peak - self.base if self.ok else None


def engine(work: Path, shape: str, device: str, drop_caches: bool = True) -> list[tuple[str, str, str, str]]:
    dims = SHAPES[shape]
    gen_device = "cuda" if device.startswith("cuda") else "cpu"
    model_bytes = sum(__import__("math").prod(s) * 2 for _, s in stream.tensor_shapes(dims))
    need = 4 * model_bytes + (2 << 30)  # F, A, U, one output at a time, slack
    free = shutil.disk_usage(work).free
    if free < need:
        return [(f"engine {shape}", "SKIP", f"{free / 1e9:.0f} GB free in {work}, needs {need / 1e9:.0f} GB", "")]
    t0 = time.perf_counter()
    f, a, u = (work / f"{shape}-{n}" for n in "FAU")
    for k, root in enumerate((f, a, u)):
        stream.write_synthetic(root, dims, seed=k, shard_bytes=5 * 10**9, device=gen_device)
    built = time.perf_counter() - t0
    print(f"  built 3 x {model_bytes / 1e9:.1f} GB ({shape}) in {built:.0f}s", flush=True)
    cold = drop_caches and stream.can_drop_caches()
    cache = "cold" if cold else ("warm (drop_caches not permitted)" if drop_caches else "warm (dry run: cache not dropped)")
    rows = []
    nbytes, secs = stream.read_files([f])
    rows.append(("read one checkpoint", f"{secs:.2f}", f"{nbytes / secs / 1e9:.2f} GB/s", cache))

    def timed(label: str, cmd: list[str], out: Path, vram_file: Path | None) -> None:
        shutil.rmtree(out, ignore_errors=True)
        if cold:
            stream.can_drop_caches()
        with GpuMemoryPoll() as poll:
            r = stream.run_child(cmd, work / f"{out.name}.log")
        vram = []
        if vram_file and vram_file.is_file():
            vram.append(f"torch {json.loads(vram_file.read_text())['max_memory_reserved'] / 2**30:.2f} GiB")
        if poll.used_mib is not None:
            vram.append(f"nvidia-smi +{poll.used_mib / 1024:.2f} GiB")
        rows.append((label, f"{r['wall_s']:.2f}", f"RSS {r['peak_rss_mib'] / 1024:.2f} GiB" + ("; VRAM " + ", ".join(vram) if vram else ""), cache))
        print(f"  {label}: {r['wall_s']:.1f}s, peak RSS {r['peak_rss_mib']:.0f} MiB, {', '.join(vram) or 'no VRAM figure'}", flush=True)
        shutil.rmtree(out, ignore_errors=True)  # disk: only one 13.5 GB output at a time

    out = work / f"{shape}-out"
    timed(f"bare torch loop ({device})", [sys.executable, str(ROOT / "benchmarks" / "stream.py"), "_bare", str(f), str(a), str(u), str(out), "0.5", device], out, None)
    vram_file = work / "resta-vram.json"
    timed(f"realign resta ({device})", [sys.executable, "-c", VRAM_WRAPPER, str(vram_file), "-q", "realign", "resta", "-f", str(f), "-a", str(a), "-u", str(u),
                                        "-o", str(out), "--dtype", "bfloat16", "--device", device, "--json"], out, vram_file)  # fmt: skip
    for root in (f, a, u):
        shutil.rmtree(root, ignore_errors=True)
    return rows


# -- (4) report --------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-dry-run", action="store_true", help="CPU on both sides and a tiny engine shape: checks the script without a GPU")
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: a new one under $TMPDIR; removed at the end)")
    ap.add_argument("--shape", choices=sorted(SHAPES), default=None, help="engine shape (default 7b; tiny with --cpu-dry-run)")
    ap.add_argument("--skip-engine", action="store_true", help="only steps (1)-(2)")
    args = ap.parse_args(argv)
    import torch

    dry = args.cpu_dry_run or os.environ.get("LLMGUARD_GPU_DRY_RUN") == "1"
    if not dry and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu-dry-run to check the script on the CPU", file=sys.stderr)
        return 4
    other = "cpu" if dry else "cuda"
    shape = args.shape or ("tiny" if dry else "7b")
    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    work = args.work or Path(tempfile.mkdtemp(prefix="llmguard-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"llmguard GPU check: devices cpu vs {other}, engine shape {shape}, card {card}, torch {torch.__version__}, work {work}", flush=True)
    try:
        print("(1) tiny inputs", flush=True)
        p = build_tiny(work / "tiny")
        print(f"(2) verbs: --device cpu vs --device {other}", flush=True)
        verbs = verb_checks(p, work / "verbs", ("cpu", other))
        engine_rows = []
        if not args.skip_engine:
            print(f"(3) engine: {shape} bf16, --device {other}", flush=True)
            engine_rows = engine(work, shape, other, drop_caches=not dry)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - t0
    print()
    print(f"| check (cpu vs {other}) | result | detail |")
    print("|---|---|---|")
    for name, ok, detail in verbs:
        print(f"| {name} | {'PASS' if ok else 'FAIL'} | {detail} |")
    for label, secs, detail, cache in engine_rows:
        print(f"| engine {shape}: {label} | {secs} s | {detail}; {cache} cache |")
    print(f"\n{sum(ok for _, ok, _ in verbs)}/{len(verbs)} verbs PASS; total {total:.0f} s")
    return 0 if all(ok for _, ok, _ in verbs) else 1


if __name__ == "__main__":
    sys.exit(main())
