"""The root Typer application: global flags, groups and top-level verbs."""

from __future__ import annotations

import os
import signal
import sys
import warnings
from typing import Annotated

import typer

from llmguard import __version__
from llmguard.cli import checkpoint_tools, realign
from llmguard.cli import demo
from llmguard.cli import testbed as testbed_cli
from llmguard.cli.eval import app as eval_app
from llmguard.cli.global_flags import RootGroup
from llmguard.cli.output import state
from llmguard.cli.watermark import app as watermark_app
from llmguard.errors import EXIT_CODES

_EPILOG = "Exit codes: " + "; ".join(f"{code} {what}" for code, what in EXIT_CODES.items()) + "."

app = typer.Typer(
    name="llmguard",
    cls=RootGroup,
    help="Realign, audit for watermarks, and judge fine-tuned LLM checkpoints.",
    epilog=_EPILOG,
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"llmguard {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or log lines on stderr (before or after the verb).")] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, show_default=False,
                                              help="A counter, not a value: -v shows tracebacks on errors, library warnings and progress bars (before or after the verb).")] = 0,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Realign, audit for watermarks, and judge fine-tuned LLM checkpoints."""
    state.quiet = quiet
    state.verbose = verbose
    if verbose == 0:
        # Library chatter (deprecation warnings, transformers' advisories and progress bars)
        # would break the one-line-error and clean-stderr conventions; -v brings it back.
        warnings.simplefilter("ignore")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if verbose == 0:
        # one progress display owns stderr (llmguard.cli.progress): transformers' and the hub's own
        # bars ("Loading weights", "Writing model shards") stay off unless -v
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


checkpoint_tools.register(app)
demo.register(app)
app.add_typer(realign.app, name="realign", rich_help_panel="Groups")
app.add_typer(eval_app, name="eval", rich_help_panel="Groups")
app.add_typer(watermark_app, name="watermark", rich_help_panel="Groups")
app.add_typer(testbed_cli.app, name="testbed", rich_help_panel="Groups")


def main() -> None:
    """Run the app: SIGTERM behaves like Ctrl-C (clean up, exit 130; :mod:`llmguard.interrupts`).

    The console script enters through ``llmguard.__main__.main``, which installs the interrupt
    handlers before this module (and what it imports) loads.
    """
    from llmguard import interrupts

    interrupts.install()
    try:
        app(prog_name="llmguard", standalone_mode=True)
    except KeyboardInterrupt:
        interrupts.interrupted_exit()
    except SystemExit as done:
        # Click turns an interrupt outside the verb into a silent exit 130, and an interrupt a C
        # extension swallowed lets the run finish: both still end as one line and exit 130
        if done.code == interrupts.EXIT_INTERRUPTED or interrupts.received():
            interrupts.interrupted_exit()
        raise
