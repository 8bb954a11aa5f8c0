"""Transparent huge pages for XLA-CPU's buffers, by re-executing the process once.

XLA-CPU allocates each step's temporaries (hundreds of MB for a T5-small
training step) with malloc. glibc serves allocations over 32 MB with mmap and
unmaps them when freed, so every step faults every page in again: ~125k minor
faults and ~0.35 CPU-seconds in the kernel per T5-small training step on this
project's 2-core VM. glibc's `glibc.malloc.hugetlb=1` tunable makes malloc
ask for transparent huge pages (madvise), which cut those faults ~200x and the
step time by ~10% (interleaved runs, bf16 T5.1.0-small: median 1208 -> 1072
ms). glibc reads tunables once, at process start, hence the re-exec. Entry
points call `reexec_with_hugepage_malloc()` first; library code never does.

It belongs to the XLA-CPU path: on a GPU or TPU host the step's buffers live in
device memory, so there is nothing to gain and the re-exec is skipped. The choice
is made before jax is imported, from what the process can see: the CPU switch
(`T5JAX_CPU_KERNELS=off`), `JAX_PLATFORMS`, and accelerator device files.
"""

from __future__ import annotations

import glob
import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
# Device files of NVIDIA GPUs, AMD GPUs (ROCm) and TPUs: a host with any runs there.
ACCELERATOR_DEVICES = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/accel[0-9]*", "/dev/vfio/[0-9]*")


def cpu_host() -> bool:
  """Whether JAX will most likely run on the CPU here (decided without importing jax)."""
  if os.environ.get("T5JAX_CPU_KERNELS", "auto").strip().lower() == "off":
    return False
  platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
  if platforms:
    return platforms.split(",")[0] == "cpu"
  return not any(glob.glob(pattern) for pattern in ACCELERATOR_DEVICES)


def reexec_with_hugepage_malloc() -> None:
  """Re-executes this process with the tunable added to GLIBC_TUNABLES, once.

  A no-op off Linux/glibc, off a CPU host (`cpu_host`), when the tunable is already
  set, and when T5JAX_NO_HUGEPAGES=1. Nothing changes but the allocator's page size.
  """
  tunables = os.environ.get("GLIBC_TUNABLES", "")
  if (sys.platform != "linux" or os.environ.get("T5JAX_NO_HUGEPAGES") == "1"
      or "glibc.malloc.hugetlb" in tunables or platform.libc_ver()[0] != "glibc"
      or not cpu_host()):
    return
  os.environ["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}" if tunables else TUNABLE
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, sys.orig_argv)
