#!/usr/bin/env python
"""``llmguard realign nlsr`` benchmark: time and peak memory on a synthetic 1B-shaped Llama.

Builds (once, under ``--work``) a TinyLlama-1.1B-shaped bf16 base checkpoint with random weights
(written tensor by tensor, never whole in memory), a word-level tokenizer over its 32k vocabulary,
an "aligned" LoRA adapter (r 16 on all seven projections) and a "fine-tuned" adapter that
continues it (factors plus noise), and random calibration pairs. Then runs, each as its own
child process so peak RSS is the run's own (the child's ``VmHWM``, polled; inputs are built in a
separate process so the parent stays small):

1. ``--scorer magnitude``: the weight-space stages only (no calibration pass);
2. ``--scorer actsvd --calibration-mode layerwise``: one decoder layer on the device at a time;
3. ``--scorer actsvd --calibration-mode whole``: the model loaded whole, for comparison;
4. ``--scorer magnitude --unit weight``: single ΔW weights as units, so a full checkpoint is
   written and every module's weight-level mask (one flag per weight) must outlive scoring;
5. the same as 1, 2 and 4 on a 3-layer model with the same tensor shapes ("250m"), to show that
   peak memory does not grow with the number of layers.

``--runs`` picks a subset (magnitude, layerwise, whole, weight).

    python benchmarks/nlsr.py --work /tmp/nlsr-bench --samples 32 --seq 64

Prints a Markdown table (stage times from the run's manifest) for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {
    "1b": dict(hidden=2048, intermediate=5632, layers=22, heads=32, kv_heads=4, vocab=32000),
    "250m": dict(hidden=2048, intermediate=5632, layers=3, heads=32, kv_heads=4, vocab=32000),
}
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def build_model(root: Path, dims: dict, seed: int = 0) -> None:
    """Config, tokenizer and bf16 shards (one per decoder layer) with an index."""
    import torch
    from safetensors.torch import save_file

    if (root / "model.safetensors.index.json").is_file():
        return
    root.mkdir(parents=True, exist_ok=True)
    h, i, v = dims["hidden"], dims["intermediate"], dims["vocab"]
    kv = h // dims["heads"] * dims["kv_heads"]
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h, "intermediate_size": i,
        "num_hidden_layers": dims["layers"], "num_attention_heads": dims["heads"], "num_key_value_heads": dims["kv_heads"],
        "vocab_size": v, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    }
    (root / "config.json").write_text(json.dumps(config, indent=2))
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)

    groups: list[dict[str, torch.Tensor]] = [{"model.embed_tokens.weight": rand(v, h)}]
    weight_map: dict[str, str] = {}
    names = []
    for n in range(dims["layers"]):
        p = f"model.layers.{n}."
        groups.append({
            p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
            p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
            p + "self_attn.q_proj.weight": rand(h, h), p + "self_attn.k_proj.weight": rand(kv, h),
            p + "self_attn.v_proj.weight": rand(kv, h), p + "self_attn.o_proj.weight": rand(h, h),
            p + "mlp.gate_proj.weight": rand(i, h), p + "mlp.up_proj.weight": rand(i, h), p + "mlp.down_proj.weight": rand(h, i),
        })
        names.append(n)
    groups.append({"model.norm.weight": torch.ones(h, dtype=torch.bfloat16), "lm_head.weight": rand(v, h)})
    total = 0
    for k, group in enumerate(groups):
        file = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file(group, str(root / file), metadata={"format": "pt"})
        for name, t in group.items():
            weight_map[name] = file
            total += t.numel() * 2
        del group
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    build_tokenizer(root, v)


def build_tokenizer(root: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for k in range(3, vocab_size):
        vocab[f"w{k}"] = k
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>").save_pretrained(root)


def build_adapters(base: Path, dims: dict, aligned: Path, finetuned: Path, rank: int = 16, seed: int = 1) -> None:
    import torch
    from safetensors.torch import save_file

    if (finetuned / "adapter_model.safetensors").is_file():
        return
    h, i = dims["hidden"], dims["intermediate"]
    kv = h // dims["heads"] * dims["kv_heads"]
    shapes = {"q_proj": (h, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, h), "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i)}
    g = torch.Generator().manual_seed(seed)
    al, ft = {}, {}
    for n in range(dims["layers"]):
        for proj, (d_out, d_in) in shapes.items():
            part = "self_attn" if proj in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            key = f"base_model.model.model.layers.{n}.{part}.{proj}"
            a = torch.randn(rank, d_in, generator=g) / d_in**0.5
            b = torch.randn(d_out, rank, generator=g) * 0.01
            al[f"{key}.lora_A.weight"], al[f"{key}.lora_B.weight"] = a, b
            ft[f"{key}.lora_A.weight"] = a + 0.1 * torch.randn(a.shape, generator=g) / d_in**0.5
            ft[f"{key}.lora_B.weight"] = b + 0.01 * torch.randn(b.shape, generator=g)
    for root, tensors in ((aligned, al), (finetuned, ft)):
        root.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(root / "adapter_model.safetensors"), metadata={"format": "pt"})
        config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(TARGETS),
                  "base_model_name_or_path": str(base), "task_type": "CAUSAL_LM", "fan_in_fan_out": False, "bias": "none"}
        (root / "adapter_config.json").write_text(json.dumps(config, indent=2))


def build_calibration(path: Path, vocab: int, samples: int, seq: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for _ in range(samples):
            words = lambda n: " ".join(f"w{rng.randrange(3, vocab)}" for _ in range(n))  # noqa: E731
            fh.write(json.dumps({"prompt": words(seq // 4), "response": words(seq - seq // 4)}) + "\n")


def run_child(label: str, args: list[str], out: Path) -> dict:
    result = _run_child(label, args, out)
    print(json.dumps({k: v for k, v in result.items() if k != "stdout"}), file=sys.stderr, flush=True)
    return result


def _run_child(label: str, args: list[str], out: Path) -> dict:
    """One ``llmguard realign nlsr`` child; returns wall time, child peak RSS and manifest stages."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "llmguard", "-q", "realign", "nlsr", *args, "-o", str(out), "--device", "cpu"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Peak RSS from the child's own VmHWM (per address space, reset at exec). ru_maxrss of a child
    # is not usable here: Linux carries the forking parent's peak across exec into the child.
    peak_kib = 0
    while proc.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak_kib = max(peak_kib, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed:\n{stderr}")
    manifest = json.loads((out / "llmguard.json").read_text())
    return {"label": label, "wall_s": round(wall, 1), "peak_rss_mib": round(peak_kib / 1024), "stages": {s["name"]: s["seconds"] for s in manifest["stages"]}, "stdout": stdout.strip()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/llmguard-nlsr-bench"))
    parser.add_argument("--samples", type=int, default=32, help="calibration pairs")
    parser.add_argument("--seq", type=int, default=64, help="tokens per calibration pair")
    parser.add_argument("--shapes", default="250m,1b", help="comma-separated shapes to run, in order")
    parser.add_argument("--skip-whole", action="store_true", help="skip the whole-model calibration run")
    parser.add_argument("--runs", default="magnitude,layerwise,whole,weight", help="comma-separated runs: magnitude, layerwise, whole, weight")
    parser.add_argument("--build-only", metavar="SHAPE", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.build_only:
        dims, root = SHAPES[opts.build_only], opts.work / opts.build_only
        build_model(root / "base", dims)
        build_adapters(root / "base", dims, root / "aligned", root / "finetuned")
        build_calibration(root / "calib.jsonl", dims["vocab"], opts.samples, opts.seq)
        return
    results = []
    for shape in opts.shapes.split(","):
        dims = SHAPES[shape]
        root = opts.work / shape
        t0 = time.perf_counter()
        calib = root / "calib.jsonl"
        subprocess.run([sys.executable, __file__, "--build-only", shape, "--work", str(opts.work), "--samples", str(opts.samples),
                        "--seq", str(opts.seq)], check=True)
        print(f"[{shape}] inputs ready in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        # element units (adapter in, adapter out) as when these numbers were first taken; the
        # weight-unit run below is the one that writes a full checkpoint
        common = ["-a", str(root / "aligned"), "-f", str(root / "finetuned"), "--unit", "element"]
        runs = set(opts.runs.split(","))
        if "magnitude" in runs:
            results.append(run_child(f"{shape} magnitude (weight space only)", common + ["--scorer", "magnitude"], root / "out"))
        if "weight" in runs:
            results.append(run_child(f"{shape} magnitude, --unit weight (full checkpoint out)", [*common[:4], "--scorer", "magnitude", "--unit", "weight", "--budget", "0.5",
                                                                                        "--mask-ratio", "0.2"], root / "out"))
        calib_args = common + ["--scorer", "actsvd", "-c", str(calib), "--calibration-samples", str(opts.samples)]
        if "layerwise" in runs:
            results.append(run_child(f"{shape} actsvd, layerwise", calib_args + ["--calibration-mode", "layerwise"], root / "out"))
        if shape == "1b" and "whole" in runs and not opts.skip_whole:
            results.append(run_child(f"{shape} actsvd, whole model", calib_args + ["--calibration-mode", "whole"], root / "out"))
    print(f"\ncalibration: {opts.samples} pairs x {opts.seq} tokens (response tokens only count); CPU, {os.cpu_count()} cores\n")
    print("| run | wall s | peak RSS MiB | calibration pass + scoring s | transplant + write s |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        st = r["stages"]
        calib_s = st.get("calibration pass + scoring", st.get("scoring", 0.0))
        print(f"| {r['label']} | {r['wall_s']} | {r['peak_rss_mib']} | {calib_s:.1f} | {st.get('transplant + write', 0.0):.1f} |")


if __name__ == "__main__":
    main()
