"""The one exception type the command line reports as a one-line message.

Raise `UsageError` for input a user can fix (a flag, a gin binding, a file,
a value); the message names what is wrong and how to fix it. `t5jax` prints
it as `t5jax CMD: error: MESSAGE` and exits 2. Every other exception keeps
its traceback. It subclasses ValueError so `except ValueError` callers and
tests keep working.
"""


class UsageError(ValueError):
  """Bad input a user can fix; the message says how."""


class UnknownNameError(UsageError, KeyError):
  """An unknown preset, rule set or other name; also a KeyError, as lookups were."""

  __str__ = ValueError.__str__  # the message as given, not KeyError's repr of it


class MissingFileError(UsageError, FileNotFoundError):
  """A file or folder the user named does not exist; also a FileNotFoundError."""

  __str__ = ValueError.__str__
