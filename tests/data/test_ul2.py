"""UL2's mixture of denoisers: each denoiser, the mixture, lengths, task."""

import itertools

import numpy as np
import pytest
import seqio

from t5jax import data
from t5jax.data import noise, objectives
from t5jax.data.objectives import UL2_DENOISERS
from t5jax.errors import UsageError

T5_VOCAB = 32100


class _Vocab:  # the two attributes objectives read from a seqio vocabulary
  vocab_size = T5_VOCAB
  extra_ids = 100


MODE_IDS = {"[NLU]": 32000, "[NLG]": 32001, "[S2S]": 32002}


def _tokens(n):
  """Ordinary ids (3..999), far below the sentinels (32099 down)."""
  return (np.arange(n) % 997 + 3).astype(np.int32)


def test_mixture_is_the_papers():
  assert len(UL2_DENOISERS) == 7
  assert sum(d.weight for d in UL2_DENOISERS) == pytest.approx(1.0)
  rx = {(d.noise_density, d.mean_noise_span_length, d.mode)
        for d in UL2_DENOISERS if d.mean_noise_span_length}
  assert rx == {(0.15, 3.0, "[NLU]"), (0.15, 8.0, "[NLU]"),
                (0.5, 3.0, "[NLG]"), (0.5, 8.0, "[NLG]"),
                (0.15, 64.0, "[NLG]"), (0.5, 64.0, "[NLG]")}
  (s,) = [d for d in UL2_DENOISERS if d.mean_noise_span_length is None]
  assert (s.mode, s.noise_density, s.weight) == ("[S2S]", 0.25, 0.2)
  # R and X take 40% each, split equally inside the group.
  for group, each in (("R", 0.2), ("X", 0.1)):
    assert [d.weight for d in UL2_DENOISERS if d.name[0] == group] == pytest.approx(
        [each] * round(0.4 / each))


def test_mode_tokens_are_the_lowest_extra_ids(vocabulary):
  assert [objectives.mode_token_id(_Vocab, m)
          for m in objectives.UL2_MODES] == [32000, 32001, 32002]
  base = vocabulary.vocab_size - vocabulary.extra_ids
  assert objectives.mode_token_id(vocabulary, "[S2S]") == base + 2


@pytest.mark.parametrize("denoiser", [d for d in UL2_DENOISERS
                                      if d.mean_noise_span_length],
                         ids=lambda d: d.name)
def test_rx_denoiser_statistics(denoiser):
  """Noise density and mean span length over many long segments."""
  rng = np.random.default_rng(0)
  length, noise, spans, span_lengths = 4000, 0, 0, []
  for _ in range(50):
    inputs, targets = objectives.ul2_denoise(
        _tokens(length), rng, T5_VOCAB, denoiser, 32001)
    assert inputs[0] == 32001  # the mode token comes first
    is_sentinel = targets >= 20000
    assert targets[0] == 32099
    assert is_sentinel.sum() == (inputs[1:] >= 20000).sum()
    noise += (~is_sentinel).sum()
    spans += is_sentinel.sum()
    span_lengths.extend(np.diff(np.flatnonzero(
        np.concatenate([is_sentinel, [True]]))) - 1)
    # Sentinels + noise + non-noise account for every token once.
    assert (~is_sentinel).sum() + (inputs[1:] < 20000).sum() == length
  assert abs(noise / (50 * length) - denoiser.noise_density) < 0.005
  mu = denoiser.mean_noise_span_length
  assert abs(noise / spans - mu) < 0.05 * mu
  assert np.std(span_lengths) > 0  # random span lengths, not a fixed grid


@pytest.mark.parametrize("length", [2, 3, 17, 100, 453])
def test_s_denoiser_target_is_the_suffix(length):
  (s,) = [d for d in UL2_DENOISERS if d.name == "S"]
  tokens = _tokens(length)
  inputs, targets = objectives.ul2_denoise(
      tokens, np.random.default_rng(0), T5_VOCAB, s, 32002)
  suffix = min(max(round(0.25 * length), 1), length - 1)
  assert inputs[0] == 32002
  assert inputs[1:].tolist() == tokens[:length - suffix].tolist()
  assert targets.tolist() == tokens[length - suffix:].tolist()


def test_mixture_proportions(monkeypatch):
  picked = []
  denoise = objectives.ul2_denoise

  def recording(tokens, rng, vocab_size, denoiser, mode_id):
    picked.append(denoiser.name)
    assert mode_id == MODE_IDS[denoiser.mode]
    return denoise(tokens, rng, vocab_size, denoiser, mode_id)

  monkeypatch.setattr(noise, "ul2_denoise", recording)  # where make_ul2_pair_fn looks
  make_pair = objectives.make_ul2_pair_fn(_Vocab, 64, 64)
  rng, n = np.random.default_rng(3), 20000
  tokens = _tokens(make_pair.raw_length)
  modes = [make_pair(tokens, rng, T5_VOCAB)[0][0] for _ in range(n)]
  for d in UL2_DENOISERS:
    p = d.weight
    se = (p * (1 - p) / n) ** 0.5
    assert abs(picked.count(d.name) / n - p) < 4 * se, d.name
  for mode, p in (("[NLU]", 0.4), ("[NLG]", 0.4), ("[S2S]", 0.2)):
    se = (p * (1 - p) / n) ** 0.5
    assert abs(modes.count(MODE_IDS[mode]) / n - p) < 4 * se, mode


