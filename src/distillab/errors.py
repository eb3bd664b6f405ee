"""The one exception type for bad input: its message is a single sentence a user can act on."""


class ConfigError(ValueError):
    """A configuration, file or data problem found before training starts.

    The message names the offending key or file and what would be valid; the CLI prints it alone,
    without a traceback.
    """
