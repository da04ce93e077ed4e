"""Intrinsic dimension: crossing, bisection and bootstrap on synthetic accuracy
curves (pure NumPy, no training), then the quick experiment end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from subspace_jax import intrinsic, sweep

GRID = (50, 100, 200, 400, 800, 1600)


def linear_in_log(d, cross=1000.0, threshold=0.9):
    """Accuracy rising 0.1 per doubling of d, equal to ``threshold`` at ``cross``."""
    return threshold + 0.1 * np.log2(np.asarray(d, float) / cross)


def test_crossing_of_known_curves():
    d_K = np.asarray([100, 400, 1000, 2000, 4000])
    # Linear in log d, so interpolation in log d is exact between any two points.
    assert intrinsic.crossing(d_K, linear_in_log(d_K, 1600), 0.9) == pytest.approx(1600)
    # Batched over leading axes; censored at both ends.
    acc_2xK = np.stack([linear_in_log(d_K, 700), linear_in_log(d_K, 3000)])
    np.testing.assert_allclose(intrinsic.crossing(d_K, acc_2xK, 0.9), [700, 3000])
    assert intrinsic.crossing(d_K, linear_in_log(d_K, 50), 0.9) == 100   # first point passes
    assert intrinsic.crossing(d_K, linear_in_log(d_K, 9000), 0.9) == np.inf
    # Non-monotone: the first crossing counts.
    assert intrinsic.crossing([10, 100, 1000], [0.8, 1.0, 0.7], 0.9) == pytest.approx(10 ** 1.5)


def test_smallest_passing_bracket_and_split():
    d_K = np.asarray(GRID)
    mean_K = linear_in_log(d_K, 700)
    assert intrinsic.smallest_passing(d_K, mean_K, 0.9) == 800
    assert intrinsic.bracket(d_K, mean_K, 0.9) == (400, 800)
    assert intrinsic.bracket(d_K, mean_K, 0.5) is None   # the smallest d already passes
    assert intrinsic.bracket(d_K, mean_K, 1.5) is None   # no d passes
    assert intrinsic.split(100, 1600, 3) == [200, 400, 800]  # evenly spaced in log d
    assert intrinsic.split(10, 11, 3) == []                  # no integer in between
    assert intrinsic.split(10, 13, 3) == [11, 12]            # rounded duplicates merged


@pytest.mark.parametrize("points", [1, 3])
def test_search_bisects_to_the_true_crossings(points):
    calls = []

    def evaluate(ds, phase):
        calls.append((phase, list(ds)))
        return {d: [float(linear_in_log(d, 700))] * 3 for d in ds}  # 3 identical seeds

    thresholds = (0.9, 0.8)  # true crossings 700 and 350
    curve = intrinsic.search(evaluate, GRID, thresholds, rounds=4, points=points)
    assert calls[0] == ("grid", list(GRID))
    assert [p for p, _ in calls[1:]] == [f"bisect{r}" for r in range(1, len(calls))]
    measured = [d for _, ds in calls for d in ds]
    assert len(measured) == len(set(measured))  # nothing measured twice
    d_K, acc_KxS = intrinsic.as_arrays(curve)
    for threshold, true in zip(thresholds, (700, 350)):
        lo, hi = intrinsic.bracket(d_K, acc_KxS.mean(1), threshold)
        assert lo < true <= hi
        # Each round divides the log-width of the bracket by points + 1.
        assert np.log(hi / lo) <= np.log(2) / (points + 1) ** 4 + np.log(1 + 2 / lo)
        est = intrinsic.estimate(curve, threshold, samples=200)
        assert est["d"] == hi and est["censored"] is None
        assert est["d_interp"] == pytest.approx(true, rel=1e-6)


def test_search_stops_when_a_unit_fails():
    def evaluate(ds, phase):
        return None if phase == "bisect1" else {d: [float(linear_in_log(d, 700))] for d in ds}

    curve = intrinsic.search(evaluate, GRID, (0.9,), rounds=3, points=3)
    assert sorted(curve) == list(GRID)


def noisy_curve(seeds: int, seed=0, sd=0.03, cross=1000.0):
    rng = np.random.default_rng(seed)
    return {d: linear_in_log(d, cross) + rng.normal(0, sd, seeds) for d in GRID + (3200,)}


def test_bootstrap_interval_contains_estimate_and_narrows_with_seeds():
    mean_width = {}
    for seeds in (3, 30):
        widths = []
        for draw in range(10):  # one noisy curve is luck; the trend is over several
            est = intrinsic.estimate(noisy_curve(seeds, draw), 0.9, samples=1000, level=0.9)
            lo, hi = est["ci"]
            assert lo <= est["d_interp"] <= hi, est
            assert est["ci_level"] == 0.9 and est["ci_samples"] == 1000 and est["seeds"] == seeds
            widths.append(np.log(hi / lo))
            wider = intrinsic.estimate(noisy_curve(seeds, draw), 0.9, samples=1000, level=0.95)
            assert wider["ci"][0] <= lo and hi <= wider["ci"][1]  # same resamples: 95% holds 90%
        mean_width[seeds] = np.mean(widths)
    assert mean_width[30] < 0.6 * mean_width[3], mean_width
    est = intrinsic.estimate(noisy_curve(30), 0.9)
    assert est["ci"][0] <= 1000 <= est["ci"][1]  # covers the true crossing here


def test_diverged_runs_enter_no_mean_or_resample():
    d_K = [100, 200, 400, 800]
    acc_K = linear_in_log(d_K, 300)
    clean = {d: [a, a, a] for d, a in zip(d_K, acc_K)}
    # One seed diverged at 400 (NaN), every seed at 800: counted as 0 it would
    # pull the mean at 400 below the threshold and move d_int90 up.
    broken = {**clean, 400: [acc_K[2], np.nan, acc_K[2]], 800: [np.nan] * 3}
    est, ref = intrinsic.estimate(broken, 0.9), intrinsic.estimate(clean, 0.9)
    assert est["d"] == ref["d"] == 400
    assert est["d_interp"] == pytest.approx(ref["d_interp"])
    assert est["ci"] == pytest.approx(ref["ci"])  # constant seeds: every resample agrees
    assert est["d_range"] == [100, 400] and est["diverged_runs"] == 1
    assert intrinsic.next_candidates(broken, [0.9], 1) == intrinsic.next_candidates(
        {d: v for d, v in clean.items() if d != 800}, [0.9], 1)


def test_censored_estimates():
    far = intrinsic.estimate(noisy_curve(3, cross=1e5), 0.9, samples=100)
    assert far["d"] is None and far["censored"] == "above" and far["ci"][1] == np.inf
    assert intrinsic.fmt_d(far) == "> 3,200" and intrinsic.fmt_ci(far).endswith("inf]")
    near = intrinsic.estimate(noisy_curve(3, cross=5), 0.9, samples=100)
    assert near["d"] == 50 and near["censored"] == "below" and intrinsic.fmt_d(near) == "<= 50"


def test_config_choices():
    from experiments import intrinsic_dimension as exp

    cfg = exp.get_config()
    assert cfg.projection == "dense" and set(cfg.models) == {"fc_200_200", "conv_subspace"}
    assert exp.train_config(cfg, True).keep_best  # val: best validation epoch
    cfg.measure_on = "train"  # random labels: the last epoch (val labels stay true)
    assert not exp.train_config(cfg, True).keep_best
    assert exp.train_config(cfg, True).learning_rate == cfg.subspace_learning_rate
    # Another data variant never reuses a finished unit of the first.
    other = exp.get_config()
    other.data.permute_pixels = True
    assert sweep.unit_id("m", cfg.data) != sweep.unit_id("m", other.data)
    for field, value in (("measure_on", "test"), ("projection", "nope"), ("grid", (0, 10))):
        bad = exp.get_config(quick=True)
        bad[field] = value
        with pytest.raises(ValueError, match=field):
            exp.validate(bad)


def test_quick_experiment_end_to_end_and_resume(tmp_path):
    from experiments import intrinsic_dimension as exp

    cfg = exp.get_config(quick=True)
    cfg.data.source, cfg.data.val_size, cfg.data.train_size = "synthetic", 128, 0
    summary = exp.run(cfg, str(tmp_path))
    for name in ("config.json", "metrics.jsonl", "summary.json", "summary.md",
                 "intrinsic_dimension.png"):
        assert (tmp_path / name).exists(), name
    m = summary["models"]["zoo_fc16"]
    assert summary["failed_units"] == []
    rows = {r["d"]: r for r in m["curve"]}
    assert set(cfg.grid) <= set(rows)
    assert {r["phase"] for r in rows.values()} == {"grid", "bisect1"}  # a bracket was refined
    assert all(r["seeds"] == 3 and r["test_acc_mean"] is not None for r in rows.values())
    # individual = individual_fraction x the full-space runs' mean accuracy (all ok here).
    assert m["full"]["diverged"] == 0
    assert m["thresholds"]["individual"] == pytest.approx(
        cfg.individual_fraction * m["full"]["decide_acc_mean"], rel=1e-9)  # the deciding half
    for baseline in ("global", "individual"):
        est = m["d_int90"][baseline]
        passing = [d for d, r in rows.items() if r["decide_acc_mean"] >= est["threshold"]]
        # The decision uses the validation half that chose no epoch.
        assert est["d"] == (min(passing) if passing else None)
    full = m["full"]
    assert m["thresholds"]["individual"] == pytest.approx(0.9 * full["decide_acc_mean"])
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["models"]["zoo_fc16"]["d_int90"]["global"]["ci_level"] == 0.9
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert lines and all("epoch" in json.loads(line) for line in lines)

    again = exp.run(cfg, str(tmp_path))  # everything finished: nothing is retrained
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == lines
    assert again["models"]["zoo_fc16"]["d_int90"] == m["d_int90"]

    # A changed config into the same workdir trains again: no old result returns.
    cfg.train.learning_rate = 1e30  # the full-space baseline diverges
    cfg.grid, cfg.bisection_rounds = (16, 64), 0
    changed = exp.run(cfg, str(tmp_path))["models"]["zoo_fc16"]
    assert changed["full"]["diverged"] == 3 and changed["full"]["decide_acc_mean"] is None
    # A diverged baseline gives no individual threshold (never a threshold of 0).
    assert "individual" not in changed["thresholds"] and "individual" not in changed["d_int90"]
    assert "diverged" in changed["no_estimate"]["individual"]
    assert "no estimate" in (tmp_path / "summary.md").read_text()
    assert {r["d"] for r in changed["curve"]} == {16, 64}


def test_lr_rule_rows_and_choice_on_the_choosing_half():
    from experiments import intrinsic_dimension as exp

    cfg = exp.get_config()
    cfg.subspace_lr_rule, cfg.subspace_lr_d0, cfg.subspace_lr_factors = "sqrt", 400, (0.5, 2.0)
    tcfg = exp.train_config(cfg, True)
    d_R, factor_R, lr_R = exp.learning_rates(cfg, tcfg, [100, 1600], True)
    np.testing.assert_array_equal(d_R, [100, 100, 1600, 1600])
    np.testing.assert_allclose(lr_R, [0.025, 0.1, 0.0125, 0.05], rtol=1e-6)  # 0.05 x rule x f
    _, _, full_lr = exp.learning_rates(cfg, exp.train_config(cfg, False), [1000], False)
    np.testing.assert_allclose(full_lr, [cfg.train.learning_rate])

    # val_acc (the choosing half) prefers factor 0.5, decide_acc would prefer 2.0.
    def rec(seed, f, val, decide, status="ok"):
        return {"d": 100, "seed": seed, "lr_factor": f, "learning_rate": 0.05 * f,
                "val_acc": val, "decide_acc": decide, "status": status}

    records = [rec(s, 0.5, 0.8, 0.1) for s in range(3)] + [rec(s, 2.0, 0.7, 0.99)
                                                          for s in range(3)]
    chosen = exp.choose_learning_rates(records)
    assert [r["lr_factor"] for r in chosen] == [0.5] * 3
    # Fewer diverged runs first: a factor diverging on one seed is not kept for its lucky ones.
    records[0]["status"] = "diverged"
    assert {r["lr_factor"] for r in exp.choose_learning_rates(records)} == {2.0}
    for field, value, match in (("subspace_lr_rule", "linear", "subspace_lr_rule"),
                                ("subspace_lr_d0", 0, "subspace_lr_d0"),
                                ("subspace_lr_factors", (1.0, -1.0), "subspace_lr_factors")):
        bad = exp.get_config(quick=True)
        bad[field] = value
        with pytest.raises(ValueError, match=match):
            exp.validate(bad)
    bad = exp.get_config(quick=True)
    bad.measure_on, bad.subspace_lr_factors = "train", (0.5, 1.0)
    with pytest.raises(ValueError, match="measure_on='val'"):
        exp.validate(bad)
    for projection, match in (("trajectory", "give snapshots"),
                              ("trajectory:snapshots=512", "snapshots >= 1024")):
        bad = exp.get_config(quick=True)
        bad.projection = projection
        with pytest.raises(ValueError, match=match):
            exp.validate(bad)
