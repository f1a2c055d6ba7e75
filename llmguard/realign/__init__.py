"""Safety realignment of fine-tuned models: RESTA, NLSR, SOMF (see docs/realign.md)."""
