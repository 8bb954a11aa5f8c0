"""initialize_distributed() as the launchers of docs/launch.md start it: two localhost processes.

Each scenario sets a launcher's variables (SLURM, T5JAX_*, a Kubernetes indexed
Job) on two subprocesses running tests/launch_script.py, which initializes
from the environment alone and all-gathers the process indices over gloo.
"""

import json
import os
import random
import re
import socket
import subprocess
import sys
import time

import pytest

from t5jax import distributed
from t5jax.errors import UsageError

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launch_script.py")
REPO = os.path.dirname(os.path.dirname(SCRIPT))
TIMEOUT_S = 120  # a hung coordinator fails the test instead of hanging it
_PREFIXES = ("SLURM_", "OMPI_", "T5JAX_", "JAX_COORDINATOR", "JAX_LOCAL_DEVICE_IDS", "TPU_",
             "MEGASCALE_", "KUBERNETES_", "JOB_COMPLETION_INDEX")


def _clean(env):
  return {k: v for k, v in env.items() if not k.startswith(_PREFIXES)}


def _free(port: int) -> bool:
  with socket.socket() as s:
    try:
      s.bind(("", port))
    except OSError:
      return False
    return True


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("", 0))
    return s.getsockname()[1]


def _slurm_job_id() -> tuple[int, int]:
  """A job id whose coordinator port (jax: 61440 + job_id % 4096) is free, and that port."""
  for _ in range(200):
    port = random.randrange(61440, 65536)
    if _free(port):
      return 4096 * 1234 + port - 61440, port
  pytest.skip("no free port in 61440..65535")


def _launch(tmp_path, envs):
  """Runs the script once per env; returns (result dicts, stdouts), failing on error or hang."""
  base = _clean(os.environ)
  base["PYTHONPATH"] = REPO + os.pathsep + base.get("PYTHONPATH", "")
  logs = [tmp_path / f"process{i}.log" for i in range(len(envs))]
  procs = []
  for env, log in zip(envs, logs):
    with open(log, "w") as f:
      procs.append(subprocess.Popen([sys.executable, SCRIPT], env={**base, **env}, stdout=f,
                                    stderr=subprocess.STDOUT, text=True))
  deadline = time.monotonic() + TIMEOUT_S
  try:
    while any(p.poll() is None for p in procs):
      failed = any(p.returncode not in (None, 0) for p in procs)
      if failed or time.monotonic() > deadline:
        break
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  texts = [log.read_text() for log in logs]
  if any(p.returncode != 0 for p in procs):
    pytest.fail("\n".join(f"--- process {i} (exit {p.returncode}):\n{t[-3000:]}"
                          for i, (p, t) in enumerate(zip(procs, texts))))
  results = [json.loads(next(line for line in t.splitlines() if line.startswith("RESULT "))[7:])
             for t in texts]
  return results, texts


def _check(results, texts, source, coordinator):
  for i, r in enumerate(results):
    assert (r["process_index"], r["process_count"]) == (i, 2)
    assert r["gathered"] == [0, 1]
  assert f"Distributed: 2 processes via {source}, coordinator {coordinator}" in texts[0]
  assert "Distributed:" not in texts[1]


@pytest.mark.parametrize("per", ["gpu", "host"])
def test_slurm(tmp_path, per):
  """`srun` with two tasks: on one node (one process per GPU) or one per node."""
  job_id, port = _slurm_job_id()
  nodes = 1 if per == "gpu" else 2
  envs = [{"SLURM_JOB_ID": str(job_id), "SLURM_STEP_NODELIST": "localhost",
           "SLURM_JOB_NODELIST": "localhost", "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2",
           "SLURM_STEP_NUM_NODES": str(nodes), "SLURM_PROCID": str(i),
           "SLURM_LOCALID": str(i if per == "gpu" else 0),
           "SLURM_NODEID": str(0 if per == "gpu" else i)}
          for i in range(2)]
  results, texts = _launch(tmp_path, envs)
  _check(results, texts, "SLURM", f"localhost:{port}")
  # One process per GPU: jax picks GPU SLURM_LOCALID. One per node: all of them.
  expected = ["0", "1"] if per == "gpu" else ["all", "all"]
  assert [r["cuda_visible_devices"] for r in results] == expected


