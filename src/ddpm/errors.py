"""The one exception type that means 'the user must change something' (a config value, a path, a file)."""


class ConfigError(ValueError):
    """Raised before any work is done; its message is one sentence saying what to change."""
