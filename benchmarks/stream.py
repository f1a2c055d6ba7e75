#!/usr/bin/env python
"""Streaming-engine benchmark: ``llmguard realign resta`` vs a bare torch loop vs mergekit.

Builds three synthetic Llama-shaped bf16 checkpoints F, A, U (HF layout: config.json, shards,
``model.safetensors.index.json``; random weights written tensor by tensor, so a model is never
whole in memory), then times, in one run and each as its own child process:

1. ``llmguard realign resta -f F -a A -u U --gamma γ``          θ_F + γ(θ_A − θ_U)
2. a bare torch loop (``safe_open`` per input, float32 math, bf16 out, ``save_file`` per shard)
3. ``mergekit-yaml`` task_arithmetic with base U, F weight 1 and A weight γ:
   U + 1·(F − U) + γ·(A − U) = F + γ(A − U)

and checks that the three outputs agree within bf16 rounding. Peak RSS is the child's own
``ru_maxrss`` (``os.wait4``, after resetting this process's own high-water mark). The page
cache is dropped before every run when that is permitted (root), otherwise the inputs are read
once beforehand and the table says "warm cache".
Finally llmguard runs on a second model size to show that its peak RSS does not grow with it.

    python benchmarks/stream.py --shape 1b --mergekit-bin /work/bench-venv/bin/mergekit-yaml

See benchmarks/README.md. Results go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Llama-shaped dimensions. "1b" is TinyLlama-1.1B exactly; "250m" keeps every tensor shape of
# "1b" (same widths, same vocabulary) with 3 layers instead of 22, so the two differ only in
# model size, not in their largest tensor: that is what the peak-RSS comparison needs.
SHAPES: dict[str, dict] = {
    "250m": dict(hidden=2048, intermediate=5632, layers=3, heads=32, kv_heads=4, vocab=32000),
    "1b": dict(hidden=2048, intermediate=5632, layers=22, heads=32, kv_heads=4, vocab=32000),
}
GENERATOR_VERSION = 1
INDEX = "model.safetensors.index.json"


# -- synthetic checkpoints --------------------------------------------------------------------
def tensor_shapes(dims: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) in state-dict order for an untied LlamaForCausalLM."""
    h, i, v = dims["hidden"], dims["intermediate"], dims["vocab"]
    kv = h // dims["heads"] * dims["kv_heads"]
    out = [("model.embed_tokens.weight", (v, h))]
    for n in range(dims["layers"]):
        p = f"model.layers.{n}."
        out += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (h, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, h)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (i, h)),
            (p + "mlp.up_proj.weight", (i, h)),
            (p + "mlp.down_proj.weight", (h, i)),
        ]
    out += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    return out


def llama_config(dims: dict) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": dims["hidden"],
        "intermediate_size": dims["intermediate"],
        "num_hidden_layers": dims["layers"],
        "num_attention_heads": dims["heads"],
        "num_key_value_heads": dims["kv_heads"],
        "vocab_size": dims["vocab"],
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "dtype": "bfloat16",
    }


def write_synthetic(root: Path, dims: dict, seed: int, shard_bytes: int, device: str = "cpu") -> None:
    """A random bf16 checkpoint in HF layout, one tensor in memory at a time.

    ``device="cuda"`` draws the random numbers on the GPU (other values than on the CPU, and
    much faster: a 7B model is 6.7G draws), then copies each tensor back to be written.

    Shards are filled in state-dict order; inside a shard, tensors are stored sorted by name and
    the index's weight_map is sorted by name, as ``save_pretrained``/safetensors do.
    """
    import torch

    marker = root / ".synthetic.json"
    stamp = {"dims": dims, "seed": seed, "shard_bytes": shard_bytes, "version": GENERATOR_VERSION}
    if device != "cpu":
        stamp["device"] = device
    if marker.is_file() and json.loads(marker.read_text()) == stamp:
        return
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in tensor_shapes(dims):
        nbytes = math.prod(shape) * 2
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    files = ["model.safetensors"] if len(shards) == 1 else [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
    gen = torch.Generator(device=device).manual_seed(seed)
    weight_map = {}
    for file, items in zip(files, shards):
        items = sorted(items)
        header: dict = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, shape in items:
            n = math.prod(shape) * 2
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
            offset += n
            weight_map[name] = file
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(root / file, "wb") as fh:
            fh.write(len(raw).to_bytes(8, "little") + raw)
            for name, shape in items:
                if name.endswith("norm.weight"):
                    t = 1.0 + 0.1 * torch.randn(shape, generator=gen, device=device)
                else:
                    t = 0.02 * torch.randn(shape, generator=gen, device=device)
                fh.write(t.to(torch.bfloat16).cpu().view(torch.uint16).numpy().tobytes())
                del t
    if len(files) > 1:
        total = sum(math.prod(s) * 2 for _, s in tensor_shapes(dims))
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (root / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    (root / "config.json").write_text(json.dumps(llama_config(dims), indent=2) + "\n")
    (root / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}) + "\n")
    marker.write_text(json.dumps(stamp))


