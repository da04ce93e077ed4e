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

Options (``OPTIONS``, all off unless set): training batches warped per run
key (``augment``; validation, test and the final train score never are),
label smoothing, distillation from cached teacher logits
(``Data.teacher_logits``, see ``subspace_jax.teacher``), an EMA of the
trained vector evaluated and kept in its place, the ``onecycle``
schedule, and gradual magnitude pruning (``prune_to``). A model with batch
norm (``models.cnn(bn=True)``) trains on batch statistics and is always
evaluated folded (``models.fold_bn``, statistics of the first ``bn_calib``
training images): every reported accuracy is that of the plain network that
is exported.
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

from subspace_jax import augment, models, subspace
from subspace_jax.errors import ConfigError
from subspace_jax.models import Model

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "onecycle")
# Optional training options, read with ``tcfg.get`` (absent = off, so configs
# and unit ids written before them are unchanged). Static ones change the
# program; the numbers may instead come in ``hp`` (vmappable), which wins.
OPTIONS = dict(
    augment=False,          # static: warp training batches (subspace_jax.augment)
    elastic_sigma=0.0,      # static: > 0 adds an elastic field of that smoothing (pixels)
    aug_shift=0.0, aug_rotate=0.0, aug_scale=0.0, aug_elastic=0.0,  # numbers (hp)
    label_smoothing=0.0,    # number (hp); 0 and absent from hp: the plain loss
    ema=False,              # static: keep/evaluate an EMA of the trained vector
    ema_decay=0.999,        # number (hp): per-step decay; 0 = the raw params
    distill_alpha=0.5,      # number (hp): weight of the teacher (Data.teacher_logits)
    distill_temperature=4.0,  # number (hp)
    onecycle_pct=0.3,       # static: fraction of steps rising to the peak (onecycle)
    prune_to=0,             # gradual magnitude pruning to this many non-zero params
                            # (biases and slopes counted; 0 = off); number (hp) too
    gmp_start=0.1,          # static: pruning runs over epochs [start, end) as fractions
    gmp_end=0.6,            #   of the run; the epochs after it fine-tune the final mask
    bn_calib=1000,          # static: batch-norm models are evaluated folded, with the
                            #   statistics of the first bn_calib training images
)
AUG_SALT = 2**31 - 1  # folded into the data key for the warps (epochs never reach it)


class Data(NamedTuple):
    """Device arrays of one dataset; passed as arguments, never baked into HLO."""
    train_x: jax.Array
    train_y: jax.Array
    val_x: jax.Array
    val_y: jax.Array
    test_x: jax.Array
    test_y: jax.Array
    teacher_logits: Any = None  # optional N_train x K: distill from these (distill_alpha)

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
    elif tcfg.schedule == "onecycle":
        # Smith's one-cycle over all the run's steps: cosine up from lr / 25 to
        # lr over ``onecycle_pct`` of them, then cosine down to lr / 25e4.
        unit = optax.cosine_onecycle_schedule(max(total_steps, 2), 1.0,
                                              float(option(tcfg, "onecycle_pct")))
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


def option(tcfg, name: str):
    """``tcfg.name`` if set, else its off value in ``OPTIONS``."""
    return tcfg.get(name, OPTIONS[name]) if hasattr(tcfg, "get") else OPTIONS[name]


def number(hp, tcfg, name: str):
    """A vmappable number: ``hp[name]`` if given, else the config's (or off) value."""
    return hp[name] if name in hp else jnp.float32(option(tcfg, name))


