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
from subspace_jax.config import subspace_config, train_config
from subspace_jax.models import mlp

D, d = 50, 12
# The programs are tiny, so compile time is all there is: skip XLA's backend
# optimisations (about halves it).
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
KINDS = ["dense", "orthonormal", "sparse", "sparse:nnz=3", "fastfood", "regenerated",
         "regenerated:block=5", "subspace_nn", "subspace_nn:base=fastfood"]


def normal(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def theta0(D_=D):
    return normal(7, D_)


def project_fn(kind, key, D_=D, d_=d):
    return subspace.make_projection(kind, key, D_, d_, theta0_D=theta0(D_))


def matrix(kind, key, D_=D, d_=d):
    return subspace.projection_matrix(kind, key, D_, d_, theta0_D=theta0(D_))


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


@pytest.mark.parametrize("kind", ["sparse", "fastfood", "regenerated:block=5", "subspace_nn"])
def test_vmap_over_projection_seeds_equals_loop(kind):
    keys = jax.random.split(jax.random.key(12), 3)
    omega_3xd = normal(13, 3, d)
    t0 = theta0()
    f = lambda k, w: jax.value_and_grad(lambda w: loss(t0 + project_fn(kind, k)(w)))(w)

    @jit  # the loops are lax.map (one run at a time); one compile for all four
    def all_ways(keys, omega_3xd):
        shared = lambda w: f(keys[0], w)
        return (jax.vmap(f)(keys, omega_3xd), lax.map(lambda kw: f(*kw), (keys, omega_3xd)),
                jax.vmap(shared)(omega_3xd), lax.map(shared, omega_3xd))

    vmapped, looped, vmapped_shared, looped_shared = all_ways(keys, omega_3xd)
    # Per-seed keys; and one key shared by all runs (the d_active runs of a sweep,
    # where P is built once and omega is batched).
    for a, b in ((vmapped, looped), (vmapped_shared, looped_shared)):
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


def test_train_make_run_with_subspace_nn():
    """``--config.projection=subspace_nn:...`` end to end through make_run and vmap."""
    model = mlp("tiny", (4,), n_in=784)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, 96).astype(np.int32)
    data = train.Data(x[:64], y[:64], x[64:80], y[64:80], x[80:], y[80:])
    tcfg = train_config(epochs=1, batch_size=32, learning_rate=0.05, eval_chunk=16)
    run = train.make_run(model, tcfg, subspace_config(8, "subspace_nn:base=regenerated"), 64)
    hp = {"learning_rate": np.full(2, 0.05, np.float32), "weight_decay": np.zeros(2, np.float32),
          "d_active": np.asarray([1, 8], np.int32)}
    out = vectorize.vmapped(run, vectorize.run_keys([0]), hp, data)
    omega_2xd = np.asarray(out.params)[0]
    assert np.isfinite(np.asarray(out.final["train_loss"])).all()
    # d_active = 1 trains theta0's direction alone; the masked columns never move.
    assert omega_2xd[0, 0] != 0.0
    np.testing.assert_array_equal(omega_2xd[0, 1:], 0.0)
    assert np.all(omega_2xd[1] != 0.0)
