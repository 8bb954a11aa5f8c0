"""Starting the processes of a multi-host run: `jax.distributed.initialize` from the environment.

One function, `initialize_distributed()`, called first by `t5jax train`
(see docs/launch.md for SLURM, Kubernetes and Cloud TPU recipes).
"""

from __future__ import annotations

import os

import jax


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None,
                           local_device_ids: list[int] | None = None) -> None:
  """jax.distributed.initialize from arguments, else T5JAX_COORDINATOR /
  T5JAX_NUM_PROCESSES / T5JAX_PROCESS_ID, else jax's own cluster detection
  (SLURM, TPU pods, ...). A no-op for a single process with nothing set."""
  env = os.environ
  coordinator_address = coordinator_address or env.get("T5JAX_COORDINATOR")
  if num_processes is None and "T5JAX_NUM_PROCESSES" in env:
    num_processes = int(env["T5JAX_NUM_PROCESSES"])
  if process_id is None and "T5JAX_PROCESS_ID" in env:
    process_id = int(env["T5JAX_PROCESS_ID"])
  if coordinator_address is None and num_processes is None:
    if any(k in env for k in ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "OMPI_COMM_WORLD_SIZE")):
      jax.distributed.initialize()
    return
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             local_device_ids=local_device_ids)
