import jax
import jax.numpy as jnp
import numpy as np
import pytest

from subspace_jax import config as C
from subspace_jax import models, train, vectorize


def tcfg(**kw):
    return C.train_config(**{"epochs": 2, "batch_size": 32, "eval_chunk": 64, **kw})


@pytest.fixture(scope="module")
def dat(synthetic):
    return train.Data.from_dataset(synthetic)


def hp_rows(cfg, n=1, **cols):
    base = {k: np.repeat(np.asarray(v)[None], n, 0) for k, v in train.default_hp(cfg).items()}
    base.update({k: np.asarray(v) for k, v in cols.items()})
    return base


def test_full_space_training_learns(synthetic, dat):
    cfg = tcfg(epochs=3)
    run = train.make_run(models.get("zoo_fc16"), cfg, C.subspace_config(0), len(synthetic.train_y))
    res = jax.jit(run)(jax.random.key(0), train.default_hp(cfg), dat)
    hist = res.history
    assert hist["train_loss"].shape == (3,)
    assert float(hist["train_loss"][-1]) < float(hist["train_loss"][0])
    assert float(res.final["val_acc"]) > 0.5 and not bool(res.final["diverged"])
    # The test score is that of the kept params, recomputed here outside the program.
    from jax.flatten_util import ravel_pytree
    model = models.get("zoo_fc16")
    unravel = ravel_pytree(model.init(jax.random.key(0)))[1]
    logits = model.apply(unravel(res.params), synthetic.test_x)
    acc = float((np.asarray(logits).argmax(-1) == synthetic.test_y).mean())
    assert float(res.final["test_acc"]) == pytest.approx(acc, abs=1e-6)
    assert float(res.final["test_loss"]) == pytest.approx(
        float(train.cross_entropy(logits, synthetic.test_y)), rel=1e-4)


def test_golden_one_epoch(synthetic, dat):
    """Pins the first epoch of one fixed run. If an intended change to init, data
    order or the optimizer moves it, check the new value and update it."""
    cfg = tcfg(epochs=1)
    run = train.make_run(models.get("zoo_fc16"), cfg, C.subspace_config(0), len(synthetic.train_y))
    res = jax.jit(run)(jax.random.key(42), train.default_hp(cfg), dat)
    np.testing.assert_allclose(float(res.history["train_loss"][0]), 1.924803, rtol=2e-3)


def test_same_seed_same_numbers_different_seed_different(synthetic, dat):
    cfg = tcfg()
    run = jax.jit(train.make_run(models.get("zoo_cnn_small"), cfg, C.subspace_config(0),
                                 len(synthetic.train_y)))
    a = run(jax.random.key(7), train.default_hp(cfg), dat)
    b = run(jax.random.key(7), train.default_hp(cfg), dat)
    c = run(jax.random.key(8), train.default_hp(cfg), dat)
    np.testing.assert_array_equal(a.history["train_loss"], b.history["train_loss"])
    np.testing.assert_array_equal(a.params, b.params)
    assert not np.array_equal(a.history["train_loss"], c.history["train_loss"])


