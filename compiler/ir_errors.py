"""The error raised for malformed or inconsistent Einsum-cascade IR."""

from llmfab.errors import InputError


class IRError(InputError):
    """A cascade (or its text) is malformed; the message names the tensor or Einsum and the fix."""
