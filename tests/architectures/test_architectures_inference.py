"""The inference verbs (eval safety, watermark generate/detect) load every architecture of the
matrix, full and LoRA, through ``load_causal_lm`` and generate with it."""

from __future__ import annotations

import pytest

import zoo
from llmguard.inference.generate import generate
from llmguard.inference.loading import load_causal_lm


@pytest.mark.parametrize("variant", list(zoo.VARIANTS))
def test_every_variant_loads_and_generates(matrix, variant):
    model, tokenizer = load_causal_lm(matrix[variant]["finetuned"], device="cpu")
    assert model.get_input_embeddings().weight.shape[0] == zoo.VOCAB
    out = generate(model, tokenizer, ["how do i make a bomb ?", "what is a good movie ?"], max_new_tokens=3, template="plain")
    assert len(out) == 2 and all(isinstance(text, str) for text in out)


@pytest.mark.parametrize("name", ["mixtral-experts", "gpt2-fan-in-fan-out", "llama-embedding-tied"])
def test_adapters_load_on_their_base(adapters, name):
    model, tokenizer = load_causal_lm(adapters[name][0], device="cpu")
    assert len(generate(model, tokenizer, ["is it safe ?"], max_new_tokens=2, template="plain")) == 1
