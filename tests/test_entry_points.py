"""Entry points that swallow nothing: gin bindings always land, errors keep their tracebacks.

Nothing here trains: `t5jax.trainer.train`, the task and the checkpoint are
replaced by fakes that record what the entry functions pass on.
"""

import inspect

import gin
import pytest

from t5jax import checkpoints, config, gin_setup, losses, optim, partitioning, run, trainer
from t5jax.cli import main
from t5jax.errors import UnknownNameError, UsageError

# A run file without `TrainConfig.mesh = @MeshConfig()` (nor optimizer, loss,
# checkpoint) and without `train.data = @DataConfig()`.
UNWIRED = """
import t5jax.run
include 'models/tiny.gin'
train.trainer = @TrainConfig()
train.show_examples = 0
TrainConfig.run_dir = %RUN_DIR
TrainConfig.num_steps = 1
TrainConfig.batch_size = 2
MeshConfig.model = 2
OptimizerConfig.learning_rate = 0.5
LossConfig.z_loss = 0.0
CheckpointConfig.keep = 7
DataConfig.task = 'glue_sst2'
DataConfig.inputs_length = 64
"""
WIRED = UNWIRED + """
train.data = @DataConfig()
TrainConfig.mesh = @MeshConfig()
TrainConfig.optimizer = @OptimizerConfig()
TrainConfig.loss = @LossConfig()
TrainConfig.checkpoint = @CheckpointConfig()
"""


class _Vocabulary:
  vocab_size = 200


@pytest.fixture
def fake_training(monkeypatch):
  """Records the data config and the (model, TrainConfig) that reach trainer.train."""
  seen = {}

  def prepare_task(data):
    seen["data"] = data
    return _Vocabulary(), data.task

  def train(model, train_config, data_fn, **kwargs):
    seen["model"], seen["trainer"] = model, train_config
    return trainer.TrainResult(state=None, step=0, history=[], stopped="preempted")

  monkeypatch.setattr(run, "prepare_task", prepare_task)
  monkeypatch.setattr(trainer, "train", train)
  yield seen
  gin.clear_config()


@pytest.mark.parametrize("text", [UNWIRED, WIRED], ids=["unwired", "wired"])
def test_sub_config_bindings_reach_the_trainer(tmp_path, fake_training, text):
  gin_file = tmp_path / "run.gin"
  gin_file.write_text(text)
  run_dir = tmp_path / "run"
  assert main(["train", f"--gin_file={gin_file}", f"--run_dir={run_dir}"]) == 0
  got = fake_training["trainer"]
  assert got.mesh == partitioning.MeshConfig(model=2)
  assert got.optimizer == optim.OptimizerConfig(learning_rate=0.5)
  assert got.loss == losses.LossConfig(z_loss=0.0)
  assert got.checkpoint == checkpoints.CheckpointConfig(keep=7)
  assert (fake_training["data"].task, fake_training["data"].inputs_length) == ("glue_sst2", 64)
  assert fake_training["model"] == config.get_config("tiny")
  # The operative config records the bindings that were used.
  written = (run_dir / "config.gin").read_text()
  for line in ("MeshConfig.model = 2", "OptimizerConfig.learning_rate = 0.5",
               "CheckpointConfig.keep = 7", "DataConfig.task = 'glue_sst2'"):
    assert line in written, line


def test_explicit_sub_configs_are_kept(tmp_path, fake_training):
  """A scoped reference or a config built in Python is not replaced by unscoped bindings."""
  gin_file = tmp_path / "run.gin"
  gin_file.write_text(UNWIRED + "TrainConfig.mesh = @one/MeshConfig()\n"
                      "one/MeshConfig.model = 1\n")
  assert main(["train", f"--gin_file={gin_file}", f"--run_dir={tmp_path / 'run'}"]) == 0
  assert fake_training["trainer"].mesh.model == 1
  assert fake_training["trainer"].optimizer.learning_rate == 0.5  # still unwired: bound
  mine = trainer.TrainConfig(run_dir="x", num_steps=1, batch_size=2,
                             mesh=partitioning.MeshConfig(model=4))
  assert run.with_bindings(mine).mesh.model == 4
  data = run.DataConfig(task="glue_cola")
  assert run.with_bindings(data, run.DEFAULT_DATA) is data


