"""One process of a launch test: `initialize_distributed()` from the environment, then a collective.

    SLURM_... or T5JAX_... python tests/launch_script.py

Prints `RESULT {json}` with process_index, process_count, the process indices
all-gathered across processes and the GPUs jax would make visible
(`jax_cuda_visible_devices`, "all" when unrestricted).
"""

import json
import os

os.environ["JAX_PLATFORMS"] = "cpu"
# one CPU device per process (tests/conftest.py's test-only compile flags kept)
os.environ["XLA_FLAGS"] = os.environ.get("T5JAX_TEST_XLA_FLAGS", "")

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")

import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from t5jax.distributed import initialize_distributed  # noqa: E402

initialize_distributed()
gathered = multihost_utils.process_allgather(np.array([jax.process_index()], np.int32))
print("RESULT " + json.dumps({
    "process_index": jax.process_index(),
    "process_count": jax.process_count(),
    "gathered": np.asarray(gathered).ravel().tolist(),
    "cuda_visible_devices": jax.config.read("jax_cuda_visible_devices"),
}), flush=True)
