"""Pruning masks: a layout of the flat parameter vector, top-k selection, reports.

A mask is a pytree of bool arrays matching the params. Leaves that are never
pruned (by default biases and PReLU slopes) are all-True arrays, and which
leaves are prunable is stated by a separate pytree of Python bools (the
*spec*), never by ``None``. Training works on the flat vector
``ravel_pytree(params)``, so ``to_flat``/``from_flat`` convert between a mask
pytree and the flat 0/1 ``mask_D`` that ``train.make_run`` accepts.

Every pruning algorithm ends in ``select``: keep the top-k scores among the
prunable weights, either per tensor (``layerwise``) or over all prunable
tensors at once (``global``, on the raw scores: no per-layer normalisation).
Ties are broken by flat index (lower index kept first), so the kept count is
exact and the mask deterministic. Unless ``min_one=False``, every prunable
tensor keeps at least its best alive weight, so no layer collapses by
accident; when that guard needs more weights than the target allows, the
guard wins and the report shows the real count.

Densities are fractions of the prunable weights *kept*, counted against the
full (unpruned) number; they may be traced arrays, so a sweep over densities
is vmapped rather than recompiled.

``report`` gives per-layer sparsity, non-zero parameters and forward flops
(``flops_per_weight`` reads the weights' uses off the model's jaxpr);
``save_npz``/``load_npz`` store masks bit-packed next to a run's records.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from subspace_jax import workdir

DEFAULT_PRUNABLE = ("w",)
MODES = ("global", "layerwise")


# ---------------------------------------------------------------- layout
def leaf_name(path) -> str:
    """``(DictKey('dense0'), DictKey('w'))`` -> ``'dense0/w'``."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def prunable_spec(params, prunable: Sequence[str] | Callable = DEFAULT_PRUNABLE):
    """Pytree of Python bools: which leaves may be pruned.

    ``prunable`` is either leaf names matched against the last path entry
    (default ``('w',)``: kernels yes, biases and slopes no) or a callable
    ``(name, leaf) -> bool`` on the full ``'layer/leaf'`` name.
    """
    if callable(prunable):
        rule = prunable
    else:
        names = tuple(prunable)
        rule = lambda name, leaf: name.split("/")[-1] in names
    return jax.tree_util.tree_map_with_path(lambda p, x: bool(rule(leaf_name(p), x)), params)


class Layout(NamedTuple):
    """Where each leaf lives in ``ravel_pytree(params)`` (static, hashable)."""
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    prunable: tuple[bool, ...]

    @property
    def D(self) -> int:
        return int(sum(self.sizes))

    @property
    def prunable_leaves(self) -> tuple[int, ...]:
        return tuple(i for i, p in enumerate(self.prunable) if p)

    @property
    def n_prunable(self) -> int:
        return int(sum(self.sizes[i] for i in self.prunable_leaves))


def layout(params, prunable: Sequence[str] | Callable = DEFAULT_PRUNABLE) -> Layout:
    """The layout of ``params`` (arrays or ShapeDtypeStructs)."""
    spec = prunable_spec(params, prunable)
    with_path, _ = jax.tree_util.tree_flatten_with_path(params)
    flags = jax.tree.leaves(spec)
    # ravel_pytree concatenates leaves in tree_flatten order, so offsets follow it.
    shapes = tuple(tuple(x.shape) for _, x in with_path)
    sizes = tuple(int(np.prod(s, dtype=np.int64)) for s in shapes)
    offsets = tuple(int(o) for o in np.concatenate([[0], np.cumsum(sizes)[:-1]]))
    return Layout(tuple(leaf_name(p) for p, _ in with_path), shapes, offsets, sizes,
                  tuple(bool(f) for f in flags))


def model_layout(model, prunable: Sequence[str] | Callable = DEFAULT_PRUNABLE) -> Layout:
    return layout(jax.eval_shape(model.init, jax.random.key(0)), prunable)


# ---------------------------------------------------------------- pytree <-> flat
def ones_mask(params):
    """The dense mask: every leaf all-True."""
    return jax.tree.map(lambda x: jnp.ones(x.shape, bool), params)


