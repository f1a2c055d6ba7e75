"""Watermark testbed: a KGW-watermarked teacher, a base, a radioactive student and a weak reference.

A toy version of the CDG-KD setting, small enough to build in under a minute on one core:

- **teacher**: a random sparse bigram language over ``n_words`` words (``successors`` successors per
  word, Dirichlet(0.7) weights) with a KGW watermark on top (transformers' lefthash by default,
  γ 0.25, δ 2.5, key 15485863), sampled through :mod:`llmguard.watermark.schemes` green lists;
- **base**: a tiny Llama pretrained on plain (unwatermarked) teacher text: the init of every
  student, as the paper's base model is;
- **student**: ``watermark distill`` of the base on the watermarked teacher data (it inherits the
  watermark: radioactivity);
- **reference**: ``watermark distill --dilute 0.75 --dilute-with plain`` of the base: three quarters
  of the records replaced by plain teacher text, a *weakly* watermarked reference.

The student and the reference go through :func:`llmguard.watermark.distill.distill`, the entry
point of the ``distill`` verb, with the testbed's training flags (:meth:`WatermarkTestbed.train_args`:
the tiny models need a larger learning rate and more epochs than the paper's 1e-5 / 1 epoch).
:meth:`WatermarkTestbed.attack_args` is the one scrub/spoof setting the tests, the demo and the
docs use for every seed.

Everything is deterministic for a seed, built once (one torch thread) into
``$LLMGUARD_CACHE/testbed/watermark-v<VERSION>-seed<k>-<recipe hash>-<build key>`` under a file lock, and reused.
Text is words separated by spaces; the word-level tokenizer maps each word to one token, so
``llmguard watermark detect --tokenizer <root>/tokenizer`` scores exactly the ids the models produced.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmguard.progress import NullProgress, Progress

VERSION = 2
MARKER = "watermark-testbed.json"
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
_SYLL = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]  # 70 syllables


def word_list(n: int) -> list[str]:
    """``n`` distinct pronounceable words (two or three syllables), deterministic."""
    words = []
    for a in _SYLL:
        for b in _SYLL:
            words.append(a + b)
            if len(words) == n:
                return words
    raise ValueError("too many words")


def make_word_tokenizer(n_words: int, out: Path | None = None) -> Any:
    """A word-level ``PreTrainedTokenizerFast``: 4 specials + ``n_words`` words, whitespace split."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + word_list(n_words))}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##")  # joins with spaces
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    if out is not None:
        tok.save_pretrained(str(out))
    return tok


@dataclass
class WatermarkTestbedParams:
    n_words: int = 256
    successors: int = 24
    concentration: float = 0.7
    profile: str = "hf"
    seeding: str = "lefthash"
    gamma: float = 0.25
    delta: float = 2.5
    key: int = 15485863
    n_train: int = 1500
    seq_len: int = 64
    prompt_words: int = 4
    reference_dilution: float = 0.75
    scrub_beta: float = 0.5
    spoof_beta: float = 1.25
    alpha: float = 0.1
    # the strong spoof (S already flagged) fine-tunes S itself, lightly: a from-base distillation relearns
    # the language from α-truncated samples and pays 5-6x S's clean-text perplexity (docs/watermark.md)
    spoof_epochs: float = 1.0
    spoof_lr: float = 7e-5
    hidden: int = 64
    layers: int = 2
    base_steps: int = 400
    batch_size: int = 32
    lr: float = 3e-3
    distill_epochs: float = 3.0
    distill_lr: float = 2e-3
    distill_batch_size: int = 32
    eval_samples: int = 96
    eval_tokens: int = 64


