"""The pure train and eval steps, and the one place they are jit-ed.

    step_fn = make_train_step(model_config, tx, LossConfig(), schedule, microbatches=4)
    state, metrics = step_fn(state, batch, rng)  # pure; no sharding in here
    abstract_state, state_sh = state_shardings(mesh, model_config, rule_set, tx)
    compiled = jit_steps(mesh, rule_set, state_sh, step_fn,
                         make_eval_step(model_config, LossConfig()))
    state, metrics = compiled.train_step(state, batch, rng)  # sharded, state donated

A batch is a dict of [B, L] int arrays with the seqio encoder-decoder
feature names (decoder_loss_weights may be float).

With an adapter (`model_config.adapter`, t5jax.peft) the state's params are the
trainable leaves only, and the frozen base is a separate, never-donated argument
(`train_step(state, batch, rng, frozen)`; `Compiled.frozen` holds it): gradients
and optimizer state exist for the trainable leaves alone, and the base is read,
never written.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from t5jax import losses, optim, partitioning, peft
from t5jax.model import T5, abstract_params
from t5jax.errors import UsageError


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: number of updates applied = index of the next batch
  params: Any
  opt_state: Any


def init_state(params, tx: optax.GradientTransformation) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def _logits(model_config, params, batch, rng, deterministic):
  return T5(model_config).apply(
      {"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
      batch.get("encoder_segment_ids"), batch.get("decoder_segment_ids"),
      deterministic=deterministic, rngs={"dropout": rng})


def _split_microbatches(batch, k: int):
  """[B, ...] -> [k, B/k, ...] with microbatch i = rows i, i+k, i+2k, ...

  Strided rather than contiguous rows: every data shard (a contiguous block
  of rows) then holds a slice of every microbatch, so no microbatch sits on
  a subset of the devices.
  """
  def split(x):
    if x.shape[0] % k:
      raise UsageError(f"Batch size {x.shape[0]} is not divisible by microbatches={k}.")
    return jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def make_train_step(model_config, tx: optax.GradientTransformation,
                    loss_config: losses.LossConfig, schedule: Callable | None = None,
                    microbatches: int = 1, skip_nonfinite: bool = False) -> Callable:
  """Returns the pure `train_step(state, batch, rng) -> (state, metrics)`.

  Gradients of k microbatches are summed in a lax.scan (memory of one
  microbatch) and divided once by the full batch's normaliser, so k
  microbatches give the full-batch update up to float rounding. Microbatch i
  uses dropout key fold_in(rng, i). With skip_nonfinite, a step whose loss or
  gradient norm is not finite leaves params and optimizer state unchanged
  (the step counter still advances, so the data moves on).
  """
  adapter = model_config.adapter  # LoRA has a dropout of its own
  deterministic = model_config.dropout_rate == 0.0 and (adapter is None or adapter.dropout == 0.0)

  def train_step(state: TrainState, batch, rng, frozen=None):
    batch = dict(batch)
    norm = losses.normalizer(batch, loss_config.normalization)

    def loss_fn(params, mb, key):
      if frozen is not None:  # only `params` (the trainable leaves) are differentiated
        params = peft.combine(frozen, params)
      logits = _logits(model_config, params, mb, key, deterministic)
      objective, stats = losses.loss_sums(logits, mb, loss_config)
      return objective / norm, stats

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if microbatches == 1:
      (objective, stats), grads = grad_fn(state.params, batch, rng)
    else:
      mbs = _split_microbatches(batch, microbatches)

      def body(acc, xs):
        i, mb = xs
        out = grad_fn(state.params, mb, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, acc, out), None

      first = jax.tree.map(lambda x: x[0], mbs)
      zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, state.params, first, rng))
      ((objective, stats), grads), _ = jax.lax.scan(
          body, zeros, (jnp.arange(microbatches), mbs))

    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(objective) & jnp.isfinite(grad_norm)
    if skip_nonfinite:
      keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
      params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
    metrics = dict(losses.summarize(stats), objective=objective, grad_norm=grad_norm,
                   finite=finite, num_tokens=stats["num_tokens"],
                   num_sequences=stats["num_sequences"])
    if schedule is not None:  # the rate this update applied
      metrics["learning_rate"] = schedule(optim.update_count(state.opt_state))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  return train_step


def make_eval_step(model_config, loss_config: losses.LossConfig) -> Callable:
  """`eval_step(params, batch) -> summed stats`; add over batches, then losses.summarize."""
  def eval_step(params, batch):
    logits = _logits(model_config, params, dict(batch), jax.random.PRNGKey(0), True)
    return losses.loss_sums(logits, batch, loss_config)[1]
  return eval_step


@dataclasses.dataclass
class Compiled:
  """Jitted steps bound to a mesh; calling them activates mesh + rules for tracing."""

  mesh: Any
  rule_set: Any
  train: Callable | None = None
  eval: Callable | None = None
  frozen: Any = None  # the frozen base of an adapter run (placed by the trainer)

  def train_step(self, state, batch, rng):
    with partitioning.activate(self.mesh, self.rule_set):
      if self.frozen is not None:
        return self.train(state, batch, rng, self.frozen)
      return self.train(state, batch, rng)

  def eval_step(self, params, batch):
    with partitioning.activate(self.mesh, self.rule_set):
      return self.eval(params, batch)


def jit_steps(mesh, rule_set, state_shardings: TrainState, train_step: Callable,
              eval_step: Callable | None = None, compiler_options: dict | None = None,
              frozen_shardings=None, eval_param_shardings=None) -> Compiled:
  """The single place where steps are jit-ed: explicit in/out shardings, donated state.

  compiler_options: XLA options for these executables only, e.g. tests use
  {'xla_backend_optimization_level': 0} to compile ~4x faster on CPU.
  frozen_shardings: an adapter run's frozen base (a 4th, not donated, argument);
  eval_param_shardings: the full params the eval step then takes.
  """
  batch_sh = partitioning.batch_sharding(mesh, rule_set, 2)
  rep = partitioning.replicated(mesh)
  compiled = Compiled(mesh, rule_set)
  inputs = (state_shardings, batch_sh, rep)
  if frozen_shardings is not None:
    inputs += (frozen_shardings,)
  compiled.train = jax.jit(train_step, in_shardings=inputs,
                           out_shardings=(state_shardings, rep), donate_argnums=(0,),
                           compiler_options=compiler_options)
  if eval_step is not None:
    eval_sh = state_shardings.params if eval_param_shardings is None else eval_param_shardings
    compiled.eval = jax.jit(eval_step, in_shardings=(eval_sh, batch_sh),
                            out_shardings=rep, compiler_options=compiler_options)
  return compiled


def state_shardings(mesh, model_config, rule_set, tx) -> tuple[TrainState, TrainState]:
  """(abstract state, NamedSharding tree) for a TrainState of this model and optimizer
  (with an adapter: of its trainable leaves; see `frozen_shardings`)."""
  param_sh = partitioning.param_shardings(mesh, model_config, rule_set)
  abstract_p = flax.linen.meta.unbox(abstract_params(model_config))
  if model_config.adapter is not None:
    abstract_p, param_sh = (peft.split(model_config, abstract_p)[0],
                            peft.split(model_config, param_sh)[0])
  abstract = jax.eval_shape(lambda p: init_state(p, tx), abstract_p)
  opt_sh = partitioning.opt_state_shardings(mesh, abstract.opt_state, abstract_p, param_sh)
  shardings = TrainState(step=partitioning.replicated(mesh), params=param_sh, opt_state=opt_sh)
  return abstract, shardings


def frozen_shardings(mesh, model_config, rule_set) -> tuple[Any, Any, Any]:
  """(abstract frozen base, its NamedShardings, the full params' NamedShardings) of an
  adapter run: the base shards exactly as the plain model's parameters do."""
  param_sh = partitioning.param_shardings(mesh, model_config, rule_set)
  abstract_p = flax.linen.meta.unbox(abstract_params(model_config))
  trainable_sh, frozen_sh = peft.split(model_config, param_sh)
  return (peft.split(model_config, abstract_p)[1], frozen_sh,
          peft.combine(frozen_sh, trainable_sh))
