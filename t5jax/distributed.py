"""Starting the processes of a multi-host run: `jax.distributed.initialize` from the environment.

One function, `initialize_distributed()`, called first by `t5jax train`
(see docs/launch.md for SLURM, Kubernetes and Cloud TPU recipes). The
processes are found, in order, from:

1. its arguments and the `T5JAX_COORDINATOR` (HOST:PORT of process 0),
   `T5JAX_NUM_PROCESSES` and `T5JAX_PROCESS_ID` variables, all three or none;
   the process id defaults to `JOB_COMPLETION_INDEX` (a Kubernetes indexed
   Job's pod index). jax's cluster detection is then off: each process sees
   all of its host's devices unless `local_device_ids` or `JAX_LOCAL_DEVICE_IDS`
   says otherwise;
2. jax's own detection: SLURM (`srun`), Open MPI (`mpirun`), Cloud TPU VMs.

A single process with none of these is not initialized at all.
"""

from __future__ import annotations

import os
from typing import Mapping

import jax

from t5jax.errors import UsageError

COORDINATOR, NUM_PROCESSES, PROCESS_ID = ("T5JAX_COORDINATOR", "T5JAX_NUM_PROCESSES",
                                          "T5JAX_PROCESS_ID")
JOB_COMPLETION_INDEX = "JOB_COMPLETION_INDEX"
# What jax's SlurmCluster needs to detect a SLURM step (jax/_src/clusters/slurm_cluster.py).
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID")


def _get(env: Mapping[str, str], name: str) -> str | None:
  """The variable's value; unset and empty are the same."""
  return env.get(name) or None


def _int(name: str, value: str, fix: str) -> int:
  try:
    return int(value)
  except ValueError:
    raise UsageError(f"{name}={value!r} is not an integer: {fix}.") from None


def _check_coordinator(name: str, address: str) -> None:
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise UsageError(f"{name}={address!r} is not HOST:PORT: set it to process 0's host name "
                     f"and a free port, the same on every process (e.g. {name}=node0:12345).")


def _from_settings(coordinator_address, num_processes, process_id, env):
  """(coordinator, num_processes, process_id, source) from arguments and T5JAX_*, or None."""
  names = {}  # setting -> where it came from, for messages
  from_env = []
  if coordinator_address is not None:
    names["coordinator"] = "coordinator_address"
  elif _get(env, COORDINATOR):
    coordinator_address, names["coordinator"] = env[COORDINATOR], COORDINATOR
    from_env.append(COORDINATOR)
  if num_processes is not None:
    names["num"] = "num_processes"
  elif _get(env, NUM_PROCESSES):
    names["num"] = NUM_PROCESSES
    num_processes = _int(NUM_PROCESSES, env[NUM_PROCESSES],
                         "set it to the number of processes, the same on every process")
    from_env.append(NUM_PROCESSES)
  if process_id is not None:
    names["id"] = "process_id"
  elif _get(env, PROCESS_ID):
    names["id"] = PROCESS_ID
    process_id = _int(PROCESS_ID, env[PROCESS_ID], "set it to this process's index, 0 .. N-1")
    from_env.append(PROCESS_ID)
  if not names:
    return None

  missing = [var for key, var in (("coordinator", COORDINATOR), ("num", NUM_PROCESSES))
             if key not in names]
  if process_id is None and _get(env, JOB_COMPLETION_INDEX) and not missing:
    process_id = _int(JOB_COMPLETION_INDEX, env[JOB_COMPLETION_INDEX],
                      f"set {PROCESS_ID} to this process's index instead")
    names["id"] = JOB_COMPLETION_INDEX
    from_env.append(JOB_COMPLETION_INDEX)
  if process_id is None and not _get(env, JOB_COMPLETION_INDEX):
    missing.append(PROCESS_ID)
  if missing:
    given = " and ".join(names.values())
    raise UsageError(
        f"{given} {'is' if len(names) == 1 else 'are'} set but {' and '.join(missing)} "
        f"{'is' if len(missing) == 1 else 'are'} not: a multi-process run needs "
        f"{COORDINATOR}=HOST:PORT (process 0's host and a free port), {NUM_PROCESSES}=N "
        f"and {PROCESS_ID}=0..N-1 (or a Kubernetes indexed Job's {JOB_COMPLETION_INDEX}) "
        f"on every process. Set them all, or unset {given} to let jax find the processes "
        f"under SLURM, Open MPI or on Cloud TPU (see docs/launch.md).")

  _check_coordinator(names["coordinator"], coordinator_address)
  if num_processes < 1:
    raise UsageError(f"{names['num']}={num_processes} must be at least 1.")
  if not 0 <= process_id < num_processes:
    raise UsageError(f"{names['id']}={process_id} is not in 0 .. {num_processes - 1} "
                     f"({names['num']}={num_processes}): give each process its own index.")
  if not from_env:
    source = "arguments"
  else:
    source = "T5JAX_* variables"
    if JOB_COMPLETION_INDEX in from_env:
      source += f", process id from {JOB_COMPLETION_INDEX}"
  return coordinator_address, num_processes, process_id, source


