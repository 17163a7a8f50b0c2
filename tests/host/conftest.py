"""Fixtures of the host tests: compiled programs of the tiny model (tests/host/programs.py)."""

from llmfab.tests.host.programs import tiny_per_token_program, tiny_program  # noqa: F401
