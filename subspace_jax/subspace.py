"""Random subspaces: theta_D = theta0_D + P(omega_d).

``make_projection(kind, key, D, d)`` returns ``project(omega_d) -> delta_D``,
the linear map P: R^d -> R^D of one kind. Every kind is a pure function of
the key, so a projection seed is just a key and can be vmapped.

Kinds (memory is what a run holds besides theta; no kind but dense and
orthonormal ever builds a D x d array):

* ``dense``: Gaussian, every column normalised to unit length over all D. D x d.
* ``orthonormal``: QR of the dense kind's Gaussian (d <= D). D x d.
* ``sparse``: ``nnz`` Gaussian non-zeros per column (default ceil(sqrt(D))),
  unit-norm columns; forward is a segment sum, backward a gather. d x nnz.
* ``fastfood``: per block of N inputs, s H G Pi H B with H a Walsh-Hadamard
  transform (N = D padded to a power of two), ceil(d / N) blocks summed.
  O(D + d) memory, O((D + d) log D) time; columns unit norm in expectation.
* ``regenerated``: the dense law with P never stored: blocks of columns are
  regenerated from per-column keys in the forward and the backward pass
  (a ``custom_vjp``). O(D x block) memory for any d, O(D d) time.
* ``subspace_nn``: theta0's own direction (unit norm) as column 0, trainable
  like the rest, plus d - 1 columns of a ``base`` kind (default dense).
* ``per_layer``: one block of a ``base`` kind (default dense; its options
  pass through) per leaf of the params pytree (a layer's weights or biases,
  in ``ravel_pytree`` order), unit-norm columns supported on that leaf only;
  leaf l's block is the base kind for D = n_l from ``fold_in(key, l)`` (a
  sparse base's default nnz is then ceil(sqrt(n_l))). Leaf l of n_l weights
  gets d_l of the d columns, d_l = d n_l / D rounded by largest remainder
  (``layer_shares``): floor(d n_l / D) each, then one more to the largest
  remainders (ties: the larger leaf, then the earlier one) until the shares
  sum to d. A leaf whose share is 0 (a small bias at small d) stays at
  theta0. A run with ``d_active`` < d uses the shares of ``d_active``. A
  dense base holds sum_l n_l x max d_l (fc_200_200: about 0.66 x the dense
  kind's D x d); ``per_layer:base=sparse`` holds about sqrt(n_l) per column.
* ``burn_in``: the ``base`` kind (default dense; its options pass through)
  around a burned-in theta0: ``steps`` full-space steps first (default 0:
  the base kind itself; ``lr``, ``batch``; ``train.make_pretrain``). The
  burned-in point is the floor of an accuracy-vs-d curve (omega = 0 keeps
  it): with too many steps it passes a threshold alone and d_int90 is
  "<= the smallest d" (intrinsic_dimension's quick form, ``steps=100``: 89%
  at d = 16); choose the steps with the burned-in point below the threshold.
* ``trajectory``: P = the top-d left singular vectors of the differences
  theta_t - theta0 of ``snapshots`` snapshots (default d), one every
  ``every`` steps of a full-space run (``lr``, ``batch``); theta0 stays the
  init. Dense D x d, orthonormal columns ordered by singular value; the QR
  of the D x M snapshots costs memory too (fc_200_200, M = 1,600: 1.3 GB
  per seed).

Burn-in and trajectory bases use extra full-space training, which is
information the d free parameters did not pay for: a run still reports d
free parameters, and results with them are marked as such (not the random
subspace of Li et al.). ``make_projection`` takes their product (theta0_D
or ``basis_Dxd``) from ``train.make_pretrain``.

Options go as keywords or in the kind string, ``"sparse:nnz=8"`` or
``"subspace_nn:base=sparse,nnz=8"``, so a config string selects them all
(e.g. ``--config.projection=sparse:nnz=8`` for experiments/subspace_sweep.py). ``projection_matrix`` builds
the same P explicitly, for tests and analysis on small shapes.

Runs of several subspace sizes share one ``P`` of the largest ``d`` and mask
off columns (``d_active``), so a sweep over ``d`` compiles once and, when the
runs share a projection key, keeps a single ``P`` in memory.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from subspace_jax.errors import ConfigError

PROJECTIONS = ("dense", "orthonormal", "sparse", "fastfood", "regenerated", "subspace_nn",
               "per_layer", "burn_in", "trajectory")
_PRETRAIN = ("lr", "batch")
_OPTIONS = {"dense": (), "orthonormal": (), "sparse": ("nnz",), "fastfood": (),
            "regenerated": ("block",), "subspace_nn": ("base",), "per_layer": ("base",),
            "burn_in": ("base", "steps", *_PRETRAIN),
            "trajectory": ("snapshots", "every", *_PRETRAIN)}
WRAPPERS = ("subspace_nn", "burn_in", "per_layer")  # kinds with a random ``base`` kind
PRETRAINED = ("burn_in", "trajectory")  # kinds that train in full space first
_INT_OPTIONS = {"nnz": 1, "block": 1, "steps": 0, "batch": 1, "snapshots": 1, "every": 1}
PRETRAIN_DEFAULTS = {"lr": 1e-3, "batch": 64}  # the full-space runs' Adam defaults
_BLOCK_ELEMENTS = 1 << 24  # regenerated: default block of about 64 MiB float32


# ---------------------------------------------------------------- kind strings
def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_kind(spec: str) -> tuple[str, dict]:
    """``"sparse:nnz=8"`` -> ``("sparse", {"nnz": 8})``."""
    name, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"projection option {item!r} in {spec!r} is not key=value, "
                              "e.g. sparse:nnz=8.")
        options[key.strip()] = _value(value.strip())
    return name.strip(), options


def _check(name: str, options: dict, D: int | None = None) -> None:
    """Raises ``ConfigError`` for an unknown kind or option, or an option value
    that would otherwise be clamped (nnz outside [1, D], block < 1)."""
    if name not in PROJECTIONS:
        raise ConfigError(f"Unknown projection {name!r} (config field projection); "
                          f"valid: {', '.join(PROJECTIONS)}.")
    unknown = set(options) - set(_OPTIONS[name])
    if unknown:
        raise ConfigError(f"projection {name!r} has no option(s) {sorted(unknown)}; "
                          f"valid: {', '.join(_OPTIONS[name]) or 'none'}.")
    for option, low in _INT_OPTIONS.items():
        value = options.get(option)
        if value is None:
            continue
        top = D if option == "nnz" else None
        if (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low
                or (top is not None and value > top)):
            valid = f"an integer in [1, D={top}]" if top else f"an integer >= {low}"
            raise ConfigError(f"projection option {option}={value!r} of {name!r}: valid is "
                              f"{valid}" + (" (nnz = D is the dense law)." if top else "."))
    lr = options.get("lr")
    if lr is not None and (isinstance(lr, (bool, str)) or not 0 < lr < math.inf):
        raise ConfigError(f"projection option lr={lr!r} of {name!r}: valid is a number > 0.")


def _split_base(name: str, options: dict) -> tuple[str, dict, dict]:
    """A wrapper kind's own options, its base kind and the base's options."""
    own = {k: v for k, v in options.items() if k in _OPTIONS[name] and k != "base"}
    base_name, base_options = parse_kind(str(options.get("base", "dense")))
    if base_name not in PROJECTIONS or base_name in WRAPPERS + PRETRAINED:
        raise ConfigError(f"{name} needs a random base kind, not {base_name!r}; valid: "
                          "dense, orthonormal, sparse, fastfood, regenerated.")
    rest = {k: v for k, v in options.items() if k not in _OPTIONS[name]}
    return base_name, own, {**base_options, **rest}


def check_kind(spec: str, D: int | None = None, field: str = "projection",
               d: int | None = None) -> None:
    """Raises ``ConfigError`` naming ``config.<field>`` unless ``spec`` is a usable
    projection for ``D`` parameters and subspace sizes up to ``d`` (``None``:
    every check that does not need it)."""
    try:
        name, options = parse_kind(spec)
        if name in WRAPPERS:
            base_name, own, base_options = _split_base(name, options)
            _check(name, own, D)
            _check(base_name, base_options, D)
        else:
            _check(name, options, D)
        if name == "trajectory" and d is not None and options.get("snapshots", d) < d:
            raise ConfigError(f"trajectory:snapshots={options['snapshots']} gives at most that "
                              f"many directions, fewer than d={d}; valid: snapshots >= {d}.")
    except ConfigError as e:
        raise ConfigError(f"config.{field}={spec!r}: {e}") from None


def pretraining(spec: str, d: int) -> dict | None:
    """The full-space pre-training a kind needs, or None: ``steps``, ``lr``,
    ``batch``, and the ``snapshots`` taken every ``every`` steps (burn-in:
    one, at the end)."""
    name, options = parse_kind(spec)
    if name not in PRETRAINED:
        return None
    out = {**PRETRAIN_DEFAULTS, **{k: options[k] for k in _PRETRAIN if k in options}}
    if name == "burn_in":
        steps = int(options.get("steps", 0))
        return {**out, "steps": steps, "snapshots": 1 if steps else 0, "every": steps}
    snapshots, every = int(options.get("snapshots", d)), int(options.get("every", 1))
    return {**out, "steps": snapshots * every, "snapshots": snapshots, "every": every}


def _linear_map(apply, transpose):
    """``f(params, x) = apply(params, x)``, linear in x, whose VJP is ``transpose``.

    Gives the backward pass explicitly (no residuals, no scatter) and keeps
    ``params`` out of the gradient. Reverse mode only: ``jax.jvp`` fails.
    """
    @jax.custom_vjp
    def f(params, x):
        return apply(params, x)

    f.defvjp(lambda params, x: (apply(params, x), params),
             lambda params, g: (None, transpose(params, g)))
    return f


# ---------------------------------------------------------------- dense family
def dense_projection(key, D: int, d: int, dtype=jnp.float32):
    """Gaussian ``P_Dxd`` with every column normalised to unit length over all D."""
    P_Dxd = jax.random.normal(key, (D, d), dtype)
    return P_Dxd / jnp.linalg.norm(P_Dxd, axis=0, keepdims=True)


# ---- P_Dxd @ omega_d and g_D @ P_Dxd, for runs vmapped over one P
# A d-sweep (one P, the runs' omegas vmapped) is bound by reading P twice a
# step. XLA's CPU dots read a large P fastest when the runs' axis is the
# minor one on the small side: on the 2-core AMD EPYC (2026-12-05, D =
# 199,210, d = 1,000, 6 runs) the forward took 39 ms as P @ Omega_dxR and 47-53
# ms as Omega_Rxd @ P^T (vmap's own form); the transpose 46-49 ms with G laid
# out D x R and 87 ms with G_RxD. So under vmap (P not batched) both put the
# small operand run-minor; an optimization barrier keeps XLA from folding the
# transposes back. Elsewhere (P batched too, no vmap) plain jnp. The default
# subspace_sweep's FC subspace unit went from 487 s to 315 s with it.
def _batched_over_runs(plain, runs_RxN):
    """``plain(P, x)`` with a vmap rule for runs ``x`` over one P: ``runs_RxN(P, X_NxR)``
    gets them run-minor (an optimization barrier keeps XLA from folding it back)."""
    @jax.custom_batching.custom_vmap
    def f(P, x):
        return plain(P, x)

    @f.def_vmap
    def rule(axis_size, in_batched, P, X):
        if in_batched[0]:  # P batched too (several seeds' P on one device)
            X = X if in_batched[1] else jnp.broadcast_to(X, (axis_size,) + X.shape)
            return jax.vmap(plain)(P, X), True
        if not in_batched[1]:
            return plain(P, X), False
        return runs_RxN(P, lax.optimization_barrier(X.T)), True
    return f


_apply_P = _batched_over_runs(  # Omega_Rxd -> R x D, computed as P @ Omega^T
    lambda P_Dxd, omega_d: P_Dxd @ omega_d,
    lambda P_Dxd, omega_dxR: lax.optimization_barrier(P_Dxd @ omega_dxR).T)
_apply_PT = _batched_over_runs(  # G_RxD -> R x d, contracting a D x R copy of G
    lambda P_Dxd, g_D: g_D @ P_Dxd,
    lambda P_Dxd, g_DxR: g_DxR.T @ P_Dxd)
_matvec = _linear_map(_apply_P, _apply_PT)  # P_Dxd @ omega_d, transpose g_D @ P_Dxd


def orthonormal_projection(key, D: int, d: int, dtype=jnp.float32):
    """``Q_Dxd`` from QR of the dense kind's Gaussian (needs d <= D).

    Signs make diag(R) positive, so Q is Gram-Schmidt of the Gaussian columns
    (Haar distributed) and column 0 equals the dense kind's column 0.
    """
    if d > D:
        raise ValueError(f"orthonormal projection needs d <= D, got d={d}, D={D}")
    Q_Dxd, R_dxd = jnp.linalg.qr(jax.random.normal(key, (D, d), dtype))
    return Q_Dxd * jnp.where(jnp.diagonal(R_dxd) < 0, -1.0, 1.0).astype(dtype)


# ---------------------------------------------------------------- sparse
def default_nnz(D: int) -> int:
    """ceil(sqrt(D)): the density 1/sqrt(D) of "very sparse" random projections."""
    return math.ceil(math.sqrt(D))


def sparse_params(key, D: int, d: int, nnz: int | None = None):
    """Row indices and values of the non-zeros, ``(rows_dxk, vals_dxk)``.

    Column j's k rows are ``offset_j + i * (D // k) + jitter_ji`` (mod D) for
    i < k: one per stride window, so they are distinct (the column norm is
    exactly 1 with no de-duplication) and every row is hit with probability k/D.
    Values are Gaussian, normalised per column; nnz = D gives the dense law.
    """
    k = default_nnz(D) if nnz is None else nnz
    _check("sparse", {"nnz": k}, D)  # never clamped: a bad nnz is an error
    stride = D // k
    k_off, k_jit, k_val = jax.random.split(key, 3)
    offset_d = jax.random.randint(k_off, (d, 1), 0, D)
    jitter_dxk = jax.random.randint(k_jit, (d, k), 0, stride)
    rows_dxk = (offset_d + stride * jnp.arange(k) + jitter_dxk) % D
    vals_dxk = jax.random.normal(k_val, (d, k))
    return rows_dxk.astype(jnp.int32), vals_dxk / jnp.linalg.norm(vals_dxk, axis=1, keepdims=True)


def sparse_apply(rows_dxk, vals_dxk, omega_d, D: int):
    """``P omega`` as one segment sum; autodiff turns it into a gather."""
    contrib_dxk = vals_dxk * omega_d[:, None]
    return jax.ops.segment_sum(contrib_dxk.reshape(-1), rows_dxk.reshape(-1), num_segments=D)


# ---------------------------------------------------------------- fastfood
def fwht(x_N):
    """Unnormalised Walsh-Hadamard transform along the last axis: ``H_N x``.

    Sylvester order (H[r, c] = (-1)^popcount(r & c), so H H = N I), N a power
    of two; log2(N) reshape-and-add butterflies, O(N log N) time, O(N) memory.
    """
    n = x_N.shape[-1]
    if n & (n - 1):
        raise ValueError(f"fwht needs a power-of-two length, got {n}")
    lead = x_N.shape[:-1]
    h = 1
    while h < n:
        pairs = x_N.reshape(*lead, n // (2 * h), 2, h)
        a, b = pairs[..., 0, :], pairs[..., 1, :]
        x_N = jnp.stack([a + b, a - b], axis=-2).reshape(*lead, n)
        h *= 2
    return x_N


def hadamard_matrix(n: int):
    """The Sylvester Hadamard matrix ``H_nxn`` (reference for ``fwht``; tiny n)."""
    H = np.ones((1, 1), np.float32)
    while H.shape[0] < n:
        H = np.block([[H, H], [H, -H]])
    if H.shape[0] != n:
        raise ValueError(f"n={n} is not a power of two")
    return jnp.asarray(H)


def fastfood_params(key, D: int, d: int) -> dict:
    """Per block b < ceil(d / N), N = D padded to a power of two: signs B,
    permutation Pi (and its inverse), Gaussian G, and the scale s.

    Column j of a block, over all N rows, has norm exactly sqrt(N) |G|; the
    first D rows are kept, so s = 1 / (sqrt(D) |G|) makes the expected squared
    norm of every column exactly 1 (exactly 1 for each column when D = N).
    """
    n = 1 << max(D - 1, 0).bit_length()
    blocks = -(-d // n)
    k_b, k_p, k_g = jax.random.split(key, 3)
    B_bxN = jax.random.rademacher(k_b, (blocks, n), jnp.float32)
    perm_bxN = jax.vmap(lambda k: jax.random.permutation(k, n))(jax.random.split(k_p, blocks))
    G_bxN = jax.random.normal(k_g, (blocks, n))
    scale_b = 1.0 / (math.sqrt(D) * jnp.linalg.norm(G_bxN, axis=1))
    return {"B": B_bxN, "perm": perm_bxN, "inv_perm": jnp.argsort(perm_bxN, axis=1),
            "G": G_bxN, "scale": scale_b}


def _fastfood_apply(D: int, d: int):
    def apply(p, omega_d):
        blocks, n = p["B"].shape
        x_bxN = jnp.pad(omega_d, (0, blocks * n - d)).reshape(blocks, n)
        y_bxN = jnp.take_along_axis(fwht(x_bxN * p["B"]), p["perm"], axis=1)
        y_bxN = fwht(y_bxN * p["G"]) * p["scale"][:, None]
        return y_bxN.sum(0)[:D]

    def transpose(p, g_D):
        # P_b^T = s B H Pi^T G H: the first H is shared by all blocks.
        n = p["B"].shape[1]
        z_N = fwht(jnp.pad(g_D, (0, n - D)))
        z_bxN = z_N * p["G"] * p["scale"][:, None]
        z_bxN = jnp.take_along_axis(z_bxN, p["inv_perm"], axis=1)
        return (fwht(z_bxN) * p["B"]).reshape(-1)[:d]

    return _linear_map(apply, transpose)


# ---------------------------------------------------------------- regenerated dense
def regenerated_columns(key, start, count: int, D: int):
    """Columns ``start .. start+count-1`` as rows of ``cols_cxD``: column j is
    ``normal(fold_in(key, j), (D,))`` normalised, so any block of columns is
    regenerated bit-identically, whatever the block size."""
    j_c = start + jnp.arange(count)
    cols_cxD = jax.vmap(lambda j: jax.random.normal(jax.random.fold_in(key, j), (D,)))(j_c)
    return cols_cxD / jnp.linalg.norm(cols_cxD, axis=1, keepdims=True)


def default_block(D: int, d: int) -> int:
    return int(min(max(_BLOCK_ELEMENTS // D, 1), d))


def _regenerated_apply(D: int, d: int, block: int):
    blocks = -(-d // block)

    def apply(key, omega_d):
        w_bxc = jnp.pad(omega_d, (0, blocks * block - d)).reshape(blocks, block)

        def body(delta_D, b):
            cols_cxD = regenerated_columns(key, b * block, block, D)
            return delta_D + w_bxc[b] @ cols_cxD, None

        delta_D, _ = lax.scan(body, jnp.zeros(D, omega_d.dtype), jnp.arange(blocks))
        return delta_D

    def transpose(key, g_D):
        g_bxc = lax.map(lambda b: regenerated_columns(key, b * block, block, D) @ g_D,
                        jnp.arange(blocks))
        return g_bxc.reshape(-1)[:d]

    return _linear_map(apply, transpose)


# ---------------------------------------------------------------- per layer
def layer_shares(d_max: int, sizes) -> np.ndarray:
    """``share_KxL[d, l]``: leaf l's columns when the subspace has d <= d_max.

    Largest remainder: floor(d n_l / D) each, then +1 to the leaves with the
    largest remainders d n_l mod D (ties: larger leaf, then earlier) until
    the row sums to d. Exact integer arithmetic.
    """
    n_L = np.asarray(sizes, np.int64)
    D, L = int(n_L.sum()), len(n_L)
    num_KxL = np.arange(d_max + 1, dtype=np.int64)[:, None] * n_L
    share_KxL, rem_KxL = num_KxL // D, num_KxL % D
    for d, (share_L, rem_L) in enumerate(zip(share_KxL, rem_KxL)):
        order = np.lexsort((np.arange(L), -n_L, -rem_L))  # last key sorts first
        share_L[order[:d - int(share_L.sum())]] += 1
    return share_KxL


def per_layer_maps(base: str, key, sizes, d: int, **base_options):
    """``(maps, share_KxL)``: per leaf l the base kind's map R^cap_l -> R^n_l
    (``None`` for a leaf that never gets a column), cap_l = its largest
    share, from ``fold_in(key, l)``; the share table of ``layer_shares``."""
    share_KxL = layer_shares(d, sizes)
    maps = []
    for l, (n, cap) in enumerate(zip(sizes, share_KxL.max(0))):
        maps.append(_leaf(make_projection, base, jax.random.fold_in(key, l), int(n), int(cap),
                          l, base_options) if cap else None)
    return maps, share_KxL


def _leaf(build, base: str, key, n: int, cap: int, l: int, base_options: dict):
    """The base kind built for one leaf; an explicit option the leaf cannot
    take (``nnz`` > n_l) names the leaf instead of the base's own D."""
    try:
        return build(base, key, n, cap, **base_options)
    except ConfigError as e:
        raise ConfigError(f"per_layer: leaf {l} of {n} parameters: {e}") from None


