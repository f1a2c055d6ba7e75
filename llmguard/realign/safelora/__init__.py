"""Safe LoRA (Hsu et al., NeurIPS 2024): project LoRA updates onto the alignment subspace.

``run_safelora(SafeLoraOptions(...)) -> SafeLoraResult``; heavy imports happen inside it.
"""

from llmguard.realign.safelora.options import SafeLoraOptions

__all__ = ["SafeLoraOptions"]