@pytest.mark.parametrize("inputs_length,targets_length",
                         [(512, 512), (512, 114), (128, 128), (32, 8)])
def test_lengths_fit_and_are_the_largest(inputs_length, targets_length):
  raw = objectives.ul2_lengths(inputs_length, targets_length)
  rng = np.random.default_rng(0)
  for d, n in zip(UL2_DENOISERS, raw):
    for length in (n, n - 1, max(n // 3, 1), 1):
      for _ in range(5):
        inputs, targets = objectives.ul2_denoise(_tokens(length), rng,
                                                 T5_VOCAB, d, 32000)
        # + 1: the EOS the task appends.
        assert len(inputs) + 1 <= inputs_length, (d.name, length)
        assert len(targets) + 1 <= targets_length, (d.name, length)
        assert (targets >= 20000).sum() <= 97
    inputs, targets = objectives.ul2_denoise(_tokens(n + 1), rng, T5_VOCAB,
                                             d, 32000)
    assert (len(inputs) + 1 > inputs_length
            or len(targets) + 1 > targets_length
            or (targets >= 20000).sum() > 97), d.name
  if inputs_length == 512:
    # R1 is T5's span corruption, one token shorter for the mode token.
    assert raw[0] == objectives.random_spans_helper(511)[0]


def test_lengths_too_short_and_missing():
  with pytest.raises(UsageError, match="does not fit"):
    objectives.ul2_lengths(3, 2)
  with pytest.raises(UsageError, match="sequence_length"):
    objectives.make_pair_fn("ul2", _Vocab)


def test_ul2_task_end_to_end(corpus_file, vocabulary):
  name = "test_local_ul2"
  data.register_local_corpus_task(name, [corpus_file], vocabulary,
                                  objective="ul2", shuffle_buffer_size=16)
  lengths = {"inputs": 64, "targets": 32}
  task = seqio.get_mixture_or_task(name)
  mode_ids = [objectives.mode_token_id(vocabulary, m)
              for m in objectives.UL2_MODES]

  def examples():
    ds = task.get_dataset(lengths, split="train", shuffle=False, seed=0)
    return [(ex["inputs"].tolist(), ex["targets"].tolist())
            for ex in itertools.islice(ds.as_numpy_iterator(), 300)]

  first = examples()
  counts = dict.fromkeys(mode_ids, 0)
  for inputs, targets in first:
    assert inputs[0] in mode_ids and inputs[-1] == 1 and targets[-1] == 1
    assert mode_ids[0] not in inputs[1:] and mode_ids[2] not in targets
    assert len(inputs) <= 64 and len(targets) <= 32
    counts[inputs[0]] += 1
  assert all(c > 0 for c in counts.values()), counts
  assert examples() == first  # a pure function of the seed


TINY = ["--gin.model_config.d_model=32", "--gin.model_config.num_heads=2",
        "--gin.model_config.d_kv=16", "--gin.model_config.d_ff=64",
        "--gin.model_config.num_layers=2", "--gin.model_config.vocab_size=512"]
FAST = ["--gin.TrainConfig.compiler_options="
        "{'xla_backend_optimization_level': 0, "
        "'xla_llvm_disable_expensive_passes': True}",
        "--gin.TrainConfig.tensorboard=False"]


def test_t5jax_train_runs_ul2(corpus_file, vocabulary, tmp_path):
  """A few steps of the real entry point on the demo config (tiny model). (ByT5's bytes
  through the same pipeline: tests/data/test_byte_vocab.py.)"""
  import json
  from t5jax.cli import main
  run_dir = tmp_path / "ul2"
  path = vocabulary.sentencepiece_model_file
  assert main([
      "train", "--gin_file=demo/pretrain_cpu.gin", f"--run_dir={run_dir}",
      "--gin.DataConfig.task='local_corpus'",
      f"--gin.DataConfig.corpus=('{corpus_file}',)",
      f"--gin.DataConfig.vocabulary='{path}'",
      "--gin.DataConfig.objective='ul2'", "--gin.DataConfig.inputs_length=32",
      "--gin.DataConfig.targets_length=16", "--gin.DataConfig.eval_batches=1",
      "--gin.TrainConfig.num_steps=3", "--gin.TrainConfig.batch_size=8",
      "--gin.TrainConfig.log_every=1", "--gin.TrainConfig.eval_every=3",
      "--gin.CheckpointConfig.every_steps=3", "--gin.train.show_examples=1",
      *TINY, *FAST]) == 0
  with open(run_dir / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  assert records[-1]["step"] == 3
  assert all(r["loss"] > 0 for r in records if "loss" in r)
  with open(run_dir / "config.gin") as f:
    assert "DataConfig.objective = 'ul2'" in f.read()
