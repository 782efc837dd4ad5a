"""The one exception type a user sees: a one-line message and a non-zero exit."""


class CharRnnError(Exception):
    """A problem with the user's input (file, flag, checkpoint), reported in one line.

    The CLI catches it, prints `error: <message>` to stderr and exits with
    status 2; nothing else of the traceback is shown.
    """
