"""The one exception type that reaches the user as a single line."""

import signal


class ClipsearchError(Exception):
    """A failure the user can act on. Its message is one line that names the file,
    row, setting or URL involved; the CLI prints it as `Error: ...` and exits with
    `exit_code`: 1, or a subclass's own, so that a script tells a mistake in how it
    called clipsearch (2) and an index busy for now (75) from a failure to look at."""

    exit_code = 1


class UsageError(ClipsearchError):
    """A flag, setting or argument with a value the command cannot take: exit 2, as
    click's own usage errors (a value of the wrong type) do."""

    exit_code = 2


class BusyError(ClipsearchError):
    """Something another process holds right now (an embedded index in use): trying
    again later can succeed. Exit 75, sysexits' EX_TEMPFAIL, which cron wrappers and
    service managers read as "try again"."""

    exit_code = 75


class Terminated(KeyboardInterrupt):
    """SIGTERM (a service stop, `kill`, a container shutting down) or SIGHUP (the
    terminal or SSH session closed) raised in the main thread, so that it unwinds
    exactly like Ctrl-C: the batch in hand is committed or dropped, locks are
    released, decoder processes are stopped, and the command exits 128 + the signal
    instead of dying where it stands."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signum)
        self.signum = signum
