"""Neural golf: the fewest parameters that reach 98% (and 99%) on MNIST, every choice on validation.

    python launch.py --experiment=golf                  # default search, budget 1,000 params
    python launch.py --experiment=golf --config.budget=700 --workdir=runs/golf_700
    python launch.py --experiment=golf --quick          # smoke form: seconds of training
    python launch.py --experiment=golf --config.space.augment='(False, True)' --config.space.ema='(True,)' --config.space.schedules='("onecycle",)' --config.space.epochs='(50,)'

Model family ``models.golf_cnn``: three VALID convs (2x2 max-pool after the
first two), optionally depthwise-separable and global average pooling, ReLU
or PReLU, optionally batch norm folded into each conv (``space.bn``: every
evaluation, the export and the budget see the folded network). Optuna
(ask/tell) searches ``config.space``: channels and kernels, activation,
batch size, epochs, schedule, learning rate, weight decay (Adam), and the
training options of ``train.OPTIONS``, all off by default (off: neither
searched nor pinned, so older studies resume): warped batches
(``augment``, ``aug_*``, ``elastic_sigma``), ``label_smoothing``, a weight
EMA (``ema``, ``ema_decay``), distillation from ``--config.teacher=A.npz[,B.npz]``
(logits cached in ``WORKDIR/teachers/``), gradual magnitude pruning to
``prune_to`` non-zero params. A range with low < high is searched; low ==
high is fixed.

The rule: one compiled program per *batch* (a leader trial plus followers
sharing its static choices, all seeds vmapped). A trial's value is its mean
accuracy on the choosing half of the validation split (``train``'s halves);
whether a trial *reaches* a target is decided on the other half
(``decide_acc``). Over-budget architectures are told as pruned, untrained;
a diverged trial is pruned and a failing batch recorded: neither stops the
search. The best trial (ties: fewer parameters) is retrained with
``final_seeds`` new seeds; test is scored once per final run.

Resume: the study is Optuna's SQLite storage ``WORKDIR/study.db`` (study
``golf``; live view: ``optuna-dashboard sqlite:///WORKDIR/study.db``). Each
batch loads it with a sampler seeded by (seed, batch), so a resumed search
asks what an uninterrupted one would; finished batches are skipped; a changed
space, budget or pinned setting is refused (``search.batches`` may grow).

Writes: config.json, metrics.jsonl (``phase`` search or final), study.db,
runs/final.json (per seed: accuracies, counts, kept flat params; golf_prune
reads it), golf.npz (the seed best on the choosing half, ``export_chosen``;
``tools/check_model.py``), summary.json/.md and accuracy_vs_params.png.

Cost and result (docs/results/golf.md): the reference-neighbourhood search
on that page (2 batches x 4 trials of 16 epochs, 5 final seeds) took 25 min
on this project's 2-core Intel Xeon CPU, shared with other jobs, and gave 966
params at 98.39 +- 0.11% test (5 seeds); 99% was reached by no trial. The
default (10 batches x 4 trials of 8 epochs, 5 final seeds) took 7 min 27 s
on the 2-core AMD EPYC (2026-12-06, commit 8d3143d, alone): search 381 s,
final 62 s. It chose a 703-param separable PReLU net, 96.67 +- 0.32% test;
no trial reached 98% in 8 epochs (docs/results/golf/current_default_cpu/).
The quick form (1,000 images, 1 epoch, 2 batches of 2
trials) checks the plumbing in ~20 s. Published records (test-selected):
98% with 575 non-zero of 820; 99.03% with 697; 99.10% with 1,936.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
import traceback
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optuna
from optuna import distributions as D

from subspace_jax import checks
from subspace_jax import config as C
from subspace_jax import export, models, plots, report, sweep, teacher, train, vectorize
from subspace_jax.workdir import Progress, Workdir, tick, ticking, to_jsonable
from subspace_jax.errors import ConfigError

PUBLISHED = (
    {"label": "98% record (575 non-zero)", "acc": 0.98, "params": 575, "count": "non-zero"},
    {"label": "98% record (820 dense)", "acc": 0.98, "params": 820, "count": "dense"},
    {"label": "99% record (697)", "acc": 0.9903, "params": 697, "count": "dense"},
    {"label": "99% record (1,936)", "acc": 0.9910, "params": 1936, "count": "dense"},
)
ACTIVATIONS = ("relu", "prelu")
# Schedules a trial may use (train.make_optimizer takes each with a vmapped lr).
VMAPPABLE_SCHEDULES = ("constant", "cosine", "warmup_cosine", "onecycle")
# Search settings a resumed search must share with the recorded one.
_PINNED = ("seed", "budget", "data", "train", "space", "teacher", "search.trials_per_batch",
           "search.seeds_per_trial", "search.random_batches", "search.max_rejections")
# Training options of train.OPTIONS as search choices, off by default. A field
# at its off value is neither searched nor pinned, so studies recorded before
# these options resume unchanged. Static choices (one compiled program each):
STATIC_OPTIONS = {"augment": (False,), "elastic_sigma": (0.0,), "ema": (False,),
                  "prune_to": (0,), "gmp_start": (0.1,), "gmp_end": (0.6,), "bn": (False,)}
# Numbers (vmapped per trial; (low, high), uniform; low == high: fixed) and
# the switch that makes each one count: ``None`` = its own high > 0.
RUN_OPTIONS = {"aug_shift": ((2.0, 2.0), "augment"), "aug_rotate": ((10.0, 10.0), "augment"),
               "aug_scale": ((0.1, 0.1), "augment"), "aug_elastic": ((34.0, 34.0), "elastic"),
               "label_smoothing": ((0.0, 0.0), None), "ema_decay": ((0.999, 0.999), "ema"),
               "distill_alpha": ((0.5, 0.5), "teacher"),
               "distill_temperature": ((4.0, 4.0), "teacher")}
_SEARCH, _FINAL = 0, 1   # purposes folded into the root key


def get_config(quick: bool = False) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.seed = 0                 # sampler seeds and every run's key derive from it
    cfg.budget = 1000            # most dense params a searched model may have
    cfg.targets = (0.98, 0.99)   # accuracies reported in the summary
    cfg.final_seeds = 5
    cfg.data = C.data_config()
    # Fixed parts of the recipe; batch size, epochs, schedule, learning rate
    # and weight decay come from the search.
    cfg.train = ml_collections.ConfigDict(dict(
        optimizer="adam", momentum=0.9, eval_chunk=1000))
    cfg.space = ml_collections.ConfigDict(dict(
        channels=((2, 8), (2, 16), (2, 24)),  # (low, high) per conv: three convs
        kernels=((3, 7), (2, 5), (2, 5)),     # (low, high) per conv
        pools=(True, True, False),            # fixed: 2x2 max-pool after conv 1 and 2
        activations=("relu", "prelu"),
        separable=(False, True),
        gap=(False, True),
        batch_sizes=(64, 128),
        epochs=(8,),
        schedules=("cosine", "constant"),     # or warmup_cosine
        learning_rate=(1e-3, 5e-2),           # log-uniform
        weight_decay=(1e-6, 1e-3),            # log-uniform; (0, 0): no weight decay
        # Training options (train.OPTIONS), all off by default:
        augment=(False,),              # or (False, True): warped training batches
        aug_shift=(2.0, 2.0),          # pixels, +- uniform per image
        aug_rotate=(10.0, 10.0),       # degrees, +- uniform per image
        aug_scale=(0.1, 0.1),          # factor in [1 - s, 1 + s]
        elastic_sigma=(0.0,),          # > 0 (e.g. 4.0): add an elastic field, that smoothing
        aug_elastic=(34.0, 34.0),      # elastic amplitude (pixels; Simard et al.: 34 at sigma 4)
        label_smoothing=(0.0, 0.0),    # (0, 0): off
        ema=(False,),                  # or (True,): keep/evaluate the EMA of the weights
        ema_decay=(0.999, 0.999),      # per step
        distill_alpha=(0.5, 0.5),      # weight of the teacher (config.teacher) in the loss
        distill_temperature=(4.0, 4.0),
        prune_to=(0,),                 # e.g. (450,): gradual magnitude pruning to that many
        gmp_start=(0.1,),              #   non-zero params over these fractions of the
        gmp_end=(0.6,),                #   epochs, then fine-tuning (budget stays dense)
        bn=(False,),                   # or (False, True): batch norm after every conv,
                                       #   folded into it for evaluation, export and count
    ))
    # Distillation teacher: an exported .npz (export.export_model, e.g. the zoo
    # experiment's WORKDIR/zoo_cnn_small.npz), or several comma-separated (an
    # ensemble: their mean logits); '' = none. Each one's training-image logits
    # are computed once and cached in WORKDIR/teachers/.
    cfg.teacher = ""
    cfg.search = ml_collections.ConfigDict(dict(
        batches=10,              # trained batches (rejected architectures do not count)
        trials_per_batch=4,      # trials sharing one compiled program
        seeds_per_trial=1,       # a trial's value: mean validation accuracy over these
        random_batches=2,        # first batches sampled uniformly, then TPE
        max_rejections=2000,     # asks per batch for an architecture within budget
    ))
    if quick:
        cfg.final_seeds = 2
        cfg.data.train_size = 1000
        cfg.data.val_size = 1000
        cfg.data.synthetic_size = 1000   # so data.source=synthetic also works
        # One static choice (separable, gap, prelu: the new layers), so both
        # batches and the final runs share one compiled program.
        cfg.space.channels = ((3, 3), (4, 4), (6, 6))
        cfg.space.kernels = ((4, 4), (3, 3), (3, 3))
        cfg.space.activations = ("prelu",)
        cfg.space.separable = (True,)
        cfg.space.gap = (True,)
        cfg.space.batch_sizes = (32,)
        cfg.space.epochs = (1,)
        cfg.space.schedules = ("cosine",)
        cfg.space.learning_rate = (1e-2, 5e-2)   # something is learnt in ~30 steps
        cfg.search.batches = 2
        cfg.search.trials_per_batch = 2
        cfg.search.random_batches = 1
    return cfg


# ---------------------------------------------------------------- the space
def _range(field: str, value, minimum: float) -> None:
    if len(value) != 2 or not minimum <= value[0] <= value[1]:
        raise ConfigError(f"config.{field}={tuple(value)} must be (low, high) with "
                          f"{minimum} <= low <= high.")


def _choices(field: str, value, valid=None, positive: bool = False) -> None:
    if not len(value):
        raise ConfigError(f"config.{field} is empty; give at least one choice.")
    if valid is not None and not set(value) <= set(valid):
        raise ConfigError(f"config.{field}={tuple(value)}; valid choices: "
                          f"{', '.join(map(str, valid))}.")
    if positive and any(int(v) != v or v < 1 for v in value):
        raise ConfigError(f"config.{field}={tuple(value)} must be positive integers.")


def validate(cfg) -> None:
    """Raises ConfigError naming the config field of any bad value."""
    checks.common(cfg)
    checks.mnist_only(cfg, "golf")
    if int(cfg.budget) != cfg.budget or cfg.budget < 1:
        raise ConfigError(f"config.budget={cfg.budget} must be a positive integer (dense params).")
    if not cfg.targets or not all(0 < t <= 1 for t in cfg.targets):
        raise ConfigError(f"config.targets={tuple(cfg.targets)} must be accuracies in (0, 1].")
    if int(cfg.final_seeds) != cfg.final_seeds or cfg.final_seeds < 1:
        raise ConfigError(f"config.final_seeds={cfg.final_seeds} must be >= 1.")
    s = cfg.space
    n = len(s.channels)
    if n < 1 or len(s.kernels) != n or len(s.pools) != n:
        raise ConfigError(f"config.space.channels, kernels and pools need one entry per conv; got "
                          f"{len(s.channels)}, {len(s.kernels)}, {len(s.pools)}.")
    for i in range(n):
        _range(f"space.channels[{i}]", s.channels[i], 1)
        _range(f"space.kernels[{i}]", s.kernels[i], 1)
    _choices("space.activations", s.activations, ACTIVATIONS)
    _choices("space.separable", s.separable, (False, True))
    _choices("space.gap", s.gap, (False, True))
    _choices("space.batch_sizes", s.batch_sizes, positive=True)
    _choices("space.epochs", s.epochs, positive=True)
    _choices("space.schedules", s.schedules, VMAPPABLE_SCHEDULES)
    _range("space.learning_rate", s.learning_rate, 0)
    if s.learning_rate[0] <= 0:
        raise ConfigError(f"config.space.learning_rate={tuple(s.learning_rate)} must be positive.")
    _range("space.weight_decay", s.weight_decay, 0)
    if s.weight_decay[0] == 0 < s.weight_decay[1]:
        raise ConfigError(f"config.space.weight_decay={tuple(s.weight_decay)}: log-uniform needs "
                          "low > 0; (0, 0) means no weight decay.")
    _validate_options(cfg)
    if cfg.train.optimizer not in train.OPTIMIZERS:
        raise ConfigError(f"config.train.optimizer={cfg.train.optimizer!r}; "
                          f"valid: {', '.join(train.OPTIMIZERS)}.")
    for field, minimum in (("batches", 1), ("trials_per_batch", 1), ("seeds_per_trial", 1),
                           ("random_batches", 0), ("max_rejections", 0)):
        value = cfg.search[field]
        if int(value) != value or value < minimum:
            raise ConfigError(f"config.search.{field}={value} must be an integer >= {minimum}.")
    smallest = _smallest_in_space(cfg)
    if smallest is not None and smallest > cfg.budget:
        raise ConfigError(f"config.budget={cfg.budget}: the smallest model in config.space has "
                          f"{smallest} params; raise the budget or shrink the space.")


def _validate_options(cfg) -> None:
    """The training options of the space (``STATIC_OPTIONS``, ``RUN_OPTIONS``)."""
    s = cfg.space
    for name, off in STATIC_OPTIONS.items():
        _choices(f"space.{name}", s[name], (False, True) if isinstance(off[0], bool) else None)
    for v in s.elastic_sigma:
        train.check_options({"elastic_sigma": v}, "space")
    for v in s.prune_to:
        train.check_options({"prune_to": v}, "space")
    for a, b in itertools.product(s.gmp_start, s.gmp_end):
        train.check_options({"gmp_start": a, "gmp_end": b}, "space")
    for name in RUN_OPTIONS:
        _range(f"space.{name}", s[name], 0)
        for v in s[name]:   # the bounds train.make_run holds each number to
            train.check_options({name: v}, "space")
    for path in teacher_files(cfg):
        if not os.path.isfile(path):
            raise ConfigError(f"config.teacher={cfg.teacher!r}: {path!r} is not a file; valid: "
                              "'' (no distillation) or exported .npz models "
                              "(export.export_model), comma-separated for an ensemble.")


def teacher_files(cfg) -> list[str]:
    return [p.strip() for p in cfg.teacher.split(",") if p.strip()]


def teacher_logits(cfg, wd: Workdir, ds) -> np.ndarray:
    """The mean logits of the teacher files over the training images (each cached)."""
    return np.mean([teacher.cached_logits(p, ds.train_x, wd, ds.num_classes)
                    for p in teacher_files(cfg)], axis=0)


def switches(cfg) -> dict[str, bool]:
    """Which optional parts of training the space can turn on."""
    s = cfg.space
    return {"augment": True in s.augment,
            "elastic": True in s.augment and any(float(v) > 0 for v in s.elastic_sigma),
            "ema": True in s.ema, "teacher": bool(teacher_files(cfg))}


def active_run_options(cfg) -> dict[str, tuple[float, float]]:
    """The ``RUN_OPTIONS`` numbers that count in this space: ``{name: (low, high)}``."""
    on = switches(cfg)
    return {name: (float(cfg.space[name][0]), float(cfg.space[name][1]))
            for name, (_, switch) in RUN_OPTIONS.items()
            if (on[switch] if switch else float(cfg.space[name][1]) > 0)}


def run_numbers(cfg, params: dict) -> dict[str, float]:
    """A trial's vmapped numbers: learning rate, weight decay and the active options
    (searched ones from ``params``, fixed ones from the space)."""
    return {"learning_rate": params["learning_rate"],
            "weight_decay": params.get("weight_decay", 0.0),
            **{name: params.get(name, lo) for name, (lo, _) in active_run_options(cfg).items()}}


def _smallest_in_space(cfg) -> int | None:
    """Fewest params of any valid model of the space (fewest channels), or None
    when the space is too large to enumerate quickly."""
    s = cfg.space
    kernels = [range(lo, hi + 1) for lo, hi in s.kernels]
    if math.prod(map(len, kernels)) * len(s.separable) * len(s.gap) > 20_000:
        return None
    channels = tuple(lo for lo, _ in s.channels)
    activation = "relu" if "relu" in s.activations else "prelu"
    counts = []
    for ks, sep, gap in itertools.product(itertools.product(*kernels), s.separable, s.gap):
        try:
            model = models.golf_cnn(channels, ks, activation, sep, gap, pools=tuple(s.pools))
        except ValueError:  # no spatial extent left
            continue
        counts.append(models.arch_param_count(model.arch))
    if not counts:
        raise ValueError(f"config.space.kernels={tuple(s.kernels)} leave no spatial extent "
                         "for any choice.")
    return min(counts)


def distributions(cfg) -> dict[str, D.BaseDistribution]:
    """Optuna distribution of every searched parameter, static ones first."""
    s = cfg.space
    dists = {}
    for i, (lo, hi) in enumerate(s.channels):
        dists[f"c{i}"] = D.IntDistribution(int(lo), int(hi))
    for i, (lo, hi) in enumerate(s.kernels):
        dists[f"k{i}"] = D.IntDistribution(int(lo), int(hi))
    dists["activation"] = D.CategoricalDistribution(tuple(s.activations))
    dists["separable"] = D.CategoricalDistribution(tuple(bool(v) for v in s.separable))
    dists["gap"] = D.CategoricalDistribution(tuple(bool(v) for v in s.gap))
    dists["batch_size"] = D.CategoricalDistribution(tuple(int(v) for v in s.batch_sizes))
    dists["epochs"] = D.CategoricalDistribution(tuple(int(v) for v in s.epochs))
    dists["schedule"] = D.CategoricalDistribution(tuple(s.schedules))
    for name, off in STATIC_OPTIONS.items():   # only when the space turns them on
        if tuple(s[name]) != off:
            dists[name] = D.CategoricalDistribution(tuple(s[name]))
    dists["learning_rate"] = D.FloatDistribution(*map(float, s.learning_rate), log=True)
    if s.weight_decay[1] > 0:
        dists["weight_decay"] = D.FloatDistribution(*map(float, s.weight_decay), log=True)
    for name, (lo, hi) in active_run_options(cfg).items():
        if lo < hi:
            dists[name] = D.FloatDistribution(lo, hi)
    return dists


# Differ within a batch (vmapped); the rest is static.
RUN_PARAMS = ("learning_rate", "weight_decay", *RUN_OPTIONS)


def static_params(params: dict) -> dict:
    return {k: v for k, v in params.items() if k not in RUN_PARAMS}


def build_model(cfg, params: dict) -> models.Model:
    n = len(cfg.space.channels)
    return models.golf_cnn(tuple(params[f"c{i}"] for i in range(n)),
                           tuple(params[f"k{i}"] for i in range(n)), params["activation"],
                           params["separable"], params["gap"], pools=tuple(cfg.space.pools),
                           bn=bool(params.get("bn", False)))


def exported_count(model: models.Model) -> int:
    """Dense params of the network that is evaluated and exported (BN folded)."""
    return models.arch_param_count(models.folded_arch(model.arch))


def exported(model: models.Model, theta_D, train_x) -> tuple[models.Model, dict]:
    """(Model, NumPy params) of the exported network of a kept flat vector: with
    batch norm, folded on the statistics ``train.make_run`` evaluated with."""
    params = models.unflatten(model, theta_D)
    if not models.has_bn(model.arch):
        return model, params
    n = min(int(train.OPTIONS["bn_calib"]), len(train_x))
    folded = models.fold_bn(model, params, jnp.asarray(train_x[:n]))
    return (models.from_arch(models.folded_arch(model.arch), model.name),
            jax.tree.map(np.asarray, folded))


def check_budget(cfg, params: dict) -> tuple[str | None, int | None]:
    """(rejection reason or None, dense params) of a trial, without training."""
    try:
        model = build_model(cfg, params)
    except ValueError:
        return "invalid_shape", None
    n = exported_count(model)
    return ("over_budget" if n > cfg.budget else None), n


def _suggest(trial, name: str, dist):
    if isinstance(dist, D.IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high)
    if isinstance(dist, D.FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log)
    return trial.suggest_categorical(name, dist.choices)


# ---------------------------------------------------------------- the study
def _sampler(cfg, batch: int):
    seed = int(np.random.SeedSequence([int(cfg.seed), batch]).generate_state(1)[0])
    if batch < cfg.search.random_batches:
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():  # experimental in some Optuna versions
        warnings.simplefilter("ignore")
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=0, multivariate=True,
                                          constant_liar=True)


STUDY = "golf"   # the study's name inside WORKDIR/study.db
_STATE_NAMES = {optuna.trial.TrialState.COMPLETE: "complete",
                optuna.trial.TrialState.PRUNED: "pruned", optuna.trial.TrialState.FAIL: "fail",
                optuna.trial.TrialState.RUNNING: "running", optuna.trial.TrialState.WAITING: "waiting"}


def storage_url(wd: Workdir) -> str:
    """Optuna's SQLite storage in the workdir (``optuna-dashboard URL`` shows it)."""
    return f"sqlite:///{wd.file('study.db')}"


