"""`python -m t5jax ...` is the `t5jax` command."""

import sys

from t5jax.cli import entry

sys.exit(entry())
