"""Gin at the edges: finding gin files, parsing bindings, and errors that say how to fix them.

Only the entry functions and config dataclasses registered in `t5jax.run`
are configurable; every one of them can be built in plain Python too. The
`t5jax` console script (`t5jax.cli:entry`) parses its gin files and bindings
through here.
"""

from __future__ import annotations

import difflib
import glob
import inspect
import logging
import os
import re

import gin

from t5jax.errors import UsageError

# gin_configs/ sits next to the package in a source checkout (pip install -e).
GIN_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, "gin_configs"))


class GinError(UsageError):
  """A gin file or binding that cannot be used; the message says how to fix it."""


def all_gin_files(search_paths=()) -> list[str]:
  """Every .gin file under the search paths and gin_configs/, relative to its root."""
  found = []
  for root in [*search_paths, GIN_DIR]:
    found += [os.path.relpath(p, root) for p in glob.glob(os.path.join(root, "**", "*.gin"),
                                                           recursive=True)]
  return sorted(set(found))


def find_gin_file(name: str, search_paths=()) -> str:
  """Resolves a --gin_file argument: as given, then in each search path, then gin_configs/."""
  candidates = [name] + [os.path.join(root, name) for root in [*search_paths, GIN_DIR]]
  for path in candidates:
    if os.path.isfile(path):
      return os.path.abspath(path)
  known = all_gin_files(search_paths)
  close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
  hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
  raise GinError(f"--gin_file={name!r} not found (looked in the current folder, "
                 f"{', '.join([*search_paths, GIN_DIR])}).{hint} "
                 f"Shipped files: {', '.join(known)}")


def _configurable_names() -> list[str]:
  names = []
  for selector in gin.config._REGISTRY._selector_map:  # pylint: disable=protected-access
    if not selector.startswith("gin."):
      names += [selector, selector.rsplit(".", 1)[-1]]
  return sorted(set(names))


def _parameter_names(configurable: str) -> list[str]:
  try:
    match = gin.config._REGISTRY.get_match(configurable)  # pylint: disable=protected-access
  except (KeyError, ValueError):
    return []
  if match is None:
    return []
  target = match.wrapped
  if inspect.isclass(target):
    target = target.__init__
  return [p for p in inspect.signature(target).parameters if p != "self"]


def explain(error: Exception) -> str:
  """Adds 'did you mean' suggestions to gin's error messages."""
  message = str(error)
  suggestion = ""
  unknown = re.search(r"No configurable matching (?:reference )?'@?([\w./]+?)(?:\(\))?'", message)
  if unknown:
    name = unknown.group(1).split("/")[-1]
    close = difflib.get_close_matches(name, _configurable_names(), n=3)
    suggestion = (f" Did you mean {', '.join(map(repr, close))}?" if close else
                  f" Known configurables: {', '.join(_configurable_names())}")
  param = re.search(r"Configurable '([\w.]+)' doesn't have a parameter named '(\w+)'", message)
  if param:
    params = _parameter_names(param.group(1))
    close = difflib.get_close_matches(param.group(2), params, n=3)
    suggestion = (f" Did you mean {', '.join(map(repr, close))}?" if close else "") + (
        f" Parameters of {param.group(1)}: {', '.join(params)}")
  return message.rstrip() + suggestion


def parse(gin_files=(), bindings=(), search_paths=()) -> None:
  """Parses gin files (resolved by find_gin_file) then bindings ('NAME=VALUE')."""
  # Search our folders before the current directory: gin would otherwise try
  # `include 'runs/x.gin'` as a Python package `runs` when ./runs exists (a
  # run directory) and fail with a TypeError.
  prefixes = gin.config._LOCATION_PREFIXES  # pylint: disable=protected-access
  for path in reversed([*search_paths, GIN_DIR]):
    if path in prefixes:
      prefixes.remove(path)
    prefixes.insert(0, path)
  files = [find_gin_file(f, search_paths) for f in gin_files]
  # gin logs "Path not found" for every search path an include is not in.
  root = logging.getLogger()
  level = root.level
  root.setLevel(logging.CRITICAL)
  try:
    gin.parse_config_files_and_bindings(files, list(bindings), finalize_config=False)
  except (ValueError, SyntaxError, OSError, TypeError) as e:
    raise GinError(explain(e)) from None
  finally:
    root.setLevel(level)


def split_gin_flags(argv: list[str]) -> tuple[list[str], list[str]]:
  """Pulls T5X-style `--gin.NAME=VALUE` flags out of argv -> (rest, bindings)."""
  rest, bindings = [], []
  for arg in argv:
    if arg.startswith("--gin."):
      binding = arg[len("--gin."):]
      if "=" not in binding:
        raise GinError(f"{arg!r}: expected --gin.NAME=VALUE, e.g. --gin.TrainConfig.num_steps=100")
      bindings.append(binding.replace("=", " = ", 1))
    else:
      rest.append(arg)
  return rest, bindings
