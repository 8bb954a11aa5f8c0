"""Mixing rates: how often a mixture samples each of its tasks.

The three strategies of the T5 paper (section 3.5.2), for any mixture:
  - "proportional": examples-proportional with an artificial limit K,
    rate = min(n, K) (T5's default for its GLUE / SuperGLUE mixtures);
  - "equal": every task at the same rate, 1;
  - "temperature": temperature-scaled, rate = min(n, K) ** (1 / T)
    (T5's rate_num_examples(maximum=K, temperature=T); T = 1 is
    "proportional", a large T tends to "equal").
n is a task's number of training examples, fixed in the registering module
(the sizes TFDS records) so that registering a mixture never reads data.
seqio normalises the rates into sampling probabilities.

Tasks that are in a mixture only to be evaluated get rate 0 whatever the
strategy; a registering module can give such a task a share of another
task's rate instead (GLUE's MNLI dev sets: half of MNLI's each).
"""

from t5jax.errors import UsageError

MIXING_STRATEGIES = ("proportional", "equal", "temperature")
DEFAULT_STRATEGY = "proportional"
DEFAULT_CAP = 2 ** 19  # the K of t5jax's GLUE / SuperGLUE mixtures (glue.DEFAULT_RATE_CAP)
DEFAULT_TEMPERATURE = 1.0


def check_mixing(strategy: str, cap: int | float, temperature: float) -> None:
  """A UsageError naming the DataConfig field when a setting is invalid."""
  if strategy not in MIXING_STRATEGIES:
    raise UsageError(f"DataConfig.mixing={strategy!r}: choose one of "
                     f"{', '.join(map(repr, MIXING_STRATEGIES))}.")
  if not cap or cap <= 0:
    raise UsageError(f"DataConfig.mixing_cap={cap!r}: a positive number of "
                     "examples (T5 used 2**19 = 524288).")
  if not temperature or temperature <= 0:
    raise UsageError(f"DataConfig.mixing_temperature={temperature!r}: a "
                     "positive number (T5 tried 2, 4 and 8).")


def task_rate(size: int, strategy: str = DEFAULT_STRATEGY,
              cap: int | float = DEFAULT_CAP,
              temperature: float = DEFAULT_TEMPERATURE) -> float:
  """The rate of one task with `size` training examples (module docstring)."""
  check_mixing(strategy, cap, temperature)
  if strategy == "equal":
    return 1.0
  capped = float(min(size, cap))
  if strategy == "temperature":
    return capped ** (1.0 / temperature)
  return capped


def mixture_rates(sizes: dict, eval_only=(), *, strategy: str = DEFAULT_STRATEGY,
                  cap: int | float = DEFAULT_CAP,
                  temperature: float = DEFAULT_TEMPERATURE) -> list:
  """[(task, rate)] for seqio.MixtureRegistry.add: the tasks of `sizes`
  ({task: training examples}) at the strategy's rates, then `eval_only`
  tasks at rate 0."""
  rates = [(name, task_rate(n, strategy, cap, temperature))
           for name, n in sizes.items()]
  return rates + [(name, 0.0) for name in eval_only]


def add_mixture(name: str, rates) -> None:
  """MixtureRegistry.add that replaces a mixture of the same name."""
  import seqio  # noqa: PLC0415 (keeps the rate arithmetic importable alone)
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, list(rates))
