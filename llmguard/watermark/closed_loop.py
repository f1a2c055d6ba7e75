"""The closed loop of an attack: generate from each model, detect the watermark, measure perplexity.

For every model (student S, reference R, the newly distilled student) the same held-out prompts
are continued by plain sampling and scored with the library's detector for the target scheme.
The report has CDG-KD's numbers (median z, median p, mean −log10 p) one-sided **and two-sided**:
a scrub that drives z far below zero is as detectable as a watermark, so "scrubbed" should mean
the two-sided test does not flag it either. Perplexity on held-out clean text, relative to S,
says what the attack cost in fluency.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from llmguard.progress import NullProgress, Progress
from llmguard.watermark.stats import LN10, log_norm_sf

def two_sided_log_p(z: float) -> float:
    """``log P(|N(0,1)| ≥ |z|)``."""
    if math.isnan(z):
        return math.nan
    return min(0.0, math.log(2.0) + log_norm_sf(abs(z)))


@dataclass
class ModelReport:
    """Detection and fluency of one model's held-out generations."""

    name: str
    num_texts: int
    median_z: float
    median_p: float
    median_p_two_sided: float
    mean_neg_log10_p: float
    mean_neg_log10_p_two_sided: float
    flagged: float  # fraction with z > threshold
    flagged_two_sided: float  # fraction with |z| > threshold
    perplexity: float | None = None
    perplexity_vs_student: float | None = None
    z: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def detection_report(name: str, scheme: Any, tokenizer: Any, texts: Sequence[str], z_threshold: float) -> ModelReport:
    """Score ``texts`` exactly as ``watermark detect`` does (re-tokenised, BOS stripped)."""
    from llmguard.watermark.detect import score_token_lists, tokenize_text

    ids = [tokenize_text(tokenizer, t).ids for t in texts]
    scores = score_token_lists(scheme, ids, "none")
    zs = np.array([s.result.z for s in scores], dtype=float)
    ok = ~np.isnan(zs)
    zs = zs[ok]
    lp1 = np.array([s.result.log_p for s, good in zip(scores, ok) if good], dtype=float)
    lp2 = np.array([two_sided_log_p(z) for z in zs], dtype=float)
    if not len(zs):
        nan = math.nan
        return ModelReport(name, 0, nan, nan, nan, nan, nan, nan, nan)
    return ModelReport(
        name=name, num_texts=int(len(zs)), median_z=float(np.median(zs)),
        median_p=math.exp(float(np.median(lp1))), median_p_two_sided=math.exp(float(np.median(lp2))),
        mean_neg_log10_p=float(np.mean(-lp1 / LN10)), mean_neg_log10_p_two_sided=float(np.mean(-lp2 / LN10)),
        flagged=float(np.mean(zs > z_threshold)), flagged_two_sided=float(np.mean(np.abs(zs) > z_threshold)),
        z=[round(float(z), 4) for z in zs],
    )


def perplexity(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 16) -> float:
    """exp(mean next-token NLL) over every token after the first of each text."""
    import torch

    from llmguard.inference.generate import tokenize_prompts

    rows = [r for r in tokenize_prompts(tokenizer, list(texts)) if len(r) > 1]
    if not rows:
        return math.nan
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id or 0
    nll = 0.0
    count = 0
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            width = max(len(r) for r in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, r in enumerate(chunk):
                ids[i, :len(r)] = torch.tensor(r)
                mask[i, :len(r)] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            lp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            m = mask[:, 1:].bool()
            nll -= float(lp[m].sum())
            count += int(m.sum())
    return math.exp(nll / count)


def held_out_texts(model: Any, tokenizer: Any, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int, seed: int,
                   batch_size: int, progress: Progress | None = None) -> list[str]:
    """Plain sampled continuations (temperature 1, no top-p) of the held-out prompts."""
    from llmguard.watermark.contrastive import Sampling, contrastive_generate

    texts: list[str] = []
    for batch in contrastive_generate(model, None, tokenizer, prompt_ids, mode=None, sampling=Sampling(True, 1.0, 1.0, seed),
                                      max_new_tokens=max_new_tokens, batch_size=batch_size,
                                      progress=progress or NullProgress()):
        texts.extend(batch.texts)
    return texts