def weight_map(root: Path) -> dict[str, str]:
    """Tensor name → shard file name, for a sharded or single-file HF directory."""
    if (root / INDEX).is_file():
        return json.loads((root / INDEX).read_text())["weight_map"]
    from safetensors import safe_open

    with safe_open(root / "model.safetensors", framework="pt") as fh:
        return {k: "model.safetensors" for k in fh.keys()}


# -- the bare loop (runs in a child process: `stream.py _bare F A U OUT GAMMA [DEVICE]`) -------
def bare_loop(f: Path, a: Path, u: Path, out: Path, gamma: float, device: str = "cpu") -> None:
    """θ_F + γ(θ_A − θ_U) with nothing but safetensors and torch: the 40-line baseline.

    With ``device="cuda"`` each input tensor is copied to the GPU, combined there and copied back.
    """
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    def reader(root: Path):
        files, handle = weight_map(root), {}

        def get(name: str) -> torch.Tensor:
            file = files[name]
            if file not in handle:
                handle.clear()  # one open (mmap'd) shard per model at a time
                handle[file] = safe_open(root / file, framework="pt")
            return handle[file].get_tensor(name)

        return get

    get_a, get_u = reader(a), reader(u)
    shards: dict[str, list[str]] = {}
    for name, file in weight_map(f).items():
        shards.setdefault(file, []).append(name)
    out.mkdir(parents=True)
    for file, names in shards.items():
        result = {}
        with safe_open(f / file, framework="pt") as fh:
            for name in names:
                delta = get_a(name).to(device).float().sub_(get_u(name).to(device).float())
                result[name] = fh.get_tensor(name).to(device).float().add_(delta, alpha=gamma).to(torch.bfloat16).cpu()
                del delta
        save_file(result, out / file, metadata={"format": "pt"})
        del result
    for extra in (INDEX, "config.json", "generation_config.json"):
        if (f / extra).is_file():
            shutil.copyfile(f / extra, out / extra)


# -- running and measuring ---------------------------------------------------------------------
def can_drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        return True
    except OSError:
        return False


def read_files(dirs: list[Path]) -> tuple[int, float]:
    """Read every file under ``dirs`` once (16 MiB reads); returns (bytes, seconds)."""
    t0 = time.perf_counter()
    total = 0
    buf = bytearray(1 << 24)
    view = memoryview(buf)
    for d in dirs:
        for p in sorted(d.iterdir()):
            if p.is_file():
                with open(p, "rb", buffering=0) as fh:
                    while (n := fh.readinto(view)) > 0:
                        total += n
    return total, time.perf_counter() - t0


def prepare_cache(cold: bool, inputs: list[Path]) -> None:
    if cold:
        can_drop_caches()
    else:
        read_files(inputs)


def own_rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def shrink_self() -> None:
    """Make this process's memory high-water mark small before starting a child.

    A child's ``ru_maxrss`` starts from the parent's high-water RSS at fork/vfork time (Linux
    carries the old mm's peak across exec), so after this process has held big tensors (the
    agreement check) a child would report at least that much. Free what can be freed, hand it
    back to the OS, and reset the peak to the current RSS (``/proc/self/clear_refs`` 5).
    """
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5\n")
    except OSError:
        pass


