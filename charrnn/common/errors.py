"""The one exception type a user sees: a one-line message and a non-zero exit."""


class CharRnnError(Exception):
    """A problem with the user's input (file, flag, checkpoint), reported in one line.

    The CLI catches it, prints `error: <message>` to stderr and exits with
    status 2; nothing else of the traceback is shown.
    """


class Stopped(Exception):
    """Training stopped by a signal (SIGINT, SIGTERM, SIGHUP) after saving a checkpoint.

    The CLI prints the message in one line and exits with 128 + signum: 130, 143, 129.
    """

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
