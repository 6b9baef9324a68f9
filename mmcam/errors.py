"""The error type for bad input: its message is one line meant for people."""


class InputError(ValueError):
    """Bad user input (image, text, model, layer or option); the CLI prints it as one line and
    exits with code 2."""
