"""Small, deterministic training loops for the testbed models (plain torch, no Trainer).

Supervised fine-tuning on (prompt, response) pairs in the tokenizer's chat format, loss on the
response tokens (and the closing EOS) only. Used for the base pretraining (full weights from
scratch), the safety SFT (LoRA), the harmful/benign fine-tunes (LoRA continuing the aligned
adapter, or full weights) and the guard model. ``train_dpo`` is the second alignment stage (DPO on
refusal-vs-compliance pairs, the NLSR paper's aligned model is SFT-merged + DPO-LoRA).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from llmguard.progress import NullProgress, Progress

#: LoRA targets: all seven projections of a Llama block.
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def model_config(tokenizer: Any, *, hidden: int = 128, layers: int = 4, heads: int = 4, intermediate: int = 256,
                 max_positions: int = 256) -> Any:
    """The testbed's LlamaConfig (about 1M parameters with a 1k vocabulary)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def encode_pairs(tokenizer: Any, pairs: Sequence[tuple[str, str]], prompt_fn: Any = None,
                 max_len: int = 256) -> list[tuple[list[int], int]]:
    """Token ids of ``prompt_text + response + EOS`` and where the response starts.

    ``prompt_fn(prompt) -> text`` formats the prompt (default: the chat template's user turn
    with the generation prompt).
    """
    from llmguard.inference.generate import format_prompt

    if prompt_fn is None:
        def prompt_fn(p: str) -> str:
            return format_prompt(tokenizer, p, "auto")
    out = []
    cache: dict[str, list[int]] = {}
    for prompt, response in pairs:
        if prompt not in cache:
            cache[prompt] = tokenizer(prompt_fn(prompt), add_special_tokens=False)["input_ids"]
        p_ids = cache[prompt]
        r_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = (p_ids + r_ids)[:max_len]
        out.append((ids, len(p_ids)))
    return out


class _Optimizer:
    """AdamW with linear warm-up then cosine decay to ``min_lr_frac``, gradient clipping at 1:
    the one update rule of every testbed training loop."""

    def __init__(self, params: list[Any], *, lr: float, steps: int, weight_decay: float, warmup_frac: float = 0.05,
                 min_lr_frac: float = 0.1) -> None:
        import torch

        self.params = params
        self.opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98), eps=1e-8)
        warmup = max(1, int(steps * warmup_frac))

        def lr_at(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            t = (step - warmup) / max(1, steps - warmup)
            return min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t))

        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_at)

    def step(self, loss: Any) -> float:
        import torch

        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())


def train_sft(model: Any, examples: Sequence[tuple[list[int], int]], *, steps: int, lr: float, batch_size: int = 32,
              seed: int = 0, pad_id: int = 0, warmup_frac: float = 0.05, weight_decay: float = 0.0,
              min_lr_frac: float = 0.1, progress: Progress | None = None, stage: str = "train") -> list[float]:
    """AdamW on the trainable parameters, linear warm-up then cosine decay; returns the loss curve."""
    import torch

    progress = progress or NullProgress()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _Optimizer(params, lr=lr, steps=steps, weight_decay=weight_decay, warmup_frac=warmup_frac, min_lr_frac=min_lr_frac)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    losses: list[float] = []
    progress.stage(stage, total=steps)
    for _ in range(steps):
        idx = torch.randint(len(examples), (batch_size,), generator=gen).tolist()
        input_ids, attention, response = _pad([examples[i] for i in idx], pad_id)
        labels = input_ids.masked_fill(~response, -100)
        losses.append(optimizer.step(model(input_ids=input_ids, attention_mask=attention, labels=labels).loss))
        progress.advance(1)
    model.eval()
    return losses


def _pad(batch: Sequence[tuple[list[int], int]], pad_id: int) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    response = torch.zeros((len(batch), width), dtype=torch.bool)
    for row, (ids, start) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[row, : len(ids)] = 1
        response[row, start : len(ids)] = True
    return input_ids, attention, response


def response_logprobs(model: Any, batch: Sequence[tuple[list[int], int]], pad_id: int) -> Any:
    """Σ log p(response token) per sequence (the DPO policy/reference terms)."""
    import torch

    input_ids, attention, response = _pad(batch, pad_id)
    logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
    token_lp = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (token_lp * response[:, 1:]).sum(dim=-1)


def train_dpo(model: Any, pairs: Sequence[tuple[tuple[list[int], int], tuple[list[int], int]]], *, steps: int, lr: float,
              beta: float = 0.1, batch_size: int = 16, seed: int = 0, pad_id: int = 0, progress: Progress | None = None,
              stage: str = "dpo") -> list[float]:
    """DPO (sigmoid loss) of a fresh PEFT adapter; the model with its adapter disabled is the reference.

    ``pairs`` are (chosen, rejected) encodings from :func:`encode_pairs` with the same prompt. The
    reference log-probabilities are computed once up front (the adapter starts at ΔW = 0).
    """
    import torch

    progress = progress or NullProgress()
    model.eval()
    with torch.no_grad(), model.disable_adapter():
        chunks = []
        for start in range(0, len(pairs), 64):
            part = pairs[start : start + 64]
            chunks.append(torch.stack([response_logprobs(model, [c for c, _ in part], pad_id),
                                       response_logprobs(model, [r for _, r in part], pad_id)], dim=1))
        reference = torch.cat(chunks)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _Optimizer(params, lr=lr, steps=steps, weight_decay=0.01)  # AdamW's default decay, as first trained
    gen = torch.Generator().manual_seed(seed)
    model.train()
    losses: list[float] = []
    progress.stage(stage, total=steps)
    for _ in range(steps):
        idx = torch.randint(len(pairs), (batch_size,), generator=gen)
        chosen = response_logprobs(model, [pairs[i][0] for i in idx.tolist()], pad_id)
        rejected = response_logprobs(model, [pairs[i][1] for i in idx.tolist()], pad_id)
        margin = beta * ((chosen - reference[idx, 0]) - (rejected - reference[idx, 1]))
        losses.append(optimizer.step(-torch.nn.functional.logsigmoid(margin).mean()))
        progress.advance(1)
    model.eval()
    return losses


def lora_config(r: int = 8, alpha: int = 16) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(LORA_TARGETS), bias="none",
                      task_type="CAUSAL_LM")
