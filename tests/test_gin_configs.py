"""Every shipped gin file parses, binds and builds its configs; gin errors say how to fix them."""

import os

import gin
import pytest

from t5jax import gin_setup, run  # noqa: F401 (registers the gin configurables)
from t5jax.cli import main

GIN_FILES = gin_setup.all_gin_files()
# What each kind of file is combined with to make a complete configuration.
COMPANIONS = {
    "models": ["runs/pretrain.gin", "tasks/default_corpus.gin"],
    "runs": ["models/tiny.gin", "tasks/default_corpus.gin"],
    "tasks": ["models/tiny.gin", "runs/pretrain.gin"],
    "demo": [],
    "peft": ["models/tiny.gin", "runs/finetune.gin", "tasks/default_corpus.gin"],
}


def test_every_kind_of_file_is_shipped():
  kinds = {f.split(os.sep)[0] for f in GIN_FILES}
  assert kinds == set(COMPANIONS)
  for must in ("models/t5.1.1-xxl.gin", "models/t5.1.0-11b.gin", "models/tiny.gin",
               "runs/pretrain.gin", "runs/finetune.gin", "runs/eval.gin", "runs/infer.gin",
               "tasks/c4_span_corruption.gin", "tasks/glue.gin", "tasks/super_glue.gin",
               "demo/pretrain_cpu.gin"):
    assert must in GIN_FILES


def _is_bound(parameter: str) -> bool:
  try:
    gin.query_parameter(parameter)
    return True
  except ValueError:
    return False


def _build(configurable: str):
  return gin.get_configurable(f"t5jax.{configurable}")()


@pytest.mark.parametrize("name", GIN_FILES)
def test_gin_file_parses_and_binds(name):
  with open(os.path.join(gin_setup.GIN_DIR, name)) as f:
    text = f.read()
  assert text.startswith("#") and "t5jax " in text.split("\n\n")[0], \
      f"{name} must begin with a comment giving the command that runs it"
  gin.clear_config()
  try:
    files = COMPANIONS[name.split(os.sep)[0]] + [name]
    gin_setup.parse(files, ["RUN_DIR = '/tmp/gin_test_run'"])
    # Build every config object the file binds: catches bad field names and values.
    model = _build("model_config")
    # ByT5's vocabulary is bytes: 384 ids.
    assert model.vocab_size >= 32000 or name.startswith(("demo", "models/byt5-"))
    for configurable in ("DataConfig", "OptimizerConfig", "LossConfig", "MeshConfig",
                         "CheckpointConfig", "DecodeConfig"):
      _build(configurable)
    if _is_bound("TrainConfig.num_steps"):
      _build("TrainConfig")
    if name.startswith(("runs/pretrain", "runs/finetune", "demo/pretrain", "demo/finetune")):
      assert isinstance(gin.query_parameter("train.trainer"), gin.config.ConfigurableReference)
  finally:
    gin.clear_config()


def test_misspelled_binding_suggests_the_name(capsys):
  assert main(["train", "--gin_file=demo/pretrain_cpu.gin", "--run_dir=/tmp/x",
               "--gin.TrainConfig.num_step=3"]) == 2
  err = capsys.readouterr().err
  assert "num_step" in err and "Did you mean 'num_steps'" in err


def test_misspelled_configurable_suggests_the_name(capsys):
  assert main(["train", "--gin_file=demo/pretrain_cpu.gin", "--run_dir=/tmp/x",
               "--gin.TrainConfg.num_steps=3"]) == 2
  assert "Did you mean" in capsys.readouterr().err


def test_misspelled_gin_file_suggests_the_file(capsys):
  assert main(["train", "--gin_file=demo/pretrain_cpuu.gin", "--run_dir=/tmp/x"]) == 2
  assert "Did you mean 'demo/pretrain_cpu.gin'" in capsys.readouterr().err


def test_missing_required_value_is_named(capsys):
  assert main(["train", "--gin_file=tasks/default_corpus.gin"]) == 2
  err = capsys.readouterr().err
  assert "model" in err and "trainer" in err and "--gin" in err


def test_gin_flag_needs_a_value():
  with pytest.raises(gin_setup.GinError, match="--gin.NAME=VALUE"):
    gin_setup.split_gin_flags(["--gin.TrainConfig.num_steps"])


def _includes(name: str, seen: set) -> set:
  """`name` and every file it includes, transitively."""
  if name not in seen:
    seen.add(name)
    with open(os.path.join(gin_setup.GIN_DIR, name)) as f:
      for line in f:
        if line.startswith("include '"):
          _includes(line.split("'")[1], seen)
  return seen


@pytest.mark.parametrize("name", GIN_FILES)
def test_gin_file_opens_with_the_command_that_runs_it(name):
  """Line 1 is '# Run: t5jax <command> ...', a command line the CLI parses, whose
  --gin_file flags reach this file (directly or through an include)."""
  import shlex
  from t5jax.cli import build_parser
  from t5jax.gin_setup import split_gin_flags
  with open(os.path.join(gin_setup.GIN_DIR, name)) as f:
    first = f.readline().rstrip("\n")
  assert first.startswith("# Run: t5jax "), f"{name} line 1: {first!r}"
  argv = shlex.split(first[len("# Run: t5jax "):])
  rest, _ = split_gin_flags(argv)
  args = build_parser().parse_args(rest)
  reached = set()
  for gin_file in args.gin_file:
    _includes(gin_file, reached)
  assert name in reached, f"{name}: its Run line reaches only {sorted(reached)}"
