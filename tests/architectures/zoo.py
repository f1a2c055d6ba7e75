"""The tiny-model matrix: one random-weight causal LM per architecture family, built in code.

Each variant is a transformers config small enough to build and run in well under a second
(hidden 32, 2 layers, vocab 128). ``save(variant, path)`` / ``family(variant, root)`` save models with
``save_pretrained`` (so the checkpoint layout is transformers' own on-disk layout, e.g. one
tensor per MoE expert) and a word tokenizer next to it; ``ADAPTERS`` / ``make_adapter`` build real
PEFT LoRA adapters on the bases.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

VOCAB = 128
_COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, max_position_embeddings=128)
_ATTN = dict(num_attention_heads=4, num_key_value_heads=2, intermediate_size=48)


@dataclass(frozen=True)
class Variant:
    name: str
    config_class: str
    values: dict[str, Any]
    dtype: torch.dtype = torch.float32
    shard: str | None = None  # max_shard_size for a sharded save
    #: LoRA targets that exercise the architecture (PEFT's names); None: PEFT's defaults
    lora_targets: Any = None
    moe: bool = False
    words: list[str] = field(default_factory=list)

    def config(self) -> Any:
        import transformers

        return getattr(transformers, self.config_class)(**{**_COMMON, **self.values})


VARIANTS: dict[str, Variant] = {v.name: v for v in [
    Variant("llama-tied", "LlamaConfig", {**_ATTN, "tie_word_embeddings": True}),
    Variant("qwen2", "Qwen2Config", {**_ATTN, "tie_word_embeddings": False}),
    Variant("qwen3", "Qwen3Config", {**_ATTN, "head_dim": 8, "tie_word_embeddings": False}),
    Variant("mistral", "MistralConfig", {**_ATTN, "tie_word_embeddings": False}),
    Variant("gemma2", "Gemma2Config", {**_ATTN, "head_dim": 8, "sliding_window": 4}),
    Variant("gemma3", "Gemma3TextConfig", {**_ATTN, "head_dim": 8, "sliding_window": 4,
                                           "layer_types": ["sliding_attention", "full_attention"]}),
    Variant("phi3", "Phi3Config", {**_ATTN, "pad_token_id": 0, "tie_word_embeddings": False}),
    Variant("gpt2", "GPT2Config", {"vocab_size": VOCAB, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 128},
            lora_targets=["c_attn", "c_proj", "c_fc"]),
    Variant("gpt-neox", "GPTNeoXConfig", {"num_attention_heads": 4, "intermediate_size": 48, "tie_word_embeddings": False}),
    Variant("opt", "OPTConfig", {"num_attention_heads": 4, "ffn_dim": 48, "word_embed_proj_dim": 32, "pad_token_id": 1}),
    Variant("mixtral", "MixtralConfig", {**_ATTN, "num_local_experts": 4, "num_experts_per_tok": 3, "tie_word_embeddings": False}, moe=True),
    Variant("qwen2-moe", "Qwen2MoeConfig", {**_ATTN, "num_experts": 4, "num_experts_per_tok": 3, "moe_intermediate_size": 16,
                                            "shared_expert_intermediate_size": 24, "tie_word_embeddings": False}, moe=True),
    Variant("qwen3-moe", "Qwen3MoeConfig", {**_ATTN, "head_dim": 8, "num_experts": 4, "num_experts_per_tok": 3,
                                            "moe_intermediate_size": 16, "tie_word_embeddings": False}, moe=True),
    Variant("llama-fp16", "LlamaConfig", {**_ATTN, "tie_word_embeddings": False}, dtype=torch.float16),
    Variant("llama-bf16-sharded", "LlamaConfig", {**_ATTN, "tie_word_embeddings": False}, dtype=torch.bfloat16, shard="20KB"),
]}


def build_model(variant: Variant, seed: int = 0) -> Any:
    """The randomly initialised model in memory (float32 weights, perturbed so no value is trivial)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(variant.config())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def save(variant: Variant, path: Path, seed: int = 0) -> Path:
    model = build_model(variant, seed).to(variant.dtype)
    kwargs = {"max_shard_size": variant.shard} if variant.shard else {}
    model.save_pretrained(path, **kwargs)
    return path


