"""One training run as a pure function of (key, hyperparameters, data).

``make_run(model, tcfg, scfg, n_train)`` returns ``run(key, hp, data) -> Result``
for a single run. Everything that changes the compiled program (model, batch
size, epochs, subspace ``d_max``) is static and comes from the configs;
numbers that do not (learning rate, weight decay, active subspace size) come
in ``hp`` as scalars so ``subspace_jax.vectorize`` can vmap them. ``hp`` may
also carry ``theta_init`` (flat D-vector starting point, e.g. rewound weights)
and ``mask`` (flat 0/1 D-vector: pruned weights start and stay exactly zero).

Steps are fused with ``lax.scan`` (epochs outer, batches inner). Validation is
measured after every epoch on two halves of the validation split:

* ``val_*``: one half *chooses*: with ``keep_best`` the parameters of its
  best epoch are kept;
* ``decide_*``: the other half *decides* (``validation_halves``: a fixed
  random split, the same for every run): it chose nothing, so its accuracy of
  the kept parameters is an unbiased estimate to compare with a threshold or a
  rival (d_int90, margins, "the best"). Its cost: half the images, so its
  binomial sd at 90% accuracy is sqrt(0.9 * 0.1 / 5,000) = 0.42 points for the
  default 10,000 validation images (0.30 for all 10,000).

The test set is scored once, at the end, on the kept parameters. A
``burn_in`` or ``trajectory`` projection first trains in full space
(``make_pretrain``: the same key's init and data order) for its theta0 or P.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.flatten_util import ravel_pytree

from subspace_jax import subspace
from subspace_jax.errors import ConfigError
from subspace_jax.models import Model

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "warmup_cosine")


class Data(NamedTuple):
    """Device arrays of one dataset; passed as arguments, never baked into HLO."""
    train_x: jax.Array
    train_y: jax.Array
    val_x: jax.Array
    val_y: jax.Array
    test_x: jax.Array
    test_y: jax.Array

    @classmethod
    def from_dataset(cls, ds) -> "Data":
        return cls(*(jnp.asarray(a) for a in (ds.train_x, ds.train_y, ds.val_x,
                                             ds.val_y, ds.test_x, ds.test_y)))


class Result(NamedTuple):
    history: dict[str, jax.Array]   # per epoch: train_loss, train_acc, val_*, decide_* (loss, acc)
    final: dict[str, jax.Array]     # scalars: best_epoch, val_acc, decide_acc, test_acc, ..., diverged
    params: Any                     # the kept trainable vector (theta or omega)


class Stages(NamedTuple):
    """One run of ``make_run`` split at epoch boundaries (same numbers).

    ``start(key, hp, data) -> carry``; ``advance(carry, key, hp, data,
    first_epoch, n_epochs) -> (carry, history of n_epochs)`` (``n_epochs``
    static); ``finish(carry, history, key, hp, data) -> Result`` with the
    concatenated history of all ``epochs``.
    """
    start: Any
    advance: Any
    finish: Any
    epochs: int


def default_hp(tcfg, d_active: int = 0) -> dict[str, jax.Array]:
    return {"learning_rate": jnp.float32(tcfg.learning_rate),
            "weight_decay": jnp.float32(tcfg.weight_decay),
            "d_active": jnp.int32(d_active)}


def make_optimizer(tcfg, hp, total_steps: int, steps_per_epoch: int):
    lr = hp["learning_rate"]
    if tcfg.schedule == "constant":
        schedule = lambda step: lr
    elif tcfg.schedule == "cosine":
        schedule = optax.cosine_decay_schedule(lr, total_steps)
    elif tcfg.schedule == "warmup_cosine":
        warmup = max(1, int(tcfg.warmup_epochs * steps_per_epoch))
        # lr times a unit-peak schedule: optax checks peak_value == 0 in Python,
        # which a learning rate vmapped over runs (a tracer) cannot answer.
        unit = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, max(total_steps, warmup + 1))
        schedule = lambda step: lr * unit(step)
    else:
        raise ValueError(f"Unknown train.schedule {tcfg.schedule!r}; valid: {', '.join(SCHEDULES)}.")
    wd = hp["weight_decay"]
    if tcfg.optimizer == "adam":
        return optax.chain(optax.add_decayed_weights(wd), optax.adam(schedule))
    if tcfg.optimizer == "adamw":
        return optax.adamw(schedule, weight_decay=wd)
    if tcfg.optimizer == "sgd":
        return optax.chain(optax.add_decayed_weights(wd),
                           optax.sgd(schedule, momentum=tcfg.momentum or None))
    raise ValueError(f"Unknown train.optimizer {tcfg.optimizer!r}; valid: {', '.join(OPTIMIZERS)}.")


def split_validation(n_val: int) -> int:
    """Size of the choosing half of ``n_val`` validation images (the rest decides)."""
    if n_val < 2:
        raise ValueError(f"data.val_size={n_val}: need >= 2 validation images (one half "
                         "chooses the epoch, the other decides).")
    return (n_val + 1) // 2


HALVES_SEED = 0  # fixes the one random split of the validation images (never a run's seed)


def halves_index(n_val: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices of the choosing and deciding halves of ``n_val`` images:
    one fixed random permutation (``HALVES_SEED``), the same for every run."""
    n_choose = split_validation(n_val)
    perm = np.random.default_rng(HALVES_SEED).permutation(n_val)
    return np.sort(perm[:n_choose]), np.sort(perm[n_choose:])


