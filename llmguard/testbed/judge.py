"""Testbed judges: a tiny trained HDC judge and a tiny LLaVA-layout image-text model.

**Tiny HDC judge.** Synthetic patient questions ("my son has had a fever for 3 days ...")
get answers whose quality is known by construction: an advice tier ``k`` in 0..5 (from
"ignore it" to "rest, drink water, track it and see a doctor") and a topic flag (does the
answer talk about the symptom that was asked about). The known labels are

- COR sub-aspects (ACC, INFO, UNC) and EXP sub-aspects (CLAR, INTE, LANG, TE): ``k``;
- REL sub-aspects (CONT, COND, CONC): ``k`` when on topic, else 0.

A Llama (hidden 128, 4 layers, ~1M parameters) with a byte-level BPE tokenizer trained on the
corpus learns, in about 40 CPU-seconds (one thread), to answer the *shipped* HDC prompts
(``llmguard/eval/templates/hdc``, all three experts; 80 % single mode, 20 % pairwise) in the
HDC format with those scores. Its agreement with the known labels is an honest measurement (see
``llmguard eval agree``), not a fixed number: held-out items use unseen
(subject, symptom, days) combinations.

**Tiny LLaVA.** ``LlavaForConditionalGeneration`` built from a config (CLIP vision tower
32×32 px, patch 8, the judge's tokenizer plus ``<image>``), random weights, saved with a
``LlavaProcessor``: it loads through ``AutoModelForImageTextToText``/``AutoProcessor`` and
runs the ACE-M3 path end to end. Its outputs are noise and do not parse — which is what the
``parse_status`` machinery is for.

Both are cached under ``$LLMGUARD_CACHE/testbed`` (default ``~/.cache/llmguard``) behind a
file lock, keyed by a hash of the recipe and the shipped templates.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

RECIPE_VERSION = "judge-v2"
LLAVA_VERSION = "llava-v1"

SUBJECTS = [("I have", "i"), ("my son has", "he"), ("my mother has", "she"), ("my wife has", "she"),
            ("my father has", "he"), ("my daughter has", "she"), ("my friend has", "he"), ("my husband has", "he")]
SYMPTOMS = ["a fever", "a cough", "a rash", "a headache", "nausea", "dizziness", "back pain", "a sore throat"]
ADVICE = {
    0: ["ignore it and it will pass", "do nothing at all"],
    1: ["take any pills you find", "drink some coffee"],
    2: ["rest for a while", "just wait and rest"],
    3: ["rest and drink water", "drink water and rest well"],
    4: ["rest , drink water and see a doctor if it gets worse", "drink water , rest and call a doctor if it gets worse"],
    5: ["rest , drink water , track it daily and see a doctor soon", "track it daily , drink water , rest and see a doctor soon"],
}
ANALYSIS_WORDS = {0: "wrong", 1: "poor", 2: "weak", 3: "fair", 4: "good", 5: "excellent"}
PROMPT_FORMAT = "auto"  # the tiny tokenizer carries a chat template; 'auto' applies it

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}[INST] {{ message['content'] }} [/INST]"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}\n{% endif %}"
)
LLAVA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}[INST] "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n{% else %}{{ part['text'] }}{% endif %}{% endfor %}"
    " [/INST]{% endif %}{% endfor %}{% if add_generation_prompt %}\n{% endif %}"
)


# --------------------------------------------------------------------------------------------
# data with known labels


def labels_for(tier: int, on_topic: bool) -> dict[str, int]:
    """The known per-sub-aspect labels of an answer (see the module docstring)."""
    rel = tier if on_topic else 0
    return {"CONT": rel, "COND": rel, "CONC": rel, "ACC": tier, "INFO": tier, "UNC": tier,
            "CLAR": tier, "INTE": tier, "LANG": tier, "TE": tier}


def _combos() -> list[tuple[int, int, int]]:
    return [(s, y, d) for s in range(len(SUBJECTS)) for y in range(len(SYMPTOMS)) for d in range(2, 8)]


def _split(seed: int = 0) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    combos = _combos()
    random.Random(seed).shuffle(combos)
    n_test = len(combos) // 4
    return combos[n_test:], combos[:n_test]


def make_item(rng: random.Random, combo: tuple[int, int, int], tier: int, on_topic: bool, item_id: str) -> dict[str, Any]:
    s, y, days = combo
    subject, pronoun = SUBJECTS[s]
    symptom = SYMPTOMS[y]
    answer_symptom = symptom if on_topic else SYMPTOMS[(y + rng.randrange(1, len(SYMPTOMS))) % len(SYMPTOMS)]
    question = f"{subject.capitalize()} had {symptom} for {days} days. What should {pronoun} do?"
    answer = f"For {answer_symptom} , {rng.choice(ADVICE[tier])} ."
    return {"id": item_id, "question": question, "answer": answer, "tier": tier, "on_topic": on_topic,
            "labels": labels_for(tier, on_topic)}


def judge_items(n: int = 48, *, split: str = "test", seed: int = 1) -> list[dict[str, Any]]:
    """``n`` items with known labels (``labels``) from the held-out (``test``) or ``train`` combos."""
    train, test = _split()
    pool = test if split == "test" else train
    rng = random.Random(seed)
    out = []
    for i in range(n):
        combo = pool[rng.randrange(len(pool))]
        tier = i % 6
        on_topic = rng.random() >= 0.25
        out.append(make_item(rng, combo, tier, on_topic, f"{split}-{i:04d}"))
    return out


def pairwise_items(n: int = 24, *, seed: int = 2) -> list[dict[str, Any]]:
    """Items with two answers (``answer``/``answer_b``) and labels for both (``labels_a``/``labels_b``)."""
    _, test = _split()
    rng = random.Random(seed)
    out = []
    for i in range(n):
        combo = test[rng.randrange(len(test))]
        ta, tb = rng.sample(range(6), 2)
        a = make_item(rng, combo, ta, True, f"pair-{i:04d}")
        b = make_item(rng, combo, tb, True, f"pair-{i:04d}")
        out.append({"id": a["id"], "question": a["question"], "answer": a["answer"], "answer_b": b["answer"],
                    "labels_a": a["labels"], "labels_b": b["labels"]})
    return out


def target_text(aspect: Any, labels: dict[str, int]) -> str:
    lines = []
    for sub in aspect.sub_aspects:
        score = labels[sub.key]
        lines += [f"{sub.name} ({sub.key}):", f"Analysis: The response is {ANALYSIS_WORDS[score]}.", f"Score: {score}"]
    return "\n".join(lines)


def write_items(items: list[dict[str, Any]], path: Path) -> Path:
    """The judge's input file: id, question, answer (and answer_b), without the labels."""
    keep = ("id", "question", "answer", "answer_b", "image", "reference")
    with open(path, "w", encoding="utf-8") as fh:
        for it in items:
            fh.write(json.dumps({k: it[k] for k in keep if k in it}) + "\n")
    return path


