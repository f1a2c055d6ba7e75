"""SOMF: safety realignment by subspace-oriented model fusion (a DPO-trained mask over task vectors)."""

from llmguard.realign.somf.method import SomfResult, somf
from llmguard.realign.somf.options import SomfOptions

__all__ = ["SomfOptions", "SomfResult", "somf"]
