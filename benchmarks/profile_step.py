"""Where a training step's time goes: a jax.profiler trace of a few steps, summed by kind of op.

    .venv/bin/python benchmarks/profile_step.py                         # tiny, here
    python benchmarks/profile_step.py --preset t5.1.1-base --batch 128 --dtype bfloat16 \
        --scan --out $OUT/profile                                       # on a GPU

Each device op of the trace (the events XLA tags with `hlo_op`; on a GPU only the
device's own streams, on the CPU the thunk executor's ops) is matched to its
instruction in the compiled step's HLO and given one kind, from its opcode and the
jax name stack in its metadata (a fusion by the instructions it fuses):

  matmuls                 dots / GEMM custom calls of projections, MLP and logits
  attention matmuls       q.k and weights.v dots (einsum specs with both q and k axes)
  attention (fused)       cuDNN's fused attention custom call
  softmax, bias, mask     the other attention ops (scores, softmax, position bias, masks)
  layer norms             RMSNorm
  MLP activation          the non-matmul ops of the MLP blocks
  dropout                 counter-hash mask bits and their selects
  embedding               the token lookup and its gradient (not the tied logits' matmul)
  cross-entropy           the loss: log-softmax over the vocabulary, gathers, sums
  optimizer               everything outside the model's and the loss's name stack
  copies / transposes     copy and transpose instructions
  casts                   dtype conversions on their own (e.g. a bfloat16 copy of a weight)
  other                   the rest

Writes a markdown table (kinds, then the top ops by time with their name stack) to
stdout and, with --out, summary.md, summary.json and the trace itself. Nothing here
runs a model differently from `t5jax.benchmark.TrainStepRunner`: same step, same
shardings. Times are the trace's own durations, summed; on a GPU, ops on several
streams can overlap, so kinds may add up to more than the step.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import time

KINDS = ("matmuls", "attention matmuls", "attention (fused)", "softmax, bias, mask",
         "layer norms", "MLP activation", "dropout", "embedding", "cross-entropy", "optimizer",
         "copies / transposes", "casts", "other")

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?\s([a-z][\w\-]*)\((.*)$")
_COMPUTATION = re.compile(r"^%?([\w.\-]+) .*\{$")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_TARGET = re.compile(r'custom_call_target="([^"]*)"')


def parse_hlo(text: str) -> dict[str, dict]:
  """{instruction name: {opcode, op_name, calls, target}} over every computation of an
  HLO module's text, plus `inner`: the (opcode, op_name) pairs of a fusion's body."""
  instructions, bodies, current = {}, collections.defaultdict(list), None
  for line in text.splitlines():
    if not line.startswith(" "):
      match = _COMPUTATION.match(line)
      current = match.group(1) if match else None
      continue
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    name, opcode, rest = match.groups()
    op_name = _OP_NAME.search(rest)
    calls = _CALLS.search(rest)
    target = _TARGET.search(rest)
    info = dict(opcode=opcode, op_name=op_name.group(1) if op_name else "",
                calls=calls.group(1) if calls else None,
                target=target.group(1) if target else "")
    instructions[name] = info
    if current:
      bodies[current].append((opcode, info["op_name"], info["target"]))
  for info in instructions.values():
    info["inner"] = bodies.get(info["calls"], []) if info["calls"] else []
  return instructions


def _is_dot(opcode: str, target: str) -> bool:
  target = target.lower()
  return (opcode in ("dot", "convolution")
          or (opcode == "custom-call" and any(k in target for k in ("gemm", "cublas", "matmul"))))


def _attention_dot(op_name: str) -> bool:
  spec = op_name.rsplit("/", 2)[-2] if op_name.count("/") >= 2 else ""
  inputs = spec.split("->")[0]
  return "q" in inputs and "k" in inputs


def kind_of(info: dict | None) -> str:
  """One of KINDS for an instruction of `parse_hlo`."""
  if info is None:
    return "other"
  opcode, op_name, target = info["opcode"], info["op_name"], info["target"]
  parts = [(opcode, op_name, target)] + list(info.get("inner", []))
  if any("cudnn" in t.lower() or "fmha" in t.lower() for _, _, t in parts):
    return "attention (fused)"
  dots = [n for o, n, t in parts if _is_dot(o, t)]
  if dots:
    return "attention matmuls" if any(_attention_dot(n) for n in dots) else "matmuls"
  if opcode in ("copy", "transpose", "copy-start", "copy-done"):
    return "copies / transposes"
  body = {o for o, _, _ in parts if o not in ("parameter", "bitcast", "fusion", "tuple",
                                               "get-tuple-element")}
  if "convert" in body and body <= {"convert", "copy", "transpose", "broadcast", "reshape"}:
    return "casts"
  # By the root's name stack (a fusion's root names what it computes), else its body's.
  names = op_name or " ".join(n for _, n, _ in parts if n)
  if "dropout" in names.lower():
    return "dropout"
  if "_norm/" in names or "layer_norm" in names:
    return "layer norms"
  if re.search(r"attention|relpos_bias", names):
    return "softmax, bias, mask"
  if "/mlp/" in names:
    return "MLP activation"
  if "token_embedder" in names:
    return "embedding"
  if re.search(r"take_along_axis|jvp\(\)|log_softmax|logsumexp|cross_entropy", names):
    return "cross-entropy"
  if "T5." in names or "T5)" in names:
    return "other"
  if names.startswith("jit(") or "state." in names:
    return "optimizer"
  return "other"


def device_events(trace: dict | list) -> list[dict]:
  """The trace's op events (with an `hlo_op`): a GPU's/TPU's own where it has any."""
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  processes = {e["pid"]: e.get("args", {}).get("name", "") for e in events
               if e.get("ph") == "M" and e.get("name") == "process_name"}
  ops = [e for e in events if e.get("ph") == "X" and "hlo_op" in e.get("args", {})]
  devices = {pid for pid, name in processes.items() if re.search(r"/device:(GPU|TPU)", name)}
  on_device = [e for e in ops if e["pid"] in devices]
  return on_device or ops


