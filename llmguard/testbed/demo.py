"""Compatibility: the demo runner moved to :mod:`llmguard.cli.demo_runner` (the demo runs the CLI,
so it belongs to the CLI layer; the testbed is data and models only). Kept for callers of the
old path; new code imports ``llmguard.cli.demo_runner``."""

from llmguard.cli.demo_runner import STEPS, DemoContext, DemoResult, DemoRow, DemoStep, StepFailed, load_steps, register_step, run_demo, verb_exists  # noqa: F401
