"""experiments/frontier.py: points read from committed summaries, chosen without test."""

import json
import os
import shutil

import pytest

from experiments import frontier
from subspace_jax.errors import ConfigError

RESULTS = os.path.join(frontier.REPO, "docs", "results")


def _points(sources, results_dir=RESULTS):
    cfg = frontier.get_config()
    cfg.sources, cfg.results_dir = sources, results_dir
    frontier.validate(cfg)
    return frontier.collect(cfg)


def test_quick_form_end_to_end(tmp_path):
    summary = frontier.run(frontier.get_config(quick=True), str(tmp_path))
    for name in ("summary.json", "summary.md", "frontier.png", "config.json"):
        assert (tmp_path / name).exists(), name
    assert {p["method"] for p in summary["points"]} == {"zoo", "golf"}
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["sentence"].startswith("A 90% MNIST classifier needs about ")
    assert "test-scored, not test-chosen" in (tmp_path / "summary.md").read_text()
    assert all(p["protocol"] == "test-selected" for p in written["published"])


def test_points_carry_the_committed_numbers():
    points = _points(("zoo", "golf_prune", "wann"))["points"]
    (small,) = [p for p in points if p["label"] == "zoo_cnn_small"]   # gpu_h100/zoo/summary.json
    assert small["free_params"] == 3369 and small["seeds"] == 3
    assert small["test_acc_mean"] == 0.9797333199999999
    assert small["protocol"] == "previous" and small["budget"] == "5 epochs"
    # golf_prune seeds 0-2: brute force keeps 422, 431, 479 non-zero at test 97.88, 97.90, 97.72%
    (pruned,) = [p for p in points if p["method"] == "pruning"]
    assert pruned["free_params"] == pytest.approx(444.0)
    assert pruned["test_acc_mean"] == pytest.approx((0.9788 + 0.979 + 0.9772) / 3)
    assert "brute_force" in pruned["label"] and len(pruned["passed_over"]) == 4
    # wann_2048: 577 connections; validation prefers the best single weight (88.80 vs 88.77)
    shared = [p for p in points if p["method"] == "WANN, one shared weight"
              and p["free_params"] == 577]
    assert [p["test_acc_mean"] for p in shared] == [0.8849]


def test_golf_records_points_are_the_re_trained_recipes():
    points = _points(("golf_records",))["points"]
    by_name = {p["label"].split(",")[0]: p for p in points}
    assert set(by_name) == {"hexhowells_820", "joshwarn_697", "joshwarn_997", "shared_1936"}
    # records_997: 5 ok seeds of 997 non-zero, test 98.74 / 98.71 / 98.70 / 98.59 / 98.78%
    p997 = by_name["joshwarn_997"]
    assert p997["free_params"] == 997 and p997["seeds"] == 5 and p997["budget"] == "60 epochs"
    assert p997["test_acc_mean"] == pytest.approx(0.98704, abs=1e-6)
    assert p997["protocol"] == "current" and p997["on_frontier"]
    assert by_name["shared_1936"]["free_params"] == 1936  # its shared layer counted once
    budgets = {p["budget"] for p in points if p["label"].startswith("joshwarn_697,")}
    assert budgets == {"40 epochs", "100 epochs"}  # two budgets: two points, not one chosen


def _hand_made_results(tmp_path):
    """A copy of the zoo summary in which zoo_fc16 diverged on every seed."""
    shutil.copytree(os.path.join(RESULTS, "gpu_h100", "zoo"), tmp_path / "gpu_h100" / "zoo")
    path = tmp_path / "gpu_h100" / "zoo" / "summary.json"
    summary = json.loads(path.read_text())
    summary["models"]["zoo_fc16"].update(seeds=0, diverged=3, test_acc_mean=None,
                                         test_acc_sd=None, val_acc_mean=None)
    path.write_text(json.dumps(summary))
    return str(tmp_path)


def test_a_diverged_entry_never_enters(tmp_path):
    summary = _points(("zoo",), _hand_made_results(tmp_path))
    assert "zoo_fc16" not in [p["label"] for p in summary["points"]]
    assert [p["label"] for p in summary["left_out"]] == ["zoo_fc16"]
    assert "zoo_fc32" in [p["label"] for p in summary["points"]]


def _p(free, acc, method="m", val=None, diverged=0, label=""):
    return {"method": method, "label": label or f"{method}{free}", "free_params": free,
            "test_acc_mean": acc, "test_acc_sd": None, "seeds": 3, "diverged": diverged,
            "budget": "1 epoch", "protocol": "previous", "choose_value": val}


def test_smallest_reaching_rule():
    points = [_p(5000, 0.991), _p(300, 0.95), _p(100, 0.899), _p(200, 0.90), _p(200, 0.92, "n")]
    assert frontier.smallest_reaching(points, 0.9)["test_acc_mean"] == 0.92   # 200, the better
    assert frontier.smallest_reaching(points, 0.93)["free_params"] == 300
    assert frontier.smallest_reaching(points, 0.99)["free_params"] == 5000
    assert frontier.smallest_reaching(points, 0.995) is None


def test_validation_chooses_never_test():
    group = [_p(200, 0.99, val=0.90, label="best on test"), _p(200, 0.95, val=0.93, label="val"),
             _p(200, 0.80, val=0.99, diverged=1, label="diverged seed")]
    (kept,) = frontier.choose(group)
    assert kept["label"] == "val" and len(kept["passed_over"]) == 2
    marked = frontier.mark_frontier([kept, {**_p(300, 0.94), "passed_over": []}])
    assert [p["on_frontier"] for p in marked] == [True, False]


def test_bad_results_dir_is_one_line_naming_the_field(tmp_path):
    cfg = frontier.get_config()
    cfg.results_dir = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"^config\.results_dir=") as e:
        frontier.validate(cfg)
    assert "\n" not in str(e.value)
    cfg = frontier.get_config()
    cfg.sources = ("zoo", "tea_leaves")
    with pytest.raises(ConfigError, match="config.sources"):
        frontier.validate(cfg)