# Control flow: its event spans its body's ops, which are traced themselves.
CONTROL_FLOW = ("while", "conditional", "call")


def summarize(events: list[dict], instructions: dict[str, dict], steps: int,
              module: str = "train_step", top: int = 15) -> dict:
  """Per-step milliseconds by kind and the `top` ops, from `device_events` and `parse_hlo`
  (control-flow ops left out: a scanned stack's while loop would count its layers twice)."""
  by_op = collections.Counter()
  for e in events:
    opcode = (instructions.get(e["args"]["hlo_op"]) or {}).get("opcode")
    if module in e["args"].get("hlo_module", "") and opcode not in CONTROL_FLOW:
      by_op[e["args"]["hlo_op"]] += float(e.get("dur", 0.0)) / 1e3  # us -> ms
  by_kind = collections.Counter()
  for op, ms in by_op.items():
    by_kind[kind_of(instructions.get(op))] += ms
  total = sum(by_kind.values())
  share = lambda ms: ms / total if total else 0.0
  return {
      "steps": steps, "total_ms_per_step": total / steps,
      "kinds": [{"kind": k, "ms_per_step": by_kind[k] / steps, "share": share(by_kind[k])}
                for k in sorted(by_kind, key=by_kind.get, reverse=True)],
      "top_ops": [{"op": op, "kind": kind_of(instructions.get(op)), "ms_per_step": ms / steps,
                   "share": share(ms), "name": (instructions.get(op) or {}).get("op_name", "")}
                  for op, ms in by_op.most_common(top)],
  }


def to_markdown(summary: dict, title: str) -> str:
  lines = [f"### {title}", "",
           f"Device-op time summed per step: {summary['total_ms_per_step']:.2f} ms "
           f"(over {summary['steps']} traced steps).", "",
           "| kind | ms / step | share |", "|---|---:|---:|"]
  lines += [f"| {k['kind']} | {k['ms_per_step']:.3f} | {100 * k['share']:.1f}% |"
            for k in summary["kinds"]]
  lines += ["", "| top op | kind | ms / step | share | jax name stack |", "|---|---|---:|---:|---|"]
  lines += [f"| {o['op']} | {o['kind']} | {o['ms_per_step']:.3f} | {100 * o['share']:.1f}% | "
            f"`{o['name'][-90:]}` |" for o in summary["top_ops"]]
  return "\n".join(lines) + "\n"


def profile(args) -> tuple[dict, str]:
  import jax
  from t5jax import partitioning
  from t5jax.benchmark import TrainStepRunner
  from t5jax.config import get_config
  overrides = dict(dtype=args.dtype, scan_layers=args.scan, remat_policy=args.remat)
  if args.dropout is not None:
    overrides["dropout_rate"] = args.dropout
  config = get_config(args.preset, **overrides)
  start = time.perf_counter()
  runner = TrainStepRunner(config, args.batch, args.input_len, args.target_len)
  print(f"compiled and warmed up in {time.perf_counter() - start:.1f} s", flush=True)
  with partitioning.activate(runner.compiled.mesh, runner.compiled.rule_set):
    hlo = runner.compiled.train.lower(runner.state, runner.batch, runner.rng).compile().as_text()
  trace_dir = os.path.join(args.out or "/tmp/t5jax_profile", "trace")
  runner.block(1)
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    runner.block(args.steps)
  files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True),
                 key=os.path.getmtime)
  if not files:
    raise SystemExit(f"no *.trace.json.gz under {trace_dir}: the profiler wrote no trace.")
  with gzip.open(files[-1]) as f:
    trace = json.load(f)
  summary = summarize(device_events(trace), parse_hlo(hlo), args.steps, top=args.top)
  title = (f"{args.preset} {args.dtype}, batch {args.batch}, {args.input_len}/{args.target_len}, "
           f"scan={args.scan}, remat={args.remat}, on {jax.devices()[0].device_kind}")
  return summary, title


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", default="tiny")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--input_len", type=int, default=64)
  parser.add_argument("--target_len", type=int, default=16)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--scan", action="store_true", help="scanned layers")
  parser.add_argument("--remat", default="none", help="T5Config.remat_policy")
  parser.add_argument("--dropout", type=float, default=None)
  parser.add_argument("--steps", type=int, default=3, help="traced steps")
  parser.add_argument("--top", type=int, default=15)
  parser.add_argument("--out", default=None, help="folder for summary.md/.json and the trace")
  args = parser.parse_args(argv)
  summary, title = profile(args)
  text = to_markdown(summary, title)
  print(text, flush=True)
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
      f.write(text)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
      json.dump({"title": title, **summary}, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
