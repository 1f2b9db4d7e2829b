"""The one exception type that reaches the user as a single line."""


class ClipsearchError(Exception):
    """A failure the user can act on. Its message is one line that names the file,
    row, setting or URL involved; the CLI prints it as `Error: ...` and exits 1."""

    exit_code = 1