def per_layer_apply(maps, sizes, share_KxL, omega_d, d_active):
    """Leaf l's delta is its map applied to its run of ``share[d_active, l]``
    omega entries (zeros past the run); the runs follow each other in leaf
    order from omega's entry 0."""
    share_L = jnp.asarray(share_KxL, jnp.int32)[d_active]
    start_L = jnp.cumsum(share_L) - share_L
    parts = []
    for l, (f, n, cap) in enumerate(zip(maps, sizes, share_KxL.max(0))):
        if f is None:
            parts.append(jnp.zeros((n,), omega_d.dtype))
            continue
        i_c = jnp.arange(int(cap))
        w_c = omega_d[jnp.minimum(start_L[l] + i_c, omega_d.size - 1)]
        parts.append(f(jnp.where(i_c < share_L[l], w_c, 0.0)))
    return jnp.concatenate(parts)


def _layer_sizes(layer_sizes, D: int):
    if layer_sizes is None or int(sum(layer_sizes)) != D:
        raise ValueError(f"projection 'per_layer' needs layer_sizes summing to D={D} "
                         f"(train.make_run passes the leaf sizes), got {layer_sizes}")
    return tuple(int(n) for n in layer_sizes)


# ---------------------------------------------------------------- trajectory
def trajectory_basis(diffs_MxD, d: int):
    """``U_Dxd``: the top-d left singular vectors of X = diffs^T (D x M), in
    order of singular value; QR of X first, so the SVD is of an M x M matrix.
    Orthonormal columns (beyond X's rank: still orthonormal, from Q)."""
    Q_DxM, R_MxM = jnp.linalg.qr(diffs_MxD.T)
    U_MxM, _, _ = jnp.linalg.svd(R_MxM, full_matrices=False)
    return Q_DxM @ U_MxM[:, :d]


