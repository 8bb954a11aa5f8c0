"""t5jax input pipeline: vocabulary, objectives, seqio tasks, batches.

The seqio / TFDS side imports TensorFlow; `noise` (the objectives in numpy) and `rows`
(trimming, packing and the encoder-decoder features in numpy) do not, and neither does
importing this package: its names below are resolved on first use (PEP 562), so
`import t5jax.data.noise` stays TensorFlow-free. See docs/design.md for the data flow.
"""

import importlib

# name -> (module, attribute): what `from t5jax.data import NAME` gives.
_LAZY = {
    'DataNotPreparedError': ('t5jax.data.batches', 'DataNotPreparedError'),
    'make_batch_iterator': ('t5jax.data.batches', 'make_batch_iterator'),
    'make_dataset': ('t5jax.data.batches', 'make_dataset'),
    'CorpusError': ('t5jax.data.corpus', 'CorpusError'),
    'default_corpus': ('t5jax.data.corpus', 'default_corpus'),
    'load_documents': ('t5jax.data.corpus', 'load_documents'),
    'OBJECTIVES': ('t5jax.data.objectives', 'OBJECTIVES'),
    'iid_noise_mask': ('t5jax.data.objectives', 'iid_noise_mask'),
    'noise_span_to_unique_sentinel': ('t5jax.data.objectives', 'noise_span_to_unique_sentinel'),
    'nonnoise_span_to_unique_sentinel': ('t5jax.data.objectives', 'nonnoise_span_to_unique_sentinel'),
    'objective_preprocessor': ('t5jax.data.objectives', 'objective_preprocessor'),
    'random_spans_helper': ('t5jax.data.objectives', 'random_spans_helper'),
    'random_spans_noise_mask': ('t5jax.data.objectives', 'random_spans_noise_mask'),
    'sentinel_id': ('t5jax.data.objectives', 'sentinel_id'),
    'make_pair_fn': ('t5jax.data.objectives', 'make_pair_fn'),
    'prefix_lm': ('t5jax.data.objectives', 'prefix_lm'),
    'span_corrupt': ('t5jax.data.objectives', 'span_corrupt'),
    'C4_TASK': ('t5jax.data.tasks', 'C4_TASK'),
    'DEFAULT_CORPUS_TASK': ('t5jax.data.tasks', 'DEFAULT_CORPUS_TASK'),
    'register_c4_task': ('t5jax.data.tasks', 'register_c4_task'),
    'register_default_corpus_task': ('t5jax.data.tasks', 'register_default_corpus_task'),
    'MC4_MIXTURE': ('t5jax.data.tasks', 'MC4_MIXTURE'),
    'mc4_languages': ('t5jax.data.tasks', 'mc4_languages'),
    'mc4_task_name': ('t5jax.data.tasks', 'mc4_task_name'),
    'register_mc4_tasks': ('t5jax.data.tasks', 'register_mc4_tasks'),
    'register_local_corpus_task': ('t5jax.data.tasks', 'register_local_corpus_task'),
    'get_vocabulary': ('t5jax.data.vocab', 'get_vocabulary'),
    'train_vocab': ('t5jax.data.vocab', 'train_vocab'),
    'GLUE_MIXTURE': ('t5jax.data.glue', 'GLUE_MIXTURE'),
    'GLUE_TASKS': ('t5jax.data.glue', 'GLUE_TASKS'),
    'SUPER_GLUE_MIXTURE': ('t5jax.data.glue', 'SUPER_GLUE_MIXTURE'),
    'SUPER_GLUE_TASKS': ('t5jax.data.glue', 'SUPER_GLUE_TASKS'),
    'register_glue_tasks': ('t5jax.data.glue', 'register_glue_tasks'),
    'MIXING_STRATEGIES': ('t5jax.data.mixing', 'MIXING_STRATEGIES'),
    'PAIRS_METRICS': ('t5jax.data.pairs', 'PAIRS_METRICS'),
    'PairsError': ('t5jax.data.pairs', 'PairsError'),
    'register_pairs_task': ('t5jax.data.pairs', 'register_pairs_task'),
    'TEXT_TASKS': ('t5jax.data.text_tasks', 'TEXT_TASKS'),
    'register_text_tasks': ('t5jax.data.text_tasks', 'register_text_tasks'),
    'TEXT_MIXTURES': ('t5jax.data.text_tasks', 'MIXTURES'),
}


def __getattr__(name):
  if name in _LAZY:
    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # once
    return value
  raise AttributeError(f"module 't5jax.data' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_LAZY))


__all__ = sorted(_LAZY)
