"""Adapters in the model and the trainer: the plain model unchanged, scanned stacks,
only the adapter trains (base bitwise unchanged), adapter-only checkpoints that
resume and load as base + adapter, the gin files, and errors that say what to fix.
(Parity with HF PEFT itself: tests/test_peft_hf.py.)"""

import dataclasses
import functools
import os

import gin
import jax
import numpy as np
import pytest

from synthetic_batches import FAST_COMPILE, data_fn, make_batch
from t5jax import gin_setup, peft, run, trainer
from t5jax.checkpoints import CheckpointConfig
from t5jax.config import AdapterConfig, get_config
from t5jax.conversion import load_checkpoint
from t5jax.trees import flatten
from t5jax.errors import UsageError
from t5jax.model import T5, abstract_params, count_params, scan_params, unscan_params
from t5jax.partitioning import MeshConfig

ALL_KERNELS = ("query", "key", "value", "out", "wi_0", "wi_1", "wo")
GIN_FILES = {"lora": "lora", "ia3": "ia3", "prompt": "prompt_tuning", "norm": "norm_only"}


def tiny(method=None, **adapter):
  return get_config("tiny", vocab_size=128, dropout_rate=0.0,
                    adapter=AdapterConfig(method, **adapter) if method else None)


def randomized(config, params, seed=1):
  """Adapter leaves set to random values, so that they change what the model computes."""
  rng = np.random.default_rng(seed)
  flat = flatten(jax.tree.map(np.asarray, params))
  for key, value in flat.items():
    if peft.is_adapter_leaf(key):
      flat[key] = (value + rng.normal(0, 0.1, value.shape)).astype(np.float32)
  from t5jax.trees import unflatten
  return unflatten(flat)


def init(config, seed=0):
  """Random params of the config's shapes, drawn in numpy (no init to compile)."""
  from t5jax.trees import unflatten
  rng = np.random.default_rng(seed)
  out = {}
  for key, shape in shapes(config).items():
    if key[-1] == "scale" or key[-1].endswith("_ia3"):
      out[key] = 1 + rng.normal(0, 0.1, shape.shape)
    elif key[-1] == "embedding":
      out[key] = rng.normal(0, 1, shape.shape)
    else:
      out[key] = rng.normal(0, 0.1, shape.shape)
  return unflatten({k: v.astype(np.float32) for k, v in out.items()})


@functools.lru_cache(maxsize=None)
def _jitted(config, method=None):
  kw = {} if method is None else {"method": method}
  return jax.jit(lambda p, *a: T5(config).apply({"params": p}, *a, **kw),
                 compiler_options=FAST_COMPILE)


def apply(config, params, *args, method=None):
  """T5(config).apply, jitted once per config (eager Flax dispatches op by op: slow)."""
  return _jitted(config, method)(params, *args)


def shapes(config):
  import flax.linen as nn
  return flatten(nn.meta.unbox(abstract_params(config)))


def test_adapters_only_add_their_own_leaves():
  plain = shapes(tiny())
  # 36 kernels: per encoder layer 4 attention + 3 MLP, per decoder layer 8 + 3.
  for method, extra in (("lora", 2 * 36), ("ia3", 16), ("prompt", 1), ("norm", 0)):
    kw = dict(target_modules=ALL_KERNELS) if method == "lora" else {}
    adapted = shapes(tiny(method, **kw))
    assert {k: v.shape for k, v in adapted.items() if not peft.is_adapter_leaf(k)} == \
        {k: v.shape for k, v in plain.items()}
    assert sum(peft.is_adapter_leaf(k) for k in adapted) == extra, method
  assert count_params(tiny()) == count_params(get_config("tiny", vocab_size=128))


def test_lora_starts_as_the_base_and_prompts_as_embeddings():
  enc, dec = make_batch(0, 2)["encoder_input_tokens"], make_batch(0, 2)["decoder_input_tokens"]
  base = init(tiny())
  want = apply(tiny(), base, enc, dec)
  config = tiny("lora", target_modules=ALL_KERNELS)  # (IA3's ones are as plainly neutral)
  params = peft.combine(base, peft.init_adapter(config, base, jax.random.PRNGKey(1)))
  np.testing.assert_array_equal(apply(config, params, enc, dec), want)
  config = tiny("prompt", num_virtual_tokens=3)
  adapter = peft.init_adapter(config, base, jax.random.PRNGKey(1))
  embedding = np.asarray(base["token_embedder"]["embedding"])
  rows = adapter["encoder"]["prompt_embedding"]
  assert rows.shape == (3, 64) and all(any(np.array_equal(r, e) for e in embedding) for r in rows)
  text = tiny("prompt", num_virtual_tokens=5, prompt_init="text", prompt_init_text="x")
  rows = peft.init_adapter(text, base, jax.random.PRNGKey(1), [7, 9])["encoder"][
      "prompt_embedding"]
  np.testing.assert_array_equal(rows, embedding[[7, 9, 7, 9, 7]])


