"""The one exception type a user sees: a mistake they can fix, said in one line."""


class WhisperdiffError(Exception):
    """Bad input or an impossible request. The CLI prints `error: <message>` and exits 2;
    the message says what is wrong and what to do about it."""