def load_study(cfg, storage, batch: int):
    """The stored study with the sampler of batch ``batch``: the same stored
    trials give the same asks, whether the search ran through or was resumed."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=STUDY, storage=storage, sampler=_sampler(cfg, batch))


def trial_records(study) -> list[dict]:
    """Every trial of the search, in order, as a dict: number, state, params,
    value and the user attributes set when it was asked and told (batch, role,
    status, dense_params, ...). Asks voided by an interruption are left out."""
    trials = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("role") in (None, "abandoned"):
            continue
        trials.append({**t.user_attrs, "number": t.number, "state": _STATE_NAMES[t.state],
                       "params": dict(t.params), "value": t.value})
    return trials


def _set_attrs(trial, **attrs) -> None:
    for k, v in attrs.items():
        trial.set_user_attr(k, to_jsonable(v))


def ask_batch(cfg, study, batch: int) -> tuple[list, list[dict]]:
    """Asks one batch: ``([(trial, params)] of trials to train, rejected records)``.

    The leader is re-asked until its architecture is valid and within budget
    (each rejection is told to the study as pruned); the followers share its
    static parameters through ``enqueue_trial``.
    """
    dists = distributions(cfg)
    rejected = []
    for _ in range(int(cfg.search.max_rejections) + 1):
        trial = study.ask()
        params = {name: _suggest(trial, name, d) for name, d in dists.items()}
        reason, n_params = check_budget(cfg, params)
        if reason is None:
            break
        _set_attrs(trial, batch=batch, role="rejected", status=reason, dense_params=n_params)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        rejected.append({"number": trial.number, "batch": batch, "role": "rejected",
                         "state": "pruned", "status": reason, "params": params,
                         "value": None, "dense_params": n_params})
    else:
        raise RuntimeError(f"batch {batch}: no architecture within config.budget={cfg.budget} "
                           f"in {cfg.search.max_rejections + 1} asks; raise the budget, shrink "
                           "config.space or raise config.search.max_rejections.")
    asked = [(trial, params)]
    for _ in range(int(cfg.search.trials_per_batch) - 1):
        study.enqueue_trial(static_params(params))
        follower = study.ask()
        asked.append((follower, {name: _suggest(follower, name, d) for name, d in dists.items()}))
    for i, (t, _) in enumerate(asked):
        _set_attrs(t, batch=batch, role="leader" if i == 0 else "follower", dense_params=n_params)
    return asked, rejected


def batch_trials(cfg, study, batch: int) -> list:
    """``[(trial, params)]`` to train in batch ``batch``: the trials it asked
    before an interruption (same numbers and params, so training them now
    gives what an uninterrupted search got), else new asks (``ask_batch``).
    An interruption during the asks themselves voids them: those still running
    are told failed (role ``abandoned``) and the batch asks anew."""
    asked_key = f"asked_{batch:04d}"
    if asked_key in study.user_attrs:
        numbers = study.user_attrs[asked_key]
        by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
        return [(optuna.trial.Trial(study, by_number[n]._trial_id), by_number[n].params)
                for n in numbers]
    void = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            if t.user_attrs.get("batch", batch) == batch]
    for t in void:
        trial = optuna.trial.Trial(study, t._trial_id)
        _set_attrs(trial, batch=batch, role="abandoned")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    if void:
        print(f"batch {batch + 1}: {len(void)} asks interrupted before training voided; "
              "from here the search differs from an uninterrupted one", flush=True)
    asked, _ = ask_batch(cfg, study, batch)
    study.set_user_attr(asked_key, [t.number for t, _ in asked])
    return asked


# ---------------------------------------------------------------- training
def keyed(run):
    """``run`` whose key is ``fold_in(fold_in(key, hp['trial']), hp['seed'])``:
    every (trial, seed) its own init and data order, all vmapped under one key."""
    def run_keyed(key, hp, data):
        hp = dict(hp)
        trial, seed = hp.pop("trial"), hp.pop("seed")
        return run(jax.random.fold_in(jax.random.fold_in(key, trial), seed), hp, data)
    return run_keyed


class _Runs:
    """Compiled runs by static parameters: a repeated static choice, and the
    final retraining when it has as many runs as a batch, reuse the program."""

    def __init__(self, cfg, n_train: int):
        self.cfg, self.n_train, self.cache = cfg, n_train, {}

    def __call__(self, params: dict):
        static = static_params(params)
        key = tuple(sorted(static.items()))
        if key not in self.cache:
            tcfg = C.train_config(**self.cfg.train.to_dict(), batch_size=static["batch_size"],
                                  epochs=static["epochs"], schedule=static["schedule"],
                                  keep_best=True,
                                  **{k: static[k] for k in STATIC_OPTIONS if k in static})
            run = train.make_run(build_model(self.cfg, params), tcfg, C.subspace_config(0),
                                 self.n_train, tick)
            self.cache[key] = keyed(run)
        return self.cache[key]


def train_rows(runs: _Runs, params: dict, rows: list[dict], key, data, label: str):
    """Trains ``rows`` (dicts of trial, seed and the ``run_numbers``) of one
    static choice in one program; returns the host copy of the stacked Result."""
    hp = {k: np.asarray([r[k] for r in rows], np.float32) for k in rows[0]
          if k not in ("trial", "seed")}
    hp.update({"d_active": np.zeros(len(rows), np.int32),
          "trial": np.asarray([r["trial"] for r in rows], np.int32),
          "seed": np.asarray([r["seed"] for r in rows], np.int32)})
    with ticking(label, static_params(params)["epochs"]):
        return jax.device_get(vectorize.vmapped(runs(params), key, hp, data))


def _history_rows(out, rows: list[dict], extra: dict) -> list[dict]:
    lines = []
    for i, row in enumerate(rows):
        for e in range(len(out.history["val_acc"][i])):
            lines.append({**extra, "trial": row["trial"], "seed": row["seed"], "epoch": e + 1,
                          **{k: v[i, e] for k, v in out.history.items()}})
    return lines


def run_batch(cfg, runs: _Runs, study, batch: int, data) -> tuple[dict, list[dict]]:
    """Asks (or takes up), trains and tells one batch; returns its record and
    metrics rows. Never raises for a failed training."""
    asked = batch_trials(cfg, study, batch)
    leader = asked[0][1]
    model = build_model(cfg, leader)
    n_params = exported_count(model)
    seeds = range(int(cfg.search.seeds_per_trial))
    rows = [{"trial": t.number, "seed": s, **run_numbers(cfg, p)} for t, p in asked
            for s in seeds]
    record = {"batch": batch, "model": model.name, "dense_params": n_params,
              "static": static_params(leader)}
    told, lines = [], []  # (trial, attrs, state, value)
    try:
        key = jax.random.fold_in(jax.random.key(int(cfg.seed)), _SEARCH)
        out = train_rows(runs, leader, rows, key, data, f"batch {batch + 1}")
        for i, (t, _) in enumerate(asked):
            sl = slice(i * len(seeds), (i + 1) * len(seeds))
            val = np.asarray(out.final["val_acc"][sl], float)
            diverged = bool(np.any(out.final["diverged"][sl])) or not np.all(np.isfinite(val))
            attrs = {"status": "diverged" if diverged else "ok", "model": model.name,
                     "seeds": list(seeds), "val_acc": val,
                     "decide_acc": out.final["decide_acc"][sl],
                     "train_acc": out.final["train_acc"][sl],
                     "best_epoch": out.final["best_epoch"][sl]}
            told.append((t, attrs, "pruned" if diverged else "complete",
                         None if diverged else float(val.mean())))
        lines = _history_rows(out, rows, {"phase": "search", "batch": batch})
    except Exception as e:  # noqa: BLE001 - a failed batch never ends the search
        record.update({"error": repr(e), "traceback": traceback.format_exc()})
        told = [(t, {"status": "failed", "model": model.name}, "fail", None) for t, _ in asked]
    finished = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    for t, attrs, state, value in told:
        if t.number in finished:  # told before an interruption: the same numbers again
            continue
        _set_attrs(t, **attrs)
        if state == "complete":
            study.tell(t, value)
        else:
            study.tell(t, state=optuna.trial.TrialState[state.upper()])
    return record, lines


# ---------------------------------------------------------------- search
def _pinned(cfg) -> dict:
    pinned = {}
    for field in _PINNED:
        value = cfg
        for part in field.split("."):
            value = value[part]
        pinned[field] = json.loads(json.dumps(to_jsonable(value)))  # as read back from disk
    # Options at their off values are left out: a study recorded before they
    # existed resumes; the teacher is pinned by its file's hash.
    off = {**STATIC_OPTIONS, **{k: v[0] for k, v in RUN_OPTIONS.items()}}
    pinned["space"] = {k: v for k, v in pinned["space"].items()
                       if k not in off or tuple(v) != tuple(off[k])}
    if teacher_files(cfg):
        pinned["teacher"] = [teacher.file_hash(p) for p in teacher_files(cfg)]
    else:
        del pinned["teacher"]
    return pinned


def check_resume(cfg, wd: Workdir) -> None:
    """Refuses to go on with a recorded search whose settings differ (before
    anything is written)."""
    if not os.path.exists(wd.file("study.db")):
        if os.path.exists(wd.file("runs/batch_0000.json")):
            raise ValueError(f"{wd.path} holds a search recorded as runs/batch_*.json by an "
                             "older version of golf.py: use a fresh --workdir.")
        return
    try:
        recorded = load_study(cfg, storage_url(wd), 0).user_attrs.get("search_config")
    except KeyError:  # optuna: no study of that name
        raise ValueError(f"{wd.file('study.db')} holds no study named {STUDY!r}: use a fresh "
                         "--workdir.") from None
    pinned = _pinned(cfg)
    changed = [f for f in _PINNED if recorded is not None and recorded.get(f) != pinned.get(f)]
    if changed:
        raise ValueError(f"{wd.path} holds a search with other settings "
                         f"(config.{', config.'.join(changed)}): use a fresh --workdir or the "
                         "recorded values (study user attribute search_config in study.db).")


def best_trial(history: list[dict]) -> dict | None:
    """The completed trial with the highest value; ties: fewer params, then earlier."""
    done = [t for t in history if t["state"] == "complete"]
    return max(done, key=lambda t: (t["value"], -t["dense_params"], -t["number"]), default=None)


def _batch_line(record: dict, history: list[dict]) -> str:
    mine = [t for t in history if t["batch"] == record["batch"]]
    trained = [t for t in mine if t["role"] != "rejected"]
    vals = ", ".join(f"{100 * t['value']:.2f}" if t["value"] is not None else t["status"]
                     for t in trained)
    n_rej = len(mine) - len(trained)
    best = best_trial(history)
    best_txt = (f"best so far {100 * best['value']:.2f}% (trial {best['number']}, "
                f"{best['dense_params']:,} params)" if best else "no completed trial yet")
    return (f"batch {record['batch'] + 1}: {record['model']} ({record['dense_params']:,} params, "
            f"{n_rej} rejected asks) val % [{vals}]; {best_txt}")


def search(cfg, wd: Workdir, data, runs: _Runs) -> list[dict]:
    """Runs (or resumes) the search in ``WORKDIR/study.db``; returns every
    trial record, in order."""
    check_resume(cfg, wd)
    storage = storage_url(wd)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=STUDY, storage=storage, direction="maximize",
                                load_if_exists=True)
    if "search_config" not in study.user_attrs:
        study.set_user_attr("search_config", _pinned(cfg))
    progress = Progress(int(cfg.search.batches), "golf search")
    for b in range(int(cfg.search.batches)):
        study = load_study(cfg, storage, b)
        done = study.user_attrs.get(f"batch_{b:04d}")
        if done is not None:
            progress.step(_batch_line(done, trial_records(study)), skipped=True)
            continue
        t0 = time.time()
        record, lines = run_batch(cfg, runs, study, b, data)
        record["seconds"] = time.time() - t0
        wd.append_metrics(lines)
        study.set_user_attr(f"batch_{b:04d}", to_jsonable(record))  # the batch is finished
        progress.step(_batch_line(record, trial_records(study)), record["seconds"])
    return trial_records(study)


# ---------------------------------------------------------------- final
def final_runs(cfg, wd: Workdir, runs: _Runs, best: dict, data) -> dict:
    """The best trial's recipe with ``final_seeds`` new seeds (resumable)."""
    seeds = list(range(int(cfg.final_seeds)))
    record = wd.run_record("final")
    if record is not None and record["trial"] == best["number"] and record["seeds"] == seeds:
        print(f"final: trial {best['number']} x {len(seeds)} seeds already trained", flush=True)
        return record
    t0 = time.time()
    params = best["params"]
    model = build_model(cfg, params)
    rows = [{"trial": best["number"], "seed": s, **run_numbers(cfg, params)} for s in seeds]
    key = jax.random.fold_in(jax.random.key(int(cfg.seed)), _FINAL)
    out = train_rows(runs, params, rows, key, data, f"final x{len(seeds)}")
    per_seed = []
    for i, s in enumerate(seeds):
        theta = np.asarray(out.params[i], np.float32)
        dense, nonzero = export.count_params(exported(model, theta, data.train_x)[1])
        diverged = bool(out.final["diverged"][i])
        per_seed.append({"seed": s, "status": "diverged" if diverged else "ok",
                         **{k: out.final[k][i] for k in ("val_acc", "decide_acc", "test_acc",
                                                         "train_acc", "best_epoch")},
                         "dense_params": dense, "nonzero_params": nonzero, "theta": theta})
    record = {"trial": best["number"], "seeds": seeds, "model": model.name,
              "params": params, "seconds": time.time() - t0, "records": per_seed}
    wd.finish_run("final", record, _history_rows(out, rows, {"phase": "final"}))
    print(f"final: trial {best['number']} x {len(seeds)} seeds in {time.time() - t0:.0f}s",
          flush=True)
    return wd.run_record("final")


