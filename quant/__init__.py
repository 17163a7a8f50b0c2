"""Compression: checkpoint readers, float reference model, pruning, quantizers, Lambda-attention, perplexity."""
