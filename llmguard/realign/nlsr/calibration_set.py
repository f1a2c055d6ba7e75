"""``--calibration-from-reference N``: the safety calibration set the paper builds.

The reference model (the amplified aligned model, assembled in memory from the base and
ΔW_ref) answers harmful prompts greedily; the ``eval safety`` judge keeps the responses it
calls refusals; up to N kept (prompt, response) pairs (2N prompts are answered) become the calibration data
(the paper's step 2; the official code filters with beaver-dam-7b).
"""

from __future__ import annotations

import os
from pathlib import Path

from llmguard.errors import InvalidInputError, UsageError
from llmguard.progress import NullProgress, Progress


def pairs_from_reference(
    *,
    aligned: str | os.PathLike[str] | None,
    base: str | os.PathLike[str] | None,
    reference: str | os.PathLike[str] | None,
    harmful_prompts: str | os.PathLike[str] | None,
    count: int,
    alpha: float = 0.9,
    amplify_mode: str = "expo",
    prompt_field: str = "prompt",
    template: str = "auto",
    judge: str = "keyword",
    max_new_tokens: int = 64,
    batch_size: int = 32,
    device: str = "auto",
    seed: int = 42,
    allow_pickle: bool = False,
    progress: Progress | None = None,
) -> list[tuple[str, str]]:
    import random

    import torch

    from llmguard.io.records import read_records
    from llmguard.eval.safety_judges import make_judge
    from llmguard.inference import format_prompt, generate, load_causal_lm
    from llmguard.io.checkpoint import open_checkpoint
    from llmguard.io.sources import open_source
    from llmguard.realign.nlsr.reference import Reference

    progress = progress or NullProgress()
    if count < 1:
        raise UsageError(f"--calibration-from-reference {count}: must be at least 1")
    if harmful_prompts is None:
        raise UsageError("--calibration-from-reference needs --harmful-prompts FILE")
    records = read_records(harmful_prompts, required=[prompt_field], what="harmful prompts")
    prompts = [str(r[prompt_field]) for r in records]
    random.Random(seed).shuffle(prompts)
    prompts = prompts[: 2 * count]  # enough for the judge to keep about N of them
    aligned_src = open_source(aligned, base=base, allow_pickle=allow_pickle, role="aligned") if aligned else None
    if aligned_src is not None and aligned_src.adapter is not None:
        base_ckpt = aligned_src.base
    elif base is not None:
        base_ckpt = open_checkpoint(base, allow_pickle=allow_pickle)
    else:
        raise UsageError("--base is required when --aligned is a full checkpoint")
    prepared = open_source(reference, base=base_ckpt.root, allow_pickle=allow_pickle, role="reference") if reference else None
    ref = Reference(base_ckpt, aligned_src, prepared, alpha=alpha, mode=amplify_mode)
    model, tokenizer = load_causal_lm(Path(base_ckpt.root), device=device, dtype="float32", allow_pickle=allow_pickle)
    state = model.state_dict()
    with torch.no_grad():
        for name, tensor in state.items():
            if name in base_ckpt:
                tensor.copy_(ref.weight(name, tensor.device).to(tensor.dtype))
    progress.stage("reference responses", len(prompts))
    responses = generate(model, tokenizer, [format_prompt(tokenizer, p, template) for p in prompts], max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    verdicts = make_judge(judge).judge(prompts, responses)
    kept = [(p, r) for p, r, v in zip(prompts, responses, verdicts) if v.label == "refusal" and r.strip()]
    if not kept:
        raise InvalidInputError(f"--calibration-from-reference: the judge passed none of the reference model's {len(prompts)} responses")
    return kept[:count]