EXPORTED_KEYS = ("seed", "nonzero_params", "val_acc", "decide_acc", "test_acc")


def export_chosen(cfg, wd: Workdir, final: dict, train_x) -> dict | None:
    """Writes golf.npz from the kept params of the seed best on the choosing half
    (``report.best_seed``, ok runs only: the headline model; its deciding-half and
    test accuracies chose nothing). Returns the file's description with that
    seed's accuracies; None if every seed diverged."""
    seed = report.best_seed(final["records"])
    if seed is None:
        if os.path.exists(wd.file("golf.npz")):  # never leave an earlier final's export
            os.remove(wd.file("golf.npz"))
        return None
    rec = next(r for r in final["records"] if int(r["seed"]) == seed)
    model, params = exported(build_model(cfg, final["params"]), rec["theta"], train_x)
    return {**export.export_model(wd.file("golf.npz"), model, params),
            **{k: rec[k] for k in ("seed", "val_acc", "decide_acc", "test_acc")}}


# ---------------------------------------------------------------- report
def decide_mean(trial: dict) -> float | None:
    """A trial's mean accuracy on the deciding half (None: not recorded, i.e. a
    study from before the halves, or not trained)."""
    v = trial.get("decide_acc")
    return None if v is None else float(np.mean(v))


def summarise(cfg, history: list[dict], final: dict | None, desc: dict | None) -> dict:
    trained = [t for t in history if t["role"] != "rejected"]
    statuses = [t["status"] for t in history]
    summary = {"budget": cfg.budget,
               "search": {"batches": int(cfg.search.batches), "trained_trials": len(trained),
                          **{s: statuses.count(s) for s in
                             ("ok", "diverged", "failed", "over_budget", "invalid_shape")}},
               "published": list(PUBLISHED), "final": None,
               "smallest_reaching": {}}
    best = best_trial(history)
    summary["search"]["best_trial"] = (None if best is None else
                                       {k: best[k] for k in ("number", "model", "dense_params",
                                                             "value", "params")})
    for target in cfg.targets:
        # Decided on the deciding half: the value (choosing half) picked each
        # run's epoch and guided the search, so it would flatter a crossing.
        hits = [t for t in trained if t["value"] is not None and decide_mean(t) is not None
                and decide_mean(t) >= target]
        t = min(hits, key=lambda t: (t["dense_params"], -decide_mean(t)), default=None)
        summary["smallest_reaching"][f"{target:g}"] = (
            None if t is None else {**{k: t[k] for k in ("number", "model", "dense_params",
                                                          "value")},
                                    "decide_acc": decide_mean(t)})
    if final is not None:
        ok = [r for r in final["records"] if r["status"] == "ok"]
        row = {"trial": final["trial"], "model": final["model"], "recipe": final["params"],
               "seeds": len(ok), "diverged": len(final["records"]) - len(ok),
               "dense_params": final["records"][0]["dense_params"],
               "nonzero_params_seed0": next(r["nonzero_params"] for r in final["records"]
                                            if r["seed"] == 0),
               "per_seed": [{k: v for k, v in r.items() if k != "theta"}
                            for r in final["records"]]}
        for key in ("val_acc", "decide_acc", "test_acc", "train_acc", "nonzero_params"):
            row[key + "_mean"], row[key + "_sd"] = report.mean_sd([r[key] for r in ok if key in r])
        row["exported"] = None if desc is None else {
            "file": "golf.npz", **{k: desc[k] for k in EXPORTED_KEYS}}
        summary["final"] = row
    return summary


