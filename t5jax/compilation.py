"""XLA compilation: the persistent cache that `t5jax train / eval / infer` turn on, and
what compiling cost, measured as it happens.

    compilation.enable_cache()            # once, at the start of a command
    with compilation.watch() as w:
      state, metrics = compiled.train_step(state, batch, rng)   # the first call compiles
    print(w.describe("the train step"))   # "compiled the train step in 8.1 s"

The cache: JAX's persistent compilation cache keyed by the program, its compile options,
the devices and the jax/jaxlib versions, so a resumed or repeated run loads its
executables instead of compiling them again (on GPU also XLA's per-fusion autotuning
results). `T5JAX_COMPILE_CACHE` picks the directory:

    unset, '1' or 'on'     $XDG_CACHE_HOME/t5jax/xla (default ~/.cache/t5jax/xla)
    '0', 'off' or 'no'     no cache
    any other value        that directory

JAX's own `JAX_COMPILATION_CACHE_DIR` (or `jax.config`'s `jax_compilation_cache_dir`),
when set, wins. Entries are never evicted by t5jax: delete the folder to reclaim space.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

import jax

ENV = "T5JAX_COMPILE_CACHE"
# Programs that compile faster than this are not written (tiny transfers and reshapes).
MIN_COMPILE_SECONDS = 0.2

_OFF = ("0", "off", "no", "false")
_ON = ("", "1", "on", "yes", "true")
# jax.monitoring events (jax/_src/dispatch.py, compiler.py): tracing, lowering and
# compiling (the last includes a persistent-cache lookup), and the cache's verdicts.
_DURATIONS = {"/jax/core/compile/jaxpr_trace_duration": "trace",
              "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
              "/jax/core/compile/backend_compile_duration": "compile"}
_HIT, _MISS = "/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses"


def default_dir() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "t5jax", "xla")


def cache_dir() -> str | None:
  """The directory JAX's persistent cache writes to now (None: off)."""
  return jax.config.jax_compilation_cache_dir or None


def requested_dir(environ=None) -> str | None:
  """The directory T5JAX_COMPILE_CACHE asks for in `environ` (default os.environ)."""
  value = (os.environ if environ is None else environ).get(ENV, "").strip()
  if value.lower() in _OFF:
    return None
  return default_dir() if value.lower() in _ON else os.path.abspath(os.path.expanduser(value))


def enable_cache() -> str | None:
  """Turns the persistent compilation cache on as T5JAX_COMPILE_CACHE says; returns its
  directory (None: off). Call it before the first compile. Idempotent; a directory set
  through JAX is kept."""
  if cache_dir():
    return cache_dir()
  path = requested_dir()
  if path is None:
    return None
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    print(f"{ENV}: cannot create {path} ({e.strerror}); compiling without a cache. Set "
          f"{ENV}=<a writable directory>, or {ENV}=0 to silence this.", flush=True)
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:  # JAX's own setting wins
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  return path


class Watch:
  """Seconds spent tracing, lowering and compiling, and cache hits / misses, while open."""

  def __init__(self):
    self.seconds = {"trace": 0.0, "lower": 0.0, "compile": 0.0}
    self.hits = self.misses = 0
    self.wall = 0.0

  @property
  def total(self) -> float:
    return sum(self.seconds.values())

  def describe(self, what: str) -> str:
    """One line: how long `what` took to compile, and whether the cache served it."""
    if self.hits and not self.misses:
      how = f"loaded {what} from the compile cache in {self.total:.1f} s"
    else:
      how = f"compiled {what} in {self.total:.1f} s"
      if self.total:
        how += (f" (trace {self.seconds['trace']:.1f}, lower {self.seconds['lower']:.1f}, "
                f"XLA {self.seconds['compile']:.1f})")
    return how[0].upper() + how[1:] + "."


_lock = threading.Lock()
_open: list[Watch] = []
_listening = False


def _on_duration(event: str, duration: float, **_):
  part = _DURATIONS.get(event)
  if part is None:
    return
  with _lock:
    for w in _open:
      w.seconds[part] += duration


def _on_event(event: str, **_):
  if event not in (_HIT, _MISS):
    return
  with _lock:
    for w in _open:
      if event == _HIT:
        w.hits += 1
      else:
        w.misses += 1


@contextlib.contextmanager
def watch():
  """A `Watch` over the block (compiles on any thread count: they are rare)."""
  global _listening
  with _lock:
    if not _listening:
      jax.monitoring.register_event_duration_secs_listener(_on_duration)
      jax.monitoring.register_event_listener(_on_event)
      _listening = True
    w = Watch()
    _open.append(w)
  start = time.perf_counter()
  try:
    yield w
  finally:
    w.wall = time.perf_counter() - start
    with _lock:
      _open.remove(w)


__all__ = ["ENV", "enable_cache", "cache_dir", "default_dir", "requested_dir", "watch", "Watch"]
