"""llmguard: realign, audit for watermarks, and judge fine-tuned LLM checkpoints.

The package is a library first: every CLI verb is a thin wrapper over a function in one of
the sub-packages (``llmguard.io``, ``llmguard.realign``, ``llmguard.watermark``,
``llmguard.eval``, ``llmguard.testbed``). Importing this package stays light (no torch).
"""

__version__ = "0.1.0"
