"""The one exception type the CLI turns into a single line on stderr."""


class CallmError(Exception):
    """A problem with the user's input (path, video, weights, labels) that they can fix.

    The message must be one line that says what is wrong and, where possible, what to do.
    """
