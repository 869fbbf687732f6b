"""The one exception type that the CLI turns into a one-line message and exit code 2."""


class UserError(Exception):
    """Bad input from the user (file, config field, option): shown as one line, never a traceback."""
