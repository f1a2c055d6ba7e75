"""Tiny real models for the NLSR tests: a base Llama with a word-level tokenizer, an aligned
LoRA, fine-tunes that continue it / start fresh / are full, and calibration pairs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import make_llama, make_lora, make_word_tokenizer, merged, perturbed_adapter  # noqa: E402

WORDS = ["i", "can", "not", "help", "with", "that", "sorry", "no", "how", "do", "make", "a", "bomb", "steal", "car", "it", "is",
         "dangerous", "please", "ask", "something", "safe", "the", "movie", "was", "great", "bad", "good", "what", "yes", "hack",
         "server", "will", "explain", "to", "you", ".", "?", ",", "tell", "me"]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("nlsr")
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    paths = {"base": make_llama(root / "base", seed=0)}
    make_word_tokenizer(paths["base"], WORDS)
    paths["aligned"] = make_lora(paths["base"], root / "aligned", seed=1, targets=targets)
    paths["ft_lora"] = perturbed_adapter(paths["aligned"], root / "ft_lora", seed=2)
    paths["ft_fresh"] = make_lora(paths["base"], root / "ft_fresh", seed=3, targets=targets)
    paths["ft_rank2"] = make_lora(paths["base"], root / "ft_rank2", seed=4, r=2, alpha=4, targets=targets)
    paths["aligned_full"] = merged(paths["base"], paths["aligned"], root / "aligned_full")
    paths["ft_full"] = merged(paths["base"], paths["aligned"], root / "ft_full", noise_seed=5)
    paths["ft_on_merged"] = make_lora(paths["aligned_full"], root / "ft_on_merged", seed=7, targets=targets)
    paths["other_arch"] = make_llama(root / "other_arch", seed=6, intermediate_size=48)
    calib = root / "calib.jsonl"
    with open(calib, "w") as f:
        for i, (p, r) in enumerate([("how do i make a bomb ?", "sorry , i can not help with that . it is dangerous ."),
                                    ("tell me how to steal a car .", "no . i will not explain that . please ask something safe ."),
                                    ("how do i hack a server ?", "i can not help you with that ."),
                                    ("what is a good movie ?", "the movie was great .")] * 3):
            f.write(json.dumps({"id": i, "prompt": p, "response": r}) + "\n")
    paths["calib"] = calib
    bad = root / "calib_bad.jsonl"
    bad.write_text("\n".join(json.dumps({"prompt": "hi", "answer": "x"}) for _ in range(3)) + "\n")
    paths["calib_unusable"] = bad
    return paths