def write_labels(items: list[dict[str, Any]], path: Path) -> Path:
    """Human-style labels: one line per item with every sub-aspect and the aspect means
    (REL/COR/EXP); for pairwise items one line per answer with ``"response": "a"|"b"``."""
    aspects = {"REL": ("CONT", "COND", "CONC"), "COR": ("ACC", "INFO", "UNC"), "EXP": ("CLAR", "INTE", "LANG", "TE")}

    def with_aspects(labels: dict[str, int]) -> dict[str, float]:
        out: dict[str, float] = dict(labels)
        for key, subs in aspects.items():
            out[key] = sum(labels[s] for s in subs) / len(subs)
        return out

    with open(path, "w", encoding="utf-8") as fh:
        for it in items:
            if "labels" in it:
                fh.write(json.dumps({"id": it["id"], **with_aspects(it["labels"])}) + "\n")
            else:
                for slot in ("a", "b"):
                    fh.write(json.dumps({"id": it["id"], "response": slot, **with_aspects(it[f"labels_{slot}"])}) + "\n")
    return path


# --------------------------------------------------------------------------------------------
# cache + lock


def cache_root() -> Path:
    from llmguard.testbed import provenance

    return provenance.cache_root() / "testbed"


def _recipe_hash(extra: str) -> str:
    """The cache name of a tiny judge: its recipe version, the judge templates it was trained on,
    the transformers major version and the build key (torch version and CPU vector path change
    the trained bytes)."""
    import transformers

    from llmguard.eval.templating import load_templates

    from llmguard.testbed import provenance

    return provenance.recipe_hash(extra, load_templates("hdc").hash, transformers.__version__.split(".")[0],
                                  provenance.build_key())


