"""train.make_run options: label smoothing, EMA, one-cycle, distillation."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from subspace_jax import config as C
from subspace_jax import models, train
from subspace_jax.errors import ConfigError


def _cfg(**kw):
    return C.train_config(**{"epochs": 2, "batch_size": 32, "eval_chunk": 64, **kw})


@pytest.fixture(scope="module")
def dat(synthetic):
    return train.Data.from_dataset(synthetic)


LOGITS = np.float32([[2.0, 0.0, -1.0], [0.5, 0.5, 1.5]])
LABELS = np.int32([0, 2])


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_smoothing_zero_is_the_plain_loss_bit_for_bit():
    plain = train.cross_entropy(LOGITS, LABELS)
    assert np.asarray(train.cross_entropy(LOGITS, LABELS, jnp.float32(0.0))) == np.asarray(plain)


def test_smoothed_cross_entropy_closed_form():
    eps = 0.2
    target = np.full((2, 3), eps / 3)
    target[np.arange(2), LABELS] += 1 - eps
    want = -(target * _log_softmax(LOGITS.astype(np.float64))).sum(-1).mean()
    got = float(train.cross_entropy(LOGITS, LABELS, jnp.float32(eps)))
    assert got == pytest.approx(want, rel=1e-6)


def test_distill_loss_closed_form_and_alpha_zero():
    teacher = np.float32([[0.0, 1.0, 0.0], [3.0, -1.0, 0.5]])
    T = 2.0
    pt = np.exp(_log_softmax(teacher / T))
    want = T ** 2 * (pt * (_log_softmax(teacher / T) - _log_softmax(LOGITS / T))).sum(-1).mean()
    assert float(train.distill_loss(LOGITS, teacher, 1.0, T)) == pytest.approx(want, rel=1e-5)
    assert float(train.distill_loss(LOGITS, LOGITS, 1.0, T)) == pytest.approx(0.0, abs=1e-6)


def _plain(synthetic, dat, seed):
    """(compiled plain run, its hp, key, its result) of zoo_fc16 for ``seed``."""
    model = models.get("zoo_fc16")
    run = jax.jit(train.make_run(model, _cfg(), C.subspace_config(0), len(synthetic.train_y)))
    hp, key = train.default_hp(_cfg()), jax.random.key(seed)
    return run, hp, key, run(key, hp, dat)


def test_distill_alpha_zero_trains_like_plain_ce(synthetic, dat):
    run, hp, key, plain = _plain(synthetic, dat, 1)
    teacher = jax.random.normal(jax.random.key(9), (len(synthetic.train_y), 10)) * 3
    with_t = dat._replace(teacher_logits=teacher)
    zero = run(key, {**hp, "distill_alpha": jnp.float32(0.0)}, with_t)
    np.testing.assert_array_equal(zero.params, plain.params)   # (1 - 0) * CE + 0 * KD
    half = run(key, {**hp, "distill_alpha": jnp.float32(0.5)}, with_t)
    assert np.abs(np.asarray(half.params) - np.asarray(plain.params)).max() > 1e-3


def test_smoothing_in_a_run_zero_equals_off_and_positive_differs(synthetic, dat):
    run, hp, key, plain = _plain(synthetic, dat, 2)
    zero = run(key, {**hp, "label_smoothing": jnp.float32(0.0)}, dat)
    np.testing.assert_array_equal(zero.params, plain.params)
    smooth = run(key, {**hp, "label_smoothing": jnp.float32(0.1)}, dat)
    assert float(smooth.history["train_loss"][0]) > float(plain.history["train_loss"][0])


def test_ema_decay_zero_is_the_raw_params(synthetic, dat):
    model = models.get("zoo_fc16")
    n = len(synthetic.train_y)
    hp = train.default_hp(_cfg())
    key = jax.random.key(3)
    raw = jax.jit(train.make_run(model, _cfg(), C.subspace_config(0), n))(key, hp, dat)
    ema_run = jax.jit(train.make_run(model, _cfg(ema=True), C.subspace_config(0), n))
    zero = ema_run(key, {**hp, "ema_decay": jnp.float32(0.0)}, dat)
    np.testing.assert_array_equal(zero.params, raw.params)
    np.testing.assert_array_equal(zero.history["val_acc"], raw.history["val_acc"])
    # A real decay keeps a different (averaged) vector, trained along the same path.
    avg = ema_run(key, {**hp, "ema_decay": jnp.float32(0.9)}, dat)
    np.testing.assert_array_equal(avg.history["train_loss"], raw.history["train_loss"])
    assert np.abs(np.asarray(avg.params) - np.asarray(raw.params)).max() > 1e-4


def test_onecycle_values():
    cfg = _cfg(schedule="onecycle", onecycle_pct=0.25, optimizer="sgd", momentum=0.0)
    hp = {"learning_rate": jnp.float32(0.1), "weight_decay": jnp.float32(0.0)}
    opt = train.make_optimizer(cfg, hp, total_steps=100, steps_per_epoch=10)
    # SGD without momentum: the update of a unit gradient is -lr(step).
    state = opt.init(jnp.zeros(1))
    lrs = []
    for _ in range(100):
        u, state = opt.update(jnp.ones(1), state, jnp.zeros(1))
        lrs.append(-float(u[0]))
    lrs = np.asarray(lrs)
    assert lrs[0] == pytest.approx(0.1 / 25, rel=1e-4)             # starts at peak / 25
    assert lrs[25] == pytest.approx(0.1, rel=1e-4)                 # the peak at 25% of steps
    assert lrs.argmax() == 25
    assert lrs[-1] < 0.1 / 25 / 100 * 1.5                          # ends near peak / 25e4
    half_up = 0.1 / 25 + (0.1 - 0.1 / 25) * 0.5                    # cosine: halfway at 12.5
    assert 0.5 * (lrs[12] + lrs[13]) == pytest.approx(half_up, rel=0.05)


def test_bad_option_values_are_config_errors():
    model = models.get("zoo_fc16")
    for field, value in (("label_smoothing", 1.0), ("ema_decay", 1.0), ("distill_alpha", 1.5),
                         ("distill_temperature", 0.0), ("onecycle_pct", 0.0)):
        with pytest.raises(ConfigError, match=field):
            train.make_run(model, _cfg(**{field: value}), C.subspace_config(0), 512)


def test_teacher_logits_cached_by_file_hash(tmp_path, monkeypatch):
    from subspace_jax import export, teacher
    from subspace_jax.errors import InputError
    from subspace_jax.workdir import Workdir
    model = models.get("golf_relu")
    params = model.init(jax.random.key(0))
    path = str(tmp_path / "t.npz")
    export.export_model(path, model, params)
    x = np.asarray(jax.random.normal(jax.random.key(1), (5, 28, 28, 1)))
    wd = Workdir(str(tmp_path / "wd"))
    got = teacher.cached_logits(path, x, wd, num_classes=10)
    np.testing.assert_allclose(got, model.apply(params, x), rtol=1e-5, atol=1e-5)
    assert os.path.exists(wd.file(teacher.cache_name(path, x)))
    monkeypatch.setattr(teacher, "logits", lambda *a: pytest.fail("cache not used"))
    np.testing.assert_array_equal(teacher.cached_logits(path, x, wd), got)
    # Another teacher file (other weights) gets another cache entry.
    name = teacher.cache_name(path, x)
    export.export_model(path, model, model.init(jax.random.key(2)))
    assert teacher.cache_name(path, x) != name
    monkeypatch.undo()
    other = teacher.cached_logits(path, x, wd)
    assert np.abs(other - got).max() > 1e-3
    with pytest.raises(InputError, match="does not exist"):
        teacher.cached_logits(str(tmp_path / "missing.npz"), x, wd)
    with pytest.raises(InputError, match="classes"):
        teacher.cached_logits(path, x, wd, num_classes=3)


def test_gmp_schedule_values():
    kept = lambda step: int(train.gmp_kept(step, 1000, 100, 10, 30))
    assert kept(0) == kept(8) == 1000                    # before the first pruning step
    assert kept(29) == kept(50) == 100                   # at and after the end: the target
    assert kept(19) == round(100 + 900 * 0.5 ** 3)       # cubic: half-way, 1/8 of the excess
    assert all(kept(t) >= kept(t + 1) for t in range(40))
    assert train.gmp_epochs(_cfg(epochs=10, gmp_start=0.1, gmp_end=0.6), 10) == (1, 6)
    assert train.gmp_epochs(_cfg(epochs=1, gmp_start=0.0, gmp_end=1.0), 1) == (0, 1)


@pytest.mark.parametrize("ema", [False, True])
def test_gmp_reaches_the_target_count_and_keeps_a_pruned_epoch(synthetic, dat, ema):
    model = models.get("zoo_fc16")   # 12,730 params: 26 biases, 12,704 weights
    cfg = _cfg(epochs=3, prune_to=300, gmp_start=0.0, gmp_end=0.67, ema=ema,
               learning_rate=3e-3)
    run = jax.jit(train.make_run(model, cfg, C.subspace_config(0), len(synthetic.train_y)))
    res = run(jax.random.key(4), {**train.default_hp(cfg), "ema_decay": jnp.float32(0.5)}, dat)
    theta = np.asarray(res.params)
    assert np.count_nonzero(theta) == 300
    assert int(res.final["best_epoch"]) >= 2               # chosen among epochs at the target
    # The count can come in hp (vmappable) too.
    fewer = run(jax.random.key(4), {**train.default_hp(cfg), "prune_to": jnp.float32(100),
                                    "ema_decay": jnp.float32(0.5)}, dat)
    assert np.count_nonzero(np.asarray(fewer.params)) == 100
    assert float(res.final["val_acc"]) > 0.3


def test_gmp_bad_values_are_config_errors():
    model = models.get("zoo_fc16")
    with pytest.raises(ConfigError, match="prune_to=20.*valid: >= 28"):
        train.make_run(model, _cfg(prune_to=20), C.subspace_config(0), 512)
    for kw in ({"prune_to": -1}, {"prune_to": 2.5}, {"gmp_start": 0.5, "gmp_end": 0.4}):
        with pytest.raises(ConfigError):
            train.make_run(model, _cfg(**kw), C.subspace_config(0), 512)


def test_option_numbers_vmapped_equal_looped(synthetic, dat):
    """Option numbers as rows of hp (warp magnitudes, smoothing, EMA decay, prune count)."""
    from subspace_jax import vectorize
    cfg = _cfg(epochs=2, augment=True, ema=True, prune_to=500, gmp_start=0.0, gmp_end=0.5)
    run = train.make_run(models.get("zoo_fc16"), cfg, C.subspace_config(0),
                         len(synthetic.train_y))
    base = {k: np.repeat(np.asarray(v)[None], 2, 0) for k, v in train.default_hp(cfg).items()}
    hp = {**base, "aug_shift": np.float32([0.0, 2.0]), "aug_rotate": np.float32([0.0, 10.0]),
          "aug_scale": np.float32([0.0, 0.1]), "aug_elastic": np.float32([0.0, 0.0]),
          "label_smoothing": np.float32([0.0, 0.1]), "ema_decay": np.float32([0.0, 0.9]),
          "prune_to": np.float32([500, 300])}
    keys = vectorize.run_keys([0])
    v = jax.device_get(vectorize.vmapped(run, keys, hp, dat))
    l = jax.device_get(vectorize.looped(run, keys, hp, dat))
    np.testing.assert_allclose(v.history["train_loss"], l.history["train_loss"], rtol=1e-4,
                               atol=1e-5)
    assert [np.count_nonzero(p) for p in np.asarray(v.params).reshape(2, -1)] == [500, 300]
    assert not np.allclose(v.history["train_loss"][..., 0, :], v.history["train_loss"][..., 1, :])


def test_stages_with_options_equal_one_run(synthetic, dat):
    """The carry of a run in chunks (checkpointing) holds the EMA and the pruning mask."""
    cfg = _cfg(epochs=2, augment=True, ema=True, prune_to=400, gmp_start=0.0, gmp_end=0.5)
    run = train.make_run(models.get("zoo_fc16"), cfg, C.subspace_config(0),
                         len(synthetic.train_y))
    hp = {**train.default_hp(cfg), "aug_shift": jnp.float32(2.0), "ema_decay": jnp.float32(0.8)}
    key = jax.random.key(5)
    whole = jax.jit(run)(key, hp, dat)
    st = run.stages
    carry = jax.jit(st.start)(key, hp, dat)
    advance = jax.jit(st.advance, static_argnums=5)
    carry, h1 = advance(carry, key, hp, dat, jnp.int32(0), 1)
    carry, h2 = advance(carry, key, hp, dat, jnp.int32(1), 1)
    history = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), h1, h2)
    parts = jax.jit(st.finish)(carry, history, key, hp, dat)
    np.testing.assert_allclose(parts.params, whole.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(parts.history["val_acc"], whole.history["val_acc"], atol=1e-6)
    assert np.count_nonzero(np.asarray(parts.params)) == 400