def test_scanned_stacks_compute_what_per_layer_ones_do_and_merge():
  config = tiny("lora", target_modules=ALL_KERNELS)
  batch = make_batch(0, 2)
  params = randomized(config, init(config))
  want = apply(config, params, batch["encoder_input_tokens"], batch["decoder_input_tokens"])
  scanned_config, scanned = scan_params(config, params)
  got = apply(scanned_config, scanned, batch["encoder_input_tokens"],
              batch["decoder_input_tokens"])
  np.testing.assert_allclose(got, want, atol=1e-5)
  # Merged into the stacked kernels, the plain scanned model computes the same.
  merged_config, merged = peft.merge_adapter(scanned_config, scanned)
  got = apply(merged_config, merged, batch["encoder_input_tokens"],
              batch["decoder_input_tokens"])
  np.testing.assert_allclose(got, want, atol=1e-4)


def test_packed_prompt_rows_give_each_example_its_own_prompt():
  """A packed row with prompt slots before each example (as both pipelines make them)
  gives every example the logits of its own unpacked row, where the model prepends the
  prompt; changing one example changes nothing of the other. (Against PEFT itself:
  tests/test_peft_hf.py.)"""
  from t5jax.data.rows import prompt_slot_ids
  config = tiny("prompt", num_virtual_tokens=3)
  params = randomized(config, init(config))
  slots = prompt_slot_ids(3)
  examples = [([5, 6, 7, 1], [11, 12, 1]), ([9, 10, 1], [13, 1])]
  enc = np.concatenate([np.r_[slots, e] for e, _ in examples] + [[0, 0]])[None]
  enc_seg = np.array([[1] * 7 + [2] * 6 + [0, 0]])
  dec_seg = np.array([[1, 1, 1, 2, 2, 0]])
  dec_in = np.array([[0, 11, 12, 0, 13, 0]])
  packed = apply(config, params, enc, dec_in, enc_seg, dec_seg)[0]
  starts = [(0, 3), (3, 5)]
  for (inputs, targets), (a, b) in zip(examples, starts):
    alone = apply(config, params, np.array([inputs]), np.r_[0, targets[:-1]][None])[0]
    np.testing.assert_allclose(packed[a:b], alone, atol=2e-5)
  changed = enc.copy()
  changed[0, 10:12] = [20, 21]  # another second example
  np.testing.assert_allclose(apply(config, params, changed, dec_in, enc_seg, dec_seg)[0, :3],
                             packed[:3], atol=1e-6)


def test_bad_adapter_configs_say_what_to_fix():
  with pytest.raises(UsageError, match="method='loar'.*Did you mean 'lora'"):
    AdapterConfig("loar")
  with pytest.raises(UsageError, match="'qeury' matches no kernel"):
    tiny("lora", target_modules=("qeury",))
  with pytest.raises(UsageError, match="scan_layers=True runs one shared layer"):
    abstract_params(tiny("lora", target_modules=("encoder/layers_0/attention/query",))
                    .replace(scan_layers=True))
  with pytest.raises(UsageError, match="prompt_init_text"):
    AdapterConfig("prompt", prompt_init="text")


def _gin_model_and_optimizer(method, run_dir):
  """The model and optimizer that gin_configs/peft/<method>.gin bind (one layer per
  stack, to compile fast; IA3 on a scanned model, so that scanned adapter stacks
  train too)."""
  gin.clear_config()
  try:
    gin_setup.parse(["models/tiny.gin", "runs/finetune.gin", "tasks/default_corpus.gin",
                     f"peft/{GIN_FILES[method]}.gin"],
                    [f"RUN_DIR = {str(run_dir)!r}", "model_config.vocab_size = 128",
                     "model_config.dropout_rate = 0.0", "model_config.num_layers = 1",
                     f"model_config.scan_layers = {method == 'ia3'}"])
    return (gin.get_configurable("t5jax.model_config")(),
            gin.get_configurable("t5jax.OptimizerConfig")())
  finally:
    gin.clear_config()


