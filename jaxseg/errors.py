"""Errors raised for bad user input.

The command-line tools print the message of a `JaxsegError` and exit with status 2; any
other exception is a bug and keeps its traceback. Every message names the file, key or
case at fault and says what to do.
"""


class JaxsegError(Exception):
    """Bad input from the user: a file, a config key, a model name, a case."""


class DataError(JaxsegError):
    """A dataset, image or label file that cannot be used as it is."""


class ConfigError(JaxsegError):
    """A config file, key or value that is unknown or invalid."""