def to_flat(mask) -> jax.Array:
    """Mask pytree -> flat float32 0/1 ``mask_D`` in ``ravel_pytree`` order."""
    return ravel_pytree(jax.tree.map(lambda m: jnp.asarray(m, jnp.float32), mask))[0]


def from_flat(mask_D, params_like):
    """Flat ``mask_D`` -> bool mask pytree shaped like ``params_like``."""
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), params_like)
    unravel = ravel_pytree(zeros)[1]
    return jax.tree.map(lambda m: m > 0, unravel(jnp.asarray(mask_D, jnp.float32)))


# ---------------------------------------------------------------- selection
def _clean(score):
    # NaN never wins; adding +0.0 turns -0.0 into +0.0 so equal scores tie exactly.
    return jnp.where(jnp.isnan(score), -jnp.inf, score).astype(jnp.float32) + 0.0


def _ranks(score_N, tier_N):
    """Rank 0 = best: higher tier, then higher score, then lower index."""
    n = score_N.shape[0]
    pos = jnp.arange(n)
    order = jnp.lexsort((pos, -score_N, -tier_N))  # last key is the primary one
    return jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))


def _count(density, n):
    return jnp.round(jnp.asarray(density, jnp.float32) * jnp.float32(n)).astype(jnp.int32)


def kept_count(density: float, n: int) -> int:
    """Host mirror of the kept count: round-half-even of float32(density) * n."""
    return int(np.round(np.float32(density) * np.float32(n)))


def _segment(x_D, lay: Layout, i: int):
    return x_D[lay.offsets[i]:lay.offsets[i] + lay.sizes[i]]


def select(score_D, lay: Layout, density, mode: str = "global", alive_D=None,
           min_one: bool = True, exponents: Sequence[float] | None = None) -> jax.Array:
    """Flat 0/1 float32 mask keeping the top ``density`` of prunable weights.

    Args:
      score_D: importance per weight (higher = keep); only prunable entries used.
      lay: the params' layout.
      density: fraction of prunable weights to keep (traced scalar is fine).
        ``global``: exactly round(density * n_prunable) kept overall;
        ``layerwise``: exactly round(density_l * n_l) per tensor (rounding
        half to even in float32, see ``kept_count``), with
        density_l = density ** exponents[l] (exponent 1 by default; e.g.
        log(0.9)/log(0.8) prunes a layer at half the rate of 20%-per-level).
      alive_D: current mask; dead weights are never revived (the count is
        capped at the number alive).
      min_one: keep each prunable tensor's best alive weight (layer-collapse
        guard); ``False`` allows a tensor to lose every weight. May be traced.

    Non-prunable entries come back as 1.
    """
    if mode not in MODES:
        raise ValueError(f"pruning mode {mode!r}; valid: {', '.join(MODES)}")
    score_D = _clean(score_D)
    alive_D = jnp.ones(lay.D, bool) if alive_D is None else alive_D > 0
    leaves = lay.prunable_leaves
    if exponents is None:
        exponents = (1.0,) * len(leaves)
    if len(exponents) != len(leaves):
        raise ValueError(f"{len(exponents)} layer exponents for {len(leaves)} prunable tensors")
    keep = [jnp.ones(s, bool) for s in lay.sizes]
    guard = jnp.asarray(min_one, jnp.int32)  # may be traced
    if mode == "layerwise":
        for i, e in zip(leaves, exponents):
            s, a = _segment(score_D, lay, i), _segment(alive_D, lay, i)
            n_alive = a.sum()
            k = _count(jnp.asarray(density, jnp.float32) ** e, lay.sizes[i])
            k = jnp.minimum(jnp.maximum(k, guard), n_alive)
            keep[i] = _ranks(s, a.astype(jnp.int32)) < k
    else:
        s = jnp.concatenate([_segment(score_D, lay, i) for i in leaves])
        a = jnp.concatenate([_segment(alive_D, lay, i) for i in leaves])
        tier = a.astype(jnp.int32)
        start = 0
        for i in leaves:  # each tensor's best alive weight goes to the top tier
            seg_s, seg_a = s[start:start + lay.sizes[i]], a[start:start + lay.sizes[i]]
            best = start + jnp.argmax(jnp.where(seg_a, seg_s, -jnp.inf))
            tier = tier.at[best].add(jnp.where(seg_a.any(), guard, 0))
            start += lay.sizes[i]
        n_forced = (tier == 2).sum()
        k = _count(density, lay.n_prunable)
        k = jnp.minimum(jnp.maximum(k, n_forced), a.sum())
        kept = _ranks(s, tier) < k
        start = 0
        for i in leaves:
            keep[i] = kept[start:start + lay.sizes[i]]
            start += lay.sizes[i]
    return jnp.concatenate(keep).astype(jnp.float32)