def test_without_bindings_defaults_are_unchanged():
  gin.clear_config()
  plain = trainer.TrainConfig(run_dir="x", num_steps=1, batch_size=2)
  assert run.with_bindings(plain) == plain
  assert run.with_bindings(run.DEFAULT_DATA, run.DEFAULT_DATA) == run.DataConfig()


class _Stop(Exception):
  pass


def test_evaluate_and_infer_honour_data_and_decode_bindings(tmp_path, monkeypatch):
  seen = []

  def prepare_task(data):
    seen.append(data)
    raise _Stop  # what comes after needs a checkpoint

  monkeypatch.setattr(run, "prepare_task", prepare_task)
  gin.clear_config()
  try:
    gin_setup.parse([], ["DataConfig.task = 'glue_cola'", "DecodeConfig.max_decode_length = 7"])
    with pytest.raises(_Stop):
      run.evaluate(checkpoint=str(tmp_path))
    with pytest.raises(_Stop):
      run.infer(checkpoint=str(tmp_path), output=str(tmp_path / "out.jsonl"))
    assert [d.task for d in seen] == ["glue_cola", "glue_cola"]
    # Their decode_config defaults are rebuilt the same way.
    for fn in (run.evaluate, run.infer):
      assert inspect.signature(fn).parameters["decode_config"].default is run.DEFAULT_DECODE
    assert run.with_bindings(run.DEFAULT_DECODE, run.DEFAULT_DECODE).max_decode_length == 7
  finally:
    gin.clear_config()


def test_infer_input_file_errors_are_usage_errors(tmp_path):
  vocabulary, data = _Vocabulary(), run.DataConfig()
  read = lambda path: list(run.read_inputs(str(path), vocabulary, data, "t", "validation", 10))
  with pytest.raises(UsageError, match="missing.txt.*does not exist"):
    read(tmp_path / "missing.txt")
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"inputs": "a"}\n{"targets": "b"}\n')
  with pytest.raises(UsageError, match="needs an 'inputs' field"):
    read(bad)
  bad.write_text('{"inputs": "a"}\nnot json\n')
  with pytest.raises(UsageError, match="not a JSON line"):
    read(bad)


# ----------------------------------------------------------------------------
# Errors: UsageError is one line and exit 2; anything else keeps its traceback.

def test_usage_error_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
  def train():
    raise UsageError("DataConfig.frobnicate must be >= 1.")

  monkeypatch.setattr(run, "train", train)
  argv = ["train", "--gin_file=demo/pretrain_cpu.gin", f"--run_dir={tmp_path}"]
  try:
    assert main(argv) == 2
  finally:
    gin.clear_config()
  assert capsys.readouterr().err == "t5jax train: error: DataConfig.frobnicate must be >= 1.\n"


def test_usage_errors_raised_inside_gin_configurables_are_one_line(tmp_path, capsys):
  argv = ["train", "--gin_file=demo/pretrain_cpu.gin", f"--run_dir={tmp_path}",
          "--gin.MeshConfig.rules='3d'"]
  try:
    assert main(argv) == 2
  finally:
    gin.clear_config()
  assert capsys.readouterr().err == ("t5jax train: error: Unknown partitioning rule set '3d'; "
                                     "choose from ['1d', '2d', 'fsdp'].\n")


def test_other_errors_keep_their_traceback(tmp_path, monkeypatch):
  def train():
    raise ValueError("shape mismatch: (8, 64) vs (8, 32)")  # e.g. from deep inside JAX

  monkeypatch.setattr(run, "train", train)
  argv = ["train", "--gin_file=demo/pretrain_cpu.gin", f"--run_dir={tmp_path}"]
  try:
    with pytest.raises(ValueError, match="shape mismatch") as info:
      main(argv)
  finally:
    gin.clear_config()
  assert not isinstance(info.value, UsageError)
  assert info.traceback[-1].name == "train"  # raised where it happened, not re-wrapped


