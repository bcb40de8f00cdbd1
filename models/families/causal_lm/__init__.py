"""Causal language modelling: chat prompts in, generated answers out (exact match, perplexity)."""

from slimflow.models.families import register_family
from slimflow.models.families.causal_lm.family import CausalLM

register_family(CausalLM())