# ---------------------------------------------------------------- reports
def leaf_counts(mask_D, lay: Layout) -> jax.Array:
    """Kept (non-zero mask) entries per leaf, int32 ``[n_leaves]`` (traceable)."""
    return jnp.stack([(_segment(mask_D, lay, i) > 0).sum() for i in range(len(lay.sizes))])


_PASS_THROUGH = {"reshape", "convert_element_type", "broadcast_in_dim", "squeeze",
                 "expand_dims", "transpose", "copy", "copy_p"}


def _walk(jaxpr, origin: dict, sizes, per_weight: np.ndarray) -> None:
    """Accumulates per-weight op counts of leaves reaching matmuls/elementwise ops."""
    for eqn in jaxpr.eqns:
        srcs = [(j, origin[v]) for j, v in enumerate(eqn.invars)
                if not hasattr(v, "val") and v in origin]
        if not srcs:
            continue
        # nested jit, or a custom_vjp/custom_jvp call (e.g. the dense projection)
        inner = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
        name = eqn.primitive.name
        out = eqn.outvars[0].aval
        if inner is not None:  # follow the leaves inside
            inner = getattr(inner, "jaxpr", inner)
            sub = {inner.invars[j]: leaf for j, leaf in srcs}
            _walk(inner, sub, sizes, per_weight)
        elif name in _PASS_THROUGH:
            origin[eqn.outvars[0]] = srcs[0][1]
        elif name == "dot_general":
            (lc, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval
            contraction = int(np.prod([lhs.shape[d] for d in lc], dtype=np.int64))
            for _, leaf in srcs:  # one multiply-add = 2 flops
                per_weight[leaf] += 2.0 * out.size * contraction / sizes[leaf]
        elif name == "conv_general_dilated":
            rhs = eqn.invars[1].aval
            out_feature = eqn.params["dimension_numbers"].rhs_spec[0]
            macs = out.size * rhs.size / rhs.shape[out_feature]
            for _, leaf in srcs:
                per_weight[leaf] += 2.0 * macs / sizes[leaf]
        else:  # elementwise use (bias add, PReLU slope multiply): one op per output
            for _, leaf in srcs:
                per_weight[leaf] += out.size / sizes[leaf]


def flops_per_weight(model, input_shape: Sequence[int]) -> np.ndarray:
    """Forward flops per example contributed by each non-zero weight, per leaf.

    Read off the model's jaxpr at batch 1: a weight feeding a matmul or
    convolution costs 2 flops (multiply-add) per use, e.g. 2 x output pixels
    for a conv kernel; a bias or slope costs 1 per output element it touches.
    Activations and pooling are not counted; pruned weights cost nothing (an
    ideal sparse kernel).
    """
    params = jax.eval_shape(model.init, jax.random.key(0))
    leaves, treedef = jax.tree.flatten(params)
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    closed = jax.make_jaxpr(lambda ls, x: model.apply(treedef.unflatten(ls), x))(leaves, x)
    sizes = [int(np.prod(leaf.shape, dtype=np.int64)) for leaf in leaves]
    per_weight = np.zeros(len(leaves))
    _walk(closed.jaxpr, {v: i for i, v in enumerate(closed.jaxpr.invars[:len(leaves)])},
          sizes, per_weight)
    return per_weight


def report(kept_per_leaf, lay: Layout, flops_per_w: np.ndarray | None = None) -> dict:
    """Per-layer sparsity, non-zero parameter count and forward flops (host side).

    ``kept_per_leaf``: ``leaf_counts`` of a mask (or the mask itself, flat).
    """
    kept = np.asarray(kept_per_leaf)
    if kept.shape == (lay.D,):
        kept = np.asarray(leaf_counts(jnp.asarray(kept), lay))
    fpw = np.zeros(len(lay.sizes)) if flops_per_w is None else np.asarray(flops_per_w)
    layers = [{"name": n, "shape": list(s), "prunable": p, "size": z, "kept": int(k),
               "density": float(k) / z, "flops": float(k * f)}
              for n, s, p, z, k, f in zip(lay.names, lay.shapes, lay.prunable, lay.sizes,
                                          kept, fpw)]
    prunable_kept = int(sum(kept[i] for i in lay.prunable_leaves))
    return {"layers": layers,
            "params": lay.D, "nonzero": int(kept.sum()),
            "prunable": lay.n_prunable, "prunable_kept": prunable_kept,
            "density": prunable_kept / max(lay.n_prunable, 1),
            "flops": float((kept * fpw).sum()),
            "dense_flops": float((np.asarray(lay.sizes) * fpw).sum()),
            "collapsed": [lay.names[i] for i in lay.prunable_leaves if kept[i] == 0]}


def format_report(rep: dict) -> str:
    """A small text table of ``report``."""
    lines = [f"{'layer':14s} {'shape':>16s} {'kept':>9s} {'size':>9s} {'density':>8s}"]
    for r in rep["layers"]:
        tag = "" if r["prunable"] else "  (not pruned)"
        lines.append(f"{r['name']:14s} {str(tuple(r['shape'])):>16s} {r['kept']:9,d} "
                     f"{r['size']:9,d} {100 * r['density']:7.2f}%{tag}")
    lines.append(f"non-zero params {rep['nonzero']:,} of {rep['params']:,}; prunable kept "
                 f"{100 * rep['density']:.3f}%; forward flops {rep['flops']:,.0f} of "
                 f"{rep['dense_flops']:,.0f}")
    return "\n".join(lines)


# ---------------------------------------------------------------- files
def save_npz(path: str, named: dict, lay: Layout) -> str:
    """Writes bool masks ``[..., D]`` bit-packed, plus the layout, to one ``.npz``.

    Keys: ``<name>`` (uint8, ``np.packbits`` over the last axis), ``<name>.shape``,
    and ``layout.names/shapes/offsets/sizes/prunable``. ``load_npz`` inverts it.
    """
    arrays = {"layout.names": np.asarray(lay.names), "layout.offsets": np.asarray(lay.offsets),
              "layout.sizes": np.asarray(lay.sizes), "layout.prunable": np.asarray(lay.prunable),
              "layout.shapes": np.asarray([",".join(map(str, s)) for s in lay.shapes])}
    for name, m in named.items():
        m = np.asarray(m, bool)
        arrays[name] = np.packbits(m, axis=-1)
        arrays[name + ".shape"] = np.asarray(m.shape)
    with workdir.atomic(path) as f:
        np.savez_compressed(f, **arrays)
    return path


def load_npz(path: str) -> tuple[dict, Layout]:
    with np.load(path) as f:
        lay = Layout(tuple(str(n) for n in f["layout.names"]),
                     tuple(tuple(int(v) for v in s.split(",") if v) for s in f["layout.shapes"]),
                     tuple(int(v) for v in f["layout.offsets"]),
                     tuple(int(v) for v in f["layout.sizes"]),
                     tuple(bool(v) for v in f["layout.prunable"]))
        named = {k: np.unpackbits(f[k], axis=-1, count=int(f[k + ".shape"][-1])).astype(bool)
                 for k in f.files if not k.startswith("layout.") and not k.endswith(".shape")}
    return named, lay
