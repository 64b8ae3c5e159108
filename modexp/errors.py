"""The one exception type a user should ever see from modexp."""


class ModexpError(Exception):
    """Bad input or an unmet precondition.

    The CLI prints the message as one line (no traceback) and exits with status 2,
    so the message must name the bad value and say what is allowed.
    """
