"""Distillation on random-noise inputs: a student fitted to a teacher's logits.

``make_distill_run(teacher, student, dcfg)`` returns ``run(key, hp, data)``
for ONE distillation (one teacher, one student size, one key); ``hp`` holds
the teacher's flat parameters ``hp['teacher_D']`` (and optionally a
``learning_rate`` and the noise kind), so ``vectorize.vmapped(...,
paired=True)`` runs many seeds, each with its own teacher, in one compiled
program.

The inputs are never real images: a *noise set* of ``dcfg.noise_size``
examples (MNIST's 60,000 by default) whose example i is a pure function of
``(noise key, i)``. Batches are regenerated inside ``jit`` from their indices,
so the set is fixed for the whole run, shuffled per epoch like a data set,
and never stored. Kinds, all in the normalised input space of ``data`` and
all fixed transforms of one standard normal draw per pixel (so kinds are
paired and the kind can be a traced index):

* ``uniform``: every pixel uniform over the valid pixel range [0, 255],
  i.e. [(0 - MEAN) / STD, (1 - MEAN) / STD], as lo + (hi - lo) Phi(z);
* ``gaussian``: every pixel N(0, 1), the global mean and sd of the data;
* ``pixel``: pixel p ~ N(mean_p, sd_p) with the per-pixel mean and sd of the
  teacher's *training* images (pixels constant in the data stay constant).
  Not clipped to the valid range: clipping would move the matched moments.

Soft targets: the default loss is the mean squared error between student
and teacher *logits* (``loss='mse'``, logit matching as in Ba & Caruana 2014),
not KL on softmax outputs. On noise the teacher is often confident, so its
softmax at T=1 is close to one-hot and KL passes little beyond the argmax;
the logits keep the teacher's full output geometry, and logit MSE is the
high-temperature limit of KL distillation for zero-mean logits (Hinton et al.
2015).
``loss='kl'`` (T^2 KL(teacher || student) at ``dcfg.temperature``) is there to
compare.

Steps are fused with ``lax.scan`` (epochs outer, batches inner). After every
epoch the student is scored on the teacher's training set with the
teacher's labels (``data.train_y``: real or random) and on how often it
agrees with the teacher's argmax there; at the end also on the real test set.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax import lax
from jax.scipy.special import ndtr

from subspace_jax import config as C
from subspace_jax import data as data_lib
from subspace_jax import models, train
from subspace_jax.errors import ConfigError
from subspace_jax.models import Model

NOISE_KINDS = ("uniform", "gaussian", "pixel")
LOSSES = ("mse", "kl")


def distill_config(**overrides) -> ml_collections.ConfigDict:
    """The ``train`` fields that apply (optimizer, learning_rate, weight_decay,
    momentum, schedule, warmup_epochs, batch_size, epochs, eval_chunk; not
    keep_best: the last epoch's student is kept) plus the noise and loss."""
    fields = C.train_config(epochs=2, batch_size=128, learning_rate=1e-3).to_dict()
    fields.update(noise="gaussian",    # uniform | gaussian | pixel
                  noise_size=60_000,   # examples in the noise set (MNIST's training set)
                  probe_size=1_000,    # held-out noise examples scoring the fit
                  loss="mse",          # mse (logits) | kl (softmax at temperature)
                  temperature=1.0)     # kl only
    cfg = ml_collections.ConfigDict(fields)
    cfg.update(overrides)
    return cfg


class Distilled(NamedTuple):
    history: dict[str, jax.Array]  # per epoch: distill_loss, train_loss/acc, agreement_train
    final: dict[str, jax.Array]    # scalars, see make_distill_run
    params: jax.Array              # the student's flat parameters


# ---------------------------------------------------------------- noise
def pixel_stats(x_NxHxWxC):
    """Per-pixel mean and sd over the examples, ``(mean_HxWxC, sd_HxWxC)``."""
    return x_NxHxWxC.mean(0), x_NxHxWxC.std(0)


def uniform_range() -> tuple[float, float]:
    """The valid pixel range [0, 255] in the normalised input space."""
    return (0.0 - data_lib.MEAN) / data_lib.STD, (1.0 - data_lib.MEAN) / data_lib.STD


def noise_index(kind) -> int:
    """Position of ``kind`` in ``NOISE_KINDS`` (the traced form of a kind)."""
    if kind not in NOISE_KINDS:
        raise ValueError(f"Unknown noise kind {kind!r} (config field noise); "
                         f"valid: {', '.join(NOISE_KINDS)}.")
    return NOISE_KINDS.index(kind)


def noise_examples(kind, key, idx_B, mean_HxWxC, sd_HxWxC):
    """Examples ``idx_B`` of the noise set of ``key``: ``x_BxHxWxC``.

    ``kind``: a name in ``NOISE_KINDS`` or its index (may be traced, so runs
    with different kinds share one compiled program and can be vmapped).
    Every kind is a fixed transform of the same standard normal z of example
    i, which depends only on ``(key, i)``: any batch of indices draws the same
    examples whatever the batch, and the kinds are paired draws. Uniform is
    lo + (hi - lo) Phi(z) (Phi the normal CDF maps z to U(0, 1)).
    """
    k = noise_index(kind) if isinstance(kind, str) else kind
    shape = mean_HxWxC.shape
    lo, hi = uniform_range()

    def one(i):
        z = jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32)
        u = jnp.clip(lo + (hi - lo) * ndtr(z), lo, hi)
        return jnp.where(k == 0, u, jnp.where(k == 1, z, mean_HxWxC + sd_HxWxC * z))

    return jax.vmap(one)(idx_B)