def check_options(tcfg, prefix: str = "train") -> None:
    """One-line ConfigErrors for the optional training options."""
    def bad(name, valid):
        raise ConfigError(f"config.{prefix}.{name}={option(tcfg, name)!r} must be {valid}.")
    for name in augment.HP_FIELDS:
        v = float(option(tcfg, name))
        if not np.isfinite(v) or v < 0 or (name == "aug_scale" and v >= 1):
            bad(name, "in [0, 1)" if name == "aug_scale" else "a finite number >= 0")
    if not 0 <= float(option(tcfg, "elastic_sigma")) < 1e3:
        bad("elastic_sigma", ">= 0 (pixels; 0 = no elastic field)")
    if not 0 <= float(option(tcfg, "label_smoothing")) < 1:
        bad("label_smoothing", "in [0, 1)")
    if not 0 <= float(option(tcfg, "ema_decay")) < 1:
        bad("ema_decay", "in [0, 1)")
    if not 0 <= float(option(tcfg, "distill_alpha")) <= 1:
        bad("distill_alpha", "in [0, 1]")
    if not float(option(tcfg, "distill_temperature")) > 0:
        bad("distill_temperature", "> 0")
    if not 0 < float(option(tcfg, "onecycle_pct")) < 1:
        bad("onecycle_pct", "in (0, 1)")
    prune_to = option(tcfg, "prune_to")
    if isinstance(prune_to, bool) or int(prune_to) != prune_to or prune_to < 0:
        bad("prune_to", "an integer >= 0 (0 = no pruning during training)")
    calib = option(tcfg, "bn_calib")
    if isinstance(calib, bool) or int(calib) != calib or calib < 2:
        bad("bn_calib", "an integer >= 2 (training images giving batch-norm statistics)")
    if not 0 <= float(option(tcfg, "gmp_start")) < float(option(tcfg, "gmp_end")) <= 1:
        bad("gmp_end", f"in (gmp_start={option(tcfg, 'gmp_start')}, 1] with gmp_start >= 0")


def gmp_epochs(tcfg, epochs: int) -> tuple[int, int]:
    """(first, end) epoch of gradual pruning: at least one epoch, within the run."""
    first = min(int(round(float(option(tcfg, "gmp_start")) * epochs)), epochs - 1)
    end = max(first + 1, min(epochs, int(round(float(option(tcfg, "gmp_end")) * epochs))))
    return first, end


def gmp_kept(step, n_prunable, target, first_step: int, end_step: int):
    """Prunable weights kept after (0-based) step ``step``: Zhu & Gupta's cubic
    schedule from all ``n_prunable`` to ``target`` over steps [first, end)."""
    frac = jnp.clip((step + 1 - first_step) / max(end_step - first_step, 1), 0.0, 1.0)
    kept = target + (n_prunable - target) * (1.0 - frac) ** 3
    return jnp.round(kept).astype(jnp.int32)


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


