"""Errors that the command line reports as one line (no traceback)."""


class UserError(RuntimeError):
    """Bad input from the user: the message names what is wrong and how to fix it."""
