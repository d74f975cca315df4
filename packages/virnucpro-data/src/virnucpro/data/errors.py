"""The one exception bad input raises, so callers can print it as a single line."""


class InputError(ValueError):
    """Bad input found before any GPU work; the message is one line naming file and record."""
