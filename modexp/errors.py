"""The one exception type a user should ever see from modexp."""


class ModexpError(Exception):
    """Bad input or an unmet precondition.

    The CLI prints the message as one line (no traceback) and exits with status 2,
    so the message must name the bad value and say what is allowed.
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (timeout, scancel, a container stop, a closed terminal): stopped as Ctrl-C stops.

    A KeyboardInterrupt, so every place that stops runs cleanly on Ctrl-C does so on these too.
    """

    def __init__(self, signum: int) -> None:
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum
