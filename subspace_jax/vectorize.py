"""The one place where single runs become many: vmap, map, jit and device sharding.

Every function elsewhere is written for one run. Here ``run(key, hp, data)``
is vmapped over a leading *run axis* of keys and/or hyperparameters and,
when several devices are present, that axis is sharded across a 1-D mesh.

* ``keys``: one per seed (init, data order, projection all derive from it).
* ``hp``: a dict of arrays with a run axis (learning rate, weight decay,
  d_active, ...). Runs of one seed share its key, so everything derived from
  it (theta0, P, data order) is computed once per seed: that is how a sweep
  over subspace sizes keeps a single projection matrix in memory.
* ``paired=True`` instead zips the two: seed i runs with hp row i only (e.g.
  one teacher per seed); the outputs have one axis ``[S, ...]``.

Hyperparameter rows are always vmapped; seeds are vmapped too, or on a CPU
run one after another on each device, the devices in parallel (``seed_form``:
the form measured faster there).

Across hosts: ``maybe_initialize_distributed`` joins a multi-process run
(``launch.py`` calls it first); the mesh then spans every process's devices,
each process computes only its shards, and ``vmapped`` returns the gathered
outputs on every process.
"""

from __future__ import annotations

import itertools
import os
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def maybe_initialize_distributed(environ: Mapping[str, str] | None = None) -> bool:
    """Joins a multi-process (multi-host) run when the launcher asked for one.

    Does nothing and returns False unless the standard variables are set; then
    calls ``jax.distributed.initialize`` once and returns True. Set on every
    process, before any JAX computation (``launch.py`` calls this first):

      JAX_COORDINATOR_ADDRESS  host:port of process 0, reachable from all
      JAX_NUM_PROCESSES        number of processes (usually one per host)
      JAX_PROCESS_ID           this process: 0 .. JAX_NUM_PROCESSES - 1

    For example, on two hosts run the same command with the same data::

      JAX_COORDINATOR_ADDRESS=10.0.0.1:8476 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 \
          python launch.py --experiment=subspace_sweep --workdir=/local/out   # host 0
      ... JAX_PROCESS_ID=1 ...                                                 # host 1

    ``jax.devices()`` then lists the devices of every process and ``vmapped``
    shards its run axis over all of them. Every process receives all outputs
    and writes the same files, so give each one a host-local ``--workdir``
    (on a shared directory metrics.jsonl would get each line once per process).
    ``JAX_LOCAL_DEVICE_IDS`` (read by JAX) restricts a process to some of its
    host's devices. CPU processes exchange data with gloo, JAX's default.

    Args:
      environ: the variables to read (default ``os.environ``).

    Raises:
      ValueError: when only some of the three are set (a half-configured
        cluster would otherwise run every host on its own, silently).
    """
    environ = os.environ if environ is None else environ
    present = [name for name in DISTRIBUTED_ENV if environ.get(name)]
    if not present:
        return False
    if len(present) < len(DISTRIBUTED_ENV):
        missing = [name for name in DISTRIBUTED_ENV if name not in present]
        raise ValueError(f"multi-process run: {', '.join(present)} set but {', '.join(missing)} "
                         f"not; set all of {', '.join(DISTRIBUTED_ENV)} or none.")
    if not jax.distributed.is_initialized():
        jax.distributed.initialize(coordinator_address=environ["JAX_COORDINATOR_ADDRESS"],
                                   num_processes=int(environ["JAX_NUM_PROCESSES"]),
                                   process_id=int(environ["JAX_PROCESS_ID"]))
    return True


def run_keys(seeds: Sequence[int]) -> jax.Array:
    """One root key per seed, stacked on the run axis."""
    return jnp.stack([jax.random.key(int(s)) for s in seeds])


def grid(**axes: Sequence) -> dict[str, np.ndarray]:
    """Outer product of named value lists, flattened onto one run axis."""
    names = list(axes)
    rows = list(itertools.product(*(axes[n] for n in names)))
    return {n: np.asarray([r[i] for r in rows]) for i, n in enumerate(names)}


def _vmap_or_expand(fn, in_axes, size: int):
    """vmap, except over a size-1 axis: there the function runs unbatched and
    gains the axis afterwards, since batched ops with a batch of one are
    markedly slower on XLA's CPU backend (conv net: ~11k vs ~15k images/s)."""
    if size != 1:
        return jax.vmap(fn, in_axes=in_axes)

    def expanded(*args):
        args = [a if ax is None else jax.tree.map(lambda x: x[0], a) for a, ax in zip(args, in_axes)]
        return jax.tree.map(lambda x: x[None], fn(*args))
    return expanded


SEED_FORM_ENV = "SUBSPACE_JAX_SEED_FORM"
SEED_FORMS = ("auto", "vmap", "map")


def seed_form(n_seeds: int) -> str:
    """How the seed axis runs: ``vmap`` (one batched program) or ``map``.

    ``map``: each device runs its seeds one after another (``lax.map``), the
    devices in parallel (``shard_map``). On XLA's CPU backend batched small
    matmuls lose to unbatched ones: 8 conv-net seeds on this 2-core machine
    gave 8,803 images/s vmapped and 17,214 mapped over its 2 devices (one run:
    ~13,000), so ``auto`` picks ``map`` on a CPU (single process), else
    ``vmap``. Seeds that do not divide over the devices are padded for ``map``
    (``seed_padding``). Hyperparameter rows of one seed stay vmapped: they
    share theta0, P and the data order, and 8 golf trials vmapped ran 1.9x one
    trial. ``$SUBSPACE_JAX_SEED_FORM`` overrides.
    """
    form = os.environ.get(SEED_FORM_ENV, "auto")
    if form not in SEED_FORMS:
        raise ValueError(f"{SEED_FORM_ENV}={form!r}; valid: {', '.join(SEED_FORMS)}")
    if form == "auto":
        cpu = jax.default_backend() == "cpu" and jax.process_count() == 1
        form = "map" if cpu else "vmap"
    return form


def seed_padding(n_seeds: int) -> int:
    """Copies of the last seed added so ``map`` shards the seeds evenly.

    Without them, 5 seeds on 2 devices would run vmapped on one device, about
    half the speed of the mapped form (golf, 5 seeds: 25 s per epoch against
    12 s for 4). The copies' outputs are dropped; they cost at most one
    seed's time per device. Multi-process runs are never padded.
    """
    if n_seeds <= 1 or seed_form(n_seeds) != "map" or jax.process_count() > 1:
        return 0
    return -n_seeds % jax.device_count()


def _pad(tree, n: int, pad: int):
    """``tree`` with its leading axis of size ``n`` extended by ``pad`` copies of its last entry."""
    if not pad:
        return tree
    index = np.concatenate([np.arange(n), np.full(pad, n - 1)])
    return jax.tree.map(lambda x: x[index], tree)


def _unpad(tree, n: int, pad: int):
    """``tree`` without the ``pad`` copies ``_pad`` added to its leading axis."""
    if not pad:
        return tree
    return jax.tree.map(lambda x: x[:n], tree)


def _over_seeds(fn, in_axes, n_seeds: int, form: str):
    """``fn`` over a leading seed axis of the arguments whose ``in_axes`` is 0."""
    if form == "vmap" or n_seeds == 1:
        return _vmap_or_expand(fn, in_axes, n_seeds)

    def mapped(*args):
        batched = tuple(a for a, ax in zip(args, in_axes) if ax is not None)

        def one(xs):
            it = iter(xs)
            return fn(*(next(it) if ax is not None else a for a, ax in zip(args, in_axes)))
        return jax.lax.map(one, batched)

    if jax.device_count() == 1:
        return mapped
    specs = tuple(PartitionSpec("runs") if ax is not None else PartitionSpec() for ax in in_axes)
    # check_vma off: a scan's carry starts replicated and becomes per-device.
    return jax.shard_map(mapped, mesh=_mesh(), in_specs=specs, out_specs=PartitionSpec("runs"),
                         check_vma=False)


def _mesh():
    return Mesh(np.asarray(jax.devices()), ("runs",))


