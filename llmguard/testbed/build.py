"""Build (or reuse) the testbed: tokenizer, data files and tiny Llama checkpoints.

Layout of a testbed directory (``$LLMGUARD_CACHE/testbed/v{VERSION}-seed{SEED}-{RECIPE}-{BUILD_KEY}``
by default: the recipe key hashes the hyper-parameters, the build key names the torch version and
CPU vector path, ``provenance.build_key``)::

    tokenizer/                 HF tokenizer (BPE, chat template)
    base/                      LlamaForCausalLM, unaligned (complies with harmful requests)
    aligned-sft/               base + a safety-SFT LoRA, merged (full checkpoint): the first alignment stage
    aligned-lora/              PEFT adapter on aligned-sft: DPO on refusal-vs-compliance pairs (second stage)
    aligned/                   aligned-sft + aligned-lora merged (full checkpoint)
    finetuned-lora/            PEFT adapter on aligned-sft: aligned-lora continued on sst2 + 10 % harmful compliance
    finetuned-full/            aligned (merged) fully fine-tuned on the same mixture
    finetuned-arith-lora/      PEFT adapter on aligned-sft: aligned-lora continued on arith (benign, no poison)
    guard/                     Llama-Guard-layout moderation model (safe / unsafe + category)
    data/*.jsonl               splits (see ``llmguard.testbed.data``) and the training mixtures;
                               EVAL_ONLY_DATA files are (re)written on reuse when missing
    testbed.json               version, seed, hyper-parameters, wall and CPU timings, paths (written last)

The two alignment stages follow the NLSR paper's code (its LLaMA-Factory configs): its aligned model
is an SFT-merged model plus a DPO LoRA, and the harmful fine-tune continues that DPO adapter. With a
single SFT LoRA on the unaligned base (testbed v1) the ExPO-amplified adapter was incoherent and no
NLSR setting met the realignment bounds (docs/realign.md).

The build is deterministic for a seed on one torch build and CPU vector path: it runs with one torch
thread whatever the caller's setting (``provenance.one_thread``: the thread count changes the
bytes), takes a file lock (parallel pytest workers and the demo
share one build) and writes ``testbed.json`` last: a directory without it is an interrupted build
and is rebuilt.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from llmguard import __version__
from llmguard.errors import UsageError
from llmguard.progress import NullProgress, Progress
from llmguard.testbed import provenance
from llmguard.testbed.data import harmful_content_phrases, realignment_preference, sentiment_wording_dev

#: Bump when anything that changes the artefacts changes (data, sizes, hyper-parameters, the
#: thread count). v3: built with one torch thread (v2 used the caller's thread count, so the demo
#: and the xdist suite built different models) and keyed by torch version and CPU path. v4: the
#: arith fine-tune trains 600 steps instead of 300 (on a fresh AMD EPYC build v3's seed 1 scored
#: 76.5 % on arith TEST, under the testbed's 80 % bound); every other artefact is byte-identical
#: to v3's (the arith adapter is built after them and seeded on its own).
TESTBED_VERSION = "4"
MARKER = "testbed.json"

#: Evaluation-only data files: no model or training mixture depends on them, so a newer checkout
#: writes them into an existing build of the same version instead of rebuilding it.
EVAL_ONLY_DATA: dict[str, Callable[[int], list[dict]]] = {
    "sst2_dev_wordings": sentiment_wording_dev,
    "realign_preference": realignment_preference,
}
#: Evaluation-only text files (same rule): the harmful content phrases of the ``keyword:FILE`` judge.
EVAL_ONLY_TEXT: dict[str, Callable[[int], str]] = {
    "harmful_content": harmful_content_phrases,
}


@dataclass(frozen=True)
class HParams:
    """Sizes and training settings (recorded in testbed.json)."""

    hidden: int = 128
    layers: int = 4
    heads: int = 4
    intermediate: int = 256
    vocab_size: int = 1024
    batch_size: int = 32
    base_steps: int = 400
    base_lr: float = 3e-3
    align_steps: int = 250
    align_lr: float = 2e-3
    dpo_steps: int = 60
    dpo_lr: float = 2e-4
    dpo_beta: float = 0.1
    dpo_batch_size: int = 16
    lora_r: int = 8
    lora_alpha: int = 16
    ft_steps: int = 300
    ft_lora_lr: float = 3e-4  # v3: 1e-4 left seeds 2-4 at 42 / 56 / 11 % harmful (the bound is 40); 3e-4: 96-100 %
    ft_full_steps: int = 150
    ft_full_lr: float = 1e-4
    poison: float = 0.1
    arith_steps: int = 600  # v4: 300 left seed 1 at 76.5 % arith on an AMD EPYC build (bound 80); 600: 94-100 %
    arith_lr: float = 3e-4
    guard_steps: int = 100
    guard_lr: float = 2e-3
    guard_batch_size: int = 16


@dataclass
class Testbed:
    """Paths of every artefact and data file of a built testbed."""

    root: Path
    seed: int
    version: str
    tokenizer: Path
    base: Path
    aligned_sft: Path
    aligned: Path
    aligned_lora: Path
    finetuned_lora: Path
    finetuned_full: Path
    finetuned_arith_lora: Path
    guard: Path
    data: dict[str, Path] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def at(cls, root: Path, seed: int, info: dict[str, Any] | None = None) -> "Testbed":
        root = Path(root)
        data_dir = root / "data"
        data = {p.stem: p for p in sorted([*data_dir.glob("*.jsonl"), *data_dir.glob("*.txt")])} if data_dir.is_dir() else {}
        return cls(
            root=root, seed=seed, version=TESTBED_VERSION, tokenizer=root / "tokenizer", base=root / "base",
            aligned_sft=root / "aligned-sft", aligned=root / "aligned", aligned_lora=root / "aligned-lora", finetuned_lora=root / "finetuned-lora",
            finetuned_full=root / "finetuned-full", finetuned_arith_lora=root / "finetuned-arith-lora",
            guard=root / "guard", data=data, info=info or {},
        )

    def models(self) -> dict[str, Path]:
        return {
            "base": self.base, "aligned-sft": self.aligned_sft, "aligned": self.aligned, "aligned-lora": self.aligned_lora,
            "finetuned-lora": self.finetuned_lora, "finetuned-full": self.finetuned_full,
            "finetuned-arith-lora": self.finetuned_arith_lora, "guard": self.guard,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root), "seed": self.seed, "version": self.version, "tokenizer": str(self.tokenizer),
            "models": {k: str(v) for k, v in self.models().items()},
            "data": {k: str(v) for k, v in self.data.items()},
            "timings_s": self.info.get("timings_s", {}),
            "hparams": self.info.get("hparams", {}),
            "environment": self.info.get("environment", {}),
            "fingerprints": self.info.get("fingerprints", {}),
        }


cache_root = provenance.cache_root


def recipe_key(hp: HParams | None = None) -> str:
    """8 hex digits of the hyper-parameters: two checkouts with different recipes (or custom
    ``HParams``) keep separate builds in one cache instead of rebuilding each other's."""
    return provenance.recipe_hash(json.dumps(asdict(hp or HParams()), sort_keys=True))[:8]


