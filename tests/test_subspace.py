"""Projection kinds against their explicit matrices, on tiny shapes (CPU).

Inputs and references are NumPy where possible: on CPU the run time of these
tests is almost all XLA compilation, so each test compiles one program.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from subspace_jax import subspace, train, vectorize
from subspace_jax.errors import ConfigError
from subspace_jax.config import subspace_config, train_config
from subspace_jax.models import mlp

D, d = 50, 12
# The programs are tiny, so compile time is all there is: skip XLA's backend
# optimisations (about halves it).
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
KINDS = ["dense", "orthonormal", "sparse", "sparse:nnz=3", "fastfood", "regenerated",
         "regenerated:block=5", "subspace_nn", "subspace_nn:base=fastfood", "per_layer",
         "per_layer:base=sparse", "burn_in:steps=3,base=sparse,nnz=3"]
SIZES = (30, 5, 12, 3)  # leaves of D = 50 for per_layer (d = 12: shares 7, 1, 3, 1)


def normal(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def theta0(D_=D):
    return normal(7, D_)


def project_fn(kind, key, D_=D, d_=d):
    return subspace.make_projection(kind, key, D_, d_, theta0_D=theta0(D_),
                                    layer_sizes=SIZES if D_ == D else None)


def matrix(kind, key, D_=D, d_=d):
    return subspace.projection_matrix(kind, key, D_, d_, theta0_D=theta0(D_),
                                      layer_sizes=SIZES if D_ == D else None)


def loss(theta_D):
    # Non-linear in theta so the gradient depends on P itself, not only its sums.
    return jnp.sum(jnp.sin(theta_D) * jnp.arange(theta_D.size))


def grad_ref(P_Dxd, theta_D):
    """d loss / d omega for theta = theta0 + P omega, by hand: P^T (cos(theta) * i)."""
    return np.asarray(P_Dxd).T @ (np.cos(theta_D) * np.arange(theta_D.size))


def test_fwht_equals_hadamard_matmul():
    sizes = (1, 2, 8, 64)
    xs = [normal(n, 3, n) for n in sizes]
    for n, x_3xN, y_3xN in zip(sizes, xs, jit(lambda xs: [subspace.fwht(x) for x in xs])(xs)):
        H = np.asarray(subspace.hadamard_matrix(n))
        np.testing.assert_array_equal(H @ H, n * np.eye(n))
        np.testing.assert_allclose(y_3xN, x_3xN @ H.T, rtol=1e-5, atol=1e-5)


UNIT_COLUMNS = [k for k in KINDS if "fastfood" not in k]  # exactly unit norm
CASES = [(kind, (D, d)) for kind in KINDS] + [  # d > D: blocks (fastfood stacks 3)
    (kind, (20, 70)) for kind in ("sparse", "fastfood", "regenerated:block=5",
                                  "subspace_nn:base=fastfood")]


@pytest.mark.parametrize("kind,shape", CASES)
def test_project_equals_matrix_theta_and_gradient(kind, shape):
    D_, d_ = shape
    omega_d, t0 = normal(2, d_), theta0(D_)

    @jit  # one compile for both routes; the reference never calls make_projection
    def both(key, omega_d):
        project = project_fn(kind, key, D_, d_)
        return (matrix(kind, key, D_, d_), t0 + project(omega_d),
                jax.grad(lambda w: loss(t0 + project(w)))(omega_d))

    P_Dxd, theta, g = map(np.asarray, both(jax.random.key(1), omega_d))
    assert P_Dxd.shape == (D_, d_)
    np.testing.assert_allclose(theta, t0 + P_Dxd @ omega_d, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g, grad_ref(P_Dxd, t0 + P_Dxd @ omega_d), rtol=1e-4, atol=1e-4)
    if kind in UNIT_COLUMNS:
        np.testing.assert_allclose(np.linalg.norm(P_Dxd, axis=0), 1.0, rtol=1e-5)


def test_fastfood_column_norms():
    @jit
    def matrices(key):
        seeds = jax.random.split(key, 20)
        return (subspace.projection_matrix("fastfood", key, 64, 40),
                jax.vmap(lambda k: subspace.projection_matrix("fastfood", k, 40, 64))(seeds))

    P_pow2, P_20xDxd = matrices(jax.random.key(4))
    # D a power of two: every column exactly 1.
    np.testing.assert_allclose(np.linalg.norm(P_pow2, axis=0), 1.0, rtol=1e-5)
    # Otherwise 1 in expectation (the first D of N padded rows are kept).
    sq = np.linalg.norm(P_20xDxd, axis=1) ** 2
    assert abs(sq.mean() - 1.0) < 0.05, sq.mean()


def test_orthonormal():
    Q, P = jit(lambda k: (matrix("orthonormal", k), matrix("dense", k)))(jax.random.key(5))
    np.testing.assert_allclose(Q.T @ Q, np.eye(d), atol=1e-5)
    # Gram-Schmidt of the dense kind's Gaussian: the first columns agree.
    np.testing.assert_allclose(Q[:, 0], P[:, 0], atol=1e-6)


def test_sparse_structure():
    P = jit(lambda k: subspace.projection_matrix("sparse", k, D, d, nnz=4))(jax.random.key(6))
    np.testing.assert_array_equal((np.asarray(P) != 0).sum(axis=0), 4)
    assert subspace.default_nnz(D) == 8


def test_subspace_nn_first_column_is_theta0_direction():
    P, only = jit(lambda k: (matrix("subspace_nn", k),
                                 project_fn("subspace_nn", k, d_=1)(jnp.ones(1))))(jax.random.key(8))
    np.testing.assert_allclose(P[:, 0], theta0() / np.linalg.norm(theta0()), rtol=1e-6)
    np.testing.assert_allclose(only, P[:, 0], rtol=1e-6)


def test_regenerated_columns_are_bit_identical_in_any_block():
    P, cols, P_more = jit(lambda k: (
        subspace.projection_matrix("regenerated", k, D, d),
        subspace.regenerated_columns(k, 5, 4, D),
        subspace.projection_matrix("regenerated", k, D, d + 7)))(jax.random.key(9))
    np.testing.assert_array_equal(cols, P[:, 5:9].T)
    # A larger d_max keeps the first d columns (the column-mask sweep relies on it).
    np.testing.assert_array_equal(P_more[:, :d], P)


def test_regenerated_custom_vjp_equals_autodiff_of_materialised():
    omega_d = normal(11, d)

    @jit
    def grads(key):
        P = subspace.projection_matrix("regenerated", key, D, d)
        ref = jax.value_and_grad(lambda w: loss(P @ w))(omega_d)  # plain autodiff of P @ w
        return ref, [jax.value_and_grad(lambda w: loss(subspace.make_projection(
            "regenerated", key, D, d, block=block)(w)))(omega_d) for block in (1, 5)]

    (val_ref, g_ref), outs = grads(jax.random.key(10))
    for val, g in outs:
        np.testing.assert_allclose(val, val_ref, rtol=1e-5)
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["dense", "sparse", "fastfood", "regenerated:block=5",
                                  "subspace_nn", "per_layer"])
def test_vmap_over_projection_seeds_equals_loop(kind):
    keys = jax.random.split(jax.random.key(12), 3)
    omega_3xd = normal(13, 3, d)
    t0 = theta0()
    f = lambda k, w: jax.value_and_grad(lambda w: loss(t0 + project_fn(kind, k)(w)))(w)

    @jit  # the loops are lax.map (one run at a time); one compile for all
    def all_ways(keys, omega_3xd):
        shared = lambda w: f(keys[0], w)
        runs = lambda k: jax.vmap(lambda w: f(k, w))(omega_3xd)  # 3 runs on each seed's P
        one_omega = lambda k: f(k, omega_3xd[0])
        return (jax.vmap(f)(keys, omega_3xd), lax.map(lambda kw: f(*kw), (keys, omega_3xd)),
                jax.vmap(shared)(omega_3xd), lax.map(shared, omega_3xd),
                jax.vmap(runs)(keys), lax.map(lambda k: lax.map(lambda w: f(k, w), omega_3xd),
                                              keys),
                jax.vmap(one_omega)(keys), lax.map(one_omega, keys))

    (vmapped, looped, vmapped_shared, looped_shared, nested, nested_looped, one_omega,
     one_omega_looped) = all_ways(keys, omega_3xd)
    # Per-seed keys; one key shared by all runs (the d_active runs of a sweep,
    # where P is built once and omega is batched: dense has its own vmap rule
    # there); both at once (seeds x runs); and P batched with omega shared.
    for a, b in ((vmapped, looped), (vmapped_shared, looped_shared), (nested, nested_looped),
                 (one_omega, one_omega_looped)):
        np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(a[1], b[1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(vmapped[1][0], vmapped[1][1])  # the seeds differ


def _largest_array(fn, *args) -> int:
    shapes = re.findall(r"\[(\d+(?:,\d+)*)\]", str(jax.make_jaxpr(fn)(*args)))
    return max(int(np.prod([int(s) for s in shape.split(",")])) for shape in shapes)


@pytest.mark.parametrize("kind", ["sparse", "fastfood", "regenerated:block=4"])
def test_no_dense_D_by_d_array_in_forward_or_backward(kind):
    D_, d_ = 1000, 300
    key, omega_d = jax.random.key(14), np.ones(d_, np.float32)
    project = lambda w: subspace.make_projection(kind, key, D_, d_)(w)
    grad = jax.grad(lambda w: loss(project(w)))
    assert _largest_array(project, omega_d) < D_ * d_ // 8
    assert _largest_array(grad, omega_d) < D_ * d_ // 8


def test_kind_strings_and_errors():
    assert subspace.parse_kind("subspace_nn:base=sparse,nnz=8") == (
        "subspace_nn", {"base": "sparse", "nnz": 8})
    with pytest.raises(ValueError, match="valid: dense"):
        subspace.make_projection("nope", jax.random.key(0), D, d)
    with pytest.raises(ValueError, match="no option"):
        subspace.make_projection("dense:nnz=3", jax.random.key(0), D, d)
    with pytest.raises(ValueError, match="d <= D"):
        subspace.make_projection("orthonormal", jax.random.key(0), 5, 6)
    with pytest.raises(ValueError, match="theta0_D"):
        subspace.make_projection("subspace_nn", jax.random.key(0), D, d)


def tiny_run_setup():
    model = mlp("tiny", (4,), n_in=784)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, 96).astype(np.int32)
    data = train.Data(x[:64], y[:64], x[64:80], y[64:80], x[80:], y[80:])
    hp = {"learning_rate": np.full(2, 0.05, np.float32), "weight_decay": np.zeros(2, np.float32),
          "d_active": np.asarray([2, 8], np.int32)}
    return model, data, hp


def subspace_run(model, kind, d_max=8):
    tcfg = train_config(epochs=1, batch_size=32, learning_rate=0.05, eval_chunk=16)
    return train.make_run(model, tcfg, subspace_config(d_max, kind), 64)


def test_train_make_run_with_subspace_nn():
    """``--config.projection=subspace_nn:...`` end to end through make_run and vmap."""
    model, data, hp = tiny_run_setup()
    hp["d_active"] = np.asarray([1, 8], np.int32)
    run = subspace_run(model, "subspace_nn:base=regenerated")
    out = vectorize.vmapped(run, vectorize.run_keys([0]), hp, data)
    omega_2xd = np.asarray(out.params)[0]
    assert np.isfinite(np.asarray(out.final["train_loss"])).all()
    # d_active = 1 trains theta0's direction alone; the masked columns never move.
    assert omega_2xd[0, 0] != 0.0
    np.testing.assert_array_equal(omega_2xd[0, 1:], 0.0)
    assert np.all(omega_2xd[1] != 0.0)


# ---------------------------------------------------------------- per-layer bases
def test_layer_shares_largest_remainder():
    sizes = np.asarray([5, 100, 20, 3])
    table = subspace.layer_shares(40, sizes)
    for k, share in enumerate(table):
        quota = k * sizes / sizes.sum()
        assert share.sum() == k
        assert np.all(np.floor(quota) <= share) and np.all(share <= np.ceil(quota))
        # The +1's go to the largest remainders.
        got_one = share > np.floor(quota)
        if got_one.any() and (~got_one).any():
            assert (quota - np.floor(quota))[got_one].min() >= (
                quota - np.floor(quota))[~got_one].max()
    np.testing.assert_array_equal(table[10], [0, 8, 2, 0])  # tiny leaves get 0 at small d
    np.testing.assert_array_equal(subspace.layer_shares(12, SIZES)[12], [7, 1, 3, 1])


@pytest.mark.parametrize("kind", ["per_layer", "per_layer:base=sparse,nnz=2"])
def test_per_layer_with_d_active_equals_matrix_and_stays_in_its_leaves(kind):
    omega_d, d_act = normal(3, d), 7

    @jit
    def both(key, omega_d, d_active):
        mask_d = subspace.column_mask(d, d_active)
        project = subspace.make_projection(kind, key, D, d, layer_sizes=SIZES,
                                           d_active=d_active)
        return project(omega_d * mask_d), matrix(kind, key)

    key = jax.random.key(15)
    delta, P_full = both(key, omega_d, d_act)
    P = np.asarray(subspace.projection_matrix(kind, key, D, d, layer_sizes=SIZES,
                                              d_active=d_act))
    np.testing.assert_allclose(delta, P @ omega_d, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(P[:, d_act:], 0.0)
    bounds = np.cumsum((0,) + SIZES)
    leaf_of_col = [np.unique(np.searchsorted(bounds, np.flatnonzero(c), side="right") - 1)
                   for c in P[:, :d_act].T]
    assert all(len(leaf) == 1 for leaf in leaf_of_col)  # each column in one leaf
    counts = np.bincount([leaf[0] for leaf in leaf_of_col], minlength=len(SIZES))
    np.testing.assert_array_equal(counts, subspace.layer_shares(d, SIZES)[d_act])
    # The first leaf's columns are the same block at every d_active.
    k0 = counts[0]
    np.testing.assert_allclose(P[:, :k0], np.asarray(P_full)[:, :k0], rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- trajectory bases
def test_trajectory_basis_spans_the_top_singular_vectors():
    rng = np.random.default_rng(16)
    # Singular values well apart, so the top-d subspace is well defined.
    diffs_MxD = (normal(17, 16, D) * np.geomspace(10, 0.1, 16)[:, None]).astype(np.float32)
    diffs_MxD = diffs_MxD @ np.linalg.qr(rng.normal(size=(D, D)))[0].astype(np.float32)
    U = np.asarray(jit(lambda x: subspace.trajectory_basis(x, d))(diffs_MxD))
    U_ref = np.linalg.svd(diffs_MxD.T.astype(np.float64), full_matrices=False)[0][:, :d]
    np.testing.assert_allclose(U.T @ U, np.eye(d), atol=1e-5)
    np.testing.assert_allclose(U @ U.T, U_ref @ U_ref.T, atol=1e-4)
    # Ordered by singular value: each prefix spans the top directions too.
    np.testing.assert_allclose(U[:, :3] @ U[:, :3].T, U_ref[:, :3] @ U_ref[:, :3].T, atol=1e-4)
    project = subspace.make_projection("trajectory", None, D, 5, basis_Dxd=U)
    np.testing.assert_allclose(project(np.ones(5, np.float32)), U[:, :5].sum(1), rtol=1e-5)
    with pytest.raises(ValueError, match="basis_Dxd"):
        subspace.make_projection("trajectory", None, D, d)


# ---------------------------------------------------------------- burn-in and trajectory in runs
def test_burn_in_zero_steps_is_the_plain_run_bit_for_bit():
    model, data, hp = tiny_run_setup()
    keys = vectorize.run_keys([0])
    plain, zero = (vectorize.vmapped(subspace_run(model, kind), keys, hp, data)
                   for kind in ("dense", "burn_in:steps=0"))
    np.testing.assert_array_equal(np.asarray(plain.params), np.asarray(zero.params))
    for k in plain.final:
        np.testing.assert_array_equal(np.asarray(plain.final[k]), np.asarray(zero.final[k]))


def test_burn_in_and_trajectory_start_from_the_full_space_run():
    """burn_in's theta0 is the full-space run's theta after k steps; the
    trajectory basis spans that run's displacement; both train, per seed."""
    model, data, hp = tiny_run_setup()
    full_cfg = train_config(epochs=2, batch_size=16, learning_rate=1e-3, eval_chunk=16,
                            keep_best=False)  # 4 steps per epoch: 8 steps in all
    full = train.make_run(model, full_cfg, subspace_config(0), 64)
    keys = vectorize.run_keys([0, 1])
    full_hp = {k: np.asarray(v)[None] for k, v in train.default_hp(full_cfg).items()}
    full_out = vectorize.vmapped(full, keys, full_hp, data)
    theta_full_2xD = np.asarray(full_out.params)[:, 0]
    from jax.flatten_util import ravel_pytree
    tcfg = train_config()
    burn = train.make_pretrain(model, tcfg, "burn_in:steps=8,batch=16,lr=0.001", 64, 6)
    traj = train.make_pretrain(model, tcfg, "trajectory:snapshots=4,every=2,batch=16", 64, 3)
    assert train.make_pretrain(model, tcfg, "burn_in:steps=0", 64, 6) is None

    data = jax.tree.map(jnp.asarray, data)  # teacher_logits None stays None

    @jax.jit
    def starts(key):
        k_init, k_data, _ = train.key_parts(key)
        theta_D, unravel = ravel_pytree(model.init(k_init))
        return theta_D, burn(theta_D, unravel, k_data, data)[0], traj(theta_D, unravel,
                                                                       k_data, data)

    for s, key in enumerate(keys):
        theta_D, burned_D, (traj0_D, U_Dx3) = map(jax.device_get, starts(key))
        np.testing.assert_allclose(burned_D, theta_full_2xD[s], rtol=1e-5, atol=1e-6)
        assert not np.allclose(burned_D, theta_D)
        np.testing.assert_array_equal(traj0_D, theta_D)  # trajectory: theta0 stays the init
        np.testing.assert_allclose(U_Dx3.T @ U_Dx3, np.eye(3), atol=1e-5)
        # 4 snapshots, 3 directions: the end point's displacement lies (almost) in them.
        move = theta_full_2xD[s] - theta_D
        resid = move - U_Dx3 @ (U_Dx3.T @ move)
        assert np.linalg.norm(resid) < 0.3 * np.linalg.norm(move)
    # A third row with lr 0 keeps omega = 0: it scores the run's own theta0.
    hp = {"learning_rate": np.asarray([0.05, 0.05, 0.0], np.float32),
          "weight_decay": np.zeros(3, np.float32), "d_active": np.asarray([2, 8, 8], np.int32)}
    outs = {kind: vectorize.vmapped(subspace_run(model, kind), keys, hp, data)
            for kind in ("burn_in:steps=8,batch=16", "trajectory:snapshots=8,every=1,batch=16")}
    for kind, out in outs.items():
        omega_2x3xd = np.asarray(out.params)
        assert np.isfinite(np.asarray(out.final["train_loss"])).all(), kind
        np.testing.assert_array_equal(omega_2x3xd[:, 0, 2:], 0.0)  # d_active = 2
        assert np.all(omega_2x3xd[:, 1] != 0.0)
        assert not np.allclose(omega_2x3xd[0], omega_2x3xd[1])  # the seeds differ
        np.testing.assert_array_equal(omega_2x3xd[:, 2], 0.0)
    # The burn_in run itself starts at the full-space run's 8-step params.
    burned = outs["burn_in:steps=8,batch=16"].final["test_loss"]
    np.testing.assert_allclose(np.asarray(burned)[:, 2],
                               np.asarray(full_out.final["test_loss"])[:, 0], rtol=1e-5)


