"""The one exception type the CLI turns into a single stderr line and a non-zero exit."""


class FetchRLError(Exception):
    """A problem the user can act on. ``str(err)`` is the whole message, one line.

    Args:
        message: what is wrong and how to fix it.
        exit_code: process exit code the CLI uses (2 = bad input / usage).
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
