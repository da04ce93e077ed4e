"""Augmentation warps (subspace_jax/augment.py) and their use in train.make_run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from subspace_jax import augment
from subspace_jax import config as C
from subspace_jax import models, train
from subspace_jax.errors import ConfigError


def _images(n=3, h=9, w=7, c=2, seed=0):
    return np.random.default_rng(seed).standard_normal((n, h, w, c)).astype(np.float32)


def _hp(**kw):
    return {**augment.default_hp(), **{k: jnp.float32(v) for k, v in kw.items()}}


def test_zero_magnitude_warp_is_identity():
    x = _images()
    out = augment.augment(jax.random.key(0), x, _hp(), fill=-0.42)
    np.testing.assert_array_equal(np.asarray(out), x)
    # And with an elastic field of zero amplitude.
    out = augment.augment(jax.random.key(1), x, _hp(), fill=-0.42, elastic_sigma=2.0)
    np.testing.assert_allclose(np.asarray(out), x, atol=1e-6)


@pytest.mark.parametrize("dr,dc", [(2, 0), (0, -3), (1, 2), (-4, -1)])
def test_integer_shift_is_roll_with_fill(dr, dc):
    x = _images(n=2)
    fill = -0.5
    A = augment.affine(jnp.float32([[dr, dc]] * 2), jnp.zeros(2), jnp.ones(2))
    out = np.asarray(augment.warp(x, A, fill))
    want = np.roll(x, (dr, dc), axis=(1, 2))
    h, w = x.shape[1:3]
    if dr > 0:
        want[:, :dr] = fill
    elif dr < 0:
        want[:, h + dr:] = fill
    if dc > 0:
        want[:, :, :dc] = fill
    elif dc < 0:
        want[:, :, w + dc:] = fill
    np.testing.assert_allclose(out, want, atol=1e-6)


def test_rotation_by_90_degrees_is_rot90():
    x = _images(n=1, h=7, w=7, c=1)
    A = augment.affine(jnp.zeros((1, 2)), jnp.float32([np.pi / 2]), jnp.ones(1))
    out = np.asarray(augment.warp(x, A, 0.0))
    # An output pixel reads the source rotated back; one of the two rot90 senses.
    assert min(np.abs(out - np.rot90(x, k, axes=(1, 2))).max() for k in (1, -1)) < 1e-5


def test_keys_decide_the_warp():
    x = _images(n=4)
    hp = _hp(aug_shift=2.0, aug_rotate=15.0, aug_scale=0.1, aug_elastic=1.0)
    a = augment.augment(jax.random.key(3), x, hp, 0.0, elastic_sigma=2.0)
    b = augment.augment(jax.random.key(3), x, hp, 0.0, elastic_sigma=2.0)
    c = augment.augment(jax.random.key(4), x, hp, 0.0, elastic_sigma=2.0)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 0.1
    # One warp per image: two copies of one image are warped differently.
    same = np.repeat(x[:1], 2, 0)
    d = np.asarray(augment.augment(jax.random.key(5), same, hp, 0.0))
    assert np.abs(d[0] - d[1]).max() > 0.1


def _cfg(**kw):
    return C.train_config(**{"epochs": 2, "batch_size": 32, "eval_chunk": 64, **kw})


@pytest.fixture(scope="module")
def dat(synthetic):
    return train.Data.from_dataset(synthetic)


def test_train_with_augment_off_is_unchanged_and_on_differs(synthetic, dat):
    model = models.get("zoo_fc16")
    n = len(synthetic.train_y)
    key = jax.random.key(0)
    plain = jax.jit(train.make_run(model, _cfg(), C.subspace_config(0), n))
    off = jax.jit(train.make_run(model, _cfg(augment=False, aug_shift=3.0), C.subspace_config(0), n))
    on = jax.jit(train.make_run(model, _cfg(augment=True), C.subspace_config(0), n))
    hp = train.default_hp(_cfg())
    a, b = plain(key, hp, dat), off(key, hp, dat)
    np.testing.assert_array_equal(a.history["train_loss"], b.history["train_loss"])
    np.testing.assert_array_equal(a.params, b.params)
    # Warps of magnitude zero: the same training (up to rounding of the sampler).
    z = on(key, hp, dat)
    np.testing.assert_allclose(z.history["train_loss"], a.history["train_loss"], rtol=1e-5)
    hp_on = {**hp, **_hp(aug_shift=2.0, aug_rotate=10.0, aug_scale=0.1)}
    c, d = on(key, hp_on, dat), on(key, hp_on, dat)
    np.testing.assert_array_equal(c.params, d.params)          # deterministic per key
    assert np.abs(np.asarray(c.params) - np.asarray(a.params)).max() > 1e-3
    # Validation is never warped: its accuracy is that of the kept params on raw images.
    kept = np.asarray(c.params)
    unravel = jax.flatten_util.ravel_pytree(model.init(jax.random.key(0)))[1]
    (sel_x, sel_y), _ = train.validation_halves(dat.val_x, dat.val_y)
    acc = float((np.asarray(model.apply(unravel(kept), sel_x)).argmax(-1) == sel_y).mean())
    assert float(c.final["val_acc"]) == pytest.approx(acc, abs=1e-6)


def test_bad_augment_values_are_config_errors():
    model = models.get("zoo_fc16")
    for field, value in (("aug_shift", -1.0), ("aug_scale", 1.0), ("elastic_sigma", -2.0)):
        with pytest.raises(ConfigError, match=field):
            train.make_run(model, _cfg(**{field: value}), C.subspace_config(0), 512)
