"""Config checks shared by every experiment's ``validate(cfg)``.

Each check raises ``errors.ConfigError`` with a one-line message that names
the field (``config.train.learning_rate``) and says what would be valid;
nothing is ever clamped into range. ``common(cfg)`` runs the checks that hold
for every experiment:

* every float anywhere in the config (tuples included) is finite;
* every learning rate (a field named ``learning_rate(s)``, ``*_learning_rate(s)``
  or ``*_lr``; golf's ``space.learning_rate`` range too) is > 0, every
  ``weight_decay`` >= 0;
* every training sub-config (one with ``optimizer``) names a known optimizer
  and schedule, and has ``batch_size``, ``epochs``, ``eval_chunk`` >= 1;
* ``seeds``, where present, is non-empty; ``projection``, where present, is
  a usable kind (``subspace.check_kind``).

``overrides(cfg, default)`` is launch.py's check that a tuple override parsed
as the default's kind of tuple (ml_collections keeps an unparsable
``'(nan,)'`` as the string element ``'(nan,)'``).
"""

from __future__ import annotations

import math
from typing import Any, Iterator

from subspace_jax.errors import ConfigError

TRAIN_FIELDS = ("optimizer", "batch_size", "epochs")  # a sub-config with these trains


def fields(cfg, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted path, value)`` of every leaf of a ConfigDict."""
    for key, value in cfg.items():
        if hasattr(value, "items"):
            yield from fields(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _numbers(value) -> Iterator[Any]:
    """The scalars of a value, looking into (nested) tuples and lists."""
    if isinstance(value, (tuple, list)):
        for v in value:
            yield from _numbers(v)
    else:
        yield value


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _kind(v) -> str:
    if isinstance(v, bool):
        return "bool"
    if _is_number(v):
        return "number"
    if isinstance(v, (tuple, list)):
        return "tuple"
    return type(v).__name__


def overrides(cfg, default) -> None:
    """Every tuple field whose default has elements holds elements of the same
    kind (numbers, strings, booleans or tuples) after the command line."""
    want = dict(fields(default))
    for path, value in fields(cfg):
        ref = want.get(path)
        if not isinstance(ref, tuple) or not ref or not isinstance(value, tuple):
            continue
        kinds = {_kind(v) for v in ref}
        bad = [v for v in value if _kind(v) not in kinds]
        if bad:
            example = ", ".join(map(repr, ref[:2])) + ("," if len(ref) == 1 else "")
            raise ConfigError(f"config.{path}={value!r}: {bad[0]!r} is not a "
                              f"{' or '.join(sorted(kinds))}; valid: a Python tuple literal "
                              f"like --config.{path}='({example})' (nan and inf are not valid).")


def _is_learning_rate(path: str) -> bool:
    leaf = path.rsplit(".", 1)[-1]
    return leaf.endswith(("learning_rate", "learning_rates")) or leaf.endswith("_lr")


def finite_and_rates(cfg) -> None:
    """Floats finite; learning rates > 0; weight decays >= 0."""
    for path, value in fields(cfg):
        nums = [v for v in _numbers(value) if _is_number(v)]
        for v in nums:
            if not math.isfinite(v):
                raise ConfigError(f"config.{path}={value!r}: {v} is not a finite number.")
        if _is_learning_rate(path) and (not nums or any(v <= 0 for v in nums)):
            raise ConfigError(f"config.{path}={value!r}: a learning rate must be a number > 0"
                              + (" (one per entry, at least one)." if isinstance(value, tuple)
                                 else "."))
        if path.rsplit(".", 1)[-1] == "weight_decay" and any(v < 0 for v in nums):
            raise ConfigError(f"config.{path}={value!r} must be >= 0.")


def train_config(tcfg, prefix: str, n_train: int | None = None) -> None:
    """A training sub-config at ``config.<prefix>``; ``n_train`` bounds the batch."""
    from subspace_jax import train  # jax is imported by then anyway; keeps this module light

    if tcfg.optimizer not in train.OPTIMIZERS:
        raise ConfigError(f"config.{prefix}.optimizer={tcfg.optimizer!r}; "
                          f"valid: {', '.join(train.OPTIMIZERS)}.")
    if "schedule" in tcfg and tcfg.schedule not in train.SCHEDULES:
        raise ConfigError(f"config.{prefix}.schedule={tcfg.schedule!r}; "
                          f"valid: {', '.join(train.SCHEDULES)}.")
    for name in ("batch_size", "epochs", "eval_chunk"):
        if name in tcfg:
            at_least(tcfg[name], f"{prefix}.{name}", 1)
    if n_train is not None and tcfg.batch_size > n_train:
        raise ConfigError(f"config.{prefix}.batch_size={tcfg.batch_size} exceeds the "
                          f"{n_train} training images; valid: 1..{n_train}.")
    if "momentum" in tcfg and not 0 <= tcfg.momentum < 1:
        raise ConfigError(f"config.{prefix}.momentum={tcfg.momentum} must be in [0, 1).")
    if "warmup_epochs" in tcfg and not 0 <= tcfg.warmup_epochs <= tcfg.epochs:
        raise ConfigError(f"config.{prefix}.warmup_epochs={tcfg.warmup_epochs} must be in "
                          f"[0, epochs={tcfg.epochs}].")


def _subconfigs(cfg, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in cfg.items():
        if hasattr(value, "items"):
            yield f"{prefix}{key}", value
            yield from _subconfigs(value, f"{prefix}{key}.")


def common(cfg) -> None:
    """The checks every experiment shares (see the module docstring)."""
    finite_and_rates(cfg)
    for path, sub in _subconfigs(cfg):
        if all(name in sub for name in TRAIN_FIELDS) or (path == "train" and "optimizer" in sub):
            train_config(sub, path)
    if "seeds" in cfg:
        nonempty(cfg.seeds, "seeds")
    if "projection" in cfg:
        from subspace_jax import subspace
        subspace.check_kind(cfg.projection)


def mnist_only(cfg, experiment: str) -> None:
    """For experiments built around MNIST's shape (golf, brute-force pruning, ...)."""
    name = cfg.data.get("name", "mnist") if "data" in cfg else "mnist"
    if name != "mnist":
        raise ConfigError(f"data.name={name!r}: experiment {experiment} runs on MNIST only; "
                          "valid: data.name='mnist' (subspace_sweep, intrinsic_dimension, zoo, "
                          "lottery and pruning_compare take other tfds datasets)")


# ---------------------------------------------------------------- single fields
def at_least(value, field: str, minimum: int) -> None:
    """An integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"config.{field}={value!r} must be an integer >= {minimum}.")


def nonempty(value, field: str) -> None:
    if not value:
        raise ConfigError(f"config.{field} is empty; give at least one value, "
                          f"e.g. --config.{field}='(0,)'.")


def fractions(values, field: str) -> None:
    """Every entry (at least one) in (0, 1]: densities, rates."""
    values = tuple(values) if isinstance(values, (tuple, list)) else (values,)
    if not values or any(not 0.0 < float(v) <= 1.0 for v in values):
        raise ConfigError(f"config.{field}={values!r} must be fractions in (0, 1].")


def subspace_dims(dims, field: str, model_name: str, D: int) -> None:
    """Every d (at least one) in [1, D]: a d above the model's D is an error, never clamped."""
    dims = tuple(dims)
    nonempty(dims, field)
    for d in dims:
        at_least(d, field, 1)
    too_big = [int(d) for d in dims if int(d) > D]
    if too_big:
        raise ConfigError(f"config.{field}={dims!r}: {too_big} exceed the {D:,} parameters of "
                          f"{model_name}; valid: subspace sizes in [1, {D}].")
