"""Sequence classification: a text in, one label of a fixed set out (accuracy, macro F1)."""

from slimflow.models.families import register_family
from slimflow.models.families.classification.family import SequenceClassification

register_family(SequenceClassification())
