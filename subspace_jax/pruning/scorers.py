"""Importance scores over the flat parameter vector (higher = keep).

Every scorer maps ``theta_D`` (and, where it needs them, a mask, a key, a
loss or the model) to ``score_D``; ``masks.select`` turns scores into a mask.
``REGISTRY`` names each with a uniform signature, whether it needs data and
where it applies; ``mask`` is the one score-to-mask path every procedure uses.
Scores are written for one run; vmapping over seeds happens in
``subspace_jax.vectorize``.

* ``random``: uniform noise (the control).
* ``magnitude``: |theta|.
* ``obd``: Optimal Brain Damage saliency 0.5 * h_kk * theta_k^2 with the
  Hessian diagonal from ``hessian_diag``:
    - ``exact``: e_k^T H e_k for every k, by Hessian-vector products
      (forward-over-reverse, vmapped over chunks of basis vectors): D HVPs,
      for small models only;
    - ``gauss_newton`` (the default for D > ``exact_max_params``): the exact
      diagonal of the generalised Gauss-Newton matrix J^T H_z J of softmax
      cross-entropy (drops the network's second derivatives, as LeCun et al.
      did), from K per-example vector-Jacobian products using
      H_z = A A^T with A = diag(sqrt p) - p sqrt(p)^T. For the registry's
      ReLU / max-pool / PReLU networks the logits are affine in each single
      parameter (others fixed), so d^2 z / d theta_k^2 = 0 and this diagonal
      *equals* the Hessian diagonal almost everywhere (the off-diagonal
      terms differ; the tests check the diagonals agree). With smooth
      activations it is an approximation;
    - ``hutchinson``: E[z * Hz] over Rademacher z (unbiased, noisy: about 6%
      relative error with 2,000 samples on a tiny MLP).
* ``snip``: |theta * dL/dtheta| at the masked weights = |dL/dm| at m = mask.
* ``grasp``: GraSP removes the weights with the largest -theta * Hg, so the
  keep-score returned here is +theta * Hg (g the loss gradient, softmax
  temperature ``temperature`` as in the paper's code).
* ``synflow``: |theta * dR/dtheta| with R the summed output of the network
  whose parameters are |theta| (masked: dead weights score exactly 0) on an
  all-ones input; ``synflow_mask`` applies it iteratively with the
  exponential density schedule density ** (r / rounds), r = 1..rounds.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from subspace_jax import train
from subspace_jax.pruning import masks

HESSIANS = ("auto", "exact", "gauss_newton", "hutchinson")


# ---------------------------------------------------------------- losses
def batch_loss(apply_D: Callable, x, y, temperature: float = 1.0) -> Callable:
    """``theta_D -> mean cross-entropy`` on one fixed batch (logits / temperature)."""
    return lambda theta_D: train.cross_entropy(apply_D(theta_D, x) / temperature, y)


# ---------------------------------------------------------------- simple scores
def random(key, theta_D):
    return jax.random.uniform(key, theta_D.shape)


def magnitude(theta_D):
    return jnp.abs(theta_D)


def snip(loss_D: Callable, theta_D, mask_D):
    w_D = theta_D * mask_D
    return jnp.abs(w_D * jax.grad(loss_D)(w_D))


def grasp(loss_D: Callable, theta_D, mask_D):
    """Keep-score theta * Hg (GraSP prunes the largest -theta * Hg)."""
    w_D = theta_D * mask_D
    g_D = jax.grad(loss_D)(w_D)
    Hg_D = jax.jvp(jax.grad(loss_D), (w_D,), (lax.stop_gradient(g_D),))[1]
    return w_D * Hg_D


# ---------------------------------------------------------------- Hessian diagonals
def _chunked(fn: Callable, xs, chunk: int):
    """``fn`` vmapped over chunks of the leading axis of ``xs`` (bounded memory)."""
    n = xs.shape[0]
    pad = -n % chunk
    xs = jnp.concatenate([xs, jnp.zeros((pad, *xs.shape[1:]), xs.dtype)])
    out = lax.map(jax.vmap(fn), xs.reshape(-1, chunk, *xs.shape[1:]))
    return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:])[:n], out)


def hessian_diag_exact(loss_D: Callable, theta_D, chunk: int = 64):
    """diag(H) by one Hessian-vector product per basis vector (D HVPs)."""
    D = theta_D.size
    _, hvp = jax.linearize(jax.grad(loss_D), theta_D)
    return _chunked(lambda k: hvp(jax.nn.one_hot(k, D, dtype=theta_D.dtype))[k],
                    jnp.arange(D), chunk)


def gauss_newton_diag(apply_D: Callable, theta_D, x, chunk: int = 16):
    """diag(J^T H_z J) of mean softmax cross-entropy over the examples ``x``.

    Labels do not enter: for softmax cross-entropy H_z = diag(p) - p p^T.
    """
    def one(x_1):
        logits_K, vjp = jax.vjp(lambda th: apply_D(th, x_1[None])[0], theta_D)
        p = jax.nn.softmax(logits_K)
        sq = jnp.sqrt(p)
        A_KxK = jnp.diag(sq) - jnp.outer(p, sq)  # A A^T = diag(p) - p p^T since sum(p) = 1
        JtA_KxD = jax.vmap(lambda c: vjp(c)[0])(A_KxK.T)
        return (JtA_KxD ** 2).sum(0)

    return _chunked(one, x, chunk).mean(0)


def hutchinson_diag(loss_D: Callable, theta_D, key, samples: int = 64, chunk: int = 16):
    """E[z * Hz] over ``samples`` Rademacher vectors z."""
    _, hvp = jax.linearize(jax.grad(loss_D), theta_D)
    z = jax.random.rademacher(key, (samples, theta_D.size), theta_D.dtype)
    return _chunked(lambda v: v * hvp(v), z, chunk).mean(0)


def hessian_diag(method: str, loss_D: Callable, apply_D: Callable, theta_D, x, key,
                 exact_max_params: int = 2000, samples: int = 64, chunk: int = 16):
    """Dispatches on ``method``; ``auto`` = exact up to ``exact_max_params``, else Gauss-Newton."""
    if method == "auto":
        method = "exact" if theta_D.size <= exact_max_params else "gauss_newton"
    if method == "exact":
        return hessian_diag_exact(loss_D, theta_D, chunk)
    if method == "gauss_newton":
        return gauss_newton_diag(apply_D, theta_D, x, chunk)
    if method == "hutchinson":
        return hutchinson_diag(loss_D, theta_D, key, samples, chunk)
    raise ValueError(f"Unknown OBD Hessian {method!r}; valid: {', '.join(HESSIANS)}.")


def obd(theta_D, h_diag_D):
    """Optimal Brain Damage saliency: the loss increase of deleting one weight."""
    return 0.5 * h_diag_D * theta_D ** 2


# ---------------------------------------------------------------- SynFlow
def synflow(apply_D: Callable, theta_D, mask_D, input_shape: Sequence[int]):
    """|w * dR/dw| with w = |theta| * mask and R = sum(f_w(ones))."""
    w_D = jnp.abs(theta_D) * mask_D
    ones = jnp.ones((1, *input_shape), jnp.float32)
    R = lambda w: apply_D(w, ones).sum()
    return jnp.abs(w_D * jax.grad(R)(w_D))


def synflow_mask(apply_D: Callable, theta_D, density, lay: masks.Layout,
                 input_shape: Sequence[int], rounds: int = 100, mode: str = "global",
                 alive_D=None, min_one: bool = True, exponents=None):
    """Iterative SynFlow: ``rounds`` score-and-prune steps to ``density``."""
    return rounds_mask(lambda mask_D: synflow(apply_D, theta_D, mask_D, input_shape), density,
                       lay, rounds, mode, alive_D, min_one, exponents)


def rounds_mask(score_of_mask: Callable, density, lay: masks.Layout, rounds: int,
                mode: str = "global", alive_D=None, min_one: bool = True, exponents=None):
    """``rounds`` score-and-prune steps to ``density``: the density schedule
    density ** (r / rounds), each round rescoring the survivors (``score_of_mask``)."""
    mask0 = jnp.ones(lay.D, jnp.float32) if alive_D is None else alive_D.astype(jnp.float32)

    def body(r, mask_D):
        d = jnp.asarray(density, jnp.float32) ** ((r + 1) / rounds)
        return masks.select(score_of_mask(mask_D), lay, d, mode, mask_D, min_one, exponents)

    return lax.fori_loop(0, rounds, body, mask0)


# ---------------------------------------------------------------- registry
class Context(NamedTuple):
    """What a registered scorer may use besides the weights."""
    apply_D: Callable           # (theta_D, x) -> logits
    input_shape: Sequence[int]  # one example, e.g. (28, 28, 1)
    pcfg: Any                   # procedures.prune_config: the scorers' options


class Scorer(NamedTuple):
    """One registered scorer. ``score(ctx, key, theta_D, alive_D, batch) -> score_D``
    (higher = keep); ``alive_D`` is the current 0/1 mask, ``batch`` ``(x, y)``
    training examples when ``needs_batch``, else None."""
    score: Callable
    needs_batch: bool
    at_init: bool               # pruning_compare prunes initialisations with it by default
    after_training: bool        # ... and trained weights (one-shot, iterative)
    rounds: str | None = None   # a pcfg field: prune in that many rescoring rounds (rounds_mask)


def _grasp(ctx: Context, key, theta_D, alive_D, batch):
    return grasp(batch_loss(ctx.apply_D, *batch, ctx.pcfg.grasp_temperature), theta_D, alive_D)


def _obd(ctx: Context, key, theta_D, alive_D, batch):
    x, y = batch
    p = ctx.pcfg
    w_D = theta_D * alive_D
    h_D = hessian_diag(p.obd_hessian, batch_loss(ctx.apply_D, x, y), ctx.apply_D, w_D, x, key,
                       p.obd_exact_max_params, p.hutchinson_samples, p.hessian_chunk)
    return obd(w_D, h_D)


# Adding a scorer: its function above and one line here (the order is pruning_compare's).
REGISTRY: dict[str, Scorer] = {
    "random": Scorer(lambda ctx, key, th, alive, b: random(key, th),
                     needs_batch=False, at_init=True, after_training=False),
    "magnitude": Scorer(lambda ctx, key, th, alive, b: magnitude(th),
                        needs_batch=False, at_init=True, after_training=True),
    "snip": Scorer(lambda ctx, key, th, alive, b: snip(batch_loss(ctx.apply_D, *b), th, alive),
                   needs_batch=True, at_init=True, after_training=False),
    "grasp": Scorer(_grasp, needs_batch=True, at_init=True, after_training=False),
    "synflow": Scorer(lambda ctx, key, th, alive, b: synflow(ctx.apply_D, th, alive,
                                                             ctx.input_shape),
                      needs_batch=False, at_init=True, after_training=False,
                      rounds="synflow_rounds"),
    "obd": Scorer(_obd, needs_batch=True, at_init=False, after_training=True),
}


def get(name: str) -> Scorer:
    if name not in REGISTRY:
        raise ValueError(f"Unknown scorer {name!r}; valid: {', '.join(REGISTRY)}.")
    return REGISTRY[name]


def mask(name: str, ctx: Context, key, theta_D, density, lay: masks.Layout, alive_D, batch,
         min_one=True, exponents=None):
    """Flat 0/1 mask of scorer ``name`` at ``density`` (``masks.select`` of its scores)."""
    s = get(name)
    mode = ctx.pcfg.mode
    if s.rounds is None:
        return masks.select(s.score(ctx, key, theta_D, alive_D, batch), lay, density, mode,
                            alive_D, min_one, exponents)
    return rounds_mask(lambda m_D: s.score(ctx, key, theta_D, m_D, batch), density, lay,
                       int(ctx.pcfg[s.rounds]), mode, alive_D, min_one, exponents)
