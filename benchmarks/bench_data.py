"""Packed 512/114 span-corruption examples per second on the default corpus, through
both input pipelines in one run: seqio (tf.data) and grain (no TensorFlow).

Run: .venv/bin/python benchmarks/bench_data.py [--batch 64] [--steps 100]
     [--pipelines seqio,grain] [--grain_threads 0] [--grain_workers 0]
The first run builds the default corpus and trains its 32k vocabulary
(about a minute, cached in ~/.cache/t5jax); the timed part excludes that.

--resume times a resume of the same pipeline at step 10 and at step 10,000
(batch --resume_batch): restoring the position saved with the checkpoint
(what the trainer does) against replaying the batches before it (skip).
"""

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from t5jax import data  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--warmup", type=int, default=10)
  parser.add_argument("--resume", action="store_true", help="time resumes instead")
  parser.add_argument("--resume_batch", type=int, default=8)
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--pipelines", default="seqio,grain")
  parser.add_argument("--grain_threads", type=int, default=0,
                      help="grain's read-ahead threads (0: synchronous, the default)")
  parser.add_argument("--grain_workers", type=int, default=0,
                      help="grain worker processes (DataConfig.grain_workers; 0: none)")
  args = parser.parse_args()
  if args.resume:
    return resume_times(args.resume_batch, args.reps)
  for pipeline in args.pipelines.split(","):
    print(f"== {pipeline}")
    (seqio_rate if pipeline == "seqio" else grain_rate)(args)


def _time(it, args, t0):
  """Warms `it` up (seqio: tokenising the corpus), then times args.steps batches."""
  for _ in range(args.warmup):
    next(it)
  t1, c1 = time.perf_counter(), time.process_time()
  for _ in range(args.steps):
    batch = next(it)
  t2, c2 = time.perf_counter(), time.process_time()
  rows = args.batch * args.steps
  # With 512/114 span corruption each packed row holds one example.
  examples = rows * int(batch["encoder_segment_ids"].max(axis=1).mean())
  _report(rows, examples, t0, t1, t2, c1, c2)


def _report(rows, examples, t0, t1, t2, c1, c2):
  print(f"setup+warmup {t1 - t0:.1f}s; {rows} packed rows in {t2 - t1:.2f}s")
  print(f"packed 512/114 span corruption: {rows / (t2 - t1):,.0f} rows/s, "
        f"{examples / (t2 - t1):,.0f} examples/s on {os.cpu_count()} cores")
  # Wall-clock numbers drop when other processes share the cores; CPU time
  # per example (all threads of this process) does not.
  cores = os.cpu_count()
  print(f"CPU time {1e6 * (c2 - c1) / examples:,.0f} us/example -> "
        f"{examples * cores / (c2 - c1):,.0f} examples/s if {cores} idle cores "
        "were fully used")


def grain_rate(args):
  """The grain pipeline over the same corpus and vocabulary (its train split)."""
  from t5jax.data import corpus, grain_pipeline, vocab
  t0 = time.perf_counter()
  vocabulary = vocab.get_spm_vocabulary(None, vocab_size=32000)
  files = tuple(corpus.list_corpus_files(corpus.default_corpus()))
  key = corpus.fingerprint_files(files, "line", vocabulary.sentencepiece_model_file)
  flat, splits = corpus.tokenized_corpus(files, vocabulary.sentencepiece_model_file,
                                         "line", "raise", key)
  stream = grain_pipeline.CorpusStream(
      flat, splits, corpus.split_indices(len(splits) - 1, "train", files),
      grain_pipeline.StreamSpec(), vocabulary.vocab_size, vocabulary.extra_ids)
  _time(grain_pipeline.GrainBatches(stream, args.batch, read_threads=args.grain_threads,
                                    read_workers=args.grain_workers), args, t0)


def seqio_rate(args):
  t0 = time.perf_counter()
  data.register_default_corpus_task()
  it = data.make_batch_iterator(
      data.DEFAULT_CORPUS_TASK, split="train",
      sequence_length={"inputs": 512, "targets": 114},
      batch_size=args.batch, seed=0, start_step=0,
      process_index=0, process_count=1)
  _time(it, args, t0)


def resume_times(batch: int, reps: int = 3, steps=(10, 10_000)) -> None:
  """Seconds from 'resume at step N' to holding batch N, for each N in steps."""
  data.register_default_corpus_task()

  def make(start):
    return data.make_batch_iterator(
        data.DEFAULT_CORPUS_TASK, split="train",
        sequence_length={"inputs": 512, "targets": 114}, batch_size=batch, seed=0,
        start_step=start, process_index=0, process_count=1)

  root = tempfile.mkdtemp(prefix="t5jax_resume_")
  t0 = time.perf_counter()
  it, expected, consumed = make(0), {}, 0
  for step in steps:
    for _ in range(step - consumed):
      next(it)
    it.save_state(os.path.join(root, str(step)))
    expected[step] = next(it)["encoder_input_tokens"]  # batch `step`
    consumed = step + 1
  print(f"made the positions of steps {steps} in {time.perf_counter() - t0:.0f}s "
        f"(batch {batch}, 512/114 span corruption)")
  for step in steps:
    restore_s, replay_s = [], []
    for _ in range(reps):  # interleaved: restore, replay, restore, ...
      t = time.perf_counter()
      restored = make(step)
      restored.restore_state(os.path.join(root, str(step)))
      got = next(restored)["encoder_input_tokens"]
      restore_s.append(time.perf_counter() - t)
      t = time.perf_counter()
      replayed = next(make(step))["encoder_input_tokens"]
      replay_s.append(time.perf_counter() - t)
      assert (got == expected[step]).all() and (replayed == expected[step]).all()
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in
               os.walk(os.path.join(root, str(step))) for f in fs)
    print(f"resume at step {step:>6,}: restore the saved position "
          f"{statistics.median(restore_s):5.2f}s ({size / 1e6:.1f} MB), replay "
          f"{statistics.median(replay_s):6.2f}s (medians of {reps}, until batch {step} is in hand)")

if __name__ == "__main__":
  main()
