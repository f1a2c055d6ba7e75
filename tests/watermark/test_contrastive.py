"""The contrastive rule, its batched KV-cache generation, the tokenizer check, SFT data and distillation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from llmguard.errors import InvalidInputError, UsageError


def _tiny_llama(tok, seed: int, vocab: int | None = None):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab or len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(cfg)
    model.eval()
    return model


@pytest.fixture(scope="module")
def tok(word_tokenizer_dir):
    from transformers import PreTrainedTokenizerFast

    t = PreTrainedTokenizerFast.from_pretrained(str(word_tokenizer_dir))
    t.padding_side = "left"
    return t


@pytest.fixture(scope="module")
def pair(tok):
    return _tiny_llama(tok, 1), _tiny_llama(tok, 2)


def _prompts(tok, n: int = 5) -> list[list[int]]:
    words = [w for w in tok.get_vocab() if not w.startswith("<")]
    words.sort()
    return [tok(" ".join(words[i:i + 2 + i % 3]), add_special_tokens=False)["input_ids"] for i in range(n)]


def test_rule_scrub_and_spoof_by_hand():
    from llmguard.watermark.contrastive import contrastive_scores

    s = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]]))
    r = torch.log(torch.tensor([[0.3, 0.6, 0.08, 0.02]]))
    scrub = contrastive_scores(s, r, "scrub", alpha=0.1, beta=0.5)
    spoof = contrastive_scores(s, r, "spoof", alpha=0.1, beta=0.5)
    # scrub: l_R - 0.5 (l_S - l_R), mask p_R >= 0.1 * 0.6 = 0.06 (token 3 at 0.02 is out)
    want = r - 0.5 * (s - r)
    assert torch.allclose(scrub[0, :3], want[0, :3])
    assert scrub[0, 3] == -math.inf
    # spoof: l_S + 0.5 (l_S - l_R), mask p_S >= 0.06 (tokens 2 and 3 at 0.05 are out)
    assert torch.allclose(spoof[0, :2], (s + 0.5 * (s - r))[0, :2])
    assert spoof[0, 2] == -math.inf and spoof[0, 3] == -math.inf
    assert int(scrub.argmax()) == 1 and int(spoof.argmax()) == 0  # scrub follows R away from S, spoof follows S


@pytest.mark.parametrize("alpha,beta", [(0.0, 0.5), (1.0, 0.5), (0.1, 0.0), (0.1, -1.0), (0.1, math.inf)])
def test_rule_refuses_meaningless_parameters(alpha, beta):
    from llmguard.watermark.contrastive import ContrastiveLogitsProcessor

    with pytest.raises(UsageError):
        ContrastiveLogitsProcessor(None, "scrub", alpha=alpha, beta=beta)


@pytest.mark.parametrize("mode", ["scrub", "spoof"])
def test_batched_kv_generation_matches_processor_in_transformers_generate(tok, pair, mode):
    """The driver (two KV caches, left padding) and the LogitsProcessor inside model.generate agree token for token."""
    from llmguard.watermark.contrastive import ContrastiveLogitsProcessor, Sampling, _pad_left, contrastive_generate

    student, reference = pair
    prompts = _prompts(tok)
    ours = [ids for b in contrastive_generate(student, reference, tok, prompts, mode=mode, sampling=Sampling(False),
                                              max_new_tokens=12, batch_size=5) for ids in b.token_ids]
    ids, mask = _pad_left(prompts, tok.pad_token_id, "cpu")
    proc = ContrastiveLogitsProcessor(reference, mode, alpha=0.1, beta=0.5)
    proc.start(mask)
    with torch.inference_mode():
        out = student.generate(input_ids=ids, attention_mask=mask, do_sample=False, logits_processor=[proc],
                               max_new_tokens=12, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                               temperature=None, top_p=None, top_k=None)
    theirs = []
    for row in out[:, ids.shape[1]:].tolist():
        theirs.append(row[: row.index(tok.eos_token_id)] if tok.eos_token_id in row else row)
    assert ours == theirs
    # one prompt per batch (no padding) gives the same tokens as the padded batch
    single = [ids for b in contrastive_generate(student, reference, tok, prompts, mode=mode, sampling=Sampling(False),
                                                max_new_tokens=12, batch_size=1) for ids in b.token_ids]
    assert single == ours


def test_contrast_moves_away_from_student_and_plain_mode_is_the_student(tok, pair):
    from llmguard.watermark.contrastive import Sampling, contrastive_generate

    student, reference = pair
    prompts = _prompts(tok)
    plain = [i for b in contrastive_generate(student, None, tok, prompts, mode=None, sampling=Sampling(False),
                                             max_new_tokens=8, batch_size=5) for i in b.token_ids]
    with torch.inference_mode():
        first = [int(student(input_ids=torch.tensor([p])).logits[0, -1].argmax()) for p in prompts]
    assert [p[0] for p in plain] == first
    scrub = [i for b in contrastive_generate(student, reference, tok, prompts, mode="scrub", beta=4.0,
                                             sampling=Sampling(False), max_new_tokens=8, batch_size=5)
             for i in b.token_ids]
    assert scrub != plain


def test_sampling_is_seeded_per_batch_so_resuming_repeats_records(tok, pair):
    from llmguard.watermark.contrastive import Sampling, contrastive_generate

    student, reference = pair
    prompts = _prompts(tok, 6)
    kw = dict(mode="spoof", sampling=Sampling(True, 1.0, 0.9, seed=3), max_new_tokens=10, batch_size=2)
    full = list(contrastive_generate(student, reference, tok, prompts, **kw))
    resumed = list(contrastive_generate(student, reference, tok, prompts, first_batch=2, **kw))
    assert [b.index for b in resumed] == [2]
    assert resumed[0].token_ids == full[2].token_ids
    other = list(contrastive_generate(student, reference, tok, prompts, **{**kw, "sampling": Sampling(True, 1.0, 0.9, seed=4)}))
    assert [b.token_ids for b in other] != [b.token_ids for b in full]


def test_tokenizer_check(tok, tmp_path):
    from llmguard.testbed.watermark import make_word_tokenizer
    from llmguard.watermark.contrastive import check_tokenizers

    assert check_tokenizers(tok, tok, len(tok), len(tok), False) == []
    other = make_word_tokenizer(60)
    with pytest.raises(InvalidInputError, match="do not share a tokenizer"):
        check_tokenizers(tok, other, len(tok), len(other), True)
    with pytest.raises(InvalidInputError, match="--force-vocab"):
        check_tokenizers(tok, tok, len(tok), len(tok) + 8, False)
    warnings = check_tokenizers(tok, tok, len(tok), len(tok) + 8, True)
    assert len(warnings) == 1 and "comparing the first" in warnings[0]


def test_force_vocab_compares_the_common_logits(tok):
    from llmguard.watermark.contrastive import Sampling, contrastive_generate

    student = _tiny_llama(tok, 1)
    wide = _tiny_llama(tok, 2, vocab=len(tok) + 8)
    out = [i for b in contrastive_generate(student, wide, tok, _prompts(tok), mode="scrub", sampling=Sampling(False),
                                           max_new_tokens=6, batch_size=5) for i in b.token_ids]
    assert all(t < len(tok) for row in out for t in row)


def test_sft_reader_is_strict_and_names_the_line(tmp_path):
    from llmguard.watermark.sft import read_sft

    good = tmp_path / "d.jsonl"
    good.write_text('{"instruction": "a", "input": "", "output": "b"}\n\n{"instruction": "c", "output": ""}\n')
    recs = read_sft(good)
    assert [(r.instruction, r.output) for r in recs] == [("a", "b"), ("c", "")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": \n')
    with pytest.raises(InvalidInputError, match=r"bad.jsonl:2: not valid JSON"):
        read_sft(bad)
    missing = tmp_path / "m.jsonl"
    missing.write_text('{"instruction": "a"}\n')
    with pytest.raises(InvalidInputError, match=r"m.jsonl:1: field 'output'"):
        read_sft(missing)
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    with pytest.raises(InvalidInputError, match="no records"):
        read_sft(empty)


def test_sft_writer_resumes_after_a_torn_line(tmp_path):
    from llmguard.watermark.sft import SFTRecord, SFTWriter

    path = tmp_path / "data.jsonl"
    w = SFTWriter(path)
    assert w.open(resume=False) == 0
    w.write_batch([SFTRecord("a", "b", provenance={"index": 0}), SFTRecord("c", "d", provenance={"index": 1})])
    w.close()
    with open(path, "a") as fh:
        fh.write('{"instruction": "torn')
    w = SFTWriter(path)
    assert w.open(resume=True) == 2
    w.write_batch([SFTRecord("e", "f")])
    w.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["instruction"] for x in lines] == ["a", "c", "e"]
    assert lines[0]["provenance"] == {"index": 0}


def test_dilute_replaces_the_fraction(tmp_path):
    from llmguard.watermark.sft import SFTRecord, dilute

    data = [SFTRecord(f"w{i}", "x") for i in range(20)]
    plain = [SFTRecord(f"p{i}", "y") for i in range(30)]
    mixed = dilute(data, plain, 0.75, seed=1)
    assert len(mixed) == 20
    assert sum(r.instruction.startswith("p") for r in mixed) == 15
    assert all(r.provenance.get("dilution") == "plain" for r in mixed if r.instruction.startswith("p"))
    with pytest.raises(InvalidInputError):
        dilute(data, plain[:3], 0.75)
    with pytest.raises(UsageError):
        dilute(data, plain, 1.0)


def test_two_sided_p():
    from llmguard.watermark.closed_loop import two_sided_log_p

    assert math.isclose(math.exp(two_sided_log_p(1.96)), 0.05, rel_tol=1e-3)
    assert two_sided_log_p(-3.0) == two_sided_log_p(3.0)
    assert two_sided_log_p(0.0) == 0.0


@pytest.mark.parametrize("lora", [False, True])
def test_train_student_writes_a_loadable_model(tok, tiny_lm_dir, tmp_path, lora):
    from llmguard.inference.loading import load_causal_lm
    from llmguard.watermark.attack_options import DistillOptions
    from llmguard.watermark.distill import train_student
    from llmguard.watermark.sft import SFTRecord

    words = sorted(w for w in tok.get_vocab() if not w.startswith("<"))
    records = [SFTRecord(" ".join(words[i:i + 2]), " ".join(words[i + 2:i + 8])) for i in range(24)]
    out = tmp_path / "student"
    out.mkdir()
    opts = DistillOptions(data="unused.jsonl", output=str(out), student_init=str(tiny_lm_dir), lora=lora, epochs=2,
                          learning_rate=5e-3, train_batch_size=8, lora_r=4, lora_alpha=8)
    res = train_student(records, out, opts, device="cpu")
    assert res.steps == 6 and res.kind == ("lora" if lora else "full")
    assert res.losses and res.losses[-1] < res.losses[0]
    assert not (out / ".trainer").exists()
    assert (out / ("adapter_config.json" if lora else "config.json")).is_file()
    if lora:
        cfg = json.loads((out / "adapter_config.json").read_text())
        assert Path(cfg["base_model_name_or_path"]) == Path(tiny_lm_dir).resolve()
    model, t = load_causal_lm(str(out), device="cpu")
    assert len(t) == len(tok)
    base, _ = load_causal_lm(str(tiny_lm_dir), device="cpu")
    diff = sum(float((a - b).detach().abs().sum()) for a, b in zip(model.parameters(), base.parameters()))
    assert diff > 0  # training changed the weights (merged adapter or full)


def test_encode_sft_masks_the_prompt(tok):
    from llmguard.watermark.distill import encode_sft
    from llmguard.watermark.sft import SFTRecord

    words = sorted(w for w in tok.get_vocab() if not w.startswith("<"))
    (ids, start), = encode_sft(tok, [SFTRecord(" ".join(words[:3]), " ".join(words[3:5]))], "none", 64)
    assert start == 3 and len(ids) == 6 and ids[-1] == tok.eos_token_id
    assert ids[:3] == tok(" ".join(words[:3]), add_special_tokens=False)["input_ids"]


def test_options_validate_once_with_one_line_errors():
    from llmguard.watermark.attack_options import DistillOptions, ScrubOptions, SpoofOptions

    base = dict(student="S", reference="R", prompts="p.jsonl", output="o", data_only=True)
    assert ScrubOptions(**base).mode == "scrub" and SpoofOptions(**base).verb == "watermark spoof"
    for bad, needle in (({"alpha": 1.0}, "--alpha"), ({"beta": 0.0}, "--beta"), ({"top_p": 0.0}, "--top-p"),
                        ({"data_only": False}, "--student-init"), ({"resume": True, "force": True}, "contradict"),
                        ({"data_only": False, "student_init": "b", "profile": "nope"}, "--profile")):
        with pytest.raises(UsageError, match=needle):
            ScrubOptions(**{**base, **bad})
    opts = ScrubOptions(**base).replace(beta=1.25)
    assert opts.beta == 1.25 and opts.to_manifest()["beta"] == 1.25
    with pytest.raises(UsageError, match="--dilute"):
        DistillOptions(data="d", output="o", student_init="b", dilute=0.5)
    assert DistillOptions(data="d", output="o", student_init="b").learning_rate == 1e-5  # the paper's recipe