def test_vmapped_equals_looped_over_seeds_and_hparams(synthetic, dat):
    cfg = tcfg()
    run = train.make_run(models.get("zoo_fc16"), cfg, C.subspace_config(30), len(synthetic.train_y))
    hp = hp_rows(cfg, 3, learning_rate=np.float32([0.01, 0.03, 0.1]), d_active=np.int32([5, 30, 30]))
    keys = vectorize.run_keys([0, 1])
    v = vectorize.vmapped(run, keys, hp, dat)
    l = vectorize.looped(run, keys, hp, dat)
    assert v.history["val_acc"].shape == (2, 3, 2)
    np.testing.assert_allclose(v.history["train_loss"], l.history["train_loss"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(v.final["test_acc"], l.final["test_acc"], atol=1e-6)


def test_subspace_runs_use_only_active_columns(synthetic, dat):
    cfg = tcfg(epochs=1)
    run = train.make_run(models.get("zoo_fc16"), cfg, C.subspace_config(20), len(synthetic.train_y))
    hp = hp_rows(cfg, 2, learning_rate=np.float32([0.05, 0.05]), d_active=np.int32([4, 20]))
    out = vectorize.vmapped(run, jax.random.key(0), hp, dat)
    omega = np.asarray(out.params)
    assert omega.shape == (2, 20)
    assert np.all(omega[0, 4:] == 0) and np.any(omega[0, :4] != 0)
    assert np.count_nonzero(omega[1]) > 4


def test_diverged_run_is_recorded_not_raised(synthetic, dat):
    cfg = tcfg(optimizer="sgd", momentum=0.0)
    run = train.make_run(models.get("zoo_fc16"), cfg, C.subspace_config(0), len(synthetic.train_y))
    hp = hp_rows(cfg, 2, learning_rate=np.float32([0.01, 1e12]))
    out = vectorize.vmapped(run, jax.random.key(0), hp, dat)
    assert list(np.asarray(out.final["diverged"])) == [False, True]


def test_mask_keeps_pruned_weights_exactly_zero(synthetic, dat):
    cfg = tcfg(optimizer="adamw", weight_decay=1e-2)
    model = models.get("zoo_fc16")
    D = models.param_count(model)
    mask = (np.random.default_rng(0).random(D) < 0.3).astype(np.float32)
    run = jax.jit(train.make_run(model, cfg, C.subspace_config(0), len(synthetic.train_y)))
    res = run(jax.random.key(0), {**train.default_hp(cfg), "mask": jnp.asarray(mask)}, dat)
    theta = np.asarray(res.params)
    assert np.all(theta[mask == 0] == 0.0)
    assert np.count_nonzero(theta[mask == 1]) == int(mask.sum())


def test_compiles_once_per_shape(synthetic, dat):
    cfg = tcfg(epochs=1)
    traces = []
    inner = train.make_run(models.get("zoo_fc16"), cfg, C.subspace_config(0), len(synthetic.train_y))

    def counted(key, hp, data):
        traces.append(1)
        return inner(key, hp, data)

    for lr in (0.01, 0.02, 0.03):
        vectorize.vmapped(counted, vectorize.run_keys([0]), hp_rows(cfg, 1, learning_rate=np.float32([lr])), dat)
    assert len(traces) == 1


@pytest.mark.parametrize("field,value,match", [
    ("batch_size", 0, "train.batch_size"), ("epochs", 0, "train.epochs")])
def test_bad_train_config_is_a_clear_error(synthetic, field, value, match):
    with pytest.raises(ValueError, match=match):
        train.make_run(models.get("zoo_fc16"), tcfg(**{field: value}), C.subspace_config(0), 100)


@pytest.mark.parametrize("field,value", [("optimizer", "lamb"), ("schedule", "step")])
def test_unknown_optimizer_or_schedule(synthetic, dat, field, value):
    cfg = tcfg(**{field: value})
    run = train.make_run(models.get("zoo_fc16"), cfg, C.subspace_config(0), len(synthetic.train_y))
    with pytest.raises(ValueError, match=f"train.{field}"):
        jax.eval_shape(run, jax.random.key(0), train.default_hp(cfg), dat)


def test_warmup_cosine_takes_a_vmapped_learning_rate(synthetic, dat):
    cfg = tcfg(schedule="warmup_cosine", warmup_epochs=1)
    run = train.make_run(models.get("zoo_fc16"), cfg, C.subspace_config(0), len(synthetic.train_y))
    hp = hp_rows(cfg, 2, learning_rate=np.float32([0.0, 0.01]))
    out = vectorize.vmapped(run, vectorize.run_keys([0]), hp, dat)
    loss = np.asarray(out.history["train_loss"])[0]  # rows x epochs
    assert np.allclose(loss[0, 0], loss[0, 1])       # lr 0: the weights never move
    assert loss[1, 1] < loss[0, 1]                   # lr 0.01 learns


def test_validation_halves_are_a_fixed_random_split():
    """Disjoint, covering, the same every call, and not cut by position: MNIST
    mixes writer populations by index, so each half must hold both parities
    and both ends of the split in about equal numbers."""
    choose, decide = train.halves_index(10_000)
    assert len(choose) == 5_000 and len(decide) == 5_000
    assert np.array_equal(np.sort(np.concatenate([choose, decide])), np.arange(10_000))
    again = train.halves_index(10_000)
    assert np.array_equal(again[0], choose) and np.array_equal(again[1], decide)
    for half in (choose, decide):
        assert abs(np.mean(half % 2) - 0.5) < 0.03 and abs(np.mean(half < 5_000) - 0.5) < 0.03
    x = np.arange(7, dtype=np.float32)[:, None]
    (cx, cy), (dx, dy) = train.validation_halves(x, np.arange(7))
    assert len(cy) == 4 and len(dy) == 3 and set(cy) | set(dy) == set(range(7))
    np.testing.assert_array_equal(cx[:, 0], cy)


def test_seed_forms_give_the_same_numbers(synthetic, dat, monkeypatch):
    """Seeds mapped one after another (the CPU default) or vmapped: same runs."""
    cfg = tcfg()
    run = train.make_run(models.get("zoo_fc16"), cfg, C.subspace_config(0), len(synthetic.train_y))
    hp = hp_rows(cfg, 2, learning_rate=np.float32([0.01, 0.03]))
    keys = vectorize.run_keys([0, 1, 2])
    out = {}
    for form in ("map", "vmap"):
        monkeypatch.setenv(vectorize.SEED_FORM_ENV, form)
        assert vectorize.seed_form(3) == form
        out[form] = jax.device_get(vectorize.vmapped(run, keys, hp, dat))
    np.testing.assert_allclose(out["map"].history["train_loss"], out["vmap"].history["train_loss"],
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["map"].final["test_acc"], out["vmap"].final["test_acc"],
                               atol=1e-6)
    monkeypatch.setenv(vectorize.SEED_FORM_ENV, "sideways")
    with pytest.raises(ValueError, match="SUBSPACE_JAX_SEED_FORM='sideways'"):
        vectorize.seed_form(3)


@pytest.mark.parametrize("form", ["vmap", "map"])
def test_paired_axis_equals_a_python_loop(form, monkeypatch):
    """``paired=True``: seed i runs with hp row i only, in either seed form."""
    monkeypatch.setenv(vectorize.SEED_FORM_ENV, form)

    def run(key, hp, data):
        return {"y": hp["a"] * jax.random.normal(key, (3,)) + data, "n": hp["n"] + 1}

    keys = vectorize.run_keys([0, 1, 2])
    hp = {"a": np.float32([1.0, 2.0, -3.0]), "n": np.int32([5, 6, 7])}
    data = jnp.float32(0.5)
    got = vectorize.vmapped(run, keys, hp, data, paired=True)
    loop = [run(keys[i], {k: v[i] for k, v in hp.items()}, data) for i in range(3)]
    assert got["y"].shape == (3, 3)
    np.testing.assert_allclose(got["y"], np.stack([o["y"] for o in loop]), rtol=1e-6)
    np.testing.assert_array_equal(got["n"], [6, 7, 8])
    crossed = vectorize.vmapped(run, keys, hp, data)  # every seed with every row: [S, R, ...]
    np.testing.assert_allclose(got["y"], np.stack([crossed["y"][i, i] for i in range(3)]),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="one hp row per key"):
        vectorize.vmapped(run, keys[:2], hp, data, paired=True)
