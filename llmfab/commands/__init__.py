"""Subcommands of the llmfab CLI, one module each."""
