"""SOMF: safety realignment by subspace-oriented model fusion (a DPO-trained mask over task vectors).

``run_somf(SomfOptions(...)) -> SomfResult``; heavy imports happen inside ``run_somf``.
"""

from llmguard.realign.somf.options import SomfOptions

__all__ = ["SomfOptions"]