class BigramLanguage:
    """Random sparse bigram model over token ids ``4 .. 4+n_words-1`` (specials never emitted)."""

    def __init__(self, n_words: int, successors: int, concentration: float, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.offset = len(SPECIALS)
        self.vocab = self.offset + n_words
        self.logp = np.full((self.vocab, self.vocab), -np.inf)
        for prev in range(self.vocab):
            nxt = rng.choice(n_words, size=successors, replace=False) + self.offset
            w = rng.dirichlet(np.full(successors, concentration))
            self.logp[prev, nxt] = np.log(w)

    def sample(self, n: int, length: int, rng: np.random.Generator, green: np.ndarray | None, delta: float) -> np.ndarray:
        """``n`` sequences; ``green[prev]`` (bool (V, V)) adds ``delta`` to green logits (lefthash-type)."""
        out = np.empty((n, length), dtype=np.int64)
        prev = rng.integers(self.offset, self.vocab, size=n)
        for t in range(length):
            logits = self.logp[prev].copy()
            if green is not None:
                logits = logits + delta * green[prev]
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
            c = p.cumsum(axis=1)
            u = rng.random((n, 1))
            prev = np.minimum((c < u).sum(axis=1), self.vocab - 1)
            out[:, t] = prev
        return out


@dataclass
class WatermarkTestbed:
    root: Path
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def base(self) -> Path:
        """The unwatermarked base model (pretrained on plain teacher text): every student's init."""
        return self.root / "base"

    @property
    def student(self) -> Path:
        """The radioactive student: ``watermark distill`` of the base on the watermarked teacher data."""
        return self.root / "student"

    @property
    def reference(self) -> Path:
        """The weak reference: ``watermark distill --dilute`` of the base (mostly plain text)."""
        return self.root / "reference"

    @property
    def prompts(self) -> Path:
        """Held-out prompts (``prompt`` field): the closed loop's and the demo's generations."""
        return self.root / "prompts.jsonl"

    @property
    def attack_prompts(self) -> Path:
        """The teacher dataset's instructions (``prompt`` field): what scrub/spoof continue."""
        return self.root / "attack-prompts.jsonl"

    @property
    def teacher_data(self) -> Path:
        """Watermarked teacher text (``prompt`` + ``text``), for ``watermark detect``."""
        return self.root / "teacher-watermarked.jsonl"

    @property
    def teacher_sft(self) -> Path:
        """The watermarked teacher data as SFT records (what the student was distilled on)."""
        return self.root / "teacher-sft.jsonl"

    @property
    def plain_sft(self) -> Path:
        """Plain (unwatermarked) teacher data as SFT records (the dilution of the reference)."""
        return self.root / "plain-sft.jsonl"

    @property
    def clean_text(self) -> Path:
        """Held-out plain teacher text (``text``): the perplexity set."""
        return self.root / "clean-heldout.jsonl"

    def detect_args(self) -> list[str]:
        """The ``watermark detect`` options matching the teacher's watermark."""
        p = self.info["params"]
        return ["--tokenizer", str(self.tokenizer), "--profile", p["profile"], "--seeding", p["seeding"],
                "--gamma", str(p["gamma"]), "--key", str(p["key"])]

    def train_args(self, init: Path | None = None, *, epochs: float | None = None, lr: float | None = None) -> list[str]:
        """The ``--student-init`` and training flags the testbed's tiny students need (not the paper's 1e-5).

        By default a distillation of the base (3 epochs, lr 2e-3: what the student, the reference, the
        scrub and the weak spoof use); ``init``/``epochs``/``lr`` override (the strong spoof's fine-tune of S).
        """
        p = self.info["params"]
        return ["--student-init", str(init or self.base), "--epochs", str(p["distill_epochs"] if epochs is None else epochs),
                "--lr", str(p["distill_lr"] if lr is None else lr), "--train-batch-size", str(p["distill_batch_size"]),
                "--max-length", str(p["seq_len"] + 8)]

    def loop_args(self) -> list[str]:
        """Closed-loop flags: held-out prompts, clean text, the teacher's scheme."""
        p = self.info["params"]
        return ["--eval-prompts", str(self.prompts), "--eval-text", str(self.clean_text),
                "--eval-max-new-tokens", str(p["eval_tokens"]), "--profile", p["profile"], "--seeding", p["seeding"],
                "--gamma", str(p["gamma"]), "--key", str(p["key"])]

    def attack_args(self, mode: str, *, weak: bool = False) -> list[str]:
        """``watermark scrub|spoof`` arguments on this testbed (without ``-o``).

        ``weak``: the spoof from a weak student: S = the diluted reference, R = the base (no
        watermark), to show that the contrast lifts a watermark below the detection threshold
        above it.

        The new student: the scrub and the weak spoof distil the base (CDG-KD's fresh student; the
        scrub must not start from S's watermark, the weak spoof has far to go); the strong spoof
        fine-tunes S itself for one epoch at ``spoof_lr``, so it only moves S along the contrast
        instead of relearning the language from α-truncated samples (see docs/watermark.md, "Cost
        of the strong spoof").
        """
        p = self.info["params"]
        student, reference = (self.reference, self.base) if weak else (self.student, self.reference)
        beta = p["scrub_beta"] if mode == "scrub" else p["spoof_beta"]
        if mode == "spoof" and not weak:
            train = self.train_args(self.student, epochs=p["spoof_epochs"], lr=p["spoof_lr"])
        else:
            train = self.train_args()
        return [mode, "--student", str(student), "--reference", str(reference), "--prompts", str(self.attack_prompts),
                "--alpha", str(p["alpha"]), "--beta", str(beta),
                "--max-new-tokens", str(p["seq_len"] - p["prompt_words"]), "--batch-size", "250", "--device", "cpu",
                *train, *self.loop_args()]


from llmguard.testbed.provenance import build_key, cache_root, environment, recipe_hash  # noqa: E402


def default_dir(seed: int, params: WatermarkTestbedParams | None = None) -> Path:
    """``$LLMGUARD_CACHE/testbed/watermark-v2-seed0-<recipe>-torch2.13.0-avx512-amd-epyc``: version, seed, the
    parameters' hash, torch version and CPU vector path, so checkouts with different recipes keep
    separate builds in one cache."""
    recipe = recipe_hash(json.dumps(asdict(params or WatermarkTestbedParams()), sort_keys=True))[:8]
    return cache_root() / "testbed" / f"watermark-v{VERSION}-seed{seed}-{recipe}-{build_key()}"


def build(out: str | os.PathLike | None = None, seed: int = 0, *, force: bool = False,
          params: WatermarkTestbedParams | None = None, progress: Progress | None = None) -> WatermarkTestbed:
    """Build (or reuse) the watermark testbed; safe to call from several processes at once."""
    from filelock import FileLock

    params = params or WatermarkTestbedParams()
    root = Path(out) if out is not None else default_dir(seed, params)
    root = root.expanduser().resolve()
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root.parent / f".{root.name}.lock")):
        marker = root / MARKER
        if marker.is_file() and not force:
            try:
                info = json.loads(marker.read_text())
                if (info.get("version") == VERSION and info.get("seed") == seed and info.get("params") == asdict(params)
                        and info.get("environment", {}).get("build_key") == build_key()):
                    return WatermarkTestbed(root, info)
            except (OSError, ValueError):
                pass
        tmp = root.with_name(f".{root.name}.building")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny matrices: one thread is faster, and immune to oversubscription
        try:
            info = _build_into(tmp, seed, params, progress or NullProgress())
        finally:
            torch.set_num_threads(threads)
        info["environment"] = environment()
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        if root.exists():
            shutil.rmtree(root)
        tmp.replace(root)
        return WatermarkTestbed(root, info)


