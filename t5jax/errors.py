"""The one exception type the command line reports as a one-line message.

Raise `UsageError` for input a user can fix (a flag, a gin binding, a file,
a value); the message names what is wrong and how to fix it. `t5jax` prints
it as `t5jax CMD: error: MESSAGE` and exits 2. Every other exception keeps
its traceback. It subclasses ValueError so `except ValueError` callers and
tests keep working.
"""


class UsageError(ValueError):
  """Bad input a user can fix; the message says how."""
