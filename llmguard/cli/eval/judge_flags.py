"""Presentation flags of the judge verbs (their options are ``llmguard.eval.judge_options``)."""

from __future__ import annotations

from typing import Annotated

import typer

from llmguard.cli.derive import Extra
from llmguard.cli.options import PANEL_OUTPUT

JUDGE_JSON_FLAG: Extra = (
    Annotated[bool, typer.Option("--json", help="Print the summary as one JSON document.", rich_help_panel=PANEL_OUTPUT)],
    False,
)