# ---------------------------------------------------------------- losses, scoring
def soft_target_loss(kind: str, student_NxK, teacher_NxK, temperature: float = 1.0):
    """Mean over the batch of the student's misfit to the teacher's outputs."""
    if kind == "mse":
        return jnp.mean((student_NxK - teacher_NxK) ** 2)
    if kind == "kl":
        log_p_t = jax.nn.log_softmax(teacher_NxK / temperature)
        log_p_s = jax.nn.log_softmax(student_NxK / temperature)
        kl_N = (jnp.exp(log_p_t) * (log_p_t - log_p_s)).sum(-1)
        return temperature ** 2 * kl_N.mean()  # T^2 keeps gradients comparable across T
    raise ValueError(f"Unknown distillation loss {kind!r} (config field loss); "
                     f"valid: {', '.join(LOSSES)}.")


def score(s_apply, w_D, t_apply, x, y_N, chunk: int):
    """``(loss, accuracy, agreement)`` of the student over ``x`` in one chunked
    pass: mean cross-entropy and accuracy on ``y_N``, and how often its argmax
    equals the teacher's. The teacher is re-run per chunk rather than its
    predictions stored: a forward pass costs less than the training it scores."""
    def sums(xb, yb):
        s = s_apply(w_D, xb)
        hit = (s.argmax(-1) == yb).sum()
        agree = (s.argmax(-1) == t_apply(xb).argmax(-1)).sum()
        return jnp.stack([train.cross_entropy(s, yb) * yb.shape[0],
                          hit.astype(jnp.float32), agree.astype(jnp.float32)])

    n = x.shape[0] // chunk * chunk
    total_3 = lax.map(lambda b: sums(*b), (x[:n].reshape(-1, chunk, *x.shape[1:]),
                                           y_N[:n].reshape(-1, chunk))).sum(0)
    if n < x.shape[0]:  # the ragged tail, once
        total_3 = total_3 + sums(x[n:], y_N[n:])
    return tuple(total_3 / x.shape[0])