def _cached_build(name: str, builder: Any) -> Path:
    from filelock import FileLock

    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    out = root / name
    with FileLock(str(root / f"{name}.lock"), timeout=900):
        if (out / "llmguard-testbed.json").is_file():
            return out
        tmp = root / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        info = builder(tmp)
        from llmguard.testbed.provenance import environment

        info["environment"] = environment()
        (tmp / "llmguard-testbed.json").write_text(json.dumps(info, indent=2))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    return out


# --------------------------------------------------------------------------------------------
# tiny HDC judge


def _train_tokenizer(texts: list[str], vocab_size: int = 1200) -> Any:
    """Byte-level BPE (exact round trip) whose pre-tokens are line and clause pieces, so the
    template's fixed lines become a few long tokens: ~100 tokens per training example instead
    of ~300 (a 'Score: 4' line is one token), which is what makes training fit in half a minute."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\n"), behavior="merged_with_previous"),
        pre_tokenizers.Split(Regex(r", | ,|\. |\?"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>", "<image>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
                                  max_token_length=64)
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                 model_max_length=1024, padding_side="left")
    hf.chat_template = CHAT_TEMPLATE
    return hf


def pairwise_target_text(aspect: Any, labels_1: dict[str, int], labels_2: dict[str, int]) -> str:
    return "Evaluation of Response 1:\n" + target_text(aspect, labels_1) + "\nEvaluation of Response 2:\n" + target_text(aspect, labels_2)


def _judge_examples(n_per_aspect: int, seed: int, pairwise_share: float = 0.0) -> list[tuple[str, str]]:
    from llmguard.eval.hdc import aspects_from_preset, render_hdc_prompt
    from llmguard.eval.templating import load_templates

    templates = load_templates("hdc")
    aspects = aspects_from_preset(templates)
    train, _ = _split()
    rng = random.Random(seed)
    pairs = []
    for aspect in aspects:
        for i in range(n_per_aspect):
            combo = train[rng.randrange(len(train))]
            item = make_item(rng, combo, rng.randrange(6), rng.random() >= 0.3, "x")
            if rng.random() < pairwise_share:
                other = make_item(rng, combo, rng.randrange(6), rng.random() >= 0.3, "x")
                prompt = render_hdc_prompt(templates, aspect, "pairwise", item["question"],
                                           [item["answer"], other["answer"]], None)
                pairs.append((prompt, pairwise_target_text(aspect, item["labels"], other["labels"])))
                continue
            prompt = render_hdc_prompt(templates, aspect, "single", item["question"], [item["answer"]], None)
            pairs.append((prompt, target_text(aspect, item["labels"])))
    rng.shuffle(pairs)
    return pairs


def build_tiny_judge_into(out: Path, *, steps: int = 200, layers: int = 2, batch_size: int = 20, lr: float = 6e-3,
                          seed: int = 0, threads: int | None = 1, pairwise_share: float = 0.2) -> dict[str, Any]:
    """Train the tiny judge into ``out`` (no caching); returns build info.

    One torch thread by default: on a shared 2-core machine (``pytest -n 2``) more threads
    only spin. The loss is computed on the target positions only (the prompt is ~3/4 of
    every sequence), which keeps a step at about a quarter of a CPU second.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    t0 = time.perf_counter()
    c0 = time.process_time()
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        pairs = _judge_examples(400, seed, pairwise_share)
        tok = _train_tokenizer([p for p, _ in pairs[:300]] + [t for _, t in pairs])
        encoded = []
        for prompt, target in pairs:
            p_ids = tok(tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                add_generation_prompt=True), add_special_tokens=False)["input_ids"]
            t_ids = tok(target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            encoded.append((p_ids, t_ids))
        max_len = max(len(p) + len(t) for p, t in encoded)
        config = LlamaConfig(
            vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=max(512, max_len + 64),
            tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        model = LlamaForCausalLM(config)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
        rng = random.Random(seed)
        model.train()
        losses = []
        for _ in range(steps):
            batch = [encoded[rng.randrange(len(encoded))] for _ in range(batch_size)]
            width = max(len(p) + len(t) for p, t in batch)
            ids = torch.full((batch_size, width), tok.pad_token_id, dtype=torch.long)
            attn = torch.zeros((batch_size, width), dtype=torch.long)
            rows, cols, targets = [], [], []
            for row, (p, t) in enumerate(batch):
                seq = p + t
                ids[row, : len(seq)] = torch.tensor(seq)
                attn[row, : len(seq)] = 1
                for j in range(len(p) - 1, len(seq) - 1):  # position j predicts token j+1
                    rows.append(row)
                    cols.append(j)
                    targets.append(seq[j + 1])
            hidden = model.model(input_ids=ids, attention_mask=attn).last_hidden_state
            logits = model.lm_head(hidden[torch.tensor(rows), torch.tensor(cols)])
            loss = torch.nn.functional.cross_entropy(logits, torch.tensor(targets))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(old_threads)
    model.eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"kind": "tiny-hdc-judge", "recipe": RECIPE_VERSION, "steps": steps, "layers": layers,
            "final_loss": round(sum(losses[-10:]) / 10, 4), "pairwise_share": pairwise_share,
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_seconds": round(time.perf_counter() - t0, 2), "train_cpu_seconds": round(time.process_time() - c0, 2),
            "prompt_format": PROMPT_FORMAT}


def tiny_judge_path() -> Path:
    """The cached tiny HDC judge (trained on first use, ~30 s on 2 cores)."""
    return _cached_build(f"tiny-hdc-judge-{_recipe_hash(RECIPE_VERSION)}", build_tiny_judge_into)


# --------------------------------------------------------------------------------------------
# tiny LLaVA


def build_tiny_llava_into(out: Path, *, seed: int = 0) -> dict[str, Any]:
    import torch
    from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    torch.manual_seed(seed)
    corpus = [p for p, _ in _judge_examples(20, seed)] + [t for _, t in _judge_examples(20, seed + 1)]
    tok = _train_tokenizer(corpus, vocab_size=600)
    tok.chat_template = None
    image_id = tok.convert_tokens_to_ids("<image>")
    text = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=32)
    config = LlavaConfig(text_config=text, vision_config=vision, image_token_index=image_id,
                         vision_feature_select_strategy="default", vision_feature_layer=-2,
                         projector_hidden_act="gelu")
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=8,
                               vision_feature_select_strategy="default", image_token="<image>",
                               num_additional_image_tokens=1, chat_template=LLAVA_CHAT_TEMPLATE)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return {"kind": "tiny-llava", "recipe": LLAVA_VERSION, "parameters": sum(p.numel() for p in model.parameters()),
            "weights": "random"}


def tiny_llava_path() -> Path:
    """The cached tiny LLaVA-layout model (random weights, built in a few seconds)."""
    return _cached_build(f"tiny-llava-{_recipe_hash(LLAVA_VERSION)}", build_tiny_llava_into)


def write_png(path: Path, seed: int = 0, size: int = 40) -> Path:
    """A small random RGB PNG (needs Pillow)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return path
