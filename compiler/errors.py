"""User-facing errors: one clear line that names the problem and, where there is one, the fix."""


class IntformerError(Exception):
    """An error caused by the user's input (file, model, option). The CLI prints it as one line."""


class Interrupted(IntformerError):
    """The user stopped a long run (Ctrl-C); the message says what was kept. The CLI exits with 130."""
