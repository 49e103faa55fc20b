"""User-facing errors.

Anything the user can fix (a wrong path, an unknown model, a bad column) raises `UserError` with one
line that names the thing and says what to do. The CLI prints that line to stderr and exits with 2,
without a traceback. Bugs stay ordinary exceptions with tracebacks.
"""


class UserError(Exception):
    """An error caused by user input; its message is one line shown as is."""

    exit_code = 2