def test_project_errors_are_usage_errors():
  from t5jax.data.batches import DataNotPreparedError
  from t5jax.data.corpus import CorpusError
  for cls in (gin_setup.GinError, DataNotPreparedError, CorpusError,
              checkpoints.ConfigMismatchError):
    assert issubclass(cls, UsageError), cls
  with pytest.raises(UsageError, match="Did you mean 't5.1.1-base'"):
    config.get_config("t5.1.1-bse")
  with pytest.raises(KeyError):  # still, for code that caught the KeyError
    config.get_config("t5.1.1-bse")
  with pytest.raises(UsageError, match="no field"):
    config.get_config("tiny", d_modle=3)
  for bad in (lambda: config.T5Config(d_model=0), lambda: partitioning.MeshConfig(rules="3d"),
              lambda: partitioning.MeshConfig(data=-1, model=-1),
              lambda: partitioning.MeshConfig(model=0),
              lambda: optim.OptimizerConfig(schedule="linear"),
              lambda: losses.LossConfig(label_smoothing=1.0)):
    with pytest.raises(UsageError):
      bad()
  assert str(config.UnknownFieldError("m")) == "m" and str(UnknownNameError("m")) == "m"


def test_prepare_task_checks_names_and_files_before_any_work(tmp_path):
  with pytest.raises(UsageError, match="Did you mean 'glue_sst2'.*t5jax tasks"):
    run.prepare_task(run.DataConfig(task="glue_sst3"))
  with pytest.raises(UsageError, match="missing.model.*does not exist"):
    run.prepare_task(run.DataConfig(task="glue_sst2", vocabulary=str(tmp_path / "missing.model")))


@pytest.mark.parametrize("argv, message", [
    (["params", "tiny", "--set", "d_model"], "expected FIELD=VALUE"),
    (["params", "tiny", "--set", "d_modle=3"], "no field"),
    (["params", "tiny", "--set", "d_model=wide"], "d_model='wide' must be an integer >= 1"),
    (["params", "tiny", "--gin.model_config.preset='tiny'"], "only apply to train"),
    (["train", "--gin.TrainConfig.num_steps"], "expected --gin.NAME=VALUE"),
    (["tasks", "--data_dir=/nonexistent/tfds"], "is not a folder"),
])
def test_bad_flags_are_one_line(argv, message, capsys):
  assert main(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith("t5jax") and ": error: " in err and message in err
  assert err.count("\n") == 1


# ----------------------------------------------------------------------------
# t5jax tasks

def test_tasks_lists_names_and_splits_without_building_anything(tmp_path, capsys):
  import seqio
  before = (sorted(seqio.TaskRegistry.names()), sorted(seqio.MixtureRegistry.names()))
  assert main(["tasks", f"--data_dir={tmp_path}"]) == 0
  out = capsys.readouterr().out
  for name in ("default_corpus_span_corruption", "local_corpus", "c4_span_corruption",
               "glue_sst2", "glue_mnli_matched", "super_glue_record"):
    assert f"  {name} " in out, name
  assert f"train, validation, test: size unknown (not prepared in {tmp_path})" in out
  assert "glue_mnli_matched" in out and "validation, test:" in out
  mixtures = {l.split()[0]: l for l in out.splitlines() if " mixture of " in l}
  assert "glue_sst2" in mixtures["glue"] and "super_glue_boolq" in mixtures["super_glue"]
  # The registries are as they were: no placeholder-vocabulary task is left behind.
  assert (sorted(seqio.TaskRegistry.names()), sorted(seqio.MixtureRegistry.names())) == before


def test_tasks_reports_tfds_sizes_of_a_prepared_data_dir(tmp_path, monkeypatch, capsys):
  from t5jax.data import tasks
  sizes = {("glue/sst2", "train"): 67349, ("glue/sst2", "validation"): 872}

  def num_input_examples(self, split):  # what TFDS's metadata says, for data in tmp_path
    if self.tfds_dataset.data_dir != str(tmp_path):
      return None
    return sizes.get((self.tfds_dataset.name.split(":")[0], split))

  monkeypatch.setattr(tasks.TfdsSource, "num_input_examples", num_input_examples)
  assert main(["tasks", f"--data_dir={tmp_path}"]) == 0
  line = next(l for l in capsys.readouterr().out.splitlines() if "  glue_sst2 " in l)
  assert "train: 67,349, validation: 872, test: size unknown" in line


def test_tasks_entries_are_data():
  entries = {e["name"]: e for e in run.list_tasks()}
  assert entries["glue"]["kind"] == "mixture" and "glue_sst2" in entries["glue"]["tasks"]
  assert set(entries["glue_cola"]["splits"]) == {"train", "validation", "test"}
  assert entries[run.DEFAULT_TASK]["splits"] == {"train": None, "validation": None}