def _scheme(params: WatermarkTestbedParams, vocab: int):
    from llmguard.watermark.schemes import SchemeParams, build_scheme

    return build_scheme("kgw", params.profile, SchemeParams(vocab_size=vocab, gamma=params.gamma, delta=params.delta,
                                                            key=params.key, seeding=params.seeding))


def _green_table(scheme, vocab: int) -> np.ndarray:
    """Green mask per previous token (lefthash-type schemes depend on the last token only)."""
    import torch

    if scheme.prefix_len != 1 or getattr(scheme, "self_salt", False):
        raise ValueError("the bigram teacher supports context-width-1 left-hash schemes only")
    table = np.zeros((vocab, vocab), dtype=bool)
    dummy = torch.zeros(vocab)
    for prev in range(vocab):
        ids = scheme.generation_green(np.array([prev], dtype=np.int64), dummy)
        table[prev, ids] = True
    return table


def median_z(scheme, seqs: list[list[int]]) -> float:
    """Median z of ``seqs`` under ``scheme`` (no dedup), through the library detection driver."""
    from llmguard.watermark.detect import detect
    from llmguard.watermark.options import DetectOptions

    run = detect(DetectOptions(token_ids=seqs, vocab_size=str(scheme.vocab_size), dedup="none"), scheme=scheme)
    return float(np.median([r["z"] for r in run.records]))


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def _distill(root: Path, name: str, params: WatermarkTestbedParams, seed: int, **extra: Any) -> dict[str, Any]:
    """``watermark distill`` of the base (the library entry point the CLI calls)."""
    from llmguard.watermark.attack_options import DistillOptions
    from llmguard.watermark.distill import distill

    res = distill(DistillOptions(data=str(root / "teacher-sft.jsonl"), output=str(root / name),
                                 student_init=str(root / "base"), epochs=params.distill_epochs,
                                 learning_rate=params.distill_lr, train_batch_size=params.distill_batch_size,
                                 max_length=params.seq_len + 8, train_seed=seed, device="cpu", **extra))
    return {"steps": res.train.steps, "final_loss": res.train.final_loss, "seconds": res.train.seconds}


