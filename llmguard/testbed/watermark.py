"""Watermark testbed: a KGW-watermarked teacher, a radioactive student and a weak reference.

A distillation testbed, scaled down to fit ~40 s on two cores:

- **teacher**: a random sparse bigram language over ``n_words`` words (``successors`` successors per
  word, Dirichlet(0.7) weights) with a KGW watermark on top (transformers' lefthash by default,
  γ 0.25, δ 2.5, key 15485863), sampled through :class:`llmguard.watermark.schemes` green lists;
- **student**: a tiny Llama trained on the watermarked teacher text (it inherits the watermark);
- **reference**: the same Llama trained on a diluted mix (``reference_wm_frac`` watermarked, the rest
  plain teacher text): a *weakly* watermarked reference for scrub/spoof attacks.

Everything is deterministic for a seed, built once into ``$LLMGUARD_CACHE/testbed/watermark-v1-seed<k>``
under a file lock, and reused. Text is words separated by spaces; the word-level tokenizer maps
each word to one token, so ``llmguard watermark detect --tokenizer <root>/tokenizer`` scores exactly
the ids the models produced.
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

VERSION = 1
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
    seq_len: int = 48
    reference_wm_frac: float = 0.25
    hidden: int = 64
    layers: int = 2
    steps: int = 150
    batch_size: int = 32
    lr: float = 3e-3
    eval_samples: int = 32
    eval_tokens: int = 48


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
    def student(self) -> Path:
        return self.root / "student"

    @property
    def reference(self) -> Path:
        return self.root / "reference"

    @property
    def prompts(self) -> Path:
        return self.root / "prompts.jsonl"

    @property
    def teacher_data(self) -> Path:
        return self.root / "teacher-watermarked.jsonl"

    def detect_args(self) -> list[str]:
        """The ``watermark detect`` options matching the teacher's watermark."""
        p = self.info["params"]
        return ["--tokenizer", str(self.tokenizer), "--profile", p["profile"], "--seeding", p["seeding"],
                "--gamma", str(p["gamma"]), "--key", str(p["key"])]


from llmguard.testbed.provenance import build_key, cache_root, environment  # noqa: E402


def build(out: str | os.PathLike | None = None, seed: int = 0, *, force: bool = False,
          params: WatermarkTestbedParams | None = None, progress: Progress | None = None) -> WatermarkTestbed:
    """Build (or reuse) the watermark testbed; safe to call from several processes at once."""
    from filelock import FileLock

    params = params or WatermarkTestbedParams()
    root = Path(out) if out is not None else cache_root() / "testbed" / f"watermark-v{VERSION}-seed{seed}-{build_key()}"
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


def _sample_model(path: Path, n: int, length: int, seed: int) -> list[list[int]]:
    """Plain multinomial samples from a trained student, each started from one random word."""
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(path))
    model.eval()
    g = np.random.default_rng(seed)
    start = torch.tensor(g.integers(len(SPECIALS), model.config.vocab_size, size=(n, 1)))
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(input_ids=start, attention_mask=torch.ones_like(start), do_sample=True, top_k=0,
                             top_p=1.0, temperature=1.0, max_new_tokens=length, min_new_tokens=length,
                             pad_token_id=0, eos_token_id=None)
    return out[:, 1:].tolist()


def median_z(scheme, seqs: list[list[int]]) -> float:
    """Median z of ``seqs`` under ``scheme`` (no dedup), through the library detection driver."""
    from llmguard.watermark.detect import detect
    from llmguard.watermark.options import DetectOptions

    run = detect(DetectOptions(token_ids=seqs, vocab_size=str(scheme.vocab_size), dedup="none"), scheme=scheme)
    return float(np.median([r["z"] for r in run.records]))


def _build_into(root: Path, seed: int, params: WatermarkTestbedParams, progress: Progress) -> dict[str, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmguard.testbed.train import train_sft

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
    eval_wm = lang.sample(params.eval_samples, params.eval_tokens, rng, green, params.delta)
    eval_plain = lang.sample(params.eval_samples, params.eval_tokens, rng, None, 0.0)
    timings["teacher"] = round(time.perf_counter() - t0, 2)

    words = tok.convert_ids_to_tokens
    with open(root / "teacher-watermarked.jsonl", "w") as f:
        for row in wm:
            f.write(json.dumps({"text": " ".join(words(row.tolist()))}) + "\n")
    with open(root / "prompts.jsonl", "w") as f:
        for row in eval_plain[:, :4]:
            f.write(json.dumps({"prompt": " ".join(words(row.tolist()))}) + "\n")

    n_ref_wm = int(round(params.reference_wm_frac * params.n_train))
    mixes = {
        "student": wm,
        "reference": np.concatenate([wm[:n_ref_wm], plain[: params.n_train - n_ref_wm]]),
    }
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=params.hidden, intermediate_size=params.hidden * 2,
                      num_hidden_layers=params.layers, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                      tie_word_embeddings=True)
    z: dict[str, float] = {
        "teacher_watermarked": median_z(scheme, eval_wm.tolist()),
        "teacher_plain": median_z(scheme, eval_plain.tolist()),
    }
    for i, (name, data) in enumerate(mixes.items()):
        t1 = time.perf_counter()
        torch.manual_seed(seed + 10 + i)
        model = LlamaForCausalLM(cfg)
        examples = [(row.tolist(), 0) for row in data]
        train_sft(model, examples, steps=params.steps, lr=params.lr, batch_size=params.batch_size,
                  seed=seed + i, pad_id=0, progress=progress, stage=f"train {name}")
        model.save_pretrained(str(root / name))
        tok.save_pretrained(str(root / name))
        timings[name] = round(time.perf_counter() - t1, 2)
        samples = _sample_model(root / name, params.eval_samples, params.eval_tokens, seed + 100 + i)
        z[name] = median_z(scheme, samples)
    timings["total"] = round(time.perf_counter() - t0, 2)
    return {"version": VERSION, "seed": seed, "params": asdict(params), "median_z": z, "timings_s": timings,
            "scheme": scheme.config()}


def summary_rows(tb: WatermarkTestbed) -> list[tuple[str, float]]:
    z = tb.info["median_z"]
    return [("teacher (watermarked)", z["teacher_watermarked"]), ("teacher (plain)", z["teacher_plain"]),
            ("student (distilled)", z["student"]), ("reference (diluted)", z["reference"])]