def _basis(basis_Dxd, D: int, d: int):
    if basis_Dxd is None or basis_Dxd.shape[0] != D or basis_Dxd.shape[1] < d:
        raise ValueError("projection 'trajectory' needs basis_Dxd of at least d columns "
                         "(train.make_run builds it with make_pretrain)")
    return basis_Dxd[:, :d]


# ---------------------------------------------------------------- interface
def _unit(theta0_D):
    if theta0_D is None:
        raise ValueError("projection 'subspace_nn' needs theta0_D (train.make_run passes it)")
    return theta0_D / jnp.maximum(jnp.linalg.norm(theta0_D), 1e-30)


def make_projection(kind: str, key, D: int, d: int, *, theta0_D=None, layer_sizes=None,
                    d_active=None, basis_Dxd=None, **options):
    """Returns ``project(omega_d) -> delta_D``, the linear map P of ``kind``.

    Args:
      kind: one of ``PROJECTIONS``, optionally with options, ``"sparse:nnz=8"``.
      key: the projection key (P is a pure function of it).
      D, d: parameter count and subspace size (static).
      theta0_D: the starting point; used only by ``subspace_nn``.
      layer_sizes: leaf sizes in ``ravel_pytree`` order (``per_layer``).
      d_active: the run's active size (traceable; ``per_layer``'s shares; default d).
      basis_Dxd: the trajectory basis (``trajectory``; from ``train.make_pretrain``).
      **options: ``nnz`` (sparse; default ceil(sqrt(D))), ``block`` (regenerated:
        columns regenerated at a time), ``base`` (subspace_nn, burn_in: the
        random kind, default dense; other options go to it).
    """
    name, parsed = parse_kind(kind)
    options = {**parsed, **options}
    if name in WRAPPERS:
        base_name, own, base_options = _split_base(name, options)
        _check(name, own, D)
        _check(base_name, base_options, D)
        if name == "burn_in":  # theta0_D is already the burned-in point
            return make_projection(base_name, key, D, d, **base_options)
        if name == "per_layer":
            sizes = _layer_sizes(layer_sizes, D)
            maps, share_KxL = per_layer_maps(base_name, key, sizes, d, **base_options)
            d_active = d if d_active is None else d_active
            return lambda omega_d: per_layer_apply(maps, sizes, share_KxL, omega_d, d_active)
        u_D = _unit(theta0_D)
        if d == 1:
            return lambda omega_d: omega_d[0] * u_D
        rest = make_projection(base_name, key, D, d - 1, **base_options)
        return lambda omega_d: omega_d[0] * u_D + rest(omega_d[1:])
    _check(name, options, D)
    if name in ("dense", "orthonormal"):
        P_Dxd = (dense_projection if name == "dense" else orthonormal_projection)(key, D, d)
        return lambda omega_d: _matvec(P_Dxd, omega_d)
    if name == "trajectory":
        U_Dxd = _basis(basis_Dxd, D, d)
        return lambda omega_d: _matvec(U_Dxd, omega_d)
    if name == "sparse":
        rows_dxk, vals_dxk = sparse_params(key, D, d, options.get("nnz"))
        return lambda omega_d: sparse_apply(rows_dxk, vals_dxk, omega_d, D)
    if name == "fastfood":
        params, apply = fastfood_params(key, D, d), _fastfood_apply(D, d)
        return lambda omega_d: apply(params, omega_d)
    block = min(int(options.get("block") or default_block(D, d)), d)
    apply = _regenerated_apply(D, d, block)
    return lambda omega_d: apply(key, omega_d)


