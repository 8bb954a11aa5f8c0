"""Parity with HF PEFT: LoRA, IA3 and prompt-tuning adapters of random HF T5 models.

Each adapter is built in PEFT with its trainable tensors set to random values
(PEFT's own init would make LoRA and IA3 the identity), saved as PEFT saves it,
and read by t5jax; the adapted logits must equal PEFT's. t5jax's export must
load back into PEFT with the same logits, and merging LoRA / IA3 into the base
must change nothing.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
import transformers

from hf_reference import batch, hf_model
from t5jax import peft as t5peft
from t5jax.cli import main
from t5jax.conversion import load_checkpoint, peft_hf
from t5jax.decoding import DecodeConfig, decode
from t5jax.errors import UsageError
from t5jax.model import T5

FAST = {"xla_backend_optimization_level": 0}
METHODS = ("lora", "ia3", "prompt", "prompt2")  # prompt2: num_transformer_submodules=2
TOL = 1e-4  # float32, relative to the logits' scale (as tests/test_conversion_hf.py)
HEADS = {"tied": dict(feed_forward_proj="relu", tie_word_embeddings=True),
         "untied": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)}


def peft_config(method, gated):
  if method == "lora":
    mlp = ["wi_0", "wi_1", "wo"] if gated else ["wi", "wo"]
    return peft.LoraConfig(task_type="SEQ_2_SEQ_LM", r=4, lora_alpha=8,
                           target_modules=["q", "k", "v", "o", *mlp])
  if method == "ia3":
    return peft.IA3Config(task_type="SEQ_2_SEQ_LM")  # T5 defaults: k, v, wo (feedforward)
  if method == "prompt2":  # PEFT's default for T5: an encoder and a decoder table
    return peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=5)
  return peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=5,
                                 num_transformer_submodules=1)


def peft_model(method, head, seed=0):
  """A PEFT model around a random HF T5, its adapter tensors random (not PEFT's init)."""
  model = peft.get_peft_model(hf_model(seed=seed, **HEADS[head]),
                              peft_config(method, HEADS[head]["feed_forward_proj"] != "relu"))
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.requires_grad:
        noise = torch.randn(p.shape, generator=gen) * 0.1
        p.copy_(noise + 1.0 if "ia3" in name else noise * (10.0 if "prompt" in name else 1.0))
  return model.eval()


def peft_logits(model, enc, dec):
  with torch.no_grad():
    return model(input_ids=torch.tensor(enc, dtype=torch.long),
                 attention_mask=torch.tensor(enc > 0, dtype=torch.long),
                 decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits.numpy()


def t5jax_logits(config, params, enc, dec):
  # Jitted at XLA's lowest optimisation level (same float32 maths): faster than eager.
  fn = jax.jit(lambda p, e, d: T5(config).apply({"params": p}, e, d), compiler_options=FAST)
  return np.asarray(fn(params, jnp.asarray(enc), jnp.asarray(dec)))


def close(a, b):
  return np.abs(a - b).max() <= TOL * max(1.0, np.abs(b).max())


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  """{(method, head): (base dir, adapter dir, PEFT reference logits, PEFT greedy tokens)}."""
  root = tmp_path_factory.mktemp("peft")
  enc, dec = batch()
  out = {}
  for head in HEADS:
    base = str(root / f"base_{head}")
    hf_model(**HEADS[head]).save_pretrained(base)
    for method in METHODS:
      model = peft_model(method, head)
      adapter = str(root / f"{method}_{head}")
      model.save_pretrained(adapter)
      with torch.no_grad():
        generated = model.generate(input_ids=torch.tensor(enc[:1], dtype=torch.long),
                                   attention_mask=torch.tensor(enc[:1] > 0, dtype=torch.long),
                                   max_new_tokens=6, do_sample=False, num_beams=1).numpy()
      out[method, head] = (base, adapter, peft_logits(model, enc, dec), generated)
  return out


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("method", METHODS)
def test_peft_adapter_gives_peft_logits_and_exports_back(method, head, folders, tmp_path):
  base, adapter, reference, generated = folders[method, head]
  enc, dec = batch()
  config, params = load_checkpoint(base, adapter=adapter)
  assert config.adapter.method == method.rstrip("2")
  logits = t5jax_logits(config, params, enc, dec)
  assert close(logits, reference), np.abs(logits - reference).max()

  # Greedy decoding (the incremental path: LoRA folded into the kernels per step, the
  # prompt in the cached encoder output) gives PEFT's generate tokens. One head and
  # no IA3 (LoRA's fold with a scale) only: decoding compiles a loop per model.
  if head == "untied" and method != "ia3":
    tokens = np.asarray(decode(params, config, enc[:1],
                               DecodeConfig(max_decode_length=6)).tokens)
    want = generated[0, 1:]  # generate starts with decoder_start_token_id
    np.testing.assert_array_equal(tokens[0, 0, :len(want)], want)

  # Export -> PEFT load gives the same logits.
  peft_hf.save_peft_adapter(str(tmp_path / "export"), config, params)
  reloaded = peft.PeftModel.from_pretrained(
      transformers.T5ForConditionalGeneration.from_pretrained(base), str(tmp_path / "export"))
  assert close(peft_logits(reloaded.eval(), enc, dec), logits)
  if method == "prompt2":  # the whole table goes back, the decoder's rows included
    from safetensors.numpy import load_file
    saved, exported = (load_file(os.path.join(d, "adapter_model.safetensors"))
                       for d in (adapter, str(tmp_path / "export")))
    assert saved["prompt_embeddings"].shape == (10, 32)
    np.testing.assert_array_equal(exported["prompt_embeddings"], saved["prompt_embeddings"])

  if method.startswith("prompt"):
    with pytest.raises(UsageError, match="cannot be merged"):
      t5peft.merge_adapter(config, params)
    return
  merged_config, merged = t5peft.merge_adapter(config, params)
  assert merged_config.adapter is None
  assert close(t5jax_logits(merged_config, merged, enc, dec), logits)


def test_convert_merges_an_adapter_into_a_plain_hf_checkpoint(folders, tmp_path, capsys):
  enc, dec = batch()
  for method in ("lora", "ia3"):
    base, adapter, reference, _ = folders[method, "untied"]
    out = str(tmp_path / method)
    assert main(["convert", base, out, "--adapter", adapter]) == 0
    assert "Merged the" in capsys.readouterr().out
    merged = transformers.T5ForConditionalGeneration.from_pretrained(out).eval()
    assert close(peft_logits(merged, enc, dec), reference)
  base, adapter, _, _ = folders["prompt", "untied"]
  assert main(["convert", base, str(tmp_path / "p"), "--adapter", adapter]) == 2
  assert "cannot be merged" in capsys.readouterr().err


def test_bad_adapter_folders_are_named(folders, tmp_path):
  base, adapter, _, _ = folders["lora", "untied"]
  with pytest.raises(UsageError, match="lacks adapter_model.safetensors"):
    os.makedirs(tmp_path / "empty")
    with open(tmp_path / "empty" / "adapter_config.json", "w") as f:
      json.dump({"peft_type": "LORA"}, f)
    load_checkpoint(base, adapter=str(tmp_path / "empty"))
  # An adapter for another base: the tied model has a relu MLP (wi), the untied one wi_0.
  other_base, _, _, _ = folders["lora", "tied"]
  with pytest.raises(UsageError, match="adapts no T5 attention or MLP kernel"):
    load_checkpoint(other_base, adapter=adapter)
  wide = str(tmp_path / "wide")
  hf_model(d_model=48, **HEADS["untied"]).save_pretrained(wide)
  with pytest.raises(UsageError, match="another base model"):
    load_checkpoint(wide, adapter=adapter)
  with open(os.path.join(adapter, "adapter_config.json")) as f:
    fields = json.load(f)
  os.makedirs(tmp_path / "prefix")
  with open(tmp_path / "prefix" / "adapter_config.json", "w") as f:
    json.dump(dict(fields, peft_type="PREFIX_TUNING"), f)
  with open(os.path.join(adapter, "adapter_model.safetensors"), "rb") as src, \
      open(tmp_path / "prefix" / "adapter_model.safetensors", "wb") as dst:
    dst.write(src.read())
  with pytest.raises(UsageError, match="PREFIX_TUNING"):
    load_checkpoint(base, adapter=str(tmp_path / "prefix"))


@pytest.mark.parametrize("head", sorted(HEADS))
def test_peft_default_prompt_tuning_at_peft_float32_noise_floor(head, folders):
  """PEFT's default T5 prompt tuning (num_transformer_submodules=2) on T5.1.0 (tied, relu)
  and T5.1.1 (untied, gated-gelu) heads: t5jax's float32 logits are within 2x PEFT's own
  float32 error against PEFT in float64. PEFT applies the encoder's rows only: changing
  the decoder's rows changes neither PEFT's logits nor t5jax's, and no gradient reaches
  them, so training leaves them as loaded."""
  base, adapter, reference, _ = folders["prompt2", head]
  enc, dec = batch()
  config, params = load_checkpoint(base, adapter=adapter)
  assert config.adapter.num_transformer_submodules == 2
  model64 = peft.PeftModel.from_pretrained(
      transformers.T5ForConditionalGeneration.from_pretrained(base), adapter).double().eval()
  with torch.no_grad():
    exact = model64(input_ids=torch.tensor(enc, dtype=torch.long),
                    attention_mask=torch.tensor(enc > 0, dtype=torch.long),
                    decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits.numpy()
  ours = t5jax_logits(config, params, enc, dec)
  theirs = np.abs(reference - exact).max()
  ours_err = np.abs(ours - exact).max()
  print(f"\nerror ratio {head}: {ours_err / theirs:.2f} ({ours_err:.2e} vs PEFT float32 {theirs:.2e})")
  assert np.abs(ours - exact).max() <= 2 * theirs + 1e-7, (np.abs(ours - exact).max(), theirs)

  moved = jax.tree.map(lambda x: x, params)
  moved["decoder"]["prompt_embedding"] = params["decoder"]["prompt_embedding"] + 3.0
  np.testing.assert_array_equal(t5jax_logits(config, moved, enc, dec), ours)
  with torch.no_grad():
    model64.prompt_encoder["default"].embedding.weight[5:] += 3.0
    again = model64(input_ids=torch.tensor(enc, dtype=torch.long),
                    attention_mask=torch.tensor(enc > 0, dtype=torch.long),
                    decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits.numpy()
  np.testing.assert_array_equal(again, exact)
  grads = jax.grad(lambda p: t5jax_logits_sum(config, p, enc, dec))(params)
  assert not np.any(np.asarray(grads["decoder"]["prompt_embedding"]))
  assert np.any(np.asarray(grads["encoder"]["prompt_embedding"]))


def t5jax_logits_sum(config, params, enc, dec):
  return jnp.sum(T5(config).apply({"params": params}, jnp.asarray(enc), jnp.asarray(dec)) ** 2)


def test_finetune_a_peft_default_prompt_adapter_and_export_it(folders, tmp_path):
  """Load PEFT's default prompt adapter, finetune it two steps (the encoder's rows move,
  the decoder's stay as PEFT would leave them: no gradient), export it, and PEFT loads the
  export with t5jax's logits."""
  import dataclasses
  from synthetic_batches import FAST_COMPILE, data_fn
  from t5jax import trainer
  from t5jax.partitioning import MeshConfig
  from t5jax.checkpoints import CheckpointConfig
  base, adapter, _, _ = folders["prompt2", "untied"]
  config, params = load_checkpoint(base, adapter=adapter)
  config = dataclasses.replace(config, dropout_rate=0.0)
  train_config = trainer.TrainConfig(
      run_dir=str(tmp_path / "run"), num_steps=2, batch_size=8, mesh=MeshConfig(-1, 1),
      log_every=2, tensorboard=False, handle_signals=False, peak_flops=1e12,
      checkpoint=CheckpointConfig(every_steps=2, asynchronous=False),
      compiler_options=FAST_COMPILE)
  result = trainer.train(config, train_config, data_fn(8, vocab=64), init_params=params,
                         verbose=False)
  tuned = jax.device_get(result.params)
  assert not np.allclose(tuned["encoder"]["prompt_embedding"],
                         params["encoder"]["prompt_embedding"])
  np.testing.assert_array_equal(tuned["decoder"]["prompt_embedding"],
                                params["decoder"]["prompt_embedding"])
  peft_hf.save_peft_adapter(str(tmp_path / "export"), config, tuned)
  reloaded = peft.PeftModel.from_pretrained(
      transformers.T5ForConditionalGeneration.from_pretrained(base), str(tmp_path / "export"))
  assert reloaded.peft_config["default"].num_transformer_submodules == 2
  enc, dec = batch()
  assert close(peft_logits(reloaded.eval(), enc, dec), t5jax_logits(config, tuned, enc, dec))


@pytest.mark.parametrize("head", sorted(HEADS))
def test_packed_prompt_rows_give_peft_logits_per_example(head, folders):
  """Packed rows with prompt tuning: the pipelines put P slot ids before each example's
  inputs, and each example of the packed row gets the logits PEFT gives it alone (PEFT
  prepends its prompt to every example; it has no packing), within 2x PEFT's own float32
  error against float64, on T5.1.0 and T5.1.1 heads with PEFT's default two tables."""
  from t5jax.data.rows import prompt_slot_ids
  base, adapter, _, _ = folders["prompt2", head]
  config, params = load_checkpoint(base, adapter=adapter)
  enc, dec = batch()
  examples = [(enc[1, :16], dec[1, :7]), (enc[2, :6], dec[2, :5]), (enc[0, :9], dec[0, :4])]
  slots = prompt_slot_ids(config.adapter.num_virtual_tokens)
  row_enc = np.concatenate([np.r_[slots, e] for e, _ in examples] + [np.zeros(3, np.int32)])
  row_dec = np.concatenate([d for _, d in examples] + [np.zeros(2, np.int32)])
  enc_seg = np.concatenate([np.full(len(slots) + len(e), i + 1) for i, (e, _) in
                            enumerate(examples)] + [np.zeros(3, int)]).astype(np.int32)
  dec_seg = np.concatenate([np.full(len(d), i + 1) for i, (_, d) in enumerate(examples)]
                           + [np.zeros(2, int)]).astype(np.int32)
  fn = jax.jit(lambda p, *a: T5(config).apply({"params": p}, *a), compiler_options=FAST)
  ours = np.asarray(fn(params, row_enc[None], row_dec[None], enc_seg[None], dec_seg[None]))[0]
  models = {dtype: peft.PeftModel.from_pretrained(
      transformers.T5ForConditionalGeneration.from_pretrained(base), adapter).to(dtype).eval()
      for dtype in (torch.float32, torch.float64)}
  start = 0
  for e, d in examples:
    exact, single = (peft_logits(models[t], e[None], d[None])[0]
                     for t in (torch.float64, torch.float32))
    got = ours[start:start + len(d)]
    start += len(d)
    theirs = np.abs(single - exact).max()
    assert np.abs(got - exact).max() <= 2 * theirs + 1e-7, (np.abs(got - exact).max(), theirs)