def validation_halves(x, y):
    """``((choose_x, choose_y), (decide_x, decide_y))``: a fixed random split.

    Random, not by position: MNIST's training file mixes two writer
    populations by position. Its even- and odd-indexed images differ (mean
    inked fraction 0.162 vs 0.178 over all 60,000), and with those halves the
    odd (deciding) half of a re-run scored about 6 points above the even one;
    with contiguous halves the last 5,000 validation images scored 2.4 points
    above the first 5,000 (both runs: docs/results/intrinsic_dimension.md).
    A random split gives both halves the same mix in expectation.
    """
    c, d = halves_index(int(x.shape[0]))
    return (x[c], y[c]), (x[d], y[d])


def cross_entropy(logits_NxK, y_N):
    return optax.softmax_cross_entropy_with_integer_labels(logits_NxK, y_N).mean()


def evaluate(apply, params, x, y, chunk: int):
    """Mean loss and accuracy over ``x`` in chunks (bounded memory)."""
    n = x.shape[0] // chunk * chunk
    xs = x[:n].reshape(-1, chunk, *x.shape[1:])
    ys = y[:n].reshape(-1, chunk)

    def body(carry, xy):
        logits = apply(params, xy[0])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, xy[1]).sum()
        correct = (logits.argmax(-1) == xy[1]).sum()
        return (carry[0] + loss, carry[1] + correct), None

    (loss, correct), _ = lax.scan(body, (0.0, 0), (xs, ys))
    if n < x.shape[0]:  # the ragged tail, once
        logits = apply(params, x[n:])
        loss = loss + optax.softmax_cross_entropy_with_integer_labels(logits, y[n:]).sum()
        correct = correct + (logits.argmax(-1) == y[n:]).sum()
    return loss / x.shape[0], correct / x.shape[0]


def key_parts(key):
    """A run's purpose keys ``(init, data order, projection)``."""
    return jax.random.split(key, 3)


def epoch_batches(k_data, epoch, n_train: int, batch: int):
    """``idx_SxB``: the batches of one epoch, a permutation from ``fold_in(k_data, epoch)``."""
    perm = jax.random.permutation(jax.random.fold_in(k_data, epoch), n_train)
    steps = n_train // batch
    return perm[:steps * batch].reshape(steps, batch)


def _loss_fn(apply_flat):
    def loss_fn(w, x, y):
        logits = apply_flat(w, x)
        return cross_entropy(logits, y), (logits.argmax(-1) == y).mean()
    return loss_fn


def _train_step(loss_fn, opt, data: Data, mask_D=None):
    """One optimiser step on the batch ``idx``: ``(w, opt_state) -> (.., (loss, acc))``."""
    def train_step(state, idx):
        w, opt_state = state
        (loss, acc), g = jax.value_and_grad(loss_fn, has_aux=True)(
            w, data.train_x[idx], data.train_y[idx])
        updates, opt_state = opt.update(g, opt_state, w)
        if mask_D is not None:  # pruned weights stay exactly zero
            updates = updates * mask_D
        return (optax.apply_updates(w, updates), opt_state), (loss, acc)
    return train_step


