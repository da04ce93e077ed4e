"""The one place where single runs become many: vmap, jit and device sharding.

Every function elsewhere is written for one run. Here ``run(key, hp, data)``
is vmapped over a leading *run axis* of keys and/or hyperparameters and,
when several devices are present, that axis is sharded across a 1-D mesh.

* ``keys``: one per seed (init, data order, projection all derive from it).
* ``hp``: a dict of arrays with a run axis (learning rate, weight decay,
  d_active, ...). Runs of one seed share its key, so everything derived from
  it (theta0, P, data order) is computed once per seed: that is how a sweep
  over subspace sizes keeps a single projection matrix in memory.
"""

from __future__ import annotations

import functools
import itertools
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def run_keys(seeds: Sequence[int]) -> jax.Array:
    """One root key per seed, stacked on the run axis."""
    return jnp.stack([jax.random.key(int(s)) for s in seeds])


def grid(**axes: Sequence) -> dict[str, np.ndarray]:
    """Outer product of named value lists, flattened onto one run axis."""
    names = list(axes)
    rows = list(itertools.product(*(axes[n] for n in names)))
    return {n: np.asarray([r[i] for r in rows]) for i, n in enumerate(names)}


@functools.lru_cache(maxsize=None)
def _compiled(run: Callable, per_seed: bool):
    # Inner vmap: hyperparameters share the key, so theta0, P and the data
    # order are computed once per seed. Outer vmap: seeds.
    vrun = jax.vmap(run, in_axes=(None, 0, None))
    if per_seed:
        vrun = jax.vmap(vrun, in_axes=(0, None, None))
    return jax.jit(vrun)


def _mesh_put(tree, n: int):
    """Shards the leading axis of ``tree`` over all devices when it divides."""
    devices = jax.devices()
    if len(devices) == 1 or n % len(devices):
        return tree
    mesh = Mesh(np.asarray(devices), ("runs",))
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec("runs")))


def vmapped(run: Callable, keys, hp: Mapping[str, np.ndarray], data):
    """All (seed, hyperparameter) runs of ``run`` in one compiled program.

    Args:
      run: ``run(key, hp, data)`` for a single run (e.g. from ``train.make_run``).
      keys: one key (all runs share it) or keys with a leading seed axis S.
      hp: dict of arrays with a common leading axis R (one entry per run).
      data: passed unbatched to every run.

    Returns the outputs of ``run`` stacked to ``[S, R, ...]`` (or ``[R, ...]``
    for a single key). The seed axis, else the run axis, is sharded over
    devices when its size is a multiple of the device count.
    """
    hp = {k: jnp.asarray(v) for k, v in hp.items()}
    sizes = {v.shape[0] for v in hp.values()}
    if len(sizes) != 1:
        raise ValueError(f"every hyperparameter array needs the same leading size, got {sorted(sizes)}")
    per_seed = keys.ndim == 1
    if per_seed and keys.shape[0] % jax.device_count() == 0:
        keys = _mesh_put(keys, keys.shape[0])
    else:
        hp = _mesh_put(hp, sizes.pop())
    return _compiled(run, per_seed)(keys, hp, data)


def looped(run: Callable, keys, hp: Mapping[str, np.ndarray], data):
    """Reference: the same runs one at a time, stacked like ``vmapped``."""
    jrun = jax.jit(run)
    n = len(next(iter(hp.values())))
    key_list = list(keys) if keys.ndim == 1 else [keys]
    outs = [jax.tree.map(lambda *xs: jnp.stack(xs), *[
        jrun(k, {name: jnp.asarray(v[i]) for name, v in hp.items()}, data) for i in range(n)])
        for k in key_list]
    if keys.ndim == 0:
        return outs[0]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
