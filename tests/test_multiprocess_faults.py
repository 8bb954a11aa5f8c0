"""Faults in a two-process run (gloo on localhost): kill -9 of both, SIGTERM to one.

Each test drives two tests/trainer_script.py processes, interrupts them, reruns
them and checks the final params bitwise against one uninterrupted two-process
run with the same maths (a module-scoped reference). The runs share a persistent
compilation cache: later runs load the reference's executables instead of compiling.
"""

import contextlib
import os
import re
import signal
import socket
import subprocess
import time

import numpy as np
import pytest

from synthetic_batches import final_params, script_command, script_env, step_losses

# 2 processes x 2 CPU devices; --ckpt_every, --step_delay, --log_every and
# --sync_every change when things happen, not the maths.
FLAGS = ("--steps", 8, "--devices", 2, "--num_processes", 2)
TIMEOUT = 150  # seconds a pair of processes may take; a hang fails instead of blocking


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


class Pair:
  """Two trainer_script processes of one run; output to files (no pipe to fill)."""

  def __init__(self, cache, run_dir, logs, name, *flags):
    port = free_port()
    env = dict(script_env(), JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    self.logs = [os.path.join(logs, f"{name}.{i}.log") for i in range(2)]
    self.procs = []
    for i, log in enumerate(self.logs):
      with open(log, "w") as f:
        self.procs.append(subprocess.Popen(
            script_command(run_dir, *FLAGS, *flags, "--process_id", i,
                           "--coordinator", f"localhost:{port}"),
            env=env, stdout=f, stderr=subprocess.STDOUT))

  def outputs(self):
    out = []
    for log in self.logs:
      with open(log) as f:
        out.append(f.read())
    return out

  def tails(self, n=3000):
    return "\n".join(f"--- process {i} ---\n{o[-n:]}" for i, o in enumerate(self.outputs()))

  def check_running(self):
    if any(p.poll() is not None for p in self.procs):
      raise AssertionError(f"a process exited early:\n{self.tails()}")

  def wait(self, timeout=TIMEOUT):
    """Waits for both; returns their outputs. Kills both if they take longer."""
    deadline = time.time() + timeout
    for p in self.procs:
      try:
        p.wait(timeout=max(deadline - time.time(), 1))
      except subprocess.TimeoutExpired:
        self.kill()
        raise AssertionError(f"processes still running after {timeout}s:\n{self.tails()}")
    return self.outputs()

  def kill(self):
    for p in self.procs:
      if p.poll() is None:
        p.kill()
    for p in self.procs:
      p.wait()


@contextlib.contextmanager
def pairs(cache):
  """Yields a `start(run_dir, logs, name, *flags)`; kills whatever is left at exit."""
  started = []

  def start(*args):
    started.append(Pair(cache, *args))
    return started[-1]
  try:
    yield start
  finally:
    for pair in started:
      pair.kill()


def finish(start, run_dir, logs, name, *flags):
  pair = start(run_dir, logs, name, *flags)
  outs = pair.wait()
  for p in pair.procs:
    assert p.returncode == 0, pair.tails()
  for out in outs:
    assert "STOPPED done at step 8" in out, pair.tails()
  return outs


def wait_for(condition, pair, what, timeout=TIMEOUT):
  deadline = time.time() + timeout
  while time.time() < deadline:
    pair.check_running()
    if condition():
      return
    time.sleep(0.05)
  raise AssertionError(f"{what} did not happen within {timeout}s:\n{pair.tails()}")


def lines(path):
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    return len(f.read().splitlines())


def assert_params_equal(run_dir, reference):
  want, got = final_params(reference), final_params(run_dir)
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("compilation_cache")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache):
  """One uninterrupted two-process run."""
  root = tmp_path_factory.mktemp("reference")
  with pairs(cache) as start:
    finish(start, root / "run", root, "reference", "--ckpt_every", 4)
  return root / "run"


def test_kill_9_both_processes_then_rerun_is_bitwise_identical(tmp_path, cache, reference):
  run = tmp_path / "run"
  # A multi-process save costs; two are enough. Each process saves its data position.
  flags = ("--ckpt_every", 4, "--saved_position")
  with pairs(cache) as start:
    pair = start(run, tmp_path, "killed", *flags, "--step_delay", 0.5)
    wait_for(lambda: os.path.isdir(run / "checkpoints" / "4"), pair, "checkpoint 4")
    for p in pair.procs:
      p.send_signal(signal.SIGKILL)
    pair.kill()  # reaps them
    assert [p.returncode for p in pair.procs] == [-signal.SIGKILL] * 2
    assert not os.path.exists(run / "final_params.npz"), pair.tails()
    outs = finish(start, run, tmp_path, "rerun", *flags)
  resumed = re.search(rf"Resumed from {re.escape(str(run))} at step (\d+)\.", outs[0])
  assert resumed and resumed.group(1) == "4", outs[0][-3000:]
  assert "Input pipeline continues from its position saved at step 4" in outs[0]
  assert {"process_0-of-2", "process_1-of-2"} <= set(
      os.listdir(run / "checkpoints" / "4" / "data"))
  assert step_losses(run) == step_losses(reference)  # exact float equality, every step
  assert_params_equal(run, reference)