def markdown(summary: dict) -> str:
    lines = [(f"Neural golf, budget {summary['budget']:,} dense params. Final: the best "
              "searched recipe retrained with new seeds (mean ± sd over seeds; test scored "
              "once per run)."),
             "", ("| model | dense params | non-zero params | val acc % (chooses) "
                  "| decide acc % | test acc % | seeds |"),
             "|---|---:|---:|---:|---:|---:|---:|"]
    f = summary["final"]
    if f is None:
        lines.append("| none: no searched trial completed | - | - | - | - | - | 0 |")
    else:
        nz = f"{f['nonzero_params_mean']:,.0f}" if f["nonzero_params_mean"] is not None else "-"
        lines.append(f"| {f['model']} | {f['dense_params']:,} | {nz} | "
                     f"{sweep.fmt_pct(f['val_acc_mean'], f['val_acc_sd'])} | "
                     f"{sweep.fmt_pct(f.get('decide_acc_mean'), f.get('decide_acc_sd'))} | "
                     f"{sweep.fmt_pct(f['test_acc_mean'], f['test_acc_sd'])} | {f['seeds']} |")
        r = f["recipe"]
        lines += ["", f"Recipe (trial {f['trial']}): "
                  + ", ".join(f"{k}={v}" for k, v in r.items())]
        e = f.get("exported")
        if e is not None and "seed" in e:
            lines += ["", (f"Exported (golf.npz): seed {e['seed']}, the best on the choosing "
                           f"half ({100 * e['val_acc']:.2f}%); decide {100 * e['decide_acc']:.2f}%, "
                           f"test {100 * e['test_acc']:.2f}%, {e['nonzero_params']:,} non-zero.")]
    s = summary["search"]
    lines += ["", (f"Search: {s['trained_trials']} trials trained ({s['ok']} ok, "
                   f"{s['diverged']} diverged, {s['failed']} failed); {s['over_budget']} asks "
                   f"over budget and {s['invalid_shape']} with no spatial extent rejected "
                   "untrained."), "",
              ("| target | smallest searched trial reaching it (deciding half) | params "
               "| val acc % (chooses) | decide acc % |"),
              "|---:|---|---:|---:|---:|"]
    for target, t in summary["smallest_reaching"].items():
        if t is None:
            lines.append(f"| {100 * float(target):g}% | none | - | - | - |")
        else:
            lines.append(f"| {100 * float(target):g}% | trial {t['number']}: {t['model']} | "
                         f"{t['dense_params']:,} | {100 * t['value']:.2f} | "
                         f"{100 * t['decide_acc']:.2f} |")
    lines += ["", "Published records: " + "; ".join(
        f"{p['label']} at {100 * p['acc']:.2f}%" for p in PUBLISHED) + "."]
    return "\n".join(lines) + "\n"