def _build_into(root: Path, seed: int, params: WatermarkTestbedParams, progress: Progress) -> dict[str, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmguard.testbed.train import train_sft
    from llmguard.watermark.closed_loop import detection_report, held_out_texts, perplexity
    from llmguard.inference.loading import load_causal_lm

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    tok = make_word_tokenizer(params.n_words, root / "tokenizer")
    lang = BigramLanguage(params.n_words, params.successors, params.concentration, seed)
    vocab = lang.vocab
    assert vocab == len(tok)
    scheme = _scheme(params, vocab)
    green = _green_table(scheme, vocab)
    rng = np.random.default_rng(seed + 1)
    wm = lang.sample(params.n_train, params.seq_len, rng, green, params.delta)
    plain = lang.sample(params.n_train, params.seq_len, rng, None, 0.0)
    pretrain = lang.sample(params.n_train, params.seq_len, rng, None, 0.0)
    eval_wm = lang.sample(params.eval_samples, params.eval_tokens, rng, green, params.delta)
    eval_plain = lang.sample(params.eval_samples, params.eval_tokens, rng, None, 0.0)
    timings["teacher"] = round(time.perf_counter() - t0, 2)

    words = tok.convert_ids_to_tokens
    k = params.prompt_words

    def sft(rows: np.ndarray, origin: str) -> list[dict[str, Any]]:
        return [{"instruction": " ".join(words(r[:k].tolist())), "input": "", "output": " ".join(words(r[k:].tolist())),
                 "provenance": {"source": origin}} for r in rows]

    _write_jsonl(root / "teacher-watermarked.jsonl", [{"prompt": " ".join(words(r[:k].tolist())),
                                                       "text": " ".join(words(r.tolist()))} for r in wm])
    _write_jsonl(root / "teacher-sft.jsonl", sft(wm, "teacher (watermarked)"))
    _write_jsonl(root / "plain-sft.jsonl", sft(plain, "teacher (plain)"))
    _write_jsonl(root / "attack-prompts.jsonl", [{"prompt": " ".join(words(r[:k].tolist()))} for r in wm])
    _write_jsonl(root / "prompts.jsonl", [{"prompt": " ".join(words(r[:k].tolist()))} for r in eval_plain])
    _write_jsonl(root / "clean-heldout.jsonl", [{"text": " ".join(words(r.tolist()))} for r in eval_plain])

    # the base: a tiny Llama pretrained on plain teacher text (what the paper's base model is to its teacher)
    t1 = time.perf_counter()
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=params.hidden, intermediate_size=params.hidden * 2,
                      num_hidden_layers=params.layers, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                      tie_word_embeddings=True)
    torch.manual_seed(seed + 10)
    model = LlamaForCausalLM(cfg)
    train_sft(model, [(row.tolist() + [tok.eos_token_id], 0) for row in pretrain], steps=params.base_steps,
              lr=params.lr, batch_size=params.batch_size, seed=seed, pad_id=0, progress=progress, stage="train base")
    model.save_pretrained(str(root / "base"))
    tok.save_pretrained(str(root / "base"))
    timings["base"] = round(time.perf_counter() - t1, 2)

    training: dict[str, Any] = {}
    t1 = time.perf_counter()
    training["student"] = _distill(root, "student", params, seed)
    timings["student"] = round(time.perf_counter() - t1, 2)
    t1 = time.perf_counter()
    training["reference"] = _distill(root, "reference", params, seed, dilute=params.reference_dilution,
                                     dilute_with=str(root / "plain-sft.jsonl"))
    timings["reference"] = round(time.perf_counter() - t1, 2)

    z: dict[str, float] = {
        "teacher_watermarked": median_z(scheme, eval_wm[:, k:].tolist()),
        "teacher_plain": median_z(scheme, eval_plain[:, k:].tolist()),
    }
    prompt_ids = [r[:k].tolist() for r in eval_plain]
    clean = [" ".join(words(r.tolist())) for r in eval_plain]
    ppl: dict[str, float] = {}
    t1 = time.perf_counter()
    for name in ("base", "student", "reference"):
        m, t = load_causal_lm(str(root / name), device="cpu")
        texts = held_out_texts(m, t, prompt_ids, max_new_tokens=params.eval_tokens, seed=seed, batch_size=64)
        z[name] = detection_report(name, scheme, t, texts, 4.0).median_z
        ppl[name] = perplexity(m, t, clean)
    timings["evaluate"] = round(time.perf_counter() - t1, 2)
    timings["total"] = round(time.perf_counter() - t0, 2)
    return {"version": VERSION, "seed": seed, "params": asdict(params), "median_z": z, "perplexity": ppl,
            "training": training, "timings_s": timings, "scheme": scheme.config()}


def summary_rows(tb: WatermarkTestbed) -> list[tuple[str, float]]:
    z = tb.info["median_z"]
    return [("teacher (watermarked)", z["teacher_watermarked"]), ("teacher (plain)", z["teacher_plain"]),
            ("base (plain pretraining)", z["base"]), ("student (distilled)", z["student"]),
            ("reference (diluted)", z["reference"])]
