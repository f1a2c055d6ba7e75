"""``llmguard realign ...``: safety realignment verbs (RESTA, NLSR, SOMF)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmguard.cli.options import (
    PANEL_INPUT,
    PANEL_METHOD,
    PANEL_OUTPUT,
    AllowPickleOpt,
    BaseOpt,
    DeviceOpt,
    DtypeOpt,
    ForceOpt,
    JsonOpt,
    MaxShardSizeOpt,
    OutputDirOpt,
)
from llmguard.cli.output import emit_json, info, reports_errors, stdout

app = typer.Typer(help="Restore safety to a fine-tuned model: NLSR, SOMF and baselines.", no_args_is_help=True)


@app.command("resta", rich_help_panel="Training-free baselines")
@reports_errors
def resta_command(
    finetuned: Annotated[Path, typer.Option("--finetuned", "-f", help="Fine-tuned checkpoint or LoRA adapter.", rich_help_panel=PANEL_INPUT)],
    aligned: Annotated[Path, typer.Option("--aligned", "-a", help="Aligned checkpoint or adapter.", rich_help_panel=PANEL_INPUT)],
    unaligned: Annotated[Path, typer.Option("--unaligned", "-u", help="Unaligned checkpoint or adapter (often the base).", rich_help_panel=PANEL_INPUT)],
    output: OutputDirOpt,
    gamma: Annotated[float, typer.Option("--gamma", "-g", help="Weight γ of the safety vector θ_A − θ_U.", rich_help_panel=PANEL_METHOD)] = 0.5,
    base: BaseOpt = None,
    as_adapter: Annotated[
        bool,
        typer.Option("--as-adapter", help="Write one exact LoRA adapter instead of a full checkpoint (adapter inputs only).", rich_help_panel=PANEL_OUTPUT),
    ] = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    max_shard_size: MaxShardSizeOpt = "5GB",
    force: ForceOpt = False,
    allow_pickle: AllowPickleOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """RESTA: θ_out = θ_F + γ·(θ_A − θ_U), streamed tensor by tensor.

    Example: llmguard realign resta -f ft/ -a aligned/ -u base/ --gamma 0.5 -o out/
    """
    from llmguard.cli.progress import make_progress
    from llmguard.realign.resta import resta

    result = resta(
        finetuned,
        aligned,
        unaligned,
        output,
        gamma=gamma,
        base=base,
        as_adapter=as_adapter,
        device=device,
        dtype=dtype,
        max_shard_size=max_shard_size,
        force=force,
        allow_pickle=allow_pickle,
        progress=make_progress(),
    )
    if json_output:
        emit_json(result.manifest)
        return
    stages = ", ".join(f"{s['name']} {s['seconds']:.2f}s" for s in result.manifest["stages"])
    kind = "adapter" if result.as_adapter else "checkpoint"
    stdout.print(f"wrote {kind} {result.output} ({result.tensors_written} tensors; {stages}; peak RSS {result.manifest['peak_rss_bytes'] / 2**20:.0f} MiB)")
    info(f"manifest: {result.output / 'llmguard.json'}")
