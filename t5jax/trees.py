"""Nested-dict parameter trees: flatten by path tuples, check against a config."""

from __future__ import annotations

import jax
import flax.linen as nn
import numpy as np

from t5jax.config import T5Config
from t5jax.errors import UsageError


def flatten(tree: dict, prefix: tuple = ()) -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict) or hasattr(value, "items"):
      out.update(flatten(dict(value), prefix + (key,)))
    else:
      out[prefix + (key,)] = value
  return out


def unflatten(flat: dict) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


def check_tree(params: dict, config: T5Config, source: str) -> None:
  """Raises a ValueError naming every leaf whose path or shape differs from config's."""
  from t5jax.model import abstract_params  # model imports are heavier: load lazily
  expected = {k: tuple(v.shape) for k, v in flatten(nn.meta.unbox(abstract_params(config))).items()}
  got = {k: tuple(np.shape(v)) for k, v in flatten(params).items()}
  problems = [f"{'/'.join(k)}: missing" for k in expected if k not in got]
  problems += [f"{'/'.join(k)}: unexpected" for k in got if k not in expected]
  problems += [f"{'/'.join(k)}: shape {got[k]}, config needs {expected[k]}"
               for k in expected if k in got and got[k] != expected[k]]
  if problems:
    raise UsageError(f"{source} does not fit the model config ({len(problems)} problems): "
                     + "; ".join(problems[:8]) + ("; ..." if len(problems) > 8 else ""))


def to_numpy(params) -> dict:
  return jax.tree.map(np.asarray, params)