def test_sigterm_to_one_process_all_save_the_same_step_then_resume(tmp_path, cache,
                                                                   reference):
  run = tmp_path / "run"
  # No periodic save is due before step 8, and the processes agree on signals only
  # every 3 steps: process 0 learns of process 1's SIGTERM at the next multiple of 3.
  flags = ("--ckpt_every", 100, "--log_every", 2, "--sync_every", 3)
  with pairs(cache) as start:
    pair = start(run, tmp_path, "sigterm", *flags, "--step_delay", 0.5)
    wait_for(lambda: lines(run / "metrics.jsonl") >= 2, pair, "step 2")
    pair.procs[1].send_signal(signal.SIGTERM)
    outs = pair.wait()
    for p in pair.procs:
      assert p.returncode == 0, pair.tails()
    stops = [[line for line in out.splitlines() if line.startswith("STOPPED")] for out in outs]
    assert stops[0] == stops[1] and len(stops[0]) == 1, pair.tails()
    assert stops[0][0].startswith("STOPPED preempted at step "), pair.tails()
    saved = int(stops[0][0].split()[-1])
    assert saved % 3 == 0 and 3 <= saved < 8, pair.tails()
    assert f"Received a signal on another process: saved step {saved}" in outs[0]
    # Exactly that step, complete: no orbax temporary directory left beside it.
    assert os.listdir(run / "checkpoints") == [str(saved)]
    assert {"state", "meta"} <= set(os.listdir(run / "checkpoints" / str(saved)))
    assert not os.path.exists(run / "final_params.npz")
    outs = finish(start, run, tmp_path, "resumed", *flags)
  assert f"Resumed from {run} at step {saved}." in outs[0]
  assert_params_equal(run, reference)


# ----------------------------------------------------------------------------
# The grain pipeline's position, saved with a checkpoint, resumes on another number of
# processes (1 -> 2 and 2 -> 1) and after a kill -9: nothing skipped, nothing read twice.

def _rows_by_step(run_dir, steps, processes=(0, 1)):
  """{step: the global batch's row digests (process 0's rows, then process 1's)} for the
  steps a phase trained, from its processes' logs, which are then removed: the prefetcher
  reads past the last step, and the next phase reads those steps again."""
  seen = {}
  for p in processes:
    path = os.path.join(run_dir, f"rows.{p}.txt")
    if not os.path.exists(path):
      continue
    with open(path) as f:
      for line in f:
        step, *rows = line.split()
        seen.setdefault(int(step), {})[p] = rows
    os.remove(path)
  return {s: [r for p in sorted(seen[s]) for r in seen[s][p]] for s in steps}


GRAIN = ("--grain", "--ckpt_every", 2)


def _one(run_dir, steps):
  proc = subprocess.run(script_command(run_dir, "--steps", steps, "--devices", 4, *GRAIN),
                        env=script_env(), capture_output=True, text=True, timeout=TIMEOUT)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc.stdout


def test_grain_position_resumes_on_another_process_count(cache, tmp_path):
  """1 process x 4 devices to step 4, then 2 x 2 to step 8, and 2 -> 1: each global batch
  is the one an uninterrupted run reads, the position restored, not replayed."""
  first, second = range(1, 5), range(5, 9)
  reference = tmp_path / "reference"
  _one(reference, 8)
  want = _rows_by_step(reference, range(1, 9), (0,))

  up = tmp_path / "up"
  _one(up, 4)
  got = _rows_by_step(up, first, (0,))
  pair = Pair(cache, up, tmp_path, "up", *GRAIN, "--steps", 8)
  outputs = pair.wait()
  assert "continues from its position saved at step 4" in outputs[0], pair.tails()
  assert {**got, **_rows_by_step(up, second)} == want

  down = tmp_path / "down"
  Pair(cache, down, tmp_path, "down", *GRAIN, "--steps", 4).wait()
  got = _rows_by_step(down, first)
  out = _one(down, 8)
  assert "continues from its position saved at step 4" in out
  assert {**got, **_rows_by_step(down, second, (0,))} == want


def test_grain_position_after_kill_9_of_both_processes(cache, tmp_path):
  """kill -9 of a 2-process grain run past its step-4 checkpoint: the rerun continues
  from the saved position and reads exactly the uninterrupted run's batches."""
  run, reference = tmp_path / "run", tmp_path / "reference"
  Pair(cache, reference, tmp_path, "reference", *GRAIN).wait()
  want = _rows_by_step(reference, range(1, 9))
  pair = Pair(cache, run, tmp_path, "killed", *GRAIN, "--step_delay", 0.5)
  wait_for(lambda: os.path.isdir(run / "checkpoints" / "4"), pair, "checkpoint 4")
  for p in pair.procs:
    p.send_signal(signal.SIGKILL)
  pair.kill()
  got = _rows_by_step(run, range(1, 5))
  rerun = Pair(cache, run, tmp_path, "rerun", *GRAIN)
  outputs = rerun.wait()
  assert "continues from its position saved at step 4" in outputs[0], rerun.tails()
  assert {**got, **_rows_by_step(run, range(5, 9))} == want
