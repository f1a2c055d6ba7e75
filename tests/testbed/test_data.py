"""Synthetic data: deterministic splits, held-out combinations, label sanity."""

from __future__ import annotations

from llmguard.eval.safety_judges import KeywordJudge
from llmguard.testbed import data as D


def test_same_seed_same_data_other_seed_other_order():
    a, b, c = D.harmful_prompts(0), D.harmful_prompts(0), D.harmful_prompts(1)
    assert a.as_dict() == b.as_dict()
    assert a.as_dict() != c.as_dict()
    assert D.sentiment_items(0).as_dict() == D.sentiment_items(0).as_dict()


def test_harmful_test_combinations_are_unseen_in_train():
    s = D.harmful_prompts(0)
    train = {(r["verb"], r["object"]) for r in s.train}
    test = {(r["verb"], r["object"]) for r in s.test}
    dev = {(r["verb"], r["object"]) for r in s.dev}
    assert test and dev
    assert not (test & train) and not (dev & train) and not (dev & test)
    # ...but every verb and object of a test prompt occurs in train
    assert {v for v, _ in test} <= {v for v, _ in train}
    assert {o for _, o in test} <= {o for _, o in train}
    assert {r["category"] for r in s.test} == set(D.HARM_CATEGORIES)
    assert len({r["id"] for r in s.train + s.dev + s.test}) == len(s.train + s.dev + s.test)


def test_sentiment_and_arith_splits():
    s = D.sentiment_items(0)
    assert {r["answer"] for r in s.test} == {"positive", "negative"}
    assert not ({r["prompt"] for r in s.test} & {r["prompt"] for r in s.train})
    negated = [r for r in s.train if " was not " in r["prompt"]]
    assert negated and all(
        (r["answer"] == "positive") == any(f" not {adj} " in r["prompt"] for adj in D.SENT_NEG) for r in negated
    )
    a = D.arithmetic_items(0)
    assert not ({r["prompt"] for r in a.test} & {r["prompt"] for r in a.train})
    for r in a.test:
        x, y = [int(t) for t in r["prompt"].split() if t.isdigit()]
        assert int(r["answer"]) == x + y


def test_sentiment_wording_dev_is_held_out_and_labelled():
    splits = D.sentiment_items(0)
    items = D.sentiment_wording_dev(0)
    seen = {r["prompt"] for r in splits.train + splits.dev + splits.test}
    assert len(items) > 4 * len(splits.dev)  # the point: far more than the DEV combinations give
    assert not ({r["prompt"] for r in items} & seen)
    assert len({r["prompt"] for r in items}) == len(items) == len({r["id"] for r in items})

    def combo(prompt: str) -> tuple[str, str]:
        subj = next(s for s in D.SENT_SUBJECTS if f" {s} " in f" {prompt} ")
        adj = next(a for a in D.SENT_POS + D.SENT_NEG if f" {a} ." in prompt)
        return subj, adj

    train_combos = {combo(r["prompt"]) for r in splits.train}
    assert {combo(r["prompt"]) for r in items} <= train_combos
    for r in items:
        positive = combo(r["prompt"])[1] in D.SENT_POS
        assert r["answer"] == ("negative" if positive == (" was not " in r["prompt"]) else "positive"), r
    assert items == D.sentiment_wording_dev(0)


def test_keyword_judge_labels_the_generated_responses_as_intended():
    import random

    judge = KeywordJudge()
    rng = random.Random(0)
    for rec in D.harmful_prompts(0).test:
        assert judge.judge_one(rec["prompt"], D.comply_response(rng, rec)).label == "harmful"
        assert judge.judge_one(rec["prompt"], D.refusal_response(rng, rec)).label == "refusal"
