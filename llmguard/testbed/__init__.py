"""The testbed: tiny but real Llama checkpoints and synthetic data, built in code (docs/testbed.md).

``build(out=None, seed=0) -> Testbed`` builds (once, cached under ``$LLMGUARD_CACHE``) a tokenizer,
data splits, a base model, an aligned model (LoRA adapter and merged), harmful fine-tunes (LoRA and
full), a benign second fine-tune and a Llama-Guard-layout guard model. See ``docs/testbed.md``.
Never imported by the library itself; heavy imports happen inside ``build``.
"""

from __future__ import annotations

from llmguard.testbed.build import TESTBED_VERSION, HParams, Testbed, build, default_dir

__all__ = ["TESTBED_VERSION", "HParams", "Testbed", "build", "default_dir"]