def test_per_layer_in_make_run():
    model, data, hp = tiny_run_setup()
    out = vectorize.vmapped(subspace_run(model, "per_layer"), vectorize.run_keys([0, 1]), hp,
                            data)
    omega_2x2xd = np.asarray(out.params)
    assert np.isfinite(np.asarray(out.final["train_loss"])).all()
    np.testing.assert_array_equal(omega_2x2xd[:, 0, 2:], 0.0)  # d_active = 2
    assert np.all(omega_2x2xd[:, 1] != 0.0)
    assert not np.allclose(omega_2x2xd[0], omega_2x2xd[1])  # the seeds differ


def test_new_kind_errors():
    for spec, match in (("burn_in:steps=-1", "integer >= 0"), ("burn_in:base=trajectory",
                                                                "random base kind"),
                        ("trajectory:snapshots=4", "snapshots >= 8"), ("per_layer:nnz=2",
                                                                        "no option"),
                        ("trajectory:lr=0", "number > 0"),
                        ("per_layer:base=per_layer", "random base kind")):
        with pytest.raises(ConfigError, match=match):
            subspace.check_kind(spec, D, d=8)
    with pytest.raises(ValueError, match="layer_sizes"):
        subspace.make_projection("per_layer", jax.random.key(0), D, d, layer_sizes=(3, 4))
    # An explicit nnz larger than a leaf that gets columns names that leaf.
    with pytest.raises(ConfigError, match="leaf 3 of 3 parameters"):
        subspace.make_projection("per_layer:base=sparse,nnz=4", jax.random.key(0), D, d,
                                 layer_sizes=SIZES)
    with pytest.raises(ConfigError, match="snapshots >= 8"):
        subspace_run(mlp("tiny", (4,), n_in=784), "trajectory:snapshots=4")


def test_learning_rate_rules():
    d = np.asarray([10, 100, 400, 1600, 6400])
    np.testing.assert_allclose(subspace.learning_rate("fixed", 0.05, d, 400), 0.05)
    np.testing.assert_allclose(subspace.learning_rate("sqrt", 0.05, d, 400),
                               [0.05, 0.05, 0.05, 0.025, 0.0125], rtol=1e-6)
    for rule, d0 in (("linear", 400), ("sqrt", 0)):
        with pytest.raises(ConfigError):
            subspace.learning_rate(rule, 0.05, d, d0)
