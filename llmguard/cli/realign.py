"""``llmguard realign ...``: safety realignment verbs (RESTA, NLSR, SOMF)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Restore safety to a fine-tuned model: NLSR, SOMF and baselines.", no_args_is_help=True)
