"""Flax models through ``models.from_flax``/``from_nnx``/``get('pkg.mod:Factory')``:
the same numbers as the registered twin with the same weights, vmapped seeds,
refusals, and the pruning quick form and the docs example on a Flax model."""

import os
import re
import shlex
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from subspace_jax import config as C
from subspace_jax import models, train, vectorize
from subspace_jax.pruning import masks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWINS = [("examples.flax_models:SmallCNN", "zoo_cnn_small"),
         ("examples.flax_models:MLP", "zoo_fc16"),
         ("examples.flax_models:NnxMLP", "zoo_fc16")]


def _same_weights(ours, theirs, key):
    """Our model's init and the Flax model's params holding the same numbers:
    both ravel in the same layer order (conv0..dense1 / Conv_0..Dense_1)."""
    theta_D = ravel_pytree(ours.init(key))[0]
    flax_like = jax.eval_shape(theirs.init, key)
    unravel = ravel_pytree(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), flax_like))[1]
    return theta_D, unravel(theta_D)


def _logits_and_grad(model):
    def f(params, x, y):
        logits = model.apply(params, x)
        g = jax.grad(lambda p: train.cross_entropy(model.apply(p, x), y))(params)
        return logits, ravel_pytree(g)[0]
    return jax.jit(f)


@pytest.mark.parametrize("spec,twin", TWINS)
def test_flax_model_gives_the_numbers_of_its_registered_twin(spec, twin, synthetic):
    theirs, ours = models.get(spec), models.get(twin)
    assert theirs.name == spec and models.param_count(theirs) == models.param_count(ours)
    theta_D, flax_params = _same_weights(ours, theirs, jax.random.key(0))
    x, y = jnp.asarray(synthetic.val_x[:32]), jnp.asarray(synthetic.val_y[:32])
    # Same logits and the same flat gradient (ravel order agrees): the same training step.
    logits, grads = zip(*[_logits_and_grad(m)(p, x, y)
                          for m, p in ((theirs, flax_params), (ours, ours.init(jax.random.key(0))))])
    np.testing.assert_allclose(logits[0], logits[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    assert float(jnp.abs(grads[0]).max()) > 1e-3


def test_training_a_flax_mlp_gives_its_twins_curve(synthetic):
    theirs, ours = models.get("examples.flax_models:MLP"), models.get("zoo_fc16")
    theta_D, _ = _same_weights(ours, theirs, jax.random.key(0))
    # Two epochs from the same start and data order: the same numbers.
    tcfg = C.train_config(epochs=2, batch_size=64, eval_chunk=128)
    dat = train.Data.from_dataset(synthetic)
    hp = {**train.default_hp(tcfg), "theta_init": theta_D}
    got = [jax.jit(train.make_run(m, tcfg, C.subspace_config(0), len(synthetic.train_y)))(
        jax.random.key(1), hp, dat) for m in (theirs, ours)]
    for k in ("train_loss", "val_acc", "test_acc"):
        np.testing.assert_allclose(got[0].final[k], got[1].final[k], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[0].history["val_loss"], got[1].history["val_loss"], rtol=1e-5)
    np.testing.assert_allclose(got[0].params, got[1].params, rtol=1e-4, atol=1e-6)
    # It learned: the comparison is not of noise (accuracy on all the validation images,
    # the mean of its two equal halves).
    assert float(got[0].final["val_acc"] + got[0].final["decide_acc"]) / 2 > 0.5


def test_flax_init_is_flax_and_seeded():
    model = models.get("examples.flax_models:MLP")
    p0, p1 = model.init(jax.random.key(0)), model.init(jax.random.key(1))
    assert set(p0["Dense_0"]) == {"w", "b"}  # kernel/bias renamed: "w" is prunable
    assert not np.allclose(p0["Dense_0"]["w"], p1["Dense_0"]["w"])
    np.testing.assert_array_equal(p0["Dense_0"]["w"], model.init(jax.random.key(0))["Dense_0"]["w"])
    assert not p0["Dense_0"]["b"].any()  # Flax's zeros bias init, not ours
    lay = masks.model_layout(model)
    assert lay.n_prunable == 784 * 16 + 16 * 10


def test_vmapped_seeds_equal_looped_on_a_flax_model(synthetic):
    model = models.get("examples.flax_models:MLP")
    tcfg = C.train_config(epochs=1, batch_size=64, eval_chunk=128)
    run = train.make_run(model, tcfg, C.subspace_config(0), len(synthetic.train_y))
    dat = train.Data.from_dataset(synthetic)
    hp = {k: np.asarray([v]) for k, v in train.default_hp(tcfg).items()}
    keys = vectorize.run_keys((0, 1))
    v, lo = vectorize.vmapped(run, keys, hp, dat), vectorize.looped(run, keys, hp, dat)
    np.testing.assert_allclose(v.final["val_acc"], lo.final["val_acc"], atol=1e-6)
    np.testing.assert_allclose(v.params, lo.params, rtol=1e-4, atol=1e-6)
    assert not np.allclose(v.params[0], v.params[1])  # seeds differ


@pytest.mark.parametrize("spec,message", [
    ("examples.flax_models:WithBatchNorm", "batch_stats"),
    ("examples.flax_models:Missing", "has no attribute 'Missing'"),
    ("examples.no_such_module:MLP", "No module named"),
    ("examples.flax_models:nn", "not callable"),
    ("examples.flax_models:__doc__", "not callable"),
])
def test_unusable_flax_specs_are_one_clear_error(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        models.get(spec)
    assert "\n" not in str(e.value)


def test_pruning_compare_quick_on_a_flax_model(tmp_path):
    from experiments import pruning_compare
    cfg = pruning_compare.get_config(quick=True)
    cfg.data.source = "synthetic"
    cfg.models = ("examples.flax_models:MLP",)
    summary = pruning_compare.run(cfg, str(tmp_path))
    m = summary["models"]["examples.flax_models:MLP"]
    assert summary["failed_units"] == [] and m["params"] == 12_730
    n_prunable = 784 * 16 + 16 * 10
    for r in m["table"]:
        if r["method"] != "dense":  # global selection: exact kept fraction of the kernels
            assert r["density_mean"] == masks.kept_count(r["density_target"], n_prunable) / n_prunable
    assert any(r["method"] == "at_init/synflow" and r["val_acc_mean"] > 0.2 for r in m["table"])


def test_docs_example_command_runs(tmp_path):
    """docs/flax.md: the command in its first ```sh block, run as written."""
    text = open(os.path.join(ROOT, "docs", "flax.md")).read()
    command = re.search(r"```sh\n(.*?)\n```", text, re.S).group(1).replace("\\\n", " ")
    args = shlex.split(command)
    assert args[:2] == ["python", "launch.py"]
    r = subprocess.run([sys.executable, "launch.py", *args[2:], f"--workdir={tmp_path}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    import json
    summary = json.loads((tmp_path / "summary.json").read_text())
    m = summary["models"]["examples.flax_models:SmallCNN"]
    assert summary["failed_units"] == []
    assert m["d_int90"]["individual"]["d"] is not None  # the quick form finds one
