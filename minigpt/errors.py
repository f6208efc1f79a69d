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


class Stopped(BaseException):
    """A stop signal (SIGTERM, SIGINT, SIGUSR1) that arrived outside the training loop, where there
    is no step boundary to stop at: during start-up (data preparation, model build) or after the
    run ended. A BaseException, like KeyboardInterrupt, so no `except Exception` swallows it;
    train.py turns it into one line and exit status 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
