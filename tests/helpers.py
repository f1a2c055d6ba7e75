"""Builders for tiny real checkpoints and adapters used across the test suite (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_llama_config(**overrides):
    from transformers import LlamaConfig

    values = dict(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    values.update(overrides)
    return LlamaConfig(**values)


def make_llama(path: Path, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides) -> Path:
    """Save a randomly initialised tiny LlamaForCausalLM to ``path`` (safetensors)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(**overrides)).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(path)
    return path


def make_lora(base: Path, path: Path, seed: int = 0, r: int = 4, alpha: int = 8, targets=("q_proj", "v_proj", "down_proj"), **kwargs) -> Path:
    """Save a PEFT LoRA adapter with random non-zero A and B on ``base``."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(base)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), **kwargs)
    peft_model = get_peft_model(model, config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    peft_model.save_pretrained(path)
    return path


def make_word_tokenizer(path: Path, words: list[str]) -> None:
    """A word-level tokenizer over ``words`` (plus <unk>, <s>, </s>, <pad>), saved in HF format."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for word in words:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    fast.save_pretrained(path)


def perturbed_adapter(source: Path, out: Path, seed: int, scale: float = 0.05) -> Path:
    """A fine-tune that continues ``source``: same config, factors plus noise."""
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True)
    tensors = load_file(source / "adapter_model.safetensors")
    g = torch.Generator().manual_seed(seed)
    save_file({k: v + scale * torch.randn(v.shape, generator=g) for k, v in tensors.items()}, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
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
