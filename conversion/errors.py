"""The one error every conversion command raises for bad input (printed as one line, exit 2)."""


class UsageError(Exception):
    """Bad input: printed as one line `error: <what> (<file or flag>)` with exit 2."""