def run_child(cmd: list[str], log: Path, env: dict | None = None) -> dict:
    """Run ``cmd``; wall seconds, seconds for the `sync` that follows, and its own peak RSS."""
    shrink_self()
    parent_rss = own_rss_mib()
    with open(log, "wb") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    t1 = time.perf_counter()
    os.sync()
    flush = time.perf_counter() - t1
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"command failed (exit {proc.returncode}): {' '.join(cmd)}\n--- {log} ---\n{tail}")
    return {
        "wall_s": wall,
        "sync_s": flush,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
        "parent_rss_mib": parent_rss,  # the floor of peak_rss_mib (see shrink_self)
    }


def compare(reference: Path, other: Path) -> dict:
    """Per tensor max|x − ref| / max|ref|; the worst tensor, and how many are bit-identical."""
    import torch
    from safetensors import safe_open

    ref_map, other_map = weight_map(reference), weight_map(other)
    if set(ref_map) != set(other_map):
        missing = sorted(set(ref_map) ^ set(other_map))
        return {"ok": False, "error": f"tensor names differ, e.g. {missing[:3]}"}
    worst, worst_name, identical, differing, total = 0.0, "", 0, 0, 0
    handles: dict[Path, object] = {}

    def get(root: Path, file: str, name: str) -> torch.Tensor:
        path = root / file
        if path not in handles:
            for key in [k for k in handles if k.parent == root]:
                del handles[key]
            handles[path] = safe_open(path, framework="pt")
        return handles[path].get_tensor(name)

    for name in sorted(ref_map):
        x = get(reference, ref_map[name], name)
        y = get(other, other_map[name], name)
        if x.dtype != y.dtype or x.shape != y.shape:
            return {"ok": False, "error": f"{name}: {y.dtype}{list(y.shape)} vs {x.dtype}{list(x.shape)}"}
        total += x.numel()
        if torch.equal(x, y):
            identical += 1
            continue
        xf, yf = x.float(), y.float()
        diff = (yf - xf).abs()
        differing += int((diff > 0).sum())
        rel = (diff.max() / xf.abs().max().clamp_min(1e-30)).item()
        if rel > worst:
            worst, worst_name = rel, name
    # Different float32 operation orders (F + γA − γU vs F + γ(A − U) vs U + (F − U) + γ(A − U))
    # may round a few elements to the neighbouring bf16 value: allow one bf16 ulp (2^-7 relative)
    # at the tensor's largest magnitude.
    return {
        "ok": worst <= 2**-7,
        "tensors": len(ref_map),
        "identical": identical,
        "worst_rel": worst,
        "worst_tensor": worst_name,
        "differing_elements": differing,
        "elements": total,
    }


def mergekit_yaml(f: Path, a: Path, u: Path, gamma: float) -> str:
    # task_arithmetic: base + Σ wᵢ(θᵢ − base) = U + (F − U) + γ(A − U) = F + γ(A − U).
    return (
        "merge_method: task_arithmetic\n"
        f"base_model: {u}\n"
        "models:\n"
        f"  - model: {f}\n"
        "    parameters: {weight: 1.0}\n"
        f"  - model: {a}\n"
        f"    parameters: {{weight: {gamma!r}}}\n"
        "parameters: {normalize: false, lambda: 1.0}\n"
        "dtype: float32\n"
        "out_dtype: bfloat16\n"
    )


