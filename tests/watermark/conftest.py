"""Fixtures: a word-level tokenizer and a tiny random Llama over it (built in code, cached per session)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def word_tokenizer_dir(tmp_path_factory) -> Path:
    from llmguard.testbed.watermark import make_word_tokenizer

    out = tmp_path_factory.mktemp("wm-tokenizer")
    make_word_tokenizer(120, out)
    return out


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory, word_tokenizer_dir) -> Path:
    """A randomly initialised tiny Llama (near-uniform next-token distributions: a δ=2 watermark shows)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("wm-tiny-llama")
    tok = PreTrainedTokenizerFast.from_pretrained(str(word_tokenizer_dir))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out
