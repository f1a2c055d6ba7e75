"""Options shared by ``watermark detect`` and ``watermark generate`` (declared once, same help)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

PANEL_WM = "Watermark"

SchemeOpt = Annotated[
    str, typer.Option("--scheme", help="Watermark family: kgw or unigram.", rich_help_panel=PANEL_WM)
]
ProfileOpt = Annotated[
    Optional[str],
    typer.Option(
        "--profile",
        help="Implementation to match bit for bit: kgw → hf (default), kirchenbauer, markllm, fast; "
        "unigram → zhao (default), markllm.",
        rich_help_panel=PANEL_WM,
    ),
]
SeedingOpt = Annotated[
    Optional[str],
    typer.Option(
        "--seeding",
        help="Seeding scheme of the profile: hf lefthash|selfhash; kirchenbauer simple_1|selfhash|minhash|"
        "skipgram|ff-<prf>-<h>-<salt>; markllm time|additive|skip|min[-self]; fast hash.",
        rich_help_panel=PANEL_WM,
    ),
]
GammaOpt = Annotated[
    Optional[float], typer.Option("--gamma", help="Green-list fraction γ (profile default).", rich_help_panel=PANEL_WM)
]
DeltaOpt = Annotated[
    Optional[float], typer.Option("--delta", help="Green-logit bias δ (profile default).", rich_help_panel=PANEL_WM)
]
KeyOpt = Annotated[
    Optional[int], typer.Option("--key", help="Hash key (profile default, 15485863 for KGW).", rich_help_panel=PANEL_WM)
]
ContextWidthOpt = Annotated[
    Optional[int],
    typer.Option("--context-width", help="Context width h (MarkLLM prefix_length).", rich_help_panel=PANEL_WM),
]
RngDeviceOpt = Annotated[
    str,
    typer.Option(
        "--rng-device",
        help="Device of the torch generator behind the permutations (cpu and cuda give different lists).",
        rich_help_panel=PANEL_WM,
    ),
]


def vocab_opt(default: str) -> object:
    return typer.Option(
        "--vocab-size",
        help="Vocabulary size of the green lists: tokenizer (len(tokenizer)), model (config.json vocab_size), N, "
        "or auto (model for --profile hf when --model is given, as transformers does; else tokenizer).",
        rich_help_panel=PANEL_WM,
    )


def check_combo(scheme: str, profile: str | None) -> None:
    """Fail early (exit 2) on an unknown scheme/profile pair, before reading any input."""
    from llmguard.errors import UsageError
    from llmguard.watermark.schemes import DEFAULT_PROFILE, REGISTRY

    s = scheme.lower()
    if s not in DEFAULT_PROFILE:
        raise UsageError(f"unknown --scheme {scheme!r}; choose one of: {', '.join(sorted(DEFAULT_PROFILE))}")
    p = (profile or DEFAULT_PROFILE[s]).lower()
    if (s, p) not in REGISTRY:
        valid = ", ".join(pp for ss, pp in sorted(REGISTRY) if ss == s)
        raise UsageError(f"--scheme {s} has no --profile {p!r}; valid profiles: {valid}")
