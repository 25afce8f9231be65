"""Errors the user can cause. The CLI prints them as one line on stderr and exits with code 2."""


class UserError(Exception):
    """Bad input: the message says what is wrong and what to do, on one line."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))  # one line, always
