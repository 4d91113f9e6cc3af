"""Semantic Genesis pipeline: data preparation, self-discovery, pretraining, fine-tuning and tables."""

__version__ = "0.1.0"