@pytest.mark.parametrize("method", ["lora", "ia3", "prompt", "norm"])
def test_gin_file_trains_only_the_adapter_and_resumes(method, tmp_path, capsys):
  model, optimizer = _gin_model_and_optimizer(method, tmp_path)
  assert model.adapter.method == method
  base = jax.tree.map(np.asarray, init(peft.base_config(model), seed=3))
  base_checkpoint = str(tmp_path / "base")
  evaluating = method == "lora"  # an eval step (and best.json) for one method suffices
  config = trainer.TrainConfig(
      run_dir=str(tmp_path / "run"), num_steps=2, batch_size=8, mesh=MeshConfig(-1, 1),
      optimizer=optimizer, eval_every=2 * evaluating, log_every=2, tensorboard=False,
      checkpoint=CheckpointConfig(every_steps=2, asynchronous=False,
                                  best_metric="eval/loss" if evaluating else None),
      compiler_options=FAST_COMPILE, peak_flops=1e12, handle_signals=False)
  eval_data = (lambda: iter([make_batch(1000, 8)])) if evaluating else None
  from t5jax.conversion import save_checkpoint
  save_checkpoint(base_checkpoint, peft.base_config(model), base, format="t5jax")
  result = trainer.train(model, config, data_fn(8), init_params=base, eval_data_fn=eval_data,
                         base_checkpoint=base_checkpoint)
  out = capsys.readouterr().out
  total = count_params(model)
  assert result.stopped == "done" and f" of {total:,} parameters (" in out
  # Only the adapter is in the state (and so in the checkpoints) and in the optimizer state.
  trainable = flatten(jax.device_get(result.state.params))
  assert trainable and all(peft.is_trainable(model, k) for k in trainable)
  assert not any(peft.is_trainable(model, k) for k in flatten(jax.device_get(result.frozen)))
  opt_elements = sum(x.size for x in jax.tree.leaves(result.state.opt_state))
  assert opt_elements < 3 * sum(x.size for x in trainable.values()) + 100
  # The base is bitwise what was given; the adapter moved.
  frozen = flatten(jax.device_get(result.frozen))
  flat_base = flatten(base)
  assert all(np.array_equal(frozen[k], flat_base[k]) for k in frozen)
  assert all(h["grad_norm"] > 0 for h in result.history)
  moved = {"lora": lambda k, v: k[-1].endswith("_lora_b") and np.any(v != 0),
           "ia3": lambda k, v: np.any(v != 1), "prompt": lambda k, v: True,
           "norm": lambda k, v: not np.array_equal(v, flat_base[k])}[method]
  assert any(moved(k, v) for k, v in trainable.items())
  assert os.path.exists(tmp_path / "run" / "base.json")

  # eval / infer / convert load a run as base + adapter (per run_dir/base.json).
  run_dir = str(tmp_path / "run")
  best_config, best = run.load_params(run_dir, step="best" if evaluating else "latest")
  assert best_config.adapter == model.adapter
  want = flatten(unscan_params(model, jax.device_get(result.params))[1])
  assert all(np.array_equal(v, want[k]) for k, v in flatten(best).items())
  if method == "lora":  # resume to step 3 from the adapter checkpoint of step 2
    resumed = trainer.train(model, dataclasses.replace(config, num_steps=3), data_fn(8),
                            init_params=base, verbose=False)
    assert resumed.step == 3 and [h["step"] for h in resumed.history] == [3]
    assert np.isfinite(resumed.history[0]["loss"])
    _, latest = run.load_params(run_dir, step="latest")
    want = flatten(jax.device_get(resumed.params))
    assert all(np.array_equal(v, want[k]) for k, v in flatten(latest).items())
  if method == "norm":  # a norm-only run converts to a plain checkpoint
    from t5jax.cli import main
    assert main(["convert", run_dir, str(tmp_path / "plain"), "--to", "t5jax"]) == 0
    plain_config, plain = load_checkpoint(str(tmp_path / "plain"))
    assert plain_config.adapter is None
    assert all(np.array_equal(v, want[k]) for k, v in flatten(plain).items())
