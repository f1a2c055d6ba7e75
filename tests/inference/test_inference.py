"""load_causal_lm / format_prompt / generate on a tiny random Llama built in the test."""

from __future__ import annotations

import json

import pytest

from llmguard.errors import InvalidInputError, ResourceError
from llmguard.inference import PLAIN_TEMPLATE, format_prompt, generate, load_causal_lm

WORDS = "the a cat dog sat on mat ran to park big small red blue one two three four five".split()


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny")
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    hf_tok.save_pretrained(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


def test_load_and_generate_batched_equals_single(tiny_model_dir):
    model, tok = load_causal_lm(tiny_model_dir, device="cpu")
    assert tok.padding_side == "left"
    prompts = ["the cat", "a big red dog ran to the park", "one", "two three four five the mat"]
    batched = generate(model, tok, prompts, max_new_tokens=6, batch_size=4)
    single = [generate(model, tok, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert len(batched) == 4
    # prompt stripped: outputs are continuations of at most 6 words, not the prompt echoed
    for p, out in zip(prompts, batched):
        assert len(out.split()) <= 6
        assert not out.startswith(p) or len(p.split()) <= 6


def test_format_prompt_plain_and_custom(tiny_model_dir):
    _, tok = load_causal_lm(tiny_model_dir, device="cpu")
    assert not getattr(tok, "chat_template", None)
    assert format_prompt(tok, "hi") == PLAIN_TEMPLATE.format(prompt="hi")
    assert format_prompt(tok, "hi", "none") == "hi"
    assert format_prompt(tok, "hi", "Q: {prompt} A:") == "Q: hi A:"


def test_sampling_is_seeded(tiny_model_dir):
    model, tok = load_causal_lm(tiny_model_dir, device="cpu")
    a = generate(model, tok, ["the cat"] * 3, max_new_tokens=8, do_sample=True, seed=3)
    b = generate(model, tok, ["the cat"] * 3, max_new_tokens=8, do_sample=True, seed=3)
    assert a == b


def test_missing_path_is_invalid_input(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_causal_lm(tmp_path / "nope", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="no config.json"):
        load_causal_lm(tmp_path / "empty", device="cpu")


def test_bad_adapter_is_invalid_input(tiny_model_dir, tmp_path):
    with pytest.raises(InvalidInputError, match="adapter"):
        load_causal_lm(tiny_model_dir, adapter=tmp_path, device="cpu")


def test_missing_cuda_is_resource_error(tiny_model_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ResourceError, match="cuda"):
        load_causal_lm(tiny_model_dir, device="cuda")


def test_corrupt_weights_is_invalid_input(tiny_model_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, bad)
    (bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(InvalidInputError, match="bad"):
        load_causal_lm(bad, device="cpu")
    json.loads((bad / "config.json").read_text())
