"""Prompt formatting and batched generation.

``generate`` is the one generation loop every verb uses (eval safety, watermark generate,
judges): prompts are tokenised once, sorted by length so each batch holds prompts of similar
length (less padding), left-padded, generated, stripped of the prompt tokens, decoded, and put
back in the caller's order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llmguard.errors import InvalidInputError, UsageError
from llmguard.progress import NullProgress, Progress

#: The plain template used when a tokenizer has no chat template (``template="plain"``).
#: An Alpaca-style layout: the instruction, a blank line, and an open response section.
PLAIN_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"


def format_prompt(tokenizer: Any, prompt: str, template: str = "auto") -> str:
    """Turn a user prompt into the text the model is conditioned on.

    ``template``:
      - ``auto``: the tokenizer's chat template (one user turn + generation prompt) when it has
        one, else :data:`PLAIN_TEMPLATE`;
      - ``chat``: the chat template (error if the tokenizer has none);
      - ``plain``: :data:`PLAIN_TEMPLATE`;
      - ``none``: the prompt unchanged (raw continuation);
      - any other string containing ``{prompt}``: a custom format string.
    """
    if template == "none":
        return prompt
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if template == "chat" or (template == "auto" and has_chat):
        if not has_chat:
            raise UsageError("--template chat: the tokenizer has no chat template")
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    if template in ("auto", "plain"):
        return PLAIN_TEMPLATE.format(prompt=prompt)
    if "{prompt}" in template:
        return template.replace("{prompt}", prompt)
    raise UsageError(f"--template: {template!r} is not auto, chat, plain, none or a string with {{prompt}}")


def _as_processor_list(logits_processor: Any) -> Any:
    if logits_processor is None:
        return None
    from transformers import LogitsProcessorList

    if isinstance(logits_processor, LogitsProcessorList):
        return logits_processor
    if isinstance(logits_processor, (list, tuple)):
        return LogitsProcessorList(list(logits_processor))
    return LogitsProcessorList([logits_processor])


def tokenize_prompts(tokenizer: Any, prompts: Sequence[str], add_special_tokens: bool | str = "auto") -> list[list[int]]:
    """Token ids of each prompt; ``auto`` adds special tokens unless the text already starts with BOS."""
    bos = getattr(tokenizer, "bos_token", None)
    out: list[list[int]] = []
    for i, text in enumerate(prompts):
        if not isinstance(text, str):
            raise InvalidInputError(f"prompt {i}: expected a string, got {type(text).__name__}")
        add = add_special_tokens
        if add == "auto":
            add = not (bos and text.startswith(bos))
        ids = tokenizer(text, add_special_tokens=bool(add))["input_ids"]
        if not ids:
            raise InvalidInputError(f"prompt {i}: empty after tokenisation")
        out.append(list(ids))
    return out


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    logits_processor: Any = None,
    progress: Progress | None = None,
    template: str | None = None,
    add_special_tokens: bool | str = "auto",
    start_batch: int = 0,
    on_batch: Any = None,
) -> list[str]:
    """Generate a continuation for every prompt; returns only the new text, in input order.

    Prompts are used as given (already formatted, e.g. with :func:`format_prompt`) unless
    ``template`` is set, in which case each is passed through ``format_prompt(tokenizer, p, template)``.
    Batches are built from prompts sorted by token length and left-padded; greedy unless
    ``do_sample``. ``seed`` seeds torch before generating (sampling reproducibility).
    ``logits_processor`` (a ``LogitsProcessor``, a list of them or a ``LogitsProcessorList``) is
    passed to ``model.generate`` (e.g. a watermark). ``progress`` gets one stage with one advance
    per prompt.

    Resuming (``watermark generate --resume``): ``on_batch(batch_index, prompt_indices, texts)`` is
    called after every batch, and ``start_batch`` skips the batches an interrupted run finished
    (their results come back as ``""``). The caller restores the torch RNG state it saved after the
    last finished batch instead of passing ``seed`` again, so a resumed run samples exactly what an
    uninterrupted one would have.
    """
    import torch

    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    progress = progress or NullProgress()
    prompts = list(prompts)
    if template is not None:
        prompts = [format_prompt(tokenizer, p, template) for p in prompts]
    ids = tokenize_prompts(tokenizer, prompts, add_special_tokens)
    if not ids:
        return []

    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    eos_id = tokenizer.eos_token_id
    processors = _as_processor_list(logits_processor)
    device = next(model.parameters()).device

    gen_kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "pad_token_id": pad_id,
        "eos_token_id": eos_id,
    }
    if do_sample:
        gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    else:
        # neutralise sampling fields a checkpoint's generation_config may carry
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    if processors is not None:
        gen_kwargs["logits_processor"] = processors

    order = sorted(range(len(ids)), key=lambda i: (-len(ids[i]), i))
    results: list[str | None] = [None] * len(ids)
    if seed is not None and start_batch == 0:
        torch.manual_seed(seed)
    progress.stage("generate", total=len(ids))
    with torch.inference_mode():
        for batch_index, start in enumerate(range(0, len(order), batch_size)):
            chunk = order[start : start + batch_size]
            if batch_index < start_batch:
                progress.advance(len(chunk))
                continue
            width = max(len(ids[i]) for i in chunk)
            input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                seq = ids[i]
                input_ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
                attention[row, width - len(seq) :] = 1
            out = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention.to(device), **gen_kwargs
            )
            new_tokens = out[:, width:].tolist()
            for row, i in enumerate(chunk):
                toks = new_tokens[row]
                if eos_id is not None and eos_id in toks:
                    toks = toks[: toks.index(eos_id)]
                results[i] = tokenizer.decode(toks, skip_special_tokens=True)
            if on_batch is not None:
                on_batch(batch_index, chunk, [results[i] for i in chunk])
            progress.advance(len(chunk))
    return [r if r is not None else "" for r in results]