# ---------------------------------------------------------------- one run
def make_distill_run(teacher: Model, student: Model, dcfg):
    """Builds ``run(key, hp, data) -> Distilled`` for one distillation.

    ``hp['teacher_D']``: the teacher's flat parameters (required);
    ``hp['learning_rate']``, ``hp['weight_decay']``: optional scalars, and
    ``hp['noise']``: optional ``noise_index`` of the kind (default: ``dcfg``;
    traced, so one compiled program serves every kind). ``data``: a
    ``train.Data``; its training images give the ``pixel`` noise moments, its
    training labels (the teacher's: real or random) and its real test labels
    score the student.

    Keys (by ``fold_in``): 0 student init, 1 noise set, 2 batch order,
    3 the held-out probe noise.

    ``final``: ``train_acc``/``train_loss`` (teacher's labels),
    ``test_acc``/``test_loss`` (real labels), ``agreement_train`` and
    ``agreement_test`` (student argmax == teacher argmax), ``probe_loss`` and
    ``probe_loss_init`` (distillation loss on held-out noise after and before
    training), ``probe_agreement`` and ``probe_agreement_init`` (argmax
    agreement on that noise), ``diverged``. ``history`` (per epoch):
    ``distill_loss`` (mean over its batches), and the end-of-epoch student's
    ``train_loss``, ``train_acc``, ``agreement_train``.
    Fitting the noise need not transfer to images. One pilot (a 784-512-10
    teacher, 3 epochs on 10k real MNIST labels, 97% train; student 410 units,
    one pass over 18k noise inputs, logit MSE): the student agreed with the
    teacher on 91% of the training images with Gaussian noise, 82% with
    pixel-matched noise and 31% with uniform noise.
    """
    # No ``noise`` field: every run's hp must name its kind (memorization's chains do).
    default_noise = noise_index(dcfg.noise) if "noise" in dcfg else None
    if dcfg.loss not in LOSSES:
        raise ValueError(f"Unknown distillation loss {dcfg.loss!r} (config field loss); "
                         f"valid: {', '.join(LOSSES)}.")
    n_noise, batch = int(dcfg.noise_size), int(dcfg.batch_size)
    if not 0 < batch <= n_noise:
        raise ValueError(f"distill batch_size={batch} must be in [1, noise_size={n_noise}].")
    if int(dcfg.epochs) < 1:
        raise ValueError(f"distill epochs={dcfg.epochs} must be >= 1.")
    steps_per_epoch, epochs = n_noise // batch, int(dcfg.epochs)
    chunk, probe_size = int(dcfg.eval_chunk), int(dcfg.probe_size)
    t_unravel = models.flat(teacher).unravel
    s_unravel, _, s_init_D = models.flat(student)

    def run(key, hp, data: train.Data) -> Distilled:
        k_init, k_noise, k_order, k_probe = (jax.random.fold_in(key, i) for i in range(4))
        teacher_params = t_unravel(hp["teacher_D"])
        t_apply = lambda x: lax.stop_gradient(teacher.apply(teacher_params, x))
        s_apply = lambda w_D, x: student.apply(s_unravel(w_D), x)
        mean, sd = pixel_stats(data.train_x)
        if "noise" not in hp and default_noise is None:
            raise ValueError("distillation: no noise kind (config field noise, or hp['noise'])")
        kind = hp.get("noise", None if default_noise is None else jnp.int32(default_noise))
        draw = lambda k, idx: noise_examples(kind, k, idx, mean, sd)
        fit = lambda w_D, x, t: soft_target_loss(dcfg.loss, s_apply(w_D, x), t, dcfg.temperature)

        probe_x = draw(k_probe, jnp.arange(probe_size))
        probe_t = t_apply(probe_x)
        agreement = lambda w_D: (s_apply(w_D, probe_x).argmax(-1) == probe_t.argmax(-1)).mean()

        opt_hp = {"learning_rate": hp.get("learning_rate", jnp.float32(dcfg.learning_rate)),
                  "weight_decay": hp.get("weight_decay", jnp.float32(dcfg.weight_decay))}
        opt = train.make_optimizer(dcfg, opt_hp, epochs * steps_per_epoch, steps_per_epoch)

        def step(state, idx_B):
            w_D, opt_state = state
            x = draw(k_noise, idx_B)
            loss, g_D = jax.value_and_grad(fit)(w_D, x, t_apply(x))
            updates, opt_state = opt.update(g_D, opt_state, w_D)
            return (optax.apply_updates(w_D, updates), opt_state), loss

        def epoch_step(state, epoch):
            perm = jax.random.permutation(jax.random.fold_in(k_order, epoch), n_noise)
            idx = perm[:steps_per_epoch * batch].reshape(steps_per_epoch, batch)
            state, losses = lax.scan(step, state, idx)
            loss, acc, agree = score(s_apply, state[0], t_apply, data.train_x, data.train_y, chunk)
            return state, {"distill_loss": losses.mean(), "train_loss": loss, "train_acc": acc,
                           "agreement_train": agree}

        w0_D = s_init_D(k_init)
        (w_D, _), history = lax.scan(epoch_step, (w0_D, opt.init(w0_D)), jnp.arange(epochs))
        # The last epoch's pass over the training set already scored the final student.
        test_loss, test_acc, agree_test = score(s_apply, w_D, t_apply, data.test_x, data.test_y,
                                                chunk)
        final = {"train_acc": history["train_acc"][-1], "train_loss": history["train_loss"][-1],
                 "test_acc": test_acc, "test_loss": test_loss,
                 "agreement_train": history["agreement_train"][-1], "agreement_test": agree_test,
                 "probe_loss": fit(w_D, probe_x, probe_t),
                 "probe_loss_init": fit(w0_D, probe_x, probe_t),
                 "probe_agreement": agreement(w_D), "probe_agreement_init": agreement(w0_D),
                 "diverged": ~(jnp.all(jnp.isfinite(history["distill_loss"]))
                               & jnp.all(jnp.isfinite(w_D)))}
        return Distilled(history, final, w_D)

    return run


def student_sizes(hidden: int, shrink: float = 0.2, min_hidden: int = 5,
                  rounds: int = 0) -> list[int]:
    """``[hidden, h1, h2, ...]``: each round ``shrink`` fewer units (rounded,
    at least one fewer), down to ``min_hidden`` or for ``rounds`` rounds (0 = no cap)."""
    if not 0.0 < shrink < 1.0:
        raise ConfigError(f"shrink={shrink} (config field shrink) must be in (0, 1).")
    sizes = [int(hidden)]
    while True:
        h = min(int(round(sizes[-1] * (1.0 - shrink))), sizes[-1] - 1)
        if h < max(int(min_hidden), 1) or (rounds and len(sizes) > rounds):
            return sizes
        sizes.append(h)
