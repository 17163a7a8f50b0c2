"""Fixtures of the host tests: compiled programs of the tiny model (tests/host/programs.py)."""

from llmfab.tests.host.programs import (  # noqa: F401
    tiny_lambda_program,
    tiny_per_token_program,
    tiny_program,
)
