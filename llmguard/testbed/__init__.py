"""The testbed: tiny but real Llama checkpoints and synthetic data, built in code (docs/testbed.md).

``build(out=None, seed=0) -> Testbed`` builds (once, cached under ``$LLMGUARD_CACHE``) a tokenizer,
data splits, a base model, an aligned model (LoRA adapter and merged), harmful fine-tunes (LoRA and
full), a benign second fine-tune and a Llama-Guard-layout guard model. See ``docs/testbed.md``.
Never imported by the library itself. The names below load ``llmguard.testbed.build`` (torch) on
first use, so ``llmguard.testbed.options`` stays light for the CLI.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TESTBED_VERSION", "HParams", "Testbed", "build", "default_dir"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    module = importlib.import_module(f"{__name__}.build")
    for exported in __all__:  # importing the submodule bound ``build`` to it; the function wins, as before
        globals()[exported] = getattr(module, exported)
    return globals()[name]
