"""Pruning with flat masks: score -> select -> mask, for every model.

* ``masks``: layouts of the flat parameter vector, mask pytrees, exact top-k
  selection (layerwise or global, deterministic ties, collapse guard) and
  sparsity/flops reports.
* ``scorers``: random, magnitude, OBD (exact, Gauss-Newton or Hutchinson
  Hessian diagonal), SNIP, GraSP, SynFlow; ``REGISTRY``: one entry per scorer
  (its function, whether it needs data, where it applies).
* ``procedures``: pruning at init, after training (one-shot or iterative, with
  fine-tuning), iterative magnitude pruning with rewinding (lottery tickets);
  each a single-run ``run(key, hp, data)`` for ``vectorize.vmapped``.
* ``plots``: sparsity-accuracy figures.
"""

from subspace_jax.pruning import masks, procedures, scorers  # noqa: F401
