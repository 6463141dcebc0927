"""Evaluation: cross-entropy, perplexity and bits per byte of models on texts."""
