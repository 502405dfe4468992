"""The one error type users see: a clear, one-line message that says what to do."""


class UserError(Exception):
    """Bad input or environment. The CLI prints ``error: <message>`` and exits non-zero."""

    exit_code = 2