def cross_entropy(logits_NxK, y_N, smoothing=None):
    """Mean CE; with ``smoothing`` eps the target is (1 - eps) one-hot + eps / K."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits_NxK, y_N).mean()
    if smoothing is None:
        return ce
    uniform = -jax.nn.log_softmax(logits_NxK).mean()  # CE against eps / K on every class
    return (1 - smoothing) * ce + smoothing * uniform


def distill_loss(logits_NxK, teacher_NxK, alpha, temperature):
    """T^2 KL(softmax(teacher / T) || softmax(student / T)), batch mean, times ``alpha``
    (Hinton et al. 2015: T^2 keeps its gradient scale as T changes)."""
    log_t = jax.nn.log_softmax(teacher_NxK / temperature)
    log_s = jax.nn.log_softmax(logits_NxK / temperature)
    kl = (jnp.exp(log_t) * (log_t - log_s)).sum(-1).mean()
    return alpha * temperature ** 2 * kl


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

        def loss_fn(w, x, y):  # plain CE: the pre-training uses none of OPTIONS
            logits = model.apply(unravel(w), x)
            return cross_entropy(logits, y), (logits.argmax(-1) == y).mean()

        def step(state, idx):
            w, opt_state = state
            (loss, acc), g = jax.value_and_grad(loss_fn, has_aux=True)(
                w, data.train_x[idx], data.train_y[idx])
            updates, opt_state = opt.update(g, opt_state, w)
            return (optax.apply_updates(w, updates), opt_state), (loss, acc)

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
        schedule, warmup_epochs, batch_size, epochs, eval_chunk, keep_best; and
        any of ``OPTIONS`` (absent = off): ``augment`` (warped training
        batches, magnitudes ``aug_*``), ``label_smoothing``, ``ema`` (the
        per-step EMA of the trained vector, ``ema_decay``, is what is evaluated
        and kept), distillation (``distill_alpha``, ``distill_temperature``;
        on when ``data.teacher_logits`` is given). Their numbers may come in
        ``hp`` instead (vmappable).
      scfg: ``subspace`` config: ``d_max`` (0 = full-space training) and
        ``projection``. The active size comes from ``hp['d_active']``.
      n_train: training-set size (static: it fixes steps per epoch).
      on_epoch: optional host function ``on_epoch(epoch, val_acc)`` called after each
        epoch (once per run under vmap), e.g. ``workdir.tick`` (progress to the
        ticker current at run time: ``with workdir.ticking(label, epochs):``).
    """
    batch = int(tcfg.batch_size)
    if not 0 < batch <= n_train:
        raise ValueError(f"train.batch_size={batch} must be in [1, {n_train}] (training-set size).")
    if int(tcfg.epochs) < 1:
        raise ValueError(f"train.epochs={tcfg.epochs} must be >= 1.")
    check_options(tcfg)
    steps_per_epoch = n_train // batch
    epochs = int(tcfg.epochs)
    d_max = int(scfg.d_max)

    def gmp_layout():
        """(layout, count of unprunable params) for pruning during training."""
        from subspace_jax.pruning import masks  # (pruning imports train)
        if d_max > 0:
            raise ConfigError("config.train.prune_to: pruning during training needs "
                              "full-space training (subspace.d_max=0).")
        lay = masks.model_layout(model)
        # Biases and slopes are never pruned; BN's gamma and beta fold away, so the
        # count is that of the network evaluated and exported.
        fixed = sum(size for name, size, p in zip(lay.names, lay.sizes, lay.prunable)
                    if not p and name.rsplit("/", 1)[-1] not in ("gamma", "beta"))
        prune_to, least = option(tcfg, "prune_to"), fixed + len(lay.prunable_leaves)
        if 0 < prune_to < least:
            raise ConfigError(f"config.train.prune_to={prune_to}: {model.name} has {fixed} "
                              f"unprunable params (biases, slopes) and "
                              f"{len(lay.prunable_leaves)} weight tensors (one weight kept "
                              f"each); valid: >= {least}.")
        return lay, fixed

    if option(tcfg, "prune_to") > 0:
        gmp_layout()  # bad counts fail here, before any tracing
    bn = models.has_bn(model.arch)
    plain = models.from_arch(models.folded_arch(model.arch), model.name) if bn else model
    n_calib = min(int(option(tcfg, "bn_calib")), n_train)

    def eval_view(params, data: Data):
        """(apply, params) of the network evaluated: batch norm folded away."""
        if not bn:
            return model.apply, params
        return plain.apply, models.fold_bn(model, params, data.train_x[:n_calib])

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
        apply_flat = lambda w, x: model.apply(to_params(w), x)
        # Training options (OPTIONS): which are on is static, their numbers traced.
        smoothing = (number(hp, tcfg, "label_smoothing")
                     if "label_smoothing" in hp or option(tcfg, "label_smoothing") > 0 else None)
        teacher = data.teacher_logits
        alpha = number(hp, tcfg, "distill_alpha")
        temperature = number(hp, tcfg, "distill_temperature")
        use_ema = bool(option(tcfg, "ema"))
        ema_decay = number(hp, tcfg, "ema_decay")
        warp = bool(option(tcfg, "augment"))
        aug_hp = {k: number(hp, tcfg, k) for k in augment.HP_FIELDS}
        sigma = float(option(tcfg, "elastic_sigma"))
        k_aug = jax.random.fold_in(k_data, AUG_SALT)
        fill = data.train_x.min() if warp else None  # the background: pixel 0, normalised
        gmp = "prune_to" in hp or option(tcfg, "prune_to") > 0
        if gmp:
            lay, fixed = gmp_layout()
            target = jnp.clip(number(hp, tcfg, "prune_to") - fixed, 1, lay.n_prunable)
            g_first, g_end = gmp_epochs(tcfg, epochs)
            alive0 = jnp.ones_like(theta0_D) if mask_D is None else mask_D
        i_alive = 2 + use_ema  # position of the gmp mask in the step state

        def loss_fn(w, x, y, t):
            logits = apply_flat(w, x)
            loss = cross_entropy(logits, y, smoothing)
            if t is not None:
                loss = (1 - alpha) * loss + distill_loss(logits, t, alpha, temperature)
            return loss, (logits.argmax(-1) == y).mean()

        opt = make_optimizer(tcfg, hp, epochs * steps_per_epoch, steps_per_epoch)

        def train_step(state, xs):
            idx, k_step, step = xs
            w, opt_state = state[:2]
            x = data.train_x[idx]
            if warp:
                x = augment.augment(k_step, x, aug_hp, fill, sigma)
            t = None if teacher is None else teacher[idx]
            (loss, acc), g = jax.value_and_grad(loss_fn, has_aux=True)(
                w, x, data.train_y[idx], t)
            updates, opt_state = opt.update(g, opt_state, w)
            if mask_D is not None:  # pruned weights stay exactly zero
                updates = updates * mask_D
            w = optax.apply_updates(w, updates)
            out = [w, opt_state]
            if use_ema:  # decay 0: the EMA is the raw vector, bit for bit
                out.append(ema_decay * state[2] + (1 - ema_decay) * w)
            if gmp:  # the smallest alive weights go; the dead never come back
                kept = gmp_kept(step, lay.n_prunable, target, g_first * steps_per_epoch,
                                g_end * steps_per_epoch)
                from subspace_jax.pruning import masks
                alive = masks.select(jnp.abs(w), lay, kept / lay.n_prunable,
                                     alive_D=state[i_alive])
                out[0] = w * alive
                out.append(alive)
            return tuple(out), (loss, acc)

        def epoch_step(carry, epoch):
            w, opt_state, best_w, best_acc, best_epoch = carry[:5]
            idx = epoch_batches(k_data, epoch, n_train, batch)
            k_steps = (jax.random.split(jax.random.fold_in(k_aug, epoch), steps_per_epoch)
                       if warp else None)
            steps = epoch * steps_per_epoch + jnp.arange(steps_per_epoch) if gmp else None
            state = (w, opt_state, *carry[5:])
            state, (losses, accs) = lax.scan(train_step, state, (idx, k_steps, steps))
            w, opt_state = state[:2]
            kept = state[2] if use_ema else w  # the vector evaluated and kept
            if gmp:
                kept = kept * state[i_alive]  # an EMA of pruned weights is still exactly 0
            apply, params = eval_view(to_params(kept), data)
            val_loss, val_acc = evaluate(apply, params, sel_x, sel_y, chunk)
            decide_loss, decide_acc = evaluate(apply, params, dec_x, dec_y, chunk)
            if on_epoch is not None:
                # val_acc ties the call to the epoch's end (epoch alone is known at its start).
                jax.debug.callback(on_epoch, epoch, val_acc)
            better = val_acc > best_acc if tcfg.keep_best else True
            if gmp:  # only epochs at the target count are candidates
                better = better & (epoch >= g_end - 1)
            best_w = jax.tree.map(lambda a, b: jnp.where(better, a, b), kept, best_w)
            best_acc = jnp.where(better, val_acc, best_acc)
            best_epoch = jnp.where(better, epoch, best_epoch)
            metrics = {"train_loss": losses.mean(), "train_acc": accs.mean(),
                       "val_loss": val_loss, "val_acc": val_acc,
                       "decide_loss": decide_loss, "decide_acc": decide_acc}
            return (w, opt_state, best_w, best_acc, best_epoch, *state[2:]), metrics

        init_carry = (trainable, opt.init(trainable), trainable, jnp.float32(-1.0), jnp.int32(-1),
                      *((trainable,) if use_ema else ()), *((alive0,) if gmp else ()))

        def finish(carry, history) -> Result:
            w, _, best_w, best_acc, best_epoch = carry[:5]
            # theta is formed once per evaluation, not once per chunk (P @ omega is costly).
            apply, best_params = eval_view(to_params(best_w), data)
            test_loss, test_acc = evaluate(apply, best_params, data.test_x, data.test_y, chunk)
            train_loss, train_acc = evaluate(apply, best_params, data.train_x, data.train_y, chunk)
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
