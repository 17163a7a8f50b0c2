"""The one error type users see: it names the input, what is wrong with it and what to do."""


class LlmfabError(Exception):
    """A problem with the user's input or environment, reported without a traceback by the CLI."""


class InputError(LlmfabError):
    """An input file, name or option is missing, malformed or inconsistent."""
