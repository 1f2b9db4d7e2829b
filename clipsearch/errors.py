"""The one exception type that reaches the user as a single line."""

import signal


class ClipsearchError(Exception):
    """A failure the user can act on. Its message is one line that names the file,
    row, setting or URL involved; the CLI prints it as `Error: ...` and exits 1."""

    exit_code = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM (a service stop, `kill`, a container shutting down) or SIGHUP (the
    terminal or SSH session closed) raised in the main thread, so that it unwinds
    exactly like Ctrl-C: the batch in hand is committed or dropped, locks are
    released, decoder processes are stopped, and the command exits 128 + the signal
    instead of dying where it stands."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signum)
        self.signum = signum
