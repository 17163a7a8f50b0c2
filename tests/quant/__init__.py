"""Tests of llmfab.quant."""