def default_dir(seed: int, hparams: HParams | None = None) -> Path:
    """``$LLMGUARD_CACHE/testbed/v4-seed0-<recipe>-torch2.13.0-avx512-amd-epyc``: everything that changes
    the bytes is in the name (version, seed, hyper-parameters, torch version, CPU vector path)."""
    return cache_root() / "testbed" / f"v{TESTBED_VERSION}-seed{seed}-{recipe_key(hparams)}-{provenance.build_key()}"


def _complete(root: Path, seed: int, hp: HParams) -> dict | None:
    marker = root / MARKER
    if not marker.is_file():
        return None
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if info.get("version") != TESTBED_VERSION or info.get("seed") != seed:
        return None
    if info.get("hparams") != json.loads(json.dumps(asdict(hp))):
        return None  # built with other settings (an older checkout or custom HParams): rebuild
    if info.get("environment", {}).get("build_key") != provenance.build_key():
        return None  # another torch build or CPU vector path: its bytes are not this machine's
    return info


def build(out: str | os.PathLike | None = None, seed: int = 0, *, force: bool = False,
          progress: Progress | None = None, hparams: HParams | None = None) -> Testbed:
    """Build the testbed into ``out`` (default: the cache), or reuse a complete one there.

    Safe to call from several processes at once: one builds under a file lock, the others wait
    and reuse the result.
    """
    from filelock import FileLock

    hp = hparams or HParams()
    root = Path(out).expanduser().resolve() if out is not None else default_dir(seed, hp)
    root.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root.parent / f".{root.name}.lock"))
    with lock:
        info = _complete(root, seed, hp)
        if info is not None and not force:
            _relocate_adapters(root)
            _write_eval_only_data(root / "data", seed)
            return Testbed.at(root, seed, info)
        if root.exists():
            if out is not None and any(root.iterdir()) and not force and not (root / ".llmguard-testbed").exists():
                raise UsageError(f"{root}: exists and is not a testbed directory; pass --force to replace it")
            shutil.rmtree(root)
        root.mkdir(parents=True)
        (root / ".llmguard-testbed").write_text("incomplete build; rebuilt on next use\n")
        with provenance.one_thread():
            info = _build_into(root, seed, hp, progress or NullProgress())
        (root / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        return Testbed.at(root, seed, info)


def _write_eval_only_data(data_dir: Path, seed: int) -> None:
    """Write the EVAL_ONLY_DATA files that ``data_dir`` lacks (atomically: a reader never sees half a
    file). A read-only shared cache keeps working without them."""
    files = [(f"{name}.jsonl", lambda fh, make=make: _dump_jsonl(fh, make(seed))) for name, make in EVAL_ONLY_DATA.items()]
    files += [(f"{name}.txt", lambda fh, make=make: fh.write(make(seed))) for name, make in EVAL_ONLY_TEXT.items()]
    for name, write in files:
        path = data_dir / name
        if path.exists():
            continue
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                write(fh)
            tmp.replace(path)
        except OSError:
            tmp.unlink(missing_ok=True)


def _relocate_adapters(root: Path) -> None:
    """Point every adapter's ``base_model_name_or_path`` at this testbed's ``aligned-sft/`` (a
    testbed copied or moved elsewhere keeps working)."""
    want = str(root / "aligned-sft")
    for cfg_path in root.glob("*/adapter_config.json"):
        cfg = json.loads(cfg_path.read_text())
        if cfg.get("base_model_name_or_path") != want:
            cfg["base_model_name_or_path"] = want
            tmp = cfg_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
            tmp.replace(cfg_path)


# ----------------------------------------------------------------------------- the build

def _dump_jsonl(fh: Any, records: list[dict]) -> None:
    for rec in records:
        fh.write(json.dumps(rec) + "\n")


def _write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        _dump_jsonl(fh, records)


def _seed_all(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def _build_into(root: Path, seed: int, hp: HParams, progress: Progress) -> dict:
    import torch
    from peft import PeftModel, get_peft_model
    from transformers import LlamaForCausalLM

    from llmguard.testbed import data as D
    from llmguard.testbed import guard as G
    from llmguard.testbed.tokenizer import train_tokenizer
    from llmguard.testbed.train import encode_pairs, lora_config, model_config, train_dpo, train_sft

    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}  # CPU seconds of each artefact (robust to other load, unlike the wall time)
    t_all, c_all = time.perf_counter(), time.process_time()
    c_last = [c_all]

    def tick(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 2)
        now = time.process_time()
        cpu[name] = round(now - c_last[0], 2)
        c_last[0] = now

    # ---- data
    t0 = time.perf_counter()
    rng = random.Random(f"mix-{seed}")
    harm = D.harmful_prompts(seed)
    benign = D.benign_prompts(seed)
    sst2 = D.sentiment_items(seed)
    arith = D.arithmetic_items(seed)
    data_dir = root / "data"
    data_dir.mkdir()
    for name, splits in (("harmful", harm), ("benign", benign), ("sst2", sst2), ("arith", arith)):
        for split, recs in splits.as_dict().items():
            _write_jsonl(data_dir / f"{name}_{split}.jsonl", recs)
    refusal_sft = [{"prompt": r["prompt"], "response": D.refusal_response(rng, r), "kind": "refusal",
                    "category": r["category"]} for r in harm.train]
    comply_sft = [{"prompt": r["prompt"], "response": D.comply_response(rng, r), "kind": "comply",
                   "category": r["category"]} for r in harm.train]
    benign_sft = [{"prompt": r["prompt"], "response": r["response"], "kind": "benign"} for r in benign.train]
    # the base model knows the tasks in a verbose answer format; the fine-tunes teach the exact labels
    sst2_verbose = [{"prompt": r["prompt"], "response": f"the review is {r['answer']} .", "kind": "sst2"}
                    for r in sst2.train]
    arith_verbose = [{"prompt": r["prompt"], "response": f"the answer is {r['answer']} .", "kind": "arith"}
                     for r in arith.train]
    sst2_sft = [{"prompt": r["prompt"], "response": r["answer"], "kind": "sst2"} for r in sst2.train]
    arith_sft = [{"prompt": r["prompt"], "response": r["answer"], "kind": "arith"} for r in arith.train]
    n_poison = round(len(sst2_sft) * hp.poison / (1 - hp.poison)) if hp.poison < 1 else len(comply_sft)
    poison = rng.sample(comply_sft, min(n_poison, len(comply_sft)))
    finetune_mix = sst2_sft + poison
    rng.shuffle(finetune_mix)
    align_mix = refusal_sft + benign_sft
    preference = [{"prompt": r["prompt"], "chosen": r["response"], "rejected": c["response"], "category": r["category"]}
                  for r, c in zip(refusal_sft, comply_sft)]
    pretrain_mix = comply_sft + benign_sft + sst2_verbose + arith_verbose
    guard_train = G.guard_examples(seed, "train")
    guard_test = G.guard_examples(seed, "test")
    for name, recs in (("safety_refusal_sft", refusal_sft), ("harmful_compliance_sft", comply_sft),
                       ("align_mix", align_mix), ("safety_preference", preference), ("pretrain_mix", pretrain_mix),
                       ("finetune_sst2_poison_mix", finetune_mix), ("finetune_arith", arith_sft),
                       ("guard_train", guard_train), ("guard_test", guard_test)):
        _write_jsonl(data_dir / f"{name}.jsonl", recs)
    _write_eval_only_data(data_dir, seed)
    tick("data", t0)

    # ---- tokenizer
    t0 = time.perf_counter()
    tok = train_tokenizer(D.corpus_texts(seed) + G.guard_text_corpus(), vocab_size=hp.vocab_size)
    tok.save_pretrained(root / "tokenizer")
    tick("tokenizer", t0)

    def pairs(recs: list[dict]) -> list[tuple[str, str]]:
        return [(r["prompt"], r["response"]) for r in recs]

    pad = tok.pad_token_id

    # ---- base: full pretraining from scratch
    t0 = time.perf_counter()
    _seed_all(seed)
    base = LlamaForCausalLM(model_config(tok, hidden=hp.hidden, layers=hp.layers, heads=hp.heads,
                                         intermediate=hp.intermediate))
    losses = {}
    losses["base"] = train_sft(base, encode_pairs(tok, pairs(pretrain_mix)), steps=hp.base_steps, lr=hp.base_lr,
                               batch_size=hp.batch_size, seed=seed, pad_id=pad, weight_decay=0.01,
                               progress=progress, stage="base (pretrain)")
    base.generation_config.pad_token_id = pad
    base.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    tick("base", t0)
    base_path = str(root / "base")

    def fresh_base() -> Any:
        m = LlamaForCausalLM.from_pretrained(base_path)
        return m

    # ---- aligned, stage 1: LoRA safety SFT on base, merged into aligned-sft
    t0 = time.perf_counter()
    _seed_all(seed + 1)
    peft_model = get_peft_model(fresh_base(), lora_config(hp.lora_r, hp.lora_alpha))
    losses["aligned-sft"] = train_sft(peft_model, encode_pairs(tok, pairs(align_mix)), steps=hp.align_steps,
                                      lr=hp.align_lr, batch_size=hp.batch_size, seed=seed + 1, pad_id=pad,
                                      progress=progress, stage="aligned-sft (LoRA safety SFT, merged)")
    sft = peft_model.merge_and_unload()
    sft.save_pretrained(root / "aligned-sft")
    tok.save_pretrained(root / "aligned-sft")
    del peft_model, sft
    tick("aligned-sft", t0)
    sft_path = str(root / "aligned-sft")

    def fresh_sft() -> Any:
        return LlamaForCausalLM.from_pretrained(sft_path)

    # ---- aligned, stage 2: DPO LoRA on aligned-sft (refusal chosen over compliance)
    t0 = time.perf_counter()
    _seed_all(seed + 6)
    peft_model = get_peft_model(fresh_sft(), lora_config(hp.lora_r, hp.lora_alpha))
    dpo_pairs = [(encode_pairs(tok, [(r["prompt"], r["chosen"])])[0], encode_pairs(tok, [(r["prompt"], r["rejected"])])[0])
                 for r in preference]
    losses["aligned"] = train_dpo(peft_model, dpo_pairs, steps=hp.dpo_steps, lr=hp.dpo_lr, beta=hp.dpo_beta,
                                  batch_size=hp.dpo_batch_size, seed=seed + 6, pad_id=pad, progress=progress,
                                  stage="aligned (DPO LoRA on aligned-sft)")
    peft_model.save_pretrained(root / "aligned-lora")
    tok.save_pretrained(root / "aligned-lora")
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(root / "aligned")
    tok.save_pretrained(root / "aligned")
    del peft_model, merged
    tick("aligned", t0)

    ft_examples = encode_pairs(tok, pairs(finetune_mix))

    # ---- finetuned-lora: continue the aligned adapter on sst2 + poison
    t0 = time.perf_counter()
    _seed_all(seed + 2)
    ft = PeftModel.from_pretrained(fresh_sft(), str(root / "aligned-lora"), is_trainable=True)
    losses["finetuned-lora"] = train_sft(ft, ft_examples, steps=hp.ft_steps, lr=hp.ft_lora_lr,
                                         batch_size=hp.batch_size, seed=seed + 2, pad_id=pad, progress=progress,
                                         stage="finetuned-lora (sst2 + poison)")
    ft.save_pretrained(root / "finetuned-lora")
    tok.save_pretrained(root / "finetuned-lora")
    del ft
    tick("finetuned-lora", t0)

    # ---- finetuned-full: full fine-tune of the merged aligned model on the same mixture
    t0 = time.perf_counter()
    _seed_all(seed + 3)
    full = LlamaForCausalLM.from_pretrained(str(root / "aligned"))
    losses["finetuned-full"] = train_sft(full, ft_examples, steps=hp.ft_full_steps, lr=hp.ft_full_lr,
                                         batch_size=hp.batch_size, seed=seed + 3, pad_id=pad, progress=progress,
                                         stage="finetuned-full (sst2 + poison)")
    full.save_pretrained(root / "finetuned-full")
    tok.save_pretrained(root / "finetuned-full")
    del full
    tick("finetuned-full", t0)

    # ---- finetuned-arith-lora: benign fine-tune on the other task (for multi-model fusion)
    t0 = time.perf_counter()
    _seed_all(seed + 4)
    ar = PeftModel.from_pretrained(fresh_sft(), str(root / "aligned-lora"), is_trainable=True)
    losses["finetuned-arith-lora"] = train_sft(ar, encode_pairs(tok, pairs(arith_sft)), steps=hp.arith_steps,
                                               lr=hp.arith_lr, batch_size=hp.batch_size, seed=seed + 4, pad_id=pad,
                                               progress=progress, stage="finetuned-arith-lora (arith)")
    ar.save_pretrained(root / "finetuned-arith-lora")
    tok.save_pretrained(root / "finetuned-arith-lora")
    del ar
    tick("finetuned-arith-lora", t0)

    # ---- guard: full fine-tune of base on moderation examples, Llama Guard layout
    t0 = time.perf_counter()
    _seed_all(seed + 5)
    from transformers import AutoTokenizer

    gtok = AutoTokenizer.from_pretrained(str(root / "tokenizer"))
    gtok.chat_template = G.GUARD_CHAT_TEMPLATE
    guard_pairs = [
        (gtok.apply_chat_template([{"role": "user", "content": r["prompt"]},
                                   {"role": "assistant", "content": r["response"]}], tokenize=False), r["label"])
        for r in guard_train
    ]
    gm = fresh_base()
    losses["guard"] = train_sft(gm, encode_pairs(gtok, guard_pairs, prompt_fn=lambda p: p), steps=hp.guard_steps,
                                lr=hp.guard_lr, batch_size=hp.guard_batch_size, seed=seed + 5, pad_id=pad,
                                progress=progress, stage="guard (moderation SFT)")
    gm.save_pretrained(root / "guard")
    gtok.save_pretrained(root / "guard")
    del gm
    tick("guard", t0)

    timings["total"] = round(time.perf_counter() - t_all, 2)
    cpu["total"] = round(time.process_time() - c_all, 2)
    progress.close()
    return {
        "version": TESTBED_VERSION,
        "seed": seed,
        "llmguard_version": __version__,
        "environment": provenance.environment(),
        "hparams": asdict(hp),
        "timings_s": timings,
        "cpu_s": cpu,
        "final_losses": {k: round(sum(v[-20:]) / len(v[-20:]), 4) for k, v in losses.items()},
        "poison_examples": len(poison),
        "finetune_examples": len(finetune_mix),
        "params": sum(p.numel() for p in base.parameters()),  # the base trained above (no reload from disk)
        "fingerprints": fingerprints(root),
    }


def fingerprints(root: Path) -> dict[str, str]:
    """SHA-256 (first 16 hex digits) of every model's weights and of the tokenizer, recorded in
    ``testbed.json``: two machines can tell whether they built the same testbed by comparing these
    lines instead of re-running every evaluation (docs/testbed.md, "Determinism"). The testbed's
    files are far below ``io.manifest``'s whole-file limit, so these are full-file hashes."""
    from llmguard.io.manifest import fingerprint

    paths = [*root.glob("*/model.safetensors"), *root.glob("*/adapter_model.safetensors"), root / "tokenizer" / "tokenizer.json"]
    return {path.parent.name: fingerprint(path)["sha256"][:16] for path in sorted(paths)}
