"""Smoke tests of benchmarks/bench_train.py (the real main on the tiny preset, one
step) and bench_decode.py (tiny, a few tokens, side by side with HF generate and CTranslate2).

Keeps `make bench` working; the HF Flax peer is skipped (slow to compile) and
the HF PyTorch peer runs only where torch and transformers are installed.
"""

from benchmark_scripts import load_benchmark


def _load_bench():
  return load_benchmark("bench_train")


def test_bench_train_tiny(tmp_path, capsys):
  bench = _load_bench()
  results = tmp_path / "RESULTS.md"
  rows = bench.main(["--presets", "tiny", "--batch", "8", "--input_len", "16",
                     "--target_len", "8", "--steps", "1", "--repeats", "1", "--warmup", "1",
                     "--peak_n", "256", "--fast_compile", "--no_hf_flax", "--results", str(results)])
  assert {r["dtype"] for r in rows} == {"float32", "bfloat16"}  # the CPU default: both
  for dtype in ("float32", "bfloat16"):
    ours = next(r for r in rows if r["peer"] == "t5jax" and r["dtype"] == dtype)
    assert ours["tokens_per_s"] > 0 and 0 < ours["mfu"] < 1
    assert ours["tokens_per_s"] == 8 * 24 / ours["median"]
    assert ours["estimate"] > 0  # XLA's planned peak of the very step timed
    hf = next(r for r in rows if r["peer"] == "HF PyTorch" and r["dtype"] == dtype)
    assert "skipped" in hf or hf["ratio"] > 0
  text = results.read_text()
  assert "| tiny | float32 | t5jax |" in text and "| tiny | bfloat16 | t5jax |" in text
  assert "Machine:" in text
  assert "| model | dtype | peer |" in capsys.readouterr().out


def test_jnp_clip_shim_accepts_numpy_names():
  import jax.numpy as jnp
  bench = _load_bench()
  original = jnp.clip
  try:
    bench.install_jnp_clip_shim()
    assert jnp.clip(jnp.arange(5), a_max=2).tolist() == [0, 1, 2, 2, 2]
    assert jnp.clip(jnp.arange(5), 1, 3).tolist() == [1, 1, 2, 3, 3]
  finally:
    jnp.clip = original


def test_bench_decode_tiny(capsys):
  bench = load_benchmark("bench_decode")
  results = bench.main(["--preset", "tiny", "--batch", "2", "--input_len", "8",
                        "--new_tokens", "3", "--repeats", "1", "--dtype", "float32,bfloat16"])
  assert set(results) == {(d, m) for d in ("float32", "bfloat16", "int8")
                          for m in ("greedy", "beam-4")}
  for (dtype, _), rates in results.items():
    assert rates["t5jax"] > 0 and (dtype == "int8" or rates["hf"] > 0)
  for method in ("greedy", "beam-4"):  # CTranslate2 rides with the float32 rows
    assert results["float32", method]["ct2-float32"] > 0
    assert results["float32", method]["ct2-int8"] > 0
  out = capsys.readouterr().out
  assert "float32 greedy tokens identical: t5jax, hf, ct2" in out
  assert "t5jax int8 greedy tokens equal to float32's" in out and "| int8 | greedy |" in out
  assert "| bfloat16 | greedy |" in out


def test_bench_decode_hf_static_cache(capsys):
  """HF at its best on the decoding side: SDPA where T5 has it (else eager, said so) and
  generate with a preallocated static KV cache; the engines still agree token for token."""
  bench = load_benchmark("bench_decode")
  results = bench.main(["--preset", "tiny", "--batch", "2", "--input_len", "8",
                        "--new_tokens", "3", "--repeats", "1", "--dtype", "float32",
                        "--hf_cache", "static", "--no_ct2", "--no_int8"])
  assert all(rates["hf"] > 0 for rates in results.values())
  out = capsys.readouterr().out
  assert "cache static" in out and "float32 greedy tokens identical: t5jax, hf" in out


def test_profile_step_sums_a_traced_step_by_kind(tmp_path):
  """benchmarks/profile_step.py on the tiny preset: a real jax.profiler trace of one step,
  every op matched to the compiled HLO, the kinds adding up to the traced time."""
  import json
  profile = load_benchmark("profile_step")
  assert profile.main(["--batch", "8", "--input_len", "16", "--target_len", "8",
                       "--steps", "1", "--out", str(tmp_path)]) == 0
  summary = json.loads((tmp_path / "summary.json").read_text())
  kinds = {k["kind"]: k["ms_per_step"] for k in summary["kinds"]}
  assert {"matmuls", "optimizer", "cross-entropy", "layer norms"} <= set(kinds)
  assert abs(sum(kinds.values()) - summary["total_ms_per_step"]) < 1e-6
  assert summary["total_ms_per_step"] > 0 and set(kinds) <= set(profile.KINDS)
  assert "| kind | ms / step | share |" in (tmp_path / "summary.md").read_text()


