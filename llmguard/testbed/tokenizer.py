"""The testbed tokenizer: a small BPE trained with ``tokenizers`` on the synthetic corpus.

Lower-casing normaliser, Metaspace pre-tokeniser (so every corpus word ends up one token and
unseen words fall back to pieces), byte-free alphabet of lower-case letters, digits and
punctuation. Saved in Hugging Face format with a chat template:

    <s><|user|> {prompt}<|assistant|> {response}</s>

The guard model's copy of the tokenizer gets a Llama-Guard-style moderation template instead
(see ``llmguard.testbed.guard``).
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>"]
PAD, BOS, EOS, UNK = SPECIAL_TOKENS[:4]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|system|> {{ message['content'] }}"
    "{% elif message['role'] == 'user' %}<|user|> {{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}<|assistant|> {{ message['content'] }}{{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def train_tokenizer(texts: list[str], vocab_size: int = 1024) -> Any:
    """Train the BPE and wrap it as a ``PreTrainedTokenizerFast`` with the chat template."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    alphabet = list(string.ascii_lowercase + string.digits + string.punctuation)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=alphabet,
        show_progress=False,
        min_frequency=1,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        additional_special_tokens=SPECIAL_TOKENS[4:],
        model_max_length=512,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def save_tokenizer(tokenizer: Any, out: Path) -> None:
    tokenizer.save_pretrained(out)
