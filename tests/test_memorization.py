import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from subspace_jax import config as C
from subspace_jax import distill, models, train, vectorize


@pytest.fixture(scope="module")
def dat(synthetic):
    return train.Data.from_dataset(synthetic)


def small_dcfg(**kw):
    return distill.distill_config(**{"epochs": 2, "batch_size": 64, "noise_size": 512,
                                     "probe_size": 128, "eval_chunk": 64, **kw})


@pytest.fixture(scope="module")
def trained_teacher(synthetic, dat):
    """A 784-32-10 MLP trained 3 epochs on the synthetic data (flat params)."""
    model = models.mlp("t32", (32,))
    cfg = C.train_config(epochs=3, batch_size=32, eval_chunk=64, keep_best=False)
    res = jax.jit(train.make_run(model, cfg, C.subspace_config(0), len(synthetic.train_y)))(
        jax.random.key(0), train.default_hp(cfg), dat)
    assert float(res.final["train_acc"]) > 0.9
    return model, res.params


def test_noise_kinds_have_the_intended_statistics(synthetic):
    mean, sd = distill.pixel_stats(jnp.asarray(synthetic.train_x))
    idx = jnp.arange(4000)
    key = jax.random.key(3)
    draw = jax.jit(distill.noise_examples, static_argnums=0)

    u = np.asarray(draw("uniform", key, idx, mean, sd)).reshape(4000, -1)
    lo, hi = distill.uniform_range()
    assert u.min() >= lo and u.max() <= hi
    assert abs(u.mean() - (lo + hi) / 2) < 0.01
    assert abs(u.var() - (hi - lo) ** 2 / 12) < 0.01 * (hi - lo) ** 2 / 12

    g = np.asarray(draw("gaussian", key, idx, mean, sd))
    assert abs(g.mean()) < 0.01 and abs(g.std() - 1.0) < 0.01

    p = np.asarray(draw("pixel", key, idx, mean, sd)).reshape(4000, -1)
    m, s = np.asarray(mean).reshape(-1), np.asarray(sd).reshape(-1)
    assert np.all(np.abs(p.mean(0) - m) < 5 * s / np.sqrt(4000) + 1e-6)
    np.testing.assert_allclose(p.std(0), s, rtol=0.1)

    # A pixel that is constant in the data stays constant in pixel-matched noise.
    sd0 = sd.at[0, 0, 0].set(0.0)
    p0 = np.asarray(draw("pixel", key, idx[:50], mean, sd0))
    assert np.all(p0[:, 0, 0, 0] == np.float32(mean[0, 0, 0]))

    # Example i depends only on (key, i): the noise set is fixed, whatever the batch.
    np.testing.assert_array_equal(np.asarray(draw("gaussian", key, jnp.array([7, 2]), mean, sd)),
                                  g[[7, 2]])
    # The kind as a traced index gives the same draws as its name.
    by_index = jax.jit(distill.noise_examples)(jnp.int32(distill.noise_index("pixel")), key,
                                               idx[:50], mean, sd)
    np.testing.assert_allclose(np.asarray(by_index).reshape(50, -1), p[:50], rtol=1e-6)
    with pytest.raises(ValueError, match="noise kind"):
        distill.noise_examples("pink", key, idx, mean, sd)


def test_soft_target_losses():
    t = jax.random.normal(jax.random.key(0), (8, 10))
    s = jax.random.normal(jax.random.key(1), (8, 10))
    for kind in distill.LOSSES:
        assert float(distill.soft_target_loss(kind, t, t, 2.0)) == pytest.approx(0.0, abs=1e-6)
        assert float(distill.soft_target_loss(kind, s, t, 2.0)) > 0.01
    with pytest.raises(ValueError, match="distillation loss"):
        distill.soft_target_loss("l1", s, t)


def test_student_sizes():
    sizes = distill.student_sizes(512, 0.2, 5)
    assert sizes[:4] == [512, 410, 328, 262] and 5 <= sizes[-1] < 7
    assert all(a > b for a, b in zip(sizes, sizes[1:]))
    assert distill.student_sizes(64, 0.2, 5, rounds=3) == [64, 51, 41, 33]
    assert distill.student_sizes(6, 0.2, 5) == [6, 5]  # always at least one unit fewer


@pytest.fixture(scope="module")
def distill_run(trained_teacher):
    """One compiled distillation shared by the tests below (compiles dominate)."""
    teacher, _ = trained_teacher
    return distill.make_distill_run(teacher, models.mlp("s16", (16,)),
                                    small_dcfg(noise="pixel", epochs=4, noise_size=1024))


def test_distillation_reduces_student_teacher_disagreement(dat, trained_teacher, distill_run):
    _, teacher_D = trained_teacher
    out = jax.jit(distill_run)(jax.random.key(1), {"teacher_D": teacher_D}, dat)
    f = {k: float(v) for k, v in out.final.items()}
    # Disagreement on held-out noise from the distillation distribution: the
    # synthetic blobs are far from pixel noise, so agreement on the images
    # themselves is not what this checks (on MNIST, Gaussian noise does transfer).
    assert f["probe_loss"] < 0.5 * f["probe_loss_init"]
    assert 1 - f["probe_agreement"] < 0.5 * (1 - f["probe_agreement_init"])
    assert out.history["distill_loss"][-1] < out.history["distill_loss"][0]
    assert out.params.shape == (models.param_count(models.mlp("s16", (16,))),)
    assert not bool(out.final["diverged"])


