"""The `t5jax` command line, and the rule that the core imports no TensorFlow."""

import os
import subprocess
import sys

import numpy as np
from safetensors.numpy import load_file

from hf_reference import hf_model
from t5jax.cli import main

CORE_MODULES = ["t5jax", "t5jax.config", "t5jax.layers", "t5jax.model", "t5jax.conversion",
                "t5jax.conversion.hf", "t5jax.conversion.t5x", "t5jax.cli", "t5jax.decoding",
                "t5jax.partitioning", "t5jax.optim", "t5jax.losses", "t5jax.train_step",
                "t5jax.trainer", "t5jax.checkpoints", "t5jax.metrics", "t5jax.flops",
                "t5jax.benchmark", "t5jax.plots", "t5jax.xla_cpu", "t5jax.peft"]


def test_core_imports_no_tensorflow():
  code = ("import sys, importlib\n"
          f"for m in {CORE_MODULES!r}: importlib.import_module(m)\n"
          "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'seqio', "
          "'tensorflow_datasets')]\n"
          "assert not bad, bad\n")
  subprocess.run([sys.executable, "-c", code], check=True)


def test_gpu_benchmarks_import_no_tensorflow():
  """The GPU image has no TensorFlow/seqio: the training, decoding and memory benchmarks
  must load without them (their module level; HF peers import torch lazily)."""
  code = ("import sys, runpy\n"
          "for m in ('tensorflow', 'seqio', 'tensorflow_datasets'): sys.modules[m] = None\n"
          "for f in ('bench_train', 'bench_decode', 'memory_estimate'):\n"
          "  runpy.run_path(f'benchmarks/{f}.py', run_name='imported')\n")
  subprocess.run([sys.executable, "-c", code], check=True,
                 cwd=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def test_params_command(capsys):
  assert main(["params", "t5.1.1-base", "t5.1.0-small"]) == 0
  out = capsys.readouterr().out
  assert "247,577,856" in out and "60,506,624" in out


def test_params_unknown_preset(capsys):
  assert main(["params", "t5.1.1-bse"]) == 2
  assert "Did you mean 't5.1.1-base'" in capsys.readouterr().err


def test_convert_hf_to_t5jax_and_back(tmp_path, capsys):
  hf_model(seed=9, feed_forward_proj="gated-gelu", tie_word_embeddings=False).save_pretrained(
      str(tmp_path / "hf"))
  assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "t5jax"), "--to", "t5jax"]) == 0
  assert main(["convert", str(tmp_path / "t5jax"), str(tmp_path / "back")]) == 0
  a = load_file(str(tmp_path / "hf" / "model.safetensors"))
  b = load_file(str(tmp_path / "back" / "model.safetensors"))
  assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
  assert "parameters" in capsys.readouterr().out


def test_convert_missing_source(tmp_path, capsys):
  assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
  assert "does not exist" in capsys.readouterr().err


def test_entry_points_reexec_once_with_hugepage_malloc():
  """`python -m t5jax` (and the console script) re-exec once with glibc's THP tunable,
  appended to any tunables the user set; T5JAX_NO_HUGEPAGES=1 turns it off, and so does
  a process bound for an accelerator or the standard path (it is XLA-CPU's trick)."""
  import platform
  if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
    return  # a no-op there by design
  code = ("import os; from t5jax.hugepages import reexec_with_hugepage_malloc; "
          "reexec_with_hugepage_malloc(); print(os.environ.get('GLIBC_TUNABLES'))")
  base = {k: v for k, v in os.environ.items()
          if k not in ("GLIBC_TUNABLES", "T5JAX_NO_HUGEPAGES", "T5JAX_CPU_KERNELS")}
  base["JAX_PLATFORMS"] = "cpu"
  run = lambda **env: subprocess.run([sys.executable, "-c", code], check=True, text=True,
                                     capture_output=True, env={**base, **env}).stdout
  assert run() == "glibc.malloc.hugetlb=1\n"  # printed once: by the re-executed process
  assert run(GLIBC_TUNABLES="glibc.malloc.check=0") == \
      "glibc.malloc.check=0:glibc.malloc.hugetlb=1\n"
  assert run(T5JAX_NO_HUGEPAGES="1") == "None\n"
  assert run(JAX_PLATFORMS="cuda") == "None\n"
  assert run(JAX_PLATFORMS="tpu,cpu") == "None\n"
  assert run(T5JAX_CPU_KERNELS="off") == "None\n"
  out = subprocess.run([sys.executable, "-m", "t5jax", "params", "tiny"], check=True,
                       text=True, capture_output=True).stdout
  assert out.startswith("tiny")
