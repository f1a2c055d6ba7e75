"""``llmguard watermark ...``: KGW-family detection, generation and distillation attacks.

Each verb lives in its own module with a ``register(app)`` function; this file only builds
the group and calls them.
"""

from __future__ import annotations

import typer

app = typer.Typer(help="Detect and generate LLM watermarks (KGW family, Unigram), exactly as the reference implementations.", no_args_is_help=True)

from llmguard.cli.watermark import detect as _detect  # noqa: E402

_detect.register(app)

from llmguard.cli.watermark import generate as _generate  # noqa: E402

_generate.register(app)

from llmguard.cli.watermark import attack as _attack  # noqa: E402

_attack.register(app)
