"""Loading models for inference and batched generation.

``load_causal_lm`` turns a local Hugging Face directory (optionally plus a PEFT adapter) into a
ready-to-generate ``(model, tokenizer)`` pair with clear errors; ``generate`` runs batched,
length-bucketed, left-padded generation and returns only the new text. Heavy imports (torch,
transformers, peft) happen inside the functions, so importing this package stays light.
"""

from __future__ import annotations

from llmguard.inference.generate import PLAIN_TEMPLATE, format_prompt, generate
from llmguard.inference.loading import load_causal_lm, resolve_device

__all__ = ["PLAIN_TEMPLATE", "format_prompt", "generate", "load_causal_lm", "resolve_device"]
