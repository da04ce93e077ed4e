"""Aggregates count only finished runs: each one with a run forced to diverge (pure Python)."""

import math

import pytest

from subspace_jax import report, sweep
from subspace_jax.pruning import procedures as P


def rec(seed, acc, status="ok", **extra):
    return {"seed": seed, "val_acc": acc, "decide_acc": acc, "test_acc": acc, "train_acc": acc,
            "status": status, **extra}


def test_stats_leave_diverged_runs_out_and_count_them():
    runs = [rec(0, 0.9), rec(1, 0.8), rec(2, None, "diverged"), rec(3, math.nan, "diverged")]
    row = report.stats(runs, ("val_acc",))
    assert row["val_acc_mean"] == pytest.approx(0.85)
    assert row["val_acc_sd"] == pytest.approx(math.sqrt(0.005))
    assert (row["runs"], row["ok"], row["diverged"]) == (4, 2, 2)
    # With no finished run there is no estimate, never a 0.
    none = report.stats([rec(0, None, "diverged")], ("val_acc",))
    assert none["val_acc_mean"] is None and none["diverged"] == 1


def test_choose_never_prefers_an_option_for_its_lucky_seeds():
    # lr 0.1 has the best mean over its ok seeds but diverged on one seed.
    options = {0.1: [rec(0, 0.99), rec(1, None, "diverged")],
               0.01: [rec(0, 0.95), rec(1, 0.94)],
               0.001: [rec(0, 0.90), rec(1, 0.91)]}
    assert report.choose(options, "val_acc") == 0.01
    assert report.choose({1: [rec(0, None, "diverged")]}, "val_acc") is None
    # Among options that all diverged somewhere, the better ok mean wins.
    assert report.choose({1: [rec(0, 0.5), rec(1, None, "diverged")],
                          2: [rec(0, 0.6), rec(1, None, "diverged")]}, "val_acc") == 2


def test_select_and_summarise_reports_ok_seeds_only():
    runs = [rec(0, 0.9, d=10, learning_rate=0.1), rec(1, None, "diverged", d=10, learning_rate=0.1),
            rec(0, 0.7, d=10, learning_rate=0.01), rec(1, 0.8, d=10, learning_rate=0.01)]
    (row,) = sweep.select_and_summarise(runs, "d")
    assert row["learning_rate"] == 0.01 and row["seeds"] == 2 and row["diverged"] == 0
    assert row["test_acc_mean"] == pytest.approx(0.75)
    assert row["at_edge"] == "low"  # the smaller of two lrs won: the grid may be too narrow
    assert [c["val_acc_mean"] for c in row["candidates"]] == pytest.approx([0.75, 0.9])
    assert [c["ok"] for c in row["candidates"]] == [2, 1]
    mid = runs + [rec(0, 0.6, d=10, learning_rate=0.001)]
    (inner,) = sweep.select_and_summarise(mid, "d")
    assert inner["learning_rate"] == 0.01 and inner["at_edge"] is None
    (only,) = sweep.select_and_summarise(runs[:2], "d")  # the diverged seed stays out
    assert only["seeds"] == 1 and only["diverged"] == 1 and only["test_acc_mean"] == 0.9


def test_pruning_summary_keeps_diverged_seeds_out():
    common = dict(method="iterative/magnitude", density_target=0.1, learning_rate=0.001,
                  density=0.1, nonzero=10, flops=100, best_epoch=2)
    runs = [rec(0, 0.9, **common), rec(1, 0.8, **common), rec(2, 0.0, "diverged", **common)]
    (row,) = P.summarise(runs)
    assert row["val_acc_mean"] == pytest.approx(0.85) and row["seeds"] == 2
    assert row["diverged"] == 1


def test_lottery_level_is_decided_on_the_half_that_chose_nothing():
    from experiments import lottery

    cfg = lottery.get_config(quick=True)
    dense = {"method": "dense", "density_target": 1.0, "val_acc_mean": 0.95,
             "decide_acc_mean": 0.95}
    # The sparsest level looks as good as dense on the half that chose its epoch,
    # but not on the other half: the denser level is exported.
    sparse = {"method": "imp/rewind0", "density_target": 0.1, "val_acc_mean": 0.96,
              "decide_acc_mean": 0.94}
    denser = {"method": "imp/rewind0", "density_target": 0.5, "val_acc_mean": 0.955,
              "decide_acc_mean": 0.951}
    assert lottery.choose_ticket(cfg, [dense, sparse, denser]) is denser
