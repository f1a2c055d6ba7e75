"""NLSR (Yi et al., AAAI'25): neuron-level safety realignment, training-free.

Stages, one module each: ``reference`` (ExPO-amplified aligned delta), ``scoring``
(safety-critical units: ActSVD / Wanda / magnitude masks), ``similarity`` (masked cosine per
module), ``selection`` (which modules to patch), ``transplant`` (copy masked reference values,
write OUT) and ``patch`` (the reversible record and ``revert``). ``method.nlsr`` runs them.
"""

from llmguard.realign.nlsr.method import NlsrResult, nlsr
from llmguard.realign.nlsr.patch import RevertResult, revert

__all__ = ["NlsrResult", "RevertResult", "nlsr", "revert"]
