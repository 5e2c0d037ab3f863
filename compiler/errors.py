"""User-facing errors: one clear line that names the problem and, where there is one, the fix."""


class IntformerError(Exception):
    """An error caused by the user's input (file, model, option). The CLI prints it as one line."""