def projection_matrix(kind: str, key, D: int, d: int, *, theta0_D=None, layer_sizes=None,
                      d_active: int | None = None, basis_Dxd=None, **options):
    """The explicit ``P_Dxd`` that ``make_projection`` applies, built from the
    same random parameters by a separate route (small shapes: tests, analysis;
    ``d_active`` a Python int here)."""
    name, parsed = parse_kind(kind)
    options = {**parsed, **options}
    if name in WRAPPERS:
        base_name, _, base_options = _split_base(name, options)
        if name == "burn_in":
            return projection_matrix(base_name, key, D, d, **base_options)
        if name == "per_layer":  # each leaf's base matrix, placed in its rows
            sizes = _layer_sizes(layer_sizes, D)
            share_KxL = layer_shares(d, sizes)
            P_Dxd, row, col = jnp.zeros((D, d)), 0, 0
            for l, (n, cap, k) in enumerate(zip(sizes, share_KxL.max(0),
                                                share_KxL[d if d_active is None else d_active])):
                if k:
                    B = _leaf(projection_matrix, base_name, jax.random.fold_in(key, l), n,
                              int(cap), l, base_options)
                    P_Dxd = P_Dxd.at[row:row + n, col:col + k].set(B[:, :k])
                row, col = row + n, col + int(k)
            return P_Dxd
        cols = [_unit(theta0_D)[:, None]]
        if d > 1:
            cols.append(projection_matrix(base_name, key, D, d - 1, **base_options))
        return jnp.concatenate(cols, axis=1)
    _check(name, options)
    if name == "dense":
        return dense_projection(key, D, d)
    if name == "orthonormal":
        return orthonormal_projection(key, D, d)
    if name == "trajectory":
        return _basis(basis_Dxd, D, d)
    if name == "sparse":
        rows_dxk, vals_dxk = sparse_params(key, D, d, options.get("nnz"))
        cols_dxk = jnp.broadcast_to(jnp.arange(d)[:, None], rows_dxk.shape)
        return jnp.zeros((D, d)).at[rows_dxk, cols_dxk].set(vals_dxk)
    if name == "fastfood":
        p = fastfood_params(key, D, d)
        n = p["B"].shape[1]
        H = hadamard_matrix(n)
        eye = jnp.eye(n)
        blocks = [p["scale"][b] * H @ jnp.diag(p["G"][b]) @ eye[p["perm"][b]] @ H
                  @ jnp.diag(p["B"][b]) for b in range(p["B"].shape[0])]
        return jnp.concatenate(blocks, axis=1)[:D, :d]
    return regenerated_columns(key, 0, d, D).T


