"""Reductions XLA-CPU runs slowly, written another way.

XLA-CPU (its YNN path) reduces over a leading axis slowly when the kept axes
are wide: a mean over the 512 rows of a [512, 32128] array took ~95 ms on this
project's 2-core VM, where a tree of elementwise adds over halves takes ~19 ms
and the same mean over the minor axis ~5 ms. Used where the model and the
optimizer meet such reductions: the shared position bias's batch gradient, and
Adafactor's column statistics of T5.1.1's [embed, vocab] logits kernel.
"""

from __future__ import annotations

import jax


def tree_sum_leading(x: jax.Array) -> jax.Array:
  """x.sum(axis=0, keepdims=True) as a tree of adds over halves of axis 0."""
  while x.shape[0] > 1:
    half = x.shape[0] // 2
    folded = x[:half] + x[half:2 * half]
    if x.shape[0] % 2:
      folded = folded.at[:1].add(x[2 * half:])
    x = folded
  return x
