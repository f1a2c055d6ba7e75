"""``llmguard eval ...``: safety checks and medical LLM-as-judge evaluation.

Each verb lives in its own module with a ``register(app)`` function; this file only builds
the group and calls them.
"""

from __future__ import annotations

import typer

app = typer.Typer(help="Evaluate models: harmful rate, medical LLM-as-judge, agreement with humans.", no_args_is_help=True)

from llmguard.cli.eval import ace_m3, agree, hdc  # noqa: E402
from llmguard.cli.eval import safety  # noqa: E402

hdc.register(app)
ace_m3.register(app)
agree.register(app)
safety.register(app)