def figure(summary: dict, history: list[dict]):
    plt = plots.plt
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    trained = [t for t in history if t["role"] != "rejected" and t["status"] in ("ok", "diverged")]
    ok = [t for t in trained if t["status"] == "ok"]
    ax.scatter([t["dense_params"] for t in ok], [100 * t["value"] for t in ok], s=14,
               alpha=0.6, label=f"searched trials ({len(ok)}), validation")
    f = summary["final"]
    if f is not None and f["val_acc_mean"] is not None:
        ax.errorbar(f["dense_params"], 100 * f["val_acc_mean"], yerr=100 * f["val_acc_sd"],
                    fmt="o", color="k", capsize=3,
                    label=f"final recipe ({f['seeds']} seeds), validation")
    for p, marker in zip(PUBLISHED, ("*", "P", "X", "D")):
        ax.plot(p["params"], 100 * p["acc"], marker, ms=10, ls="none", label=p["label"])
    ax.axvline(summary["budget"], color="grey", ls="--", lw=1, label="budget")
    values = [100 * t["value"] for t in ok]
    if values and max(values) >= 95:
        low = [v for v in values if v < 90]
        ax.set_ylim(90, 100)
        if low:
            ax.text(0.01, 0.01, f"{len(low)} trials below 90% not shown", transform=ax.transAxes,
                    fontsize=7)
    ax.set_xlim(0, None)
    ax.set_xlabel("parameters (dense; published: as stated)")
    ax.set_ylabel("accuracy (%): trials validation, records as published")
    ax.set_title(f"neural golf: validation accuracy vs parameters (budget {summary['budget']:,})",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def run(cfg, workdir: str) -> dict:
    validate(cfg)
    check_resume(cfg, Workdir(workdir))  # before config.json is rewritten
    wd, ds, dat = sweep.prepare(cfg, workdir)
    n_train = len(ds.train_y)
    too_big = [b for b in cfg.space.batch_sizes if b > n_train]
    if too_big:
        raise ValueError(f"config.space.batch_sizes={tuple(cfg.space.batch_sizes)}: {too_big} "
                         f"exceed the {n_train} training images.")
    if teacher_files(cfg):  # computed once per teacher file and training set, then cached
        dat = dat._replace(teacher_logits=jnp.asarray(teacher_logits(cfg, wd, ds)))
    runs = _Runs(cfg, n_train)
    # The search never sees the test split: a zero stand-in of the same shape
    # (so the final runs can reuse a compiled program) takes its place.
    search_data = dat._replace(test_x=jnp.zeros_like(dat.test_x),
                               test_y=jnp.zeros_like(dat.test_y))
    history = search(cfg, wd, search_data, runs)
    best = best_trial(history)
    final = desc = None
    if best is None:
        print("no trial completed: nothing to retrain", flush=True)
    else:
        final = final_runs(cfg, wd, runs, best, dat)
        desc = export_chosen(cfg, wd, final, dat.train_x)
    summary = summarise(cfg, history, final, desc)
    wd.write_json("summary.json", summary)
    text = markdown(summary)
    with open(wd.file("summary.md"), "w") as f:
        f.write(text)
    print(text)
    print("figure:", wd.save_figure(figure(summary, history), "accuracy_vs_params.png"))
    return summary
