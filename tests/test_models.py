import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from subspace_jax import models

EXPECTED = {
    "fc_200_200": 199_210, "conv_subspace": 21_840, "zoo_fc16": 12_730, "zoo_fc32": 25_450,
    "zoo_cnn_small": 3_369, "zoo_cnn_large": 10_754, "lenet_300_100": 266_610,
    "mlp_512": 407_050, "golf_relu": 807, "golf_prelu": 820,
}


@pytest.mark.parametrize("name,count", sorted(EXPECTED.items()))
def test_param_counts(name, count):
    model = models.get(name)
    params = model.init(jax.random.key(0))
    assert models.num_params(params) == count == models.param_count(model)
    logits = model.apply(params, jnp.zeros((3, 28, 28, 1)))
    assert logits.shape == (3, 10)


def test_registry_lists_every_model_and_rejects_unknown():
    assert set(EXPECTED) <= set(models.names())
    with pytest.raises(ValueError, match="valid: .*conv_subspace"):
        models.get("resnet")


def test_cli_prints_every_model_with_its_count(capsys):
    models.main()
    rows = [line.split()[:2] for line in capsys.readouterr().out.splitlines()]
    assert [name for name, _ in rows] == list(models.names())
    for name, count in rows:  # EXPECTED is written by hand, param_count is traced
        assert int(count.replace(",", "")) == EXPECTED.get(name, models.param_count(
            models.get(name))), name


def test_slice_conv_equals_lax_conv():
    kx, kw, kb = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(kx, (2, 11, 9, 3))
    w = jax.random.normal(kw, (4, 4, 3, 5))
    b = jax.random.normal(kb, (5,))
    np.testing.assert_allclose(models.conv2d(x, w, b, "slice"), models.conv2d(x, w, b, "lax"),
                               rtol=1e-5, atol=1e-5)


CNHW_ARCHS = {  # every layer kind and option the channel-major path handles
    "relu, pooled": dict(channels=(3, 4), kernels=(3, 3), pools=(True, True)),
    "prelu": dict(channels=(3, 4), kernels=(3, 2), pools=(True, False), activation="prelu"),
    "separable, gap": dict(channels=(3, 4), kernels=(3, 3), pools=(True, False),
                           separable=True, gap=True),
    "batch norm": dict(channels=(3, 4), kernels=(3, 3), pools=(True, True), bn=True),
}


def _extra_layers_arch():
    """same padding, leaky ReLU, instance norm, a lone maxpool and no-bias depthwise."""
    return {"input_shape": [12, 12, 1], "layers": [
        {"kind": "conv", "name": "c0", "kernel": 3, "in": 1, "out": 3, "padding": "same",
         "activation": "leaky_relu", "alpha": 0.1, "pool": True},
        {"kind": "instance_norm", "name": "n0"},
        {"kind": "depthwise", "name": "d1", "kernel": 2, "channels": 3, "bias": False},
        {"kind": "maxpool"},
        {"kind": "flatten"},
        {"kind": "dense", "name": "f", "in": 12, "out": 10, "activation": "none"}]}


@pytest.mark.parametrize("kind", [*CNHW_ARCHS, "extra layers"])
def test_channel_major_layout_matches_nhwc(kind):
    """The default C x N x H x W conv stack (pool before a monotone activation)
    gives the NHWC slice form's logits and gradients to float rounding."""
    if kind == "extra layers":
        arch = _extra_layers_arch()
        fast, ref = (models._layers_model("m", arch, "", impl) for impl in ("cnhw", "slice"))
        x = jax.random.normal(jax.random.key(4), (5, 12, 12, 1))
    else:
        fast, ref = (models.cnn("m", conv_impl=impl, in_size=14, **CNHW_ARCHS[kind])
                     for impl in ("cnhw", "slice"))
        x = jax.random.normal(jax.random.key(4), (5, 14, 14, 1))
    params = fast.init(jax.random.key(5))
    np.testing.assert_allclose(fast.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-5)
    loss = lambda m: (lambda p: (m.apply(p, x) ** 2).sum())
    for a, b in zip(jax.tree.leaves(jax.grad(loss(fast))(params)),
                    jax.tree.leaves(jax.grad(loss(ref))(params))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_maxpool_equals_reduce_window_floor_mode():
    x = jax.random.normal(jax.random.key(2), (2, 7, 9, 3))
    ref = lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    np.testing.assert_array_equal(models.maxpool2(x), ref)


def test_prelu_slopes_are_trained_parameters():
    model = models.golf_cnn(activation="prelu")
    params = model.init(jax.random.key(0))
    assert params["conv0"]["slope"].shape == (4,)
    x = jax.random.normal(jax.random.key(3), (4, 28, 28, 1))
    g = jax.grad(lambda p: model.apply(p, x).sum())(params)
    assert float(jnp.abs(g["conv1"]["slope"]).sum()) > 0


def test_golf_family_rejects_impossible_shapes():
    with pytest.raises(ValueError, match="no spatial extent"):
        models.golf_cnn(kernels=(9, 9, 9))


def test_flat_helpers_round_trip_in_ravel_order():
    from jax.flatten_util import ravel_pytree
    model = models.get("golf_prelu")
    params = model.init(jax.random.key(1))
    theta_D = ravel_pytree(params)[0]
    fm = models.flat(model)
    np.testing.assert_array_equal(fm.init_D(jax.random.key(1)), theta_D)
    host = models.unflatten(model, np.asarray(theta_D))  # NumPy, same tree as init
    assert jax.tree.structure(host) == jax.tree.structure(params)
    for a, b, c in zip(jax.tree.leaves(host), jax.tree.leaves(fm.unravel(theta_D)),
                       jax.tree.leaves(params)):
        assert isinstance(a, np.ndarray) and a.dtype == np.float32
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, c)
    x = jax.random.normal(jax.random.key(2), (2, 28, 28, 1))
    np.testing.assert_array_equal(fm.apply_D(theta_D, x), model.apply(params, x))