def column_mask(d_max: int, d_active):
    """1.0 for the first ``d_active`` of ``d_max`` columns, else 0.0 (traceable)."""
    return (jnp.arange(d_max) < d_active).astype(jnp.float32)


# ---------------------------------------------------------------- learning rate
LR_RULES = ("fixed", "sqrt")


def learning_rate(rule: str, lr0: float, d, d0: int):
    """The subspace learning rate at size ``d`` (NumPy; ``d`` may be an array).

    ``fixed``: lr0 at every d. ``sqrt``: lr0 * min(1, sqrt(d0 / d)). Why: Adam
    moves each omega coordinate by about lr per step whatever the gradient's
    scale, and P's unit-norm random columns are nearly orthogonal, so
    |P delta_omega| is about lr sqrt(d): the step in theta grows as sqrt(d).
    ``sqrt`` holds it at lr0 sqrt(d0) above d0 (derived for Adam's sign-like
    steps; for SGD the scaling differs).
    """
    check_lr_rule(rule, d0)
    d = np.asarray(d, np.float64)
    if rule == "fixed":
        return np.full(d.shape, lr0, np.float32)
    return (lr0 * np.minimum(1.0, np.sqrt(d0 / d))).astype(np.float32)


def check_lr_rule(rule: str, d0, field: str = "subspace_lr_rule") -> None:
    if rule not in LR_RULES:
        raise ConfigError(f"config.{field}={rule!r}; valid: {', '.join(LR_RULES)}.")
    if isinstance(d0, bool) or not isinstance(d0, (int, np.integer)) or d0 < 1:
        raise ConfigError(f"config.subspace_lr_d0={d0!r} must be an integer >= 1 "
                          "(the d up to which the sqrt rule keeps lr0).")