def test_t5jax_variables(tmp_path):
  coordinator = f"localhost:{_free_port()}"
  envs = [{"T5JAX_COORDINATOR": coordinator, "T5JAX_NUM_PROCESSES": "2", "T5JAX_PROCESS_ID": str(i),
           "SLURM_JOB_ID": "7"}  # a leftover of the allocation: the T5JAX_* variables win
          for i in range(2)]
  results, texts = _launch(tmp_path, envs)
  _check(results, texts, "T5JAX_* variables", coordinator)


def test_kubernetes_indexed_job(tmp_path):
  """T5JAX_COORDINATOR + T5JAX_NUM_PROCESSES in the manifest, the pod index as process id."""
  coordinator = f"localhost:{_free_port()}"
  envs = [{"T5JAX_COORDINATOR": coordinator, "T5JAX_NUM_PROCESSES": "2",
           "JOB_COMPLETION_INDEX": str(i), "HOSTNAME": f"t5jax-{i}",
           "KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
          for i in range(2)]
  results, texts = _launch(tmp_path, envs)
  _check(results, texts, "T5JAX_* variables, process id from JOB_COMPLETION_INDEX", coordinator)
  assert not any("kubernetes" in t.lower() for t in texts)  # jax's own k8s detection stays off


@pytest.fixture
def clean_env(monkeypatch):
  for name in list(os.environ):
    if name.startswith(_PREFIXES):
      monkeypatch.delenv(name)
  return monkeypatch


@pytest.mark.parametrize("env, message", [
    ({"T5JAX_COORDINATOR": "node0:1234"},
     "T5JAX_COORDINATOR is set but T5JAX_NUM_PROCESSES and T5JAX_PROCESS_ID are not"),
    ({"T5JAX_NUM_PROCESSES": "2", "T5JAX_PROCESS_ID": "0"},
     "T5JAX_NUM_PROCESSES and T5JAX_PROCESS_ID are set but T5JAX_COORDINATOR is not"),
    ({"T5JAX_COORDINATOR": "node0:1234", "T5JAX_NUM_PROCESSES": "2"},
     "T5JAX_COORDINATOR and T5JAX_NUM_PROCESSES are set but T5JAX_PROCESS_ID is not"),
    ({"T5JAX_PROCESS_ID": "1", "JOB_COMPLETION_INDEX": "1"},
     "T5JAX_PROCESS_ID is set but T5JAX_COORDINATOR and T5JAX_NUM_PROCESSES are not"),
    ({"T5JAX_COORDINATOR": "node0:1234", "T5JAX_NUM_PROCESSES": "two", "T5JAX_PROCESS_ID": "0"},
     "T5JAX_NUM_PROCESSES='two' is not an integer"),
    ({"T5JAX_COORDINATOR": "node0:1234", "T5JAX_NUM_PROCESSES": "2", "JOB_COMPLETION_INDEX": "x"},
     "JOB_COMPLETION_INDEX='x' is not an integer"),
    ({"T5JAX_COORDINATOR": "node0", "T5JAX_NUM_PROCESSES": "2", "T5JAX_PROCESS_ID": "0"},
     "T5JAX_COORDINATOR='node0' is not HOST:PORT"),
    ({"T5JAX_COORDINATOR": "node0:1234", "T5JAX_NUM_PROCESSES": "2", "T5JAX_PROCESS_ID": "2"},
     "T5JAX_PROCESS_ID=2 is not in 0 .. 1"),
])
def test_bad_variables(clean_env, env, message):
  for name, value in env.items():
    clean_env.setenv(name, value)
  with pytest.raises(UsageError, match="^" + re.escape(message)):
    distributed.initialize_distributed()


@pytest.mark.parametrize("env", [
    {},
    {"SLURM_JOB_ID": "5", "SLURM_JOB_NODELIST": "node1", "SLURM_NTASKS": "4"},  # salloc shell
    {"SLURM_JOB_ID": "5", "SLURM_STEP_NODELIST": "node1", "SLURM_NTASKS": "1", "SLURM_PROCID": "0",
     "SLURM_LOCALID": "0"},  # srun -n1
    {"JOB_COMPLETION_INDEX": "3"},  # an indexed Job of independent pods
    {"OMPI_COMM_WORLD_SIZE": "2"},  # Open MPI 5: jax does not detect it
])
def test_single_process_is_not_initialized(clean_env, env, monkeypatch):
  for name, value in env.items():
    clean_env.setenv(name, value)
  calls = []
  monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda *a, **k: calls.append(k))
  distributed.initialize_distributed()
  assert calls == []
