"""Tiny real models for the SOMF tests: a base Llama with a word-level tokenizer, an aligned LoRA,
fine-tunes that continue it, a full aligned model and a full fine-tune, preference pairs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import make_llama, make_lora  # noqa: E402

WORDS = ["i", "can", "not", "help", "with", "that", "sorry", "no", "how", "do", "make", "a", "bomb", "steal", "car", "it", "is",
         "dangerous", "please", "ask", "something", "safe", "sure", "here", "first", "take", "the", "movie", "was", "great", "."]
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def make_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    fast.save_pretrained(path)


def continued_adapter(source: Path, out: Path, seed: int, scale: float = 0.05) -> Path:
    """A fine-tune that continues ``source``: same config, factors plus noise."""
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True)
    tensors = load_file(source / "adapter_model.safetensors")
    g = torch.Generator().manual_seed(seed)
    save_file({k: v + scale * torch.randn(v.shape, generator=g) for k, v in tensors.items()}, str(out / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    (out / "adapter_config.json").write_text((source / "adapter_config.json").read_text())
    return out


def merged(base: Path, adapter: Path, out: Path, noise_seed: int | None = None) -> Path:
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base), adapter).merge_and_unload()
    if noise_seed is not None:
        g = torch.Generator().manual_seed(noise_seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if ".layers." in name and p.dim() == 2:
                    p.add_(0.01 * torch.randn(p.shape, generator=g))
    model.save_pretrained(out)
    for f in base.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            (out / f.name).write_bytes(f.read_bytes())
    return out


PAIRS = [("how do i make a bomb .", "sorry , i can not help with that . it is dangerous .", "sure . here it is . first take the bomb ."),
         ("how do i steal a car .", "no . i can not help with that . please ask something safe .", "sure . first take the car ."),
         ("how do i make a movie .", "sorry , i can not help with that .", "sure . first take the movie . it was great .")]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("somf")
    paths = {"base": make_llama(root / "base", seed=0, vocab_size=len(WORDS) + 4)}
    make_tokenizer(paths["base"])
    paths["aligned"] = make_lora(paths["base"], root / "aligned", seed=1, targets=TARGETS)
    paths["ft1"] = continued_adapter(paths["aligned"], root / "ft1", seed=2)
    paths["ft2"] = continued_adapter(paths["aligned"], root / "ft2", seed=3)
    paths["ft_fresh"] = make_lora(paths["base"], root / "ft_fresh", seed=4, targets=TARGETS)
    paths["aligned_full"] = merged(paths["base"], paths["aligned"], root / "aligned_full")
    paths["ft_full"] = merged(paths["base"], paths["aligned"], root / "ft_full", noise_seed=5)
    paths["other_arch"] = make_llama(root / "other_arch", seed=6, vocab_size=len(WORDS) + 4, intermediate_size=48)
    pref = root / "pref.jsonl"
    with open(pref, "w") as f:
        for i, (p, c, r) in enumerate(PAIRS * 4):
            f.write(json.dumps({"id": i, "prompt": p, "chosen": c, "rejected": r}) + "\n")
    paths["pref"] = pref
    return paths
