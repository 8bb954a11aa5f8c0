"""Loads a script of benchmarks/ as a module (they are scripts, not a package)."""

import importlib.util
import os

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def load_benchmark(name: str):
  """benchmarks/<name>.py as a module, e.g. load_benchmark('bench_train')."""
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