WORDS = ["i", "can", "not", "help", "with", "that", "sorry", "no", "how", "do", "make", "a", "bomb", "it", "is", "dangerous",
         "please", "ask", "something", "safe", "the", "movie", "was", "great", "what", "good", "?", ".", ","]

PAIRS = [("how do i make a bomb ?", "sorry , i can not help with that . it is dangerous ."),
         ("what is a good movie ?", "the movie was great ."),
         ("how do i make it ?", "no . please ask something safe ."),
         ("is it safe ?", "yes , it is safe . the movie was good , not bad ."),
         ("can you help ?", "i can help with something safe . please ask ."),
         ("what was it ?", "it was a great , good movie . no bomb .")]


def perturbed(model: Any, seed: int, scale: float = 0.02) -> Any:
    """``model`` with noise added to every decoder-layer matrix (2-D weights and fused 3-D experts)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and any(f".{k}." in f".{name}" for k in ("layers", "h")) and "embed" not in name:
                p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def save_model(variant: Variant, model: Any, path: Path) -> Path:
    kwargs = {"max_shard_size": variant.shard} if variant.shard else {}
    model.to(variant.dtype).save_pretrained(path, **kwargs)
    return path


def tokenizer(path: Path) -> None:
    """A word tokenizer over :data:`WORDS` whose ids stay inside the tiny vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>").save_pretrained(path)


def family(variant: Variant, root: Path) -> dict[str, Path]:
    """base (θ_U), aligned (θ_A = θ_U + noise) and finetuned (θ_F = θ_A + noise) full checkpoints with tokenizers."""
    base = build_model(variant)
    paths = {"base": save_model(variant, base, root / "base")}
    paths["aligned"] = save_model(variant, perturbed(build_model(variant), 1), root / "aligned")
    paths["finetuned"] = save_model(variant, perturbed(perturbed(build_model(variant), 1), 2), root / "finetuned")
    for path in paths.values():
        tokenizer(path)
    return paths


#: adapter name → (variant, LoraConfig keyword arguments)
ADAPTERS = {
    "llama-default": ("llama-tied", dict(r=4, lora_alpha=8)),
    "llama-embedding-tied": ("llama-tied", dict(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"])),
    "qwen2-all-linear-rslora": ("qwen2", dict(r=8, lora_alpha=16, use_rslora=True, target_modules="all-linear")),
    "qwen2-patterns-lm-head": ("qwen2", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                             rank_pattern={"down_proj": 2}, alpha_pattern={"v_proj": 3}, modules_to_save=["lm_head"])),
    "gemma2-default": ("gemma2", dict(r=4, lora_alpha=8)),
    "gemma3-default": ("gemma3", dict(r=4, lora_alpha=8)),
    "phi3-fused-qkv": ("phi3", dict(r=4, lora_alpha=8, target_modules=["qkv_proj", "gate_up_proj"])),
    "gpt2-fan-in-fan-out": ("gpt2", dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True)),
    "gpt-neox-default": ("gpt-neox", dict(r=4, lora_alpha=8)),
    "opt-default": ("opt", dict(r=4, lora_alpha=8)),
    "mixtral-experts": ("mixtral", dict(r=4, lora_alpha=8, target_modules=["q_proj"],
                                        target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"])),
    "qwen3-moe-experts": ("qwen3-moe", dict(r=2, lora_alpha=4, target_modules=["o_proj"], target_parameters=["mlp.experts.down_proj"])),
    "qwen2-moe-all-linear": ("qwen2-moe", dict(r=4, lora_alpha=8, target_modules="all-linear")),
    "gpt2-default": ("gpt2", dict(r=4, lora_alpha=8, fan_in_fan_out=True)),
    "qwen3-default": ("qwen3", dict(r=4, lora_alpha=8)),
    "mistral-default": ("mistral", dict(r=4, lora_alpha=8)),
    "llama-fp16-default": ("llama-fp16", dict(r=4, lora_alpha=8)),
    "llama-bf16-default": ("llama-bf16-sharded", dict(r=4, lora_alpha=8)),
}


def make_adapter(base: Path, out: Path, seed: int, **config) -> Path:
    """A real PEFT LoRA adapter on ``base`` with random non-zero factors."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(**config))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    peft_model.save_pretrained(out)
    return out
