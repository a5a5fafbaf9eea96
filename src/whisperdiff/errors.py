"""The one exception type a user sees: a mistake they can fix, said in one line."""


class WhisperdiffError(Exception):
    """Bad input or an impossible request. The CLI prints `error: <message>` and exits 2;
    the message says what is wrong and what to do about it."""


class WhisperdiffWarning(UserWarning):
    """Something written or read is incomplete but usable (a trace missing canonical ops); said once."""