def _count(env: Mapping[str, str], name: str) -> int | None:
  try:
    return int(env[name])
  except (KeyError, ValueError):
    return None


def _on_cloud_tpu_vm() -> bool:
  try:
    from jax._src import cloud_tpu_init  # set when jax is imported on a TPU VM
    return bool(cloud_tpu_init.running_in_cloud_tpu_vm)
  except (ImportError, AttributeError):
    return False


def _detected_cluster(env: Mapping[str, str]) -> str | None:
  """Which cluster jax's own detection will find with more than one process, if any.

  Mirrors jax's checks (jax/_src/clusters/), so a single process in a SLURM
  allocation (`salloc`, an `sbatch` script without `srun`) or a one-task step
  is not initialized, and neither is a half-detected cluster.
  """
  if "OMPI_MCA_orte_hnp_uri" in env and (_count(env, "OMPI_COMM_WORLD_SIZE") or 0) > 1:
    return "Open MPI"
  if all(var in env for var in _SLURM_VARS) and (_count(env, "SLURM_NTASKS") or 0) > 1:
    return "SLURM"
  if _on_cloud_tpu_vm():
    hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES")
    slices = _count(env, "MEGASCALE_NUM_SLICES") or 1
    if hosts is None or "," in hosts or slices > 1:  # GCE (jax asks the metadata server) or GKE
      return "Cloud TPU"
  return None


def _slurm_local_device_ids(env: Mapping[str, str]) -> list[int] | None:
  """[] (all local devices) when the SLURM step runs one task per node, else None.

  jax gives each SLURM task only GPU number SLURM_LOCALID (one process per GPU);
  with one task per node that would leave a host's other GPUs idle.
  """
  if env.get("JAX_LOCAL_DEVICE_IDS"):
    return None  # jax reads it
  tasks, nodes = _count(env, "SLURM_NTASKS"), _count(env, "SLURM_STEP_NUM_NODES")
  return [] if tasks is not None and tasks == nodes else None


def _describe(source: str) -> None:
  """Prints on process 0 how the processes were found."""
  try:
    from jax._src import distributed as jax_distributed
    state = jax_distributed.global_state
    process_id, count, address = state.process_id, state.num_processes, state.coordinator_address
  except (ImportError, AttributeError):
    return
  if process_id == 0:
    print(f"Distributed: {count} process{'es' if count != 1 else ''} via {source}, "
          f"coordinator {address}", flush=True)


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None,
                           local_device_ids: list[int] | None = None) -> None:
  """Starts jax's distributed runtime when this process is one of several.

  From the arguments, else T5JAX_COORDINATOR / T5JAX_NUM_PROCESSES /
  T5JAX_PROCESS_ID (the id defaulting to JOB_COMPLETION_INDEX), else jax's
  detection of SLURM, Open MPI and Cloud TPU. A no-op for a single process and
  when already initialized. Process 0 prints one line saying how the processes
  were found. Must run before anything touches a jax device.

  Raises:
    UsageError: only some of the three settings are given, or a value is not
      an integer, not HOST:PORT or out of range.
  """
  env = os.environ
  settings = _from_settings(coordinator_address, num_processes, process_id, env)
  if jax.distributed.is_initialized():
    return
  if settings is not None:
    coordinator_address, num_processes, process_id, source = settings
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               local_device_ids=local_device_ids,
                               cluster_detection_method="deactivate")
    _describe(source)
    return
  source = _detected_cluster(env)
  if source is None:
    return
  if local_device_ids is None and source == "SLURM":
    local_device_ids = _slurm_local_device_ids(env)
  jax.distributed.initialize(local_device_ids=local_device_ids)
  _describe(source)