def _put(tree, sharding):
    """``device_put`` that also works when ``sharding`` spans several processes."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    # Every process holds the same host values; each builds only its own
    # shards from them (no cross-process equality check, no transfer).
    def put(x):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(x)),
                                            impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def _mesh_put(tree, n: int):
    """Shards the leading axis of ``tree`` over all devices when it divides."""
    devices = jax.devices()
    if len(devices) == 1 or n % len(devices):
        return tree
    return _put(tree, NamedSharding(_mesh(), PartitionSpec("runs")))


def _spans_processes(tree) -> bool:
    return any(isinstance(x, jax.Array) and not x.is_fully_addressable
               for x in jax.tree.leaves(tree))


def _across_processes(compiled, keys, hp, data):
    """Runs ``compiled`` when some processes own no part of the run axis.

    The inputs that were not sharded are replicated over the global mesh (a
    jit over several processes takes only global arrays); each process then
    computes its shards, and the outputs are gathered back to every process.
    If nothing was sharded (the run axis does not divide the device count),
    every process runs all runs by itself.
    """
    if not (_spans_processes(keys) or _spans_processes(hp)):
        return compiled(keys, hp, data)
    replicated = NamedSharding(_mesh(), PartitionSpec())
    keys, hp, data = ((tree if _spans_processes(tree) else _put(tree, replicated))
                      for tree in (keys, hp, data))
    out = compiled(keys, hp, data)
    return jax.tree.map(lambda x: multihost_utils.process_allgather(x, tiled=True)
                        if _spans_processes(x) else x, out)


# How each argument of a stage is batched: over rows and seeds (a carry), over
# seeds (keys), over rows (hp), or shared (data, the first epoch).
_BOTH, _SEED, _ROW, _SHARED = "both", "seed", "row", "shared"
_STAGES: dict = {}


def _place(keys, hp: Mapping[str, np.ndarray], paired: bool = False):
    """Checks the run axis, pads the seeds (``seed_padding``) and shards it:
    ``(keys, hp, n_seeds, n_rows, pad)``, ``n_seeds`` counting the padding."""
    hp = {k: jnp.asarray(v) for k, v in hp.items()}
    sizes = {v.shape[0] for v in hp.values()}
    if len(sizes) != 1:
        raise ValueError(f"every hyperparameter array needs the same leading size, got {sorted(sizes)}")
    n_rows = sizes.pop()
    n_seeds = keys.shape[0] if keys.ndim == 1 else 0
    if paired and n_seeds != n_rows:
        raise ValueError(f"paired: one hp row per key, got {n_seeds} keys and {n_rows} rows")
    pad = seed_padding(n_seeds) if n_seeds else 0
    keys, n_seeds = _pad(keys, n_seeds, pad), n_seeds + pad
    if paired:
        hp, n_rows = _pad(hp, n_rows, pad), n_rows + pad
        if n_seeds % jax.device_count() == 0:  # both on the seed shards
            keys, hp = _mesh_put(keys, n_seeds), _mesh_put(hp, n_rows)
        return keys, hp, n_seeds, 0, pad
    if n_seeds and n_seeds % jax.device_count() == 0:
        keys = _mesh_put(keys, n_seeds)
    else:
        hp = _mesh_put(hp, n_rows)
    return keys, hp, n_seeds, n_rows, pad


def vmapped(run: Callable, keys, hp: Mapping[str, np.ndarray], data, paired: bool = False):
    """All (seed, hyperparameter) runs of ``run`` in one compiled program.

    Args:
      run: ``run(key, hp, data)`` for a single run (e.g. from ``train.make_run``).
      keys: one key (all runs share it) or keys with a leading seed axis S.
      hp: dict of arrays with a common leading axis R (one entry per run).
      data: passed unbatched to every run.
      paired: R == S and seed i runs with row i only (not with every row).

    Returns the outputs of ``run`` stacked to ``[S, R, ...]`` (``[R, ...]``
    for a single key, ``[S, ...]`` when paired). The seed axis, else the run
    axis, is sharded over devices when its size is a multiple of the device
    count (on a CPU the seeds are padded to one, ``seed_padding``, and the
    copies dropped). In a multi-process run (``maybe_initialize_distributed``)
    every process gets the outputs of all runs (gathered into NumPy arrays
    when they were sharded).
    """
    keys, hp, n_seeds, n_rows, pad = _place(keys, hp, paired)
    compiled = _stage(run, (_SEED, _SEED if paired else _ROW, _SHARED), n_seeds, n_rows)
    if jax.process_count() > 1:
        return _across_processes(compiled, keys, hp, data)
    return _unpad(compiled(keys, hp, data), n_seeds - pad, pad)


def _stage(fn: Callable, kinds: tuple[str, ...], n_seeds: int, n_rows: int, *static):
    """``fn`` over the run axes and jitted, cached on everything static.

    ``kinds`` says how each argument is batched. Inner: hyperparameter rows
    share the key, so theta0, P and the data order are computed once per seed
    (no inner axis when nothing is batched by row: paired runs). Outer: seeds
    (``seed_form``; n_seeds=0: one shared key).
    """
    form = seed_form(n_seeds) if n_seeds else "vmap"
    cache_key = (fn, kinds, n_seeds, n_rows, static, form)
    if cache_key not in _STAGES:
        f = (lambda *args: fn(*args, *static)) if static else fn
        row_axes = tuple(0 if k in (_BOTH, _ROW) else None for k in kinds)
        if any(a is not None for a in row_axes):
            f = _vmap_or_expand(f, row_axes, n_rows)
        if n_seeds:
            f = _over_seeds(f, tuple(0 if k in (_BOTH, _SEED) else None for k in kinds),
                            n_seeds, form)
        _STAGES[cache_key] = jax.jit(f)
    return _STAGES[cache_key]


def vmapped_chunks(run: Callable, keys, hp: Mapping[str, np.ndarray], data,
                   checkpoint=None, epochs_per_chunk: int = 1):
    """``vmapped`` run as compiled chunks of ``epochs_per_chunk`` epochs.

    Same numbers as ``vmapped`` (tests), but control returns to Python between
    chunks: Ctrl-C takes effect there (a signal waits for the running compiled
    program), and ``checkpoint`` (a ``workdir.Checkpoint``) saves the carry and
    history after each chunk and restores them on re-run, so an interrupted
    unit resumes from its last finished chunk. ``run`` needs ``run.stages``
    (``train.make_run`` provides it); otherwise, and across processes, this is
    ``vmapped``.
    """
    stages = getattr(run, "stages", None)
    if stages is None or jax.process_count() > 1:
        return vmapped(run, keys, hp, data)
    if epochs_per_chunk < 1:
        raise ValueError(f"epochs_per_chunk={epochs_per_chunk} must be >= 1")
    keys, hp, n_seeds, n_rows, pad = _place(keys, hp)
    start = _stage(stages.start, (_SEED, _ROW, _SHARED), n_seeds, n_rows)
    finish = _stage(stages.finish, (_BOTH, _BOTH, _SEED, _ROW, _SHARED), n_seeds, n_rows)
    epoch_axis = 2 if n_seeds else 1
    restored = None
    if checkpoint is not None:
        restored = checkpoint.load(jax.eval_shape(start, keys, hp, data), stages.epochs)
    if restored is None:
        epoch, carry, parts = 0, start(keys, hp, data), []
    else:
        epoch, carry, history = restored
        parts = [history]
    while epoch < stages.epochs:
        n = min(epochs_per_chunk, stages.epochs - epoch)
        advance = _stage(stages.advance, (_BOTH, _SEED, _ROW, _SHARED, _SHARED), n_seeds, n_rows, n)
        carry, history = advance(carry, keys, hp, data, jnp.int32(epoch))
        parts.append(history)
        epoch += n
        if checkpoint is not None and epoch < stages.epochs:
            parts = [_concat(parts, epoch_axis)]  # the history so far, joined once
            checkpoint.save(epoch, carry, parts[0])
        else:
            jax.block_until_ready(carry)  # the signal check point of this chunk
    return _unpad(finish(carry, _concat(parts, epoch_axis), keys, hp, data), n_seeds - pad, pad)


def _concat(parts, axis: int):
    if len(parts) == 1:
        return parts[0]
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=axis), *parts)


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
