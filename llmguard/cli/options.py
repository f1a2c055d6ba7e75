"""Help-panel names for the CLI modules. The verbs' flags themselves are derived from their options
classes (``llmguard/cli/derive.py``); fields several verbs share are declared once in
``llmguard/options.py``."""

from __future__ import annotations

from llmguard.options import PANEL_DANGER, PANEL_INPUT, PANEL_METHOD, PANEL_OUTPUT, PANEL_PERF

__all__ = ["PANEL_DANGER", "PANEL_INPUT", "PANEL_METHOD", "PANEL_OUTPUT", "PANEL_PERF"]
