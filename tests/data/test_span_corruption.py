"""Span corruption and the other objectives, checked against T5's numbers."""

import numpy as np
import pytest

from t5jax.data import objectives

T5_VOCAB = 32100  # 32000 pieces + 100 extra ids


class _Vocab:  # the two attributes objectives read from a seqio vocabulary
  vocab_size = T5_VOCAB
  extra_ids = 100


def _reconstruct(inputs, targets, vocab_size=T5_VOCAB, extra_ids=100):
  """Undo span corruption: put each target span back at its sentinel."""
  is_sentinel = lambda t: t >= vocab_size - extra_ids  # noqa: E731
  spans, current = {}, None
  for t in targets:
    if is_sentinel(t):
      current = t
      spans[current] = []
    else:
      spans[current].append(t)
  out = []
  for t in inputs:
    out.extend(spans.pop(t) if is_sentinel(t) else [t])
  # A trailing non-noise span leaves an empty target span (as in T5).
  assert all(not s for s in spans.values()), "every span is used once"
  return out


def test_random_spans_helper_matches_t5():
  assert objectives.random_spans_helper(512) == (568, 114)
  assert objectives.random_spans_helper(1024) == (1137, 229)


@pytest.mark.parametrize("length", [568, 100, 17, 2, 1])
def test_span_corruption_round_trips(length):
  tokens = np.arange(3, 3 + length)
  for seed in range(20):
    rng = np.random.default_rng(seed)
    inputs, targets = objectives.span_corrupt(tokens, rng, T5_VOCAB)
    assert _reconstruct(inputs, targets) == tokens.tolist()
    sent_in = [t for t in inputs if t >= 32000]
    sent_tg = [t for t in targets if t >= 32000]
    # Sentinels are 32099, 32098, ... from the left, same order both sides.
    assert sent_in == list(range(32099, 32099 - len(sent_in), -1))
    assert sent_tg == list(range(32099, 32099 - len(sent_tg), -1))
    if length >= 2:
      assert targets[0] == 32099  # targets read <X> span0 <Y> span1 ...
      assert inputs[0] != 32099   # inputs start with non-noise


def test_span_corruption_lengths_fill_512_114():
  rng = np.random.default_rng(0)
  for _ in range(10):
    inputs, targets = objectives.span_corrupt(np.arange(3, 571), rng,
                                              T5_VOCAB)
    assert len(inputs) + 1 == 512 and len(targets) + 1 == 114  # + EOS


@pytest.mark.parametrize("density,mean_span", [(0.15, 3.0), (0.5, 10.0),
                                                (0.25, 2.0), (0.1, 5.0)])
def test_noise_mask_statistics(density, mean_span):
  rng = np.random.default_rng(1)
  length, noise, spans, lengths = 568, 0, 0, []
  for _ in range(200):
    mask = objectives.random_spans_noise_mask(length, density, rng, mean_span)
    assert not mask[0] and mask[-1]  # starts non-noise, ends noise
    starts = np.flatnonzero(np.diff(mask.astype(int)) == 1) + 1
    ends = np.flatnonzero(np.diff(mask.astype(int)) == -1) + 1
    assert len(starts) == len(ends) + 1  # equal noise / non-noise spans
    noise += mask.sum()
    spans += len(starts)
    lengths.append(mask.sum() / len(starts))
  assert abs(noise / (200 * length) - density) < 0.005
  assert abs(noise / spans - mean_span) < 0.1 * mean_span
  # Spans are random: lengths vary between samples of the same mask size.
  mask = objectives.random_spans_noise_mask(length, density, rng, mean_span)
  other = objectives.random_spans_noise_mask(length, density, rng, mean_span)
  assert (mask != other).any()


def test_sentinel_ids_of_real_vocabulary(vocabulary):
  assert vocabulary.vocab_size == 400  # 300 pieces + 100 extra ids
  assert objectives.sentinel_id(vocabulary, 0) == 399
  assert vocabulary.decode([399]) == "<extra_id_0>"
  assert vocabulary.decode([398]) == "<extra_id_1>"
  assert (vocabulary.pad_id, vocabulary.eos_id, vocabulary.unk_id) == (0, 1, 2)


def _pair(objective, tokens, seed=0, **kw):
  fn = objectives.make_pair_fn(objective, _Vocab, **kw)
  return fn(tokens, np.random.default_rng(seed), T5_VOCAB)


def test_other_objectives():
  tokens = np.arange(3, 1003)
  inputs, targets = _pair("prefix_lm", tokens)
  assert 0 < len(inputs) < 1000
  assert np.concatenate([inputs, targets]).tolist() == tokens.tolist()

  inputs, targets = _pair("deshuffling", tokens)
  assert targets.tolist() == tokens.tolist()
  assert sorted(inputs) == tokens.tolist() and inputs.tolist() != tokens.tolist()

  inputs, targets = _pair("drop_tokens", tokens, noise_density=0.25)
  assert sorted(np.concatenate([inputs, targets])) == tokens.tolist()
  assert abs(len(targets) / 1000 - 0.25) < 0.05

  inputs, targets = _pair("iid_denoising", np.arange(3, 203))
  assert _reconstruct(inputs, targets) == list(range(3, 203))


def test_bert_style_mlm_rates():
  tokens = np.arange(3, 20003)
  inputs, targets = _pair("bert_mlm", tokens)
  assert targets.tolist() == tokens.tolist()  # target = original text
  changed = inputs != tokens
  masked = inputs == 32099
  assert abs(changed.mean() - 0.15) < 0.015
  # 90% of corrupted tokens become the mask token, ~10% a random piece
  # (which equals the original with probability ~1/32000, ignored here).
  assert abs(masked.sum() / changed.sum() - 0.9) < 0.03
  assert (inputs[changed & ~masked] < 32000).all()


def test_mass_style_masks_every_corrupted_token():
  tokens = np.arange(3, 20003)
  inputs, targets = _pair("mass", tokens, seed=7)
  assert targets.tolist() == tokens.tolist()  # target = original text
  # The corrupted positions are exactly the i.i.d. mask drawn from the seed,
  # and every one of them is the mask token: no random or kept tokens.
  mask = objectives.iid_noise_mask(len(tokens), 0.15, np.random.default_rng(7))
  np.testing.assert_array_equal(inputs, np.where(mask, 32099, tokens))
  assert abs(mask.mean() - 0.15) < 0.01
  # A short fixed case, written out: seed 7 corrupts position 6 of 10.
  inputs, targets = _pair("mass", np.arange(3, 13), seed=7)
  assert inputs.tolist() == [3, 4, 5, 6, 7, 8, 32099, 10, 11, 12]
  assert targets.tolist() == list(range(3, 13))


def test_unknown_objective():
  with pytest.raises(ValueError, match="unknown objective"):
    objectives.make_pair_fn("nope", _Vocab)


def test_span_corrupt_equals_mask_and_sentinel_functions():
  """The fast path gives what T5's two sentinel functions give on the mask."""
  tokens = np.arange(3, 571)
  for seed in range(20):
    inputs, targets = objectives.span_corrupt(
        tokens, np.random.default_rng(seed), T5_VOCAB, 0.25, 4.0)
    mask = objectives.random_spans_noise_mask(
        568, 0.25, np.random.default_rng(seed), 4.0)
    np.testing.assert_array_equal(
        inputs, objectives.noise_span_to_unique_sentinel(tokens, mask,
                                                         T5_VOCAB))
    np.testing.assert_array_equal(
        targets, objectives.nonnoise_span_to_unique_sentinel(tokens, mask,
                                                             T5_VOCAB))
