"""The one exception type for bad input.

Anything the user can fix (a typo in a config key, a negative LR, a missing data path) raises
`UserError` with a single line that says what is wrong and what is accepted. `train.py` prints
that line and exits with status 2; no traceback. Bugs stay ordinary exceptions.
"""


class UserError(ValueError):
    """Bad input, described in one line: what is wrong and how to fix it."""

    def __init__(self, message: str):
        # Keep the promise of one line even when a caller formats a multi-line value into it.
        super().__init__(" ".join(str(message).split()))
