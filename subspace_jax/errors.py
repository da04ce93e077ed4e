"""The one exception family for bad input: a config value, a data file, a model file.

``launch.py`` prints an ``InputError`` as one line on stderr and exits with
code 2; any other exception is a bug and keeps its traceback. Messages name
the config field or file, say what would be valid, and fit on one line.
Both classes are ``ValueError``s, so ``pytest.raises(ValueError)`` still holds.
"""


class InputError(ValueError):
    """Something the user gave (config, data, model file) is not valid."""


class ConfigError(InputError):
    """A config field has a value the experiment cannot use."""
