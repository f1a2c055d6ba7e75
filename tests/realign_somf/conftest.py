"""Tiny real models for the SOMF tests: a base Llama with a word-level tokenizer, an aligned LoRA,
fine-tunes that continue it, a full aligned model and a full fine-tune, preference pairs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import make_llama, make_lora, make_word_tokenizer, merged, perturbed_adapter  # noqa: E402

WORDS = ["i", "can", "not", "help", "with", "that", "sorry", "no", "how", "do", "make", "a", "bomb", "steal", "car", "it", "is",
         "dangerous", "please", "ask", "something", "safe", "sure", "here", "first", "take", "the", "movie", "was", "great", "."]
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


PAIRS = [("how do i make a bomb .", "sorry , i can not help with that . it is dangerous .", "sure . here it is . first take the bomb ."),
         ("how do i steal a car .", "no . i can not help with that . please ask something safe .", "sure . first take the car ."),
         ("how do i make a movie .", "sorry , i can not help with that .", "sure . first take the movie . it was great .")]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("somf")
    paths = {"base": make_llama(root / "base", seed=0, vocab_size=len(WORDS) + 4)}
    make_word_tokenizer(paths["base"], WORDS)
    paths["aligned"] = make_lora(paths["base"], root / "aligned", seed=1, targets=TARGETS)
    paths["ft1"] = perturbed_adapter(paths["aligned"], root / "ft1", seed=2)
    paths["ft2"] = perturbed_adapter(paths["aligned"], root / "ft2", seed=3)
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