def test_profile_step_kinds_of_gpu_ops():
  """The GPU side, from HLO text and trace events as XLA:GPU writes them: cuBLAS GEMMs
  are matmuls, cuDNN's fused attention its own kind, and only the device's events count."""
  profile = load_benchmark("profile_step")
  hlo = "\n".join([
      "%fused_computation.1 (p: bf16[8,8]) -> bf16[8,8] {",
      '  %exponential.1 = bf16[8,8] exponential(%p), metadata={op_name="jit(train_step)/'
      'jvp(T5)/T5.encode/encoder/layers_0/attention/exp"}',
      "}",
      "%fused_computation.2 (p: f32[8,8]) -> bf16[8,8] {",
      "  ROOT %convert.2 = bf16[8,8] convert(%p)",
      "}",
      "ENTRY %main (a: bf16[8,8]) -> bf16[8,8] {",
      '  %gemm.1 = bf16[8,8] custom-call(%a, %a), custom_call_target="__cublas$gemm", '
      'metadata={op_name="jit(train_step)/jvp(T5)/T5.encode/encoder/layers_0/mlp/'
      '...k,kn->...n/dot_general"}',
      '  %gemm.2 = bf16[8,8] custom-call(%a, %a), custom_call_target="__cublas$gemm", '
      'metadata={op_name="jit(train_step)/jvp(T5)/T5.encode/encoder/layers_0/attention/'
      'bqhd,bkhd->bhqk/dot_general"}',
      '  %attn = bf16[8,8] custom-call(%a, %a), custom_call_target="__cudnn$fmhaSoftmax"',
      "  %loop_exp_fusion = bf16[8,8] fusion(%a), kind=kLoop, calls=%fused_computation.1",
      "  %convert_fusion = bf16[8,8] fusion(%a), kind=kLoop, calls=%fused_computation.2",
      "  %while.1 = (s32[]) while(%t), condition=%cond, body=%body",
      '  ROOT %mul = bf16[8,8] multiply(%a, %a), metadata={op_name="jit(train_step)/mul"}',
      "}"])
  instructions = profile.parse_hlo(hlo)
  kinds = {name: profile.kind_of(info) for name, info in instructions.items()}
  assert kinds["gemm.1"] == "matmuls" and kinds["gemm.2"] == "attention matmuls"
  assert kinds["attn"] == "attention (fused)" and kinds["mul"] == "optimizer"
  assert kinds["loop_exp_fusion"] == "softmax, bias, mask" and kinds["convert_fusion"] == "casts"
  op = lambda pid, name, dur: {"ph": "X", "pid": pid, "dur": dur, "name": name,
                               "args": {"hlo_op": name, "hlo_module": "jit_train_step"}}
  trace = {"traceEvents": [
      {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
      {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/device:GPU:0"}},
      op(1, "gemm.1", 500.0), op(2, "gemm.1", 3000.0), op(2, "attn", 1000.0),
      op(2, "while.1", 9000.0)]}  # a loop's span: its body's ops are events of their own
  summary = profile.summarize(profile.device_events(trace), instructions, steps=2)
  assert summary["total_ms_per_step"] == 2.0  # the host's launch of gemm.1 is left out
  assert [(k["kind"], k["ms_per_step"]) for k in summary["kinds"]] == [
      ("matmuls", 1.5), ("attention (fused)", 0.5)]


def test_bench_train_hf_variants_each_a_row(tmp_path):
  """--hf_variants: each '+'-joined choice of attention / optimizer / torch.compile is its
  own HF PyTorch row; a choice this transformers cannot make (SDPA for T5 before 5.x) is
  a skipped row with the reason, not a failure."""
  bench = _load_bench()
  assert bench.parse_hf_variant("sdpa+adamw+compile") == {
      "attention": "sdpa", "optimizer": "adamw", "compile": True}
  assert bench.hf_peer_name(bench.parse_hf_variant("adafactor")) == "HF PyTorch"
  assert bench.hf_peer_name(bench.parse_hf_variant("sdpa+adamw")) == "HF PyTorch (sdpa, AdamW)"
  rows = bench.main(["--presets", "tiny", "--batch", "8", "--input_len", "16",
                     "--target_len", "8", "--steps", "1", "--repeats", "1", "--warmup", "1",
                     "--peak_n", "256", "--fast_compile", "--no_hf_flax", "--dtype", "float32",
                     "--hf_variants", "adamw,sdpa", "--no_write"])
  peers = {r["peer"]: r for r in rows}
  assert set(peers) == {"t5jax", "HF PyTorch (AdamW)", "HF PyTorch (sdpa)"}
  assert peers["HF PyTorch (AdamW)"]["ratio"] > 0
  sdpa = peers["HF PyTorch (sdpa)"]
  assert "skipped" in sdpa or sdpa["ratio"] > 0
