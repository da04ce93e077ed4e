"""Batch norm that folds away at export (models.fold_bn) and its use in training."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from subspace_jax import config as C
from subspace_jax import export, models, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model(**kw):
    return models.golf_cnn((3, 4, 5), (5, 3, 3), "prelu", bn=True, **kw)


def _random_params(model, seed=0):
    rng = np.random.default_rng(seed)
    params = {}
    for key, shape in models.param_shapes(model.arch).items():
        layer, name = key.split("/")
        value = rng.standard_normal(shape).astype(np.float32) * 0.5
        if name == "gamma":
            value = 1.0 + value
        params.setdefault(layer, {})[name] = jnp.asarray(value)
    return params


@pytest.mark.parametrize("kw", [{}, {"separable": True, "gap": True}])
def test_folded_equals_unfolded_on_the_statistics_batch(kw):
    model = _model(**kw)
    params = _random_params(model)
    x = jax.random.normal(jax.random.key(0), (64, 28, 28, 1))
    plain = models.from_arch(models.folded_arch(model.arch))
    folded = models.fold_bn(model, params, x)
    # The training form on the same batch uses exactly these statistics.
    np.testing.assert_allclose(plain.apply(folded, x), model.apply(params, x),
                               rtol=1e-4, atol=1e-4)
    # Folded, an image's logits do not depend on the rest of its batch; unfolded they do.
    np.testing.assert_allclose(plain.apply(folded, x[:3]), plain.apply(folded, x)[:3],
                               rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(model.apply(params, x[:3]) - model.apply(params, x)[:3])).max() > 1e-3
    assert "gamma" not in folded["conv0"] and set(folded) == set(params)


def test_counts_and_export_are_the_folded_network(tmp_path):
    model = _model()
    plain_arch = models.folded_arch(model.arch)
    gamma_beta = 2 * sum(layer["out"] for layer in model.arch["layers"] if layer["kind"] == "conv")
    assert models.arch_param_count(model.arch) == models.arch_param_count(plain_arch) + gamma_beta
    params = _random_params(model)
    with pytest.raises(ValueError, match="batch norm"):
        export.export_model(str(tmp_path / "bn.npz"), model, params)
    x = jax.random.normal(jax.random.key(1), (32, 28, 28, 1))
    folded = models.fold_bn(model, params, x)
    path = str(tmp_path / "folded.npz")
    desc = export.export_model(path, plain_arch, folded)
    assert desc["dense_params"] == models.arch_param_count(plain_arch)
    spec = importlib.util.spec_from_file_location(
        "check_model", os.path.join(ROOT, "tools", "check_model.py"))
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    loaded, arrays = check.load_model(path)
    want = models.from_arch(plain_arch).apply(folded, x[:4])
    np.testing.assert_allclose(check.forward(loaded, arrays, np.asarray(x[:4])), want,
                               rtol=1e-4, atol=1e-4)


def test_training_evaluates_the_folded_network(synthetic):
    model = models.golf_cnn((2, 3, 4), (5, 3, 3), "relu", bn=True, gap=True)
    cfg = C.train_config(epochs=1, batch_size=32, eval_chunk=128, learning_rate=3e-2,
                         bn_calib=200)
    dat = train.Data.from_dataset(synthetic)
    res = jax.jit(train.make_run(model, cfg, C.subspace_config(0), len(synthetic.train_y)))(
        jax.random.key(0), train.default_hp(cfg), dat)
    unravel = ravel_pytree(model.init(jax.random.key(0)))[1]
    folded = models.fold_bn(model, unravel(res.params), dat.train_x[:200])
    plain = models.from_arch(models.folded_arch(model.arch))
    logits = np.asarray(plain.apply(folded, dat.test_x))
    acc = float((logits.argmax(-1) == synthetic.test_y).mean())
    assert float(res.final["test_acc"]) == pytest.approx(acc, abs=1e-6)
    assert float(res.final["val_acc"]) > 0.2 and not bool(res.final["diverged"])  # chance: 0.1