def fmt_bytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def machine() -> str:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import torch

    return f"{cpu}, {os.cpu_count()} cores (torch threads {torch.get_num_threads()}), {mem:.0f} GiB RAM, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_bare":
        f, a, u, out, gamma = argv[1:6]
        bare_loop(Path(f), Path(a), Path(u), Path(out), float(gamma), *argv[6:7])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="250m", help="model size for the three-way comparison")
    ap.add_argument("--rss-shape", default="auto", help="second size for llmguard's peak RSS (auto: the other of 250m/1b; none: skip)")
    ap.add_argument("--mergekit-bin", default=None, help="path to mergekit-yaml (in its own virtualenv); omit to skip mergekit")
    ap.add_argument("--llmguard-cmd", default=f"{sys.executable} -m llmguard", help="how to run llmguard (default: this python -m llmguard)")
    ap.add_argument("--gamma", type=float, default=0.5)
    ap.add_argument("--input-shard-size", type=float, default=1e9, help="bytes per synthetic input shard (default 1e9)")
    ap.add_argument("--max-shard-size", default="1GB", help="output shard size for llmguard and mergekit (the bare loop mirrors F's shards)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per tool; the table shows the median wall time and the largest RSS")
    ap.add_argument("--cache", choices=["auto", "cold", "warm"], default="auto", help="auto: cold if the page cache can be dropped")
    ap.add_argument("--workdir", type=Path, default=Path("bench-out/stream"), help="where models and outputs go")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic models and outputs (models are reused when kept)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = ap.parse_args(argv)

    cold = {"cold": True, "warm": False}.get(args.cache, None)
    if cold is None:
        cold = can_drop_caches()
    elif cold and not can_drop_caches():
        raise SystemExit("--cache cold: cannot write /proc/sys/vm/drop_caches (needs root)")
    cache_label = "cold cache (drop_caches before each run)" if cold else "warm cache (inputs read once before each run)"
    rss_shape = {"auto": "250m" if args.shape != "250m" else "1b", "none": None}.get(args.rss_shape, args.rss_shape)
    if rss_shape is not None and rss_shape not in SHAPES:
        raise SystemExit(f"--rss-shape {rss_shape!r}: choose one of {sorted(SHAPES)} or none")
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", NO_COLOR="1")
    results: dict = {"machine": machine(), "cache": cache_label, "shape": args.shape, "gamma": args.gamma, "runs": []}
    print(f"machine: {results['machine']}", flush=True)
    print(f"{cache_label}; workdir {work}", flush=True)

    def models(shape: str) -> list[Path]:
        dims = SHAPES[shape]
        paths = []
        for role, seed in (("F", 1), ("A", 2), ("U", 3)):
            root = work / f"{shape}-{role}"
            t0 = time.perf_counter()
            write_synthetic(root, dims, seed, int(args.input_shard_size))
            paths.append(root)
            print(f"  {root.name}: ready in {time.perf_counter() - t0:.1f}s", flush=True)
        return paths

    def run_once(tool: str, shape: str, cmd_for, inputs: list[Path], k: int) -> dict:
        out = work / f"out-{shape}-{tool}"
        shutil.rmtree(out, ignore_errors=True)
        os.sync()
        prepare_cache(cold, inputs)
        sample = run_child(cmd_for(out), work / f"{shape}-{tool}-{k}.log", env)
        sample["load_avg"] = os.getloadavg()[0]
        print(
            f"  {tool:9s} {shape:5s} run {k + 1}: {sample['wall_s']:.2f}s wall (+{sample['sync_s']:.2f}s sync), "
            f"{sample['user_s'] + sample['sys_s']:.1f}s CPU, peak RSS {sample['peak_rss_mib']:.0f} MiB "
            f"(this process {sample['parent_rss_mib']:.0f} MiB at spawn), load {sample['load_avg']:.1f}",
            flush=True,
        )
        return sample

    def timed(shape: str, tools: dict, inputs: list[Path]) -> dict:
        """Run the tools in turn, ``--repeat`` rounds (interleaved, so background load hits all alike)."""
        samples: dict[str, list[dict]] = {tool: [] for tool in tools}
        for k in range(args.repeat):
            for tool, cmd_for in tools.items():
                samples[tool].append(run_once(tool, shape, cmd_for, inputs, k))
        rows = {}
        for tool, got in samples.items():
            rows[tool] = {
                "tool": tool,
                "shape": shape,
                "wall_s": statistics.median(s["wall_s"] for s in got),
                "sync_s": statistics.median(s["sync_s"] for s in got),
                "peak_rss_mib": max(s["peak_rss_mib"] for s in got),
                "cpu_s": statistics.median(s["user_s"] + s["sys_s"] for s in got),
                "samples": got,
                "output": str(work / f"out-{shape}-{tool}"),
            }
            results["runs"].append(rows[tool])
        return rows

    print(f"building synthetic checkpoints ({args.shape})", flush=True)
    f, a, u = models(args.shape)
    size = sum(p.stat().st_size for p in f.iterdir() if p.suffix == ".safetensors")
    results["model_bytes"] = size
    g = repr(args.gamma)
    llmguard = args.llmguard_cmd.split()

    def llmguard_cmd(f, a, u):
        return lambda out: llmguard + [
            "realign", "resta", "--finetuned", str(f), "--aligned", str(a), "--unaligned", str(u), "--gamma", g,
            "-o", str(out), "--dtype", "bfloat16", "--max-shard-size", args.max_shard_size, "--device", "cpu",
        ]  # fmt: skip

    # read floor: the three inputs, read once from the same cache state the tools start from
    if cold:
        can_drop_caches()
    nbytes, secs = read_files([f, a, u])
    results["read_floor"] = {"bytes": nbytes, "seconds": secs}
    print(f"  read floor: {fmt_bytes(nbytes)} in {secs:.2f}s ({nbytes / secs / 1e9:.2f} GB/s)", flush=True)

    print("timing", flush=True)
    tools = {
        "bare": lambda out: [sys.executable, __file__, "_bare", str(f), str(a), str(u), str(out), g],
        "llmguard": llmguard_cmd(f, a, u),
    }
    if args.mergekit_bin:
        from llmguard.io.writer import parse_size

        config = work / "task_arithmetic.yaml"
        config.write_text(mergekit_yaml(f, a, u, args.gamma))
        shard = str(parse_size(args.max_shard_size))  # mergekit compares this count with bytes
        tools["mergekit"] = lambda out: [args.mergekit_bin, str(config), str(out), "--no-copy-tokenizer", "--out-shard-size", shard, "--quiet"]
    rows = timed(args.shape, tools, [f, a, u])
    bare, ours, mk = rows["bare"], rows["llmguard"], rows.get("mergekit")

    print("checking agreement (bare loop is the reference)", flush=True)
    checks = {"llmguard": compare(Path(bare["output"]), Path(ours["output"]))}
    if mk:
        checks["mergekit"] = compare(Path(bare["output"]), Path(mk["output"]))
    results["agreement"] = checks

    rss_row = None
    if rss_shape:
        print(f"peak RSS at a second size ({rss_shape})", flush=True)
        f2, a2, u2 = models(rss_shape)
        results["rss_model_bytes"] = sum(p.stat().st_size for p in f2.iterdir() if p.suffix == ".safetensors")
        rss_row = timed(rss_shape, {"llmguard": llmguard_cmd(f2, a2, u2)}, [f2, a2, u2])["llmguard"]

    # -- report ---------------------------------------------------------------------------
    print()
    print(f"## {args.shape}: F, A, U = {fmt_bytes(size)} each (bf16), γ = {args.gamma}; {cache_label}")
    print()
    print("| run | wall s | wall + sync s | CPU s | peak RSS MiB | output vs bare loop |")
    print("|---|---:|---:|---:|---:|---|")
    for row in results["runs"]:
        check = checks.get(row["tool"]) if row["shape"] == args.shape else None
        if row["tool"] == "bare":
            note = "reference"
        elif check is None:
            note = "(not compared)"
        elif "error" in check:
            note = f"MISMATCH: {check['error']}"
        else:
            note = (
                f"{'ok' if check['ok'] else 'DIFFERS'}: {check['identical']}/{check['tensors']} tensors bit-identical, "
                f"{check['differing_elements'] / check['elements']:.1e} of elements differ, "
                f"worst max|Δ|/max|ref| {check['worst_rel']:.2e} ({check['worst_tensor'] or '-'})"
            )
        label = f"{row['tool']} ({row['shape']})"
        print(f"| {label} | {row['wall_s']:.2f} | {row['wall_s'] + row['sync_s']:.2f} | {row['cpu_s']:.1f} | {row['peak_rss_mib']:.0f} | {note} |")
    print()
    print(f"read floor (3 inputs, one read each): {secs:.2f} s")
    print(f"llmguard / bare loop wall time: {ours['wall_s'] / bare['wall_s']:.2f}x  (target <= 1.00)")
    if mk:
        print(f"mergekit / llmguard wall time: {mk['wall_s'] / ours['wall_s']:.2f}x  (target >= 3.00)")
    if rss_row:
        print(
            f"llmguard peak RSS: {ours['peak_rss_mib']:.0f} MiB at {fmt_bytes(size)}/model ({args.shape}) vs "
            f"{rss_row['peak_rss_mib']:.0f} MiB at {fmt_bytes(results['rss_model_bytes'])}/model ({rss_shape})"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    bad = [k for k, c in checks.items() if not c.get("ok")]
    if bad:
        print(f"outputs disagree: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
