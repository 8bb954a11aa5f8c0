"""t5jax: T5 encoder-decoder pretraining and finetuning in JAX/Flax.

The core (config, model, layers, checkpoint conversion) imports no TensorFlow.
"""

from t5jax.config import PRESETS, T5Config, get_config

__version__ = "0.1.0"
__all__ = ["PRESETS", "T5Config", "get_config", "__version__"]