def test_vmapped_over_seeds_equals_looped(dat, trained_teacher, distill_run):
    _, teacher_D = trained_teacher
    teachers_SxD = jnp.stack([teacher_D, 0.9 * teacher_D])  # one teacher per seed
    keys = jnp.stack([jax.random.key(s) for s in (1, 2)])
    v = vectorize.vmapped(distill_run, keys, {"teacher_D": teachers_SxD}, dat, paired=True)
    one = jax.jit(distill_run)
    loop = [one(keys[i], {"teacher_D": teachers_SxD[i]}, dat) for i in range(2)]
    l = jax.tree.map(lambda *xs: np.stack(xs), *loop)
    assert v.history["distill_loss"].shape == (2, 4)
    np.testing.assert_allclose(v.params, l.params, rtol=1e-4, atol=1e-5)
    for k in ("train_acc", "test_acc", "agreement_train", "probe_loss"):
        np.testing.assert_allclose(v.final[k], l.final[k], rtol=1e-4, atol=1e-5)
    assert not np.allclose(v.params[0], v.params[1])  # the two seeds differ


def test_bad_distill_config_is_a_clear_error():
    t, s = models.mlp("t8", (8,)), models.mlp("s4", (4,))
    with pytest.raises(ValueError, match="noise kind"):
        distill.make_distill_run(t, s, small_dcfg(noise="pink"))
    with pytest.raises(ValueError, match="batch_size"):
        distill.make_distill_run(t, s, small_dcfg(batch_size=1024, noise_size=512))


def test_quick_experiment_end_to_end(tmp_path, capsys):
    from experiments import memorization
    cfg = memorization.get_config(quick=True)
    cfg.data.source = "synthetic"
    summary = memorization.run(cfg, str(tmp_path))
    for name in ("config.json", "metrics.jsonl", "summary.json", "summary.md",
                 "training_curves.png", "compression.png", "distillation_noise.png"):
        assert os.path.exists(tmp_path / name), name
    assert summary["failed_units"] == []
    assert set(summary["teachers"]) == {"real", "50% random", "random"}
    rounds = summary["distillation"][cfg.noise_kinds[0]]["random"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert [r["hidden"] for r in rounds] == [64, 51, 41, 33]
    assert set(summary["distillation"][cfg.noise_kinds[1]]) == {"real", "random"}
    assert len(summary["pruning"]["real"]) == len(cfg.densities)
    assert [r["d"] for r in summary["subspace"]["random"]["table"]] == list(cfg.dims)
    # Label noise as asked: a replaced label is right by chance 1 time in 10.
    changed = {k: t["labels_changed"] for k, t in summary["teachers"].items()}
    assert changed["real"] == 0.0
    assert changed["50% random"] == pytest.approx(0.45, abs=0.05)
    assert changed["random"] == pytest.approx(0.9, abs=0.04)
    # Pruning keeps exactly the asked fraction of the kernels (global); biases stay.
    from subspace_jax.pruning import masks
    lay = masks.model_layout(models.mlp("m", (cfg.hidden,)))
    for row in summary["pruning"]["random"]:
        kept = masks.kept_count(row["density_target"], lay.n_prunable)
        assert row["density_mean"] == pytest.approx(kept / lay.n_prunable, abs=1e-6)
        assert row["nonzero_mean"] == kept + lay.D - lay.n_prunable
    # d_fit is the smallest d of the table at or above the stated target.
    for entry in summary["subspace"].values():
        target, table = entry["target_train_acc"], entry["table"]
        passing = [r["d"] for r in table if target is not None
                   and r["train_acc_mean"] is not None and r["train_acc_mean"] >= target]
        assert entry["d_fit"] == (min(passing) if passing else None)
    assert "Verdict" in summary["conclusion"]
    with open(tmp_path / "summary.json") as f:
        assert json.load(f)["conclusion"] == summary["conclusion"]
    # Resuming redoes nothing: every unit is skipped and the summary is the same.
    capsys.readouterr()
    again = memorization.run(cfg, str(tmp_path))
    assert capsys.readouterr().out.count("skipped (already finished)") == len(
        os.listdir(tmp_path / "runs")) - len(cfg.label_fractions)  # minus teacher .npy files
    assert again["conclusion"] == summary["conclusion"]
    # A changed pruning config retrains the pruning units only; the teachers
    # and what was distilled from them are reused.
    n_units = len(os.listdir(tmp_path / "runs")) - len(cfg.label_fractions)
    cfg.densities = (0.2,)
    capsys.readouterr()
    changed = memorization.run(cfg, str(tmp_path))
    out = capsys.readouterr().out
    assert out.count("skipped (already finished)") == n_units - len(cfg.label_fractions)
    assert [r["density_target"] for r in changed["pruning"]["real"]] == [0.2]
