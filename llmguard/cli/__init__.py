"""The ``llmguard`` command line. Parses arguments and prints; the library does the work.

Nothing here imports torch or transformers at import time: shell completion re-runs the
program on every Tab, so command bodies import the heavy library modules lazily.
"""

from llmguard.cli.app import app, main

__all__ = ["app", "main"]
