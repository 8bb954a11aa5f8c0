"""t5jax input pipeline: vocabulary, objectives, seqio tasks, batches.

The only package (with entry points) that imports TensorFlow, seqio and TFDS.
See docs/design.md for the data flow.
"""

from t5jax.data.batches import DataNotPreparedError, make_batch_iterator
from t5jax.data.batches import make_dataset
from t5jax.data.corpus import CorpusError, default_corpus, load_documents
from t5jax.data.objectives import OBJECTIVES, iid_noise_mask
from t5jax.data.objectives import noise_span_to_unique_sentinel
from t5jax.data.objectives import nonnoise_span_to_unique_sentinel
from t5jax.data.objectives import objective_preprocessor
from t5jax.data.objectives import random_spans_helper
from t5jax.data.objectives import random_spans_noise_mask, sentinel_id
from t5jax.data.objectives import make_pair_fn, prefix_lm, span_corrupt
from t5jax.data.tasks import C4_TASK, DEFAULT_CORPUS_TASK, register_c4_task
from t5jax.data.tasks import register_default_corpus_task
from t5jax.data.tasks import MC4_MIXTURE, mc4_languages, mc4_task_name, register_mc4_tasks
from t5jax.data.tasks import register_local_corpus_task
from t5jax.data.vocab import get_vocabulary, train_vocab
from t5jax.data.glue import GLUE_MIXTURE, GLUE_TASKS, SUPER_GLUE_MIXTURE
from t5jax.data.glue import SUPER_GLUE_TASKS, register_glue_tasks
from t5jax.data.mixing import MIXING_STRATEGIES
from t5jax.data.pairs import PAIRS_METRICS, PairsError, register_pairs_task
from t5jax.data.text_tasks import TEXT_TASKS, register_text_tasks
from t5jax.data.text_tasks import MIXTURES as TEXT_MIXTURES
