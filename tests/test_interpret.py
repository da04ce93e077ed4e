"""subspace_jax/inspection.py and experiments/interpret.py: activations, ascent, quick run."""

import json

import jax
import numpy as np
import pytest

from experiments import interpret as experiment
from subspace_jax import inspection, models


def _arch_params(name, seed=0):
    model = models.get(name)
    return model, model.arch, jax.jit(model.init)(jax.random.key(seed))


@pytest.mark.parametrize("name", ["golf_prelu", "zoo_fc16"])  # conv + prelu; an MLP
def test_layer_activations_match_apply(name):
    model, arch, params = _arch_params(name)
    x_NHWC = np.asarray(jax.random.normal(jax.random.key(1), (2, 28, 28, 1)))
    want = np.asarray(model.apply(params, x_NHWC))
    # One image at a time, and vmapped over images: both equal apply's logits.
    looped = np.stack([np.asarray(inspection.logits(arch, params, x)) for x in x_NHWC])
    np.testing.assert_allclose(looped, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(inspection.per_image(inspection.logits, arch, params, x_NHWC),
                               want, rtol=1e-5, atol=1e-5)
    # The final features are what the last linear layer maps to the logits.
    last = inspection.check_classifier(arch)
    feats = inspection.per_image(inspection.feature_vector, arch, params, x_NHWC)
    np.testing.assert_allclose(feats @ np.asarray(params[last["name"]]["w"])
                               + np.asarray(params[last["name"]]["b"]), want,
                               rtol=1e-4, atol=1e-4)
    if arch["layers"][0]["kind"] == "conv":  # the opened-up first layer, pooled, is layer 1
        maps = inspection.first_layer_maps(arch, params, x_NHWC[0])
        np.testing.assert_allclose(models.maxpool2(maps[None])[0],
                                   inspection.layer_output(arch, params, x_NHWC[0], 1),
                                   rtol=1e-5, atol=1e-6)


def test_gradient_ascent_increases_the_target():
    """conv1's 5 channels of a random golf_prelu (the logits: test_quick_end_to_end)."""
    _, arch, params = _arch_params("golf_prelu")
    n, units = 1, 5
    x_NHWC = np.asarray(jax.random.normal(jax.random.key(2), (64, 28, 28, 1)))
    out = inspection.visualise_layer(arch, params, jax.random.key(0), n, units,
                                    inspection.Ascent(steps=40, jitter=1), x_scale_NHWC=x_NHWC)
    scale_U = out["scale"]
    values_NxU = inspection.per_image(lambda a, p, x: inspection.unit_values(a, p, x, n),
                                      arch, params, x_NHWC)
    np.testing.assert_allclose(scale_U, values_NxU.std(0), rtol=1e-4)
    assert out["image"].shape == (units, 28, 28, 1)
    assert out["image"].min() >= 0 and out["image"].max() <= 1
    gain_U = (out["end"] - out["start"]) / scale_U
    assert np.all(gain_U > 1.0), (out["start"], out["end"], scale_U)
    # Each image drives its own unit higher than the other units' images do.
    values_UxU = inspection.per_image(lambda a, p, x: inspection.unit_values(a, p, x, n),
                                      arch, params, inspection.to_input(out["image"]))
    own_U = np.diag(values_UxU)  # [v, u]: unit u on image v
    np.testing.assert_allclose(own_U, out["end"], rtol=1e-4, atol=1e-4)
    assert np.all(own_U[None, :] >= values_UxU), values_UxU


def test_missing_or_invalid_model_file_is_a_clear_error(tmp_path):
    cfg = experiment.get_config(quick=True)
    cfg.model_file = str(tmp_path / "nope.npz")
    with pytest.raises(ValueError, match=r"config.model_file=.*no such file.*export_model"):
        experiment.run(cfg, str(tmp_path / "out"))
    bad = tmp_path / "bad.npz"
    bad.write_text("not a model")
    cfg.model_file = str(bad)
    with pytest.raises(ValueError, match=r"config.model_file=.*not a usable exported model"):
        experiment.run(cfg, str(tmp_path / "out"))


def test_quick_end_to_end(tmp_path):
    cfg = experiment.get_config(quick=True)
    cfg.data.source = "synthetic"
    cfg.data.val_size = 128
    cfg.data.train_size = 0
    cfg.build.model = "zoo_cnn_small"  # 2 conv layers: fewer programs to compile than golf
    cfg.build.steps = 0  # random init: the training step's compile would double the time
    cfg.ascent_steps = 8
    cfg.sample_digits = 3  # fewer subplots: matplotlib is a good part of the time
    summary = experiment.run(cfg, str(tmp_path))
    assert (tmp_path / "model.npz").exists() and (tmp_path / "summary.md").exists()
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["figures"] == summary["figures"]
    assert set(written["figures"]) == {"first_layer.png", "class_feature_means.png",
                                       "last_layer_weights.png", "ascent_conv0.png",
                                       "ascent_conv1.png", "ascent_logits.png"}
    for name in written["figures"]:
        assert (tmp_path / name).stat().st_size > 1000, name
    means = np.array(written["class_feature_means"], dtype=float)
    assert means.shape == (10, written["feature_dim"]) == (10, 25)
    assert sum(written["class_counts"]) == written["val_images"] == 128
    assert written["first_layer_digits"]["label"] == [0, 1, 2]
    for name, a in written["ascent"].items():
        assert np.all(np.array(a["objective_end"]) > np.array(a["objective_start"])), name
    assert len(written["ascent"]["logits"]["objective_end"]) == 10