def make_pretrain(model: Model, tcfg, projection: str, n_train: int, d_max: int):
    """The full-space stage of a ``burn_in`` or ``trajectory`` projection; None
    for other kinds (and ``burn_in:steps=0``).

    Returns ``pretrain(theta_D, unravel, k_data, data) -> (theta0_D, basis_Dxd)``:
    ``steps`` full-space steps from theta_D, exactly the first steps of a
    full-space ``make_run`` of the same key with a constant learning rate
    (same init, same data order, ``epoch_batches``): ``train.optimizer``,
    the kind's ``lr`` and ``batch``, no weight decay. ``burn_in``: theta0_D =
    the end point, no basis. ``trajectory``: theta0_D = theta_D, basis = the
    top ``d_max`` directions of the snapshot differences (``trajectory_basis``).
    It reads no hp, so under vmap it runs once per seed, shared by the rows.
    """
    spec = subspace.pretraining(projection, d_max)
    if spec is None or spec["steps"] == 0:
        return None
    subspace.check_kind(projection, d=d_max)
    batch, steps = int(spec["batch"]), int(spec["steps"])
    if batch > n_train:
        raise ConfigError(f"config.projection={projection!r}: batch={batch} exceeds the "
                          f"{n_train} training images.")
    epochs = -(-steps // (n_train // batch))
    opt = make_optimizer(SimpleNamespace(optimizer=tcfg.optimizer, momentum=tcfg.momentum,
                                         schedule="constant"),
                         {"learning_rate": jnp.float32(spec["lr"]),
                          "weight_decay": jnp.float32(0.0)}, steps, n_train // batch)
    trajectory = subspace.parse_kind(projection)[0] == "trajectory"

    def pretrain(theta_D, unravel, k_data, data: Data):
        idx_SxB = jax.vmap(lambda e: epoch_batches(k_data, e, n_train, batch))(
            jnp.arange(epochs)).reshape(-1, batch)[:steps]
        step = _train_step(_loss_fn(lambda w, x: model.apply(unravel(w), x)), opt, data)

        def snapshot(state, idx_ExB):
            state, _ = lax.scan(step, state, idx_ExB)
            return state, state[0] - theta_D

        (theta_end, _), diffs_MxD = lax.scan(
            snapshot, (theta_D, opt.init(theta_D)),
            idx_SxB.reshape(spec["snapshots"], spec["every"], batch))
        if trajectory:
            return theta_D, subspace.trajectory_basis(diffs_MxD, d_max)
        return theta_end, None

    return pretrain


def make_run(model: Model, tcfg, scfg, n_train: int, on_epoch=None):
    """Builds ``run(key, hp, data) -> Result`` for one run.

    Args:
      model: the model (init/apply).
      tcfg: ``train`` config: optimizer, learning_rate, weight_decay, momentum,
        schedule, warmup_epochs, batch_size, epochs, eval_chunk, keep_best.
      scfg: ``subspace`` config: ``d_max`` (0 = full-space training) and
        ``projection``. The active size comes from ``hp['d_active']``.
      n_train: training-set size (static: it fixes steps per epoch).
      on_epoch: optional host function ``on_epoch(epoch, val_acc)`` called after each
        epoch (once per run under vmap), e.g. a ``workdir.EpochTicker``.
    """
    batch = int(tcfg.batch_size)
    if not 0 < batch <= n_train:
        raise ValueError(f"train.batch_size={batch} must be in [1, {n_train}] (training-set size).")
    if int(tcfg.epochs) < 1:
        raise ValueError(f"train.epochs={tcfg.epochs} must be >= 1.")
    steps_per_epoch = n_train // batch
    epochs = int(tcfg.epochs)
    d_max = int(scfg.d_max)
    chunk = int(tcfg.eval_chunk)
    pretrain = make_pretrain(model, tcfg, scfg.projection, n_train, d_max) if d_max else None

    def setup(key, hp, data: Data):
        """Everything one run derives from its key and hp: (initial carry, epoch step, finish)."""
        k_init, k_data, k_proj = key_parts(key)
        (sel_x, sel_y), (dec_x, dec_y) = validation_halves(data.val_x, data.val_y)
        params0 = model.init(k_init)
        theta0_D, unravel = ravel_pytree(params0)
        # Optional per-run inputs (their presence is static): a starting point
        # (e.g. rewound weights) and a 0/1 pruning mask over the flat params.
        theta0_D = hp.get("theta_init", theta0_D)
        mask_D = hp.get("mask")
        if mask_D is not None:
            if d_max > 0:
                raise ValueError("pruning masks apply to full-space training (subspace.d_max=0)")
            mask_D = mask_D.astype(theta0_D.dtype)
            theta0_D = theta0_D * mask_D
        if d_max > 0:
            from subspace_jax.pruning import masks  # the package imports this module
            basis_Dxd = None
            if pretrain is not None:
                if "theta_init" in hp:
                    raise ValueError(f"projection {scfg.projection!r} makes its own theta0; "
                                     "hp['theta_init'] cannot be combined with it")
                theta0_D, basis_Dxd = pretrain(theta0_D, unravel, k_data, data)
            project = subspace.make_projection(
                scfg.projection, k_proj, theta0_D.size, d_max, theta0_D=theta0_D,
                layer_sizes=masks.layout(params0).sizes, d_active=hp["d_active"],
                basis_Dxd=basis_Dxd)  # each kind uses what it needs
            mask_d = subspace.column_mask(d_max, hp["d_active"])
            to_params = lambda omega_d: unravel(theta0_D + project(omega_d * mask_d))
            trainable = jnp.zeros(d_max, jnp.float32)
        else:
            to_params = unravel
            trainable = theta0_D
        loss_fn = _loss_fn(lambda w, x: model.apply(to_params(w), x))
        opt = make_optimizer(tcfg, hp, epochs * steps_per_epoch, steps_per_epoch)
        train_step = _train_step(loss_fn, opt, data, mask_D)

        def epoch_step(carry, epoch):
            w, opt_state, best_w, best_acc, best_epoch = carry
            idx = epoch_batches(k_data, epoch, n_train, batch)
            (w, opt_state), (losses, accs) = lax.scan(train_step, (w, opt_state), idx)
            params = to_params(w)
            val_loss, val_acc = evaluate(model.apply, params, sel_x, sel_y, chunk)
            decide_loss, decide_acc = evaluate(model.apply, params, dec_x, dec_y, chunk)
            if on_epoch is not None:
                # val_acc ties the call to the epoch's end (epoch alone is known at its start).
                jax.debug.callback(on_epoch, epoch, val_acc)
            better = val_acc > best_acc if tcfg.keep_best else True
            best_w = jax.tree.map(lambda a, b: jnp.where(better, a, b), w, best_w)
            best_acc = jnp.where(better, val_acc, best_acc)
            best_epoch = jnp.where(better, epoch, best_epoch)
            metrics = {"train_loss": losses.mean(), "train_acc": accs.mean(),
                       "val_loss": val_loss, "val_acc": val_acc,
                       "decide_loss": decide_loss, "decide_acc": decide_acc}
            return (w, opt_state, best_w, best_acc, best_epoch), metrics

        init_carry = (trainable, opt.init(trainable), trainable, jnp.float32(-1.0), jnp.int32(-1))

        def finish(carry, history) -> Result:
            w, _, best_w, best_acc, best_epoch = carry
            # theta is formed once per evaluation, not once per chunk (P @ omega is costly).
            best_params = to_params(best_w)
            test_loss, test_acc = evaluate(model.apply, best_params, data.test_x, data.test_y, chunk)
            train_loss, train_acc = evaluate(model.apply, best_params, data.train_x, data.train_y,
                                             chunk)
            diverged = ~(jnp.all(jnp.isfinite(history["train_loss"])) & jnp.all(jnp.isfinite(w)))
            final = {"best_epoch": best_epoch + 1, "val_acc": history["val_acc"][best_epoch],
                     "val_loss": history["val_loss"][best_epoch],
                     "decide_acc": history["decide_acc"][best_epoch],
                     "decide_loss": history["decide_loss"][best_epoch],
                     "train_acc": train_acc, "train_loss": train_loss,
                     "test_acc": test_acc, "test_loss": test_loss, "diverged": diverged}
            return Result(history, final, best_w)

        return init_carry, epoch_step, finish

    def run(key, hp, data: Data) -> Result:
        init_carry, epoch_step, finish = setup(key, hp, data)
        carry, history = lax.scan(epoch_step, init_carry, jnp.arange(epochs))
        return finish(carry, history)

    # The same run in pieces (``vectorize.vmapped_chunks``): a carry checkpointed
    # between compiled chunks of epochs is what makes Ctrl-C and resume take
    # effect within a unit. Each piece re-derives theta0, P and the optimiser
    # from the key (cheap beside an epoch; P is never stored), and so repeats
    # a burn_in / trajectory kind's full-space pre-training once per piece.
    def start(key, hp, data: Data):
        return setup(key, hp, data)[0]

    def advance(carry, key, hp, data: Data, first_epoch, n_epochs: int):
        epoch_step = setup(key, hp, data)[1]
        return lax.scan(epoch_step, carry, first_epoch + jnp.arange(n_epochs))

    def finish(carry, history, key, hp, data: Data) -> Result:
        return setup(key, hp, data)[2](carry, history)

    run.stages = Stages(start, advance, finish, epochs)
    return run
