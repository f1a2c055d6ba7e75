"""Option declarations shared by several verbs, so each flag is spelled and documented once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmguard.options import PANEL_DANGER, PANEL_INPUT, PANEL_METHOD, PANEL_OUTPUT, PANEL_PERF  # noqa: F401 - re-exported

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout instead of a table.", rich_help_panel=PANEL_OUTPUT)
]
OutputDirOpt = Annotated[
    Path,
    typer.Option("--output", "-o", help="Output directory (written atomically).", rich_help_panel=PANEL_OUTPUT),
]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Replace OUT if it exists.", rich_help_panel=PANEL_DANGER)
]
AllowPickleOpt = Annotated[
    bool,
    typer.Option(
        "--allow-pickle",
        help="Accept .bin/.pt pickle checkpoints (loaded with weights_only=True).",
        rich_help_panel=PANEL_DANGER,
    ),
]
DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device",
        envvar="LLMGUARD_DEVICE",
        help="Where the math runs: auto, cpu, cuda or cuda:N.",
        rich_help_panel=PANEL_PERF,
    ),
]
DtypeOpt = Annotated[
    str,
    typer.Option(
        "--dtype",
        help="Output dtype: auto (as the input), float32, bfloat16 or float16.",
        rich_help_panel=PANEL_OUTPUT,
    ),
]
MaxShardSizeOpt = Annotated[
    str,
    typer.Option(
        "--max-shard-size",
        help="Largest output shard in bytes, e.g. 5GB, 500MB (bytes, not parameters).",
        rich_help_panel=PANEL_OUTPUT,
    ),
]
BaseOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--base",
        help="Base checkpoint of the adapters (default: the adapter's base_model_name_or_path, when local).",
        rich_help_panel=PANEL_INPUT,
    ),
]
