"""Judge-output parsers on real failure shapes, plus hypothesis fuzzing."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from llmguard.eval.hdc import aspects_from_preset, render_hdc_prompt
from llmguard.eval.parsing import parse_marked_score, parse_pairwise, parse_sub_aspects
from llmguard.eval.templating import load_templates

TEMPLATES = load_templates("hdc")
REL = aspects_from_preset(TEMPLATES)[0]
SPEC = REL.parser_spec
SCALE = (0.0, 5.0)


def block(key_name, score, analysis="Looks fine."):
    key, name = key_name
    return f"{name} ({key}):\nAnalysis: {analysis}\nScore: {score}\n"


def test_well_formed():
    text = "".join(block(kn, s) for kn, s in zip(SPEC, [4, 3, 5]))
    r = parse_sub_aspects(text, SPEC, SCALE)
    assert r.status == "ok"
    assert r.scores == {"CONT": 4, "COND": 3, "CONC": 5}
    assert r.analyses["COND"] == "Looks fine."


def test_missing_score_is_not_invented():
    text = block(SPEC[0], 4) + f"{SPEC[1][1]} ({SPEC[1][0]}):\nAnalysis: hmm\n" + block(SPEC[2], 2)
    r = parse_sub_aspects(text, SPEC, SCALE)
    assert r.status == "missing_field"
    assert "COND" not in r.scores and r.missing == ["COND"]
    assert r.scores == {"CONT": 4, "CONC": 2}  # the clean ones are kept, the record is still not ok


def test_missing_header_and_truncation():
    text = block(SPEC[0], 4) + block(SPEC[1], 3)
    assert parse_sub_aspects(text, SPEC, SCALE).status == "missing_field"
    assert parse_sub_aspects(text, SPEC, SCALE, truncated=True).status == "truncated"


def test_out_of_range_and_other_denominator():
    text = block(SPEC[0], 7) + block(SPEC[1], 3) + block(SPEC[2], 2)
    r = parse_sub_aspects(text, SPEC, SCALE)
    assert r.status == "out_of_range" and "CONT" not in r.scores
    text = block(SPEC[0], "4/10") + block(SPEC[1], "3/5") + block(SPEC[2], 2)
    r = parse_sub_aspects(text, SPEC, SCALE)
    assert r.sub_status == {"CONT": "out_of_range", "COND": "ok", "CONC": "ok"}


def test_prompt_phrase_and_echoed_format_are_not_scores():
    prompt = render_hdc_prompt(TEMPLATES, REL, "single", "Q?", ["A."], None)
    assert "between 0 and 5" in prompt
    # a judge that echoes the whole prompt (with "Score: <score>" and "between 0 and 5") and stops
    r = parse_sub_aspects(prompt, SPEC, SCALE)
    assert r.status == "missing_field" and r.scores == {}
    # ... or echoes it and then answers: the real answers win
    answer = "".join(block(kn, s) for kn, s in zip(SPEC, [1, 2, 3]))
    r = parse_sub_aspects(prompt + "\n" + answer, SPEC, SCALE)
    assert r.status == "ok" and r.scores == {"CONT": 1, "COND": 2, "CONC": 3}


def test_extra_text_and_markdown():
    text = ("Sure! Here is my evaluation.\n\n**Context Awareness (CONT):**\nAnalysis: ok\n**Score:** 4\n\n"
            "COND: Analysis: fine. Score: 3 out of 5\n"
            "- Addressing Multiple Concerns (CONC):\nAnalysis: partial\nScore: 2.\nThank you, I hope this helps (score 5 overall).")
    r = parse_sub_aspects(text, SPEC, SCALE)
    assert r.status == "ok", r.detail
    assert r.scores == {"CONT": 4, "COND": 3, "CONC": 2}


def test_conflicting_repeats():
    text = "".join(block(kn, s) for kn, s in zip(SPEC, [4, 3, 5])) + block(SPEC[0], 1)
    r = parse_sub_aspects(text, SPEC, SCALE)
    assert r.status == "conflict" and "CONT" not in r.scores
    same = "".join(block(kn, s) for kn, s in zip(SPEC, [4, 3, 5])) + block(SPEC[0], 4)
    assert parse_sub_aspects(same, SPEC, SCALE).status == "ok"


def test_empty():
    assert parse_sub_aspects("  \n", SPEC, SCALE).status == "empty"
    assert parse_marked_score("", "Final Score", (1, 5)).status == "empty"


def test_pairwise_blocks_and_echo():
    one = "".join(block(kn, s) for kn, s in zip(SPEC, [1, 1, 1]))
    two = "".join(block(kn, s) for kn, s in zip(SPEC, [4, 5, 4]))
    text = f"Evaluation of Response 1:\n{one}Evaluation of Response 2:\n{two}"
    r = parse_pairwise(text, SPEC, SCALE)
    assert r["1"].scores == {"CONT": 1, "COND": 1, "CONC": 1}
    assert r["2"].scores == {"CONT": 4, "COND": 5, "CONC": 4}
    prompt = render_hdc_prompt(TEMPLATES, REL, "pairwise", "Q?", ["A.", "B."], None)
    r = parse_pairwise(prompt + "\n" + text, SPEC, SCALE)
    assert r["1"].ok and r["2"].ok and r["2"].scores["COND"] == 5
    r = parse_pairwise(f"Evaluation of Response 1:\n{one}", SPEC, SCALE)
    assert r["1"].ok and r["2"].status == "missing_field"


def test_marked_score_anchors_at_the_end():
    text = "Conclusion: the rubric says a score between 1 and 5. Score: 2 for REL.\nFinal Score: 4"
    r = parse_marked_score(text, "Final Score", (1, 5))
    assert r.status == "ok" and r.scores == {"score": 4}
    assert parse_marked_score("Final Score: 9", "Final Score", (1, 5)).status == "out_of_range"
    assert parse_marked_score("Conclusion: good", "Final Score", (1, 5)).status == "missing_field"


# ---- fuzzing: whatever the judge writes, the parser never raises and never returns a score that
# ---- is not literally in the output, in range, after its own header.

junk = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=200)
score_tokens = st.one_of(st.integers(-3, 12).map(str), st.sampled_from(["", "<score>", "five", "4.5", "3/5", "2 out of 5", "between 0 and 5"]))


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.tuples(st.sampled_from(SPEC + [("XYZ", "Unknown")]), score_tokens, junk), max_size=6), tail=junk)
def test_fuzz_sub_aspects(parts, tail):
    text = "".join(f"{name} ({key}):\nAnalysis: {an}\nScore: {sc}\n" for (key, name), sc, an in parts) + tail
    r = parse_sub_aspects(text, SPEC, SCALE)
    assert r.status in {"ok", "empty", "missing_field", "out_of_range", "conflict", "truncated"}
    for key, value in r.scores.items():
        assert key in {k for k, _ in SPEC}
        assert 0 <= value <= 5
        assert r.sub_status[key] == "ok"
    if r.status == "ok":
        assert set(r.scores) == {k for k, _ in SPEC}


@settings(max_examples=300, deadline=None)
@given(text=junk, tail=st.one_of(st.just(""), score_tokens.map(lambda s: f"\nFinal Score: {s}")))
def test_fuzz_marked_score(text, tail):
    r = parse_marked_score(text + tail, "Final Score", (1, 5))
    assert r.status in {"ok", "empty", "missing_field", "out_of_range", "truncated"}
    if r.ok:
        assert 1 <= r.scores["score"] <= 5
