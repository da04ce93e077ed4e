"""experiments/zoo.py quick form end to end: table, figure, exports, resumption."""

import json
import os

import numpy as np

from conftest import unit_file
from experiments import zoo
from subspace_jax import data, export, models


def test_zoo_quick_end_to_end_and_resume(tmp_path):
    cfg = zoo.get_config(quick=True)
    cfg.data.source = "synthetic"
    cfg.data.val_size = 128
    cfg.data.train_size = 0
    summary = zoo.run(cfg, str(tmp_path))
    assert set(summary["models"]) == set(zoo.PUBLISHED)
    for name in ("summary.json", "summary.md", "accuracy_vs_params.png", "metrics.jsonl"):
        assert (tmp_path / name).exists(), name
    for name, row in summary["models"].items():
        # The row is the mean over seeds of the chosen learning rate's records.
        recs = json.loads(open(unit_file(tmp_path, name)).read())["records"]
        chosen = [r["test_acc"] for r in recs if r["learning_rate"] == row["learning_rate"]
                  and r["status"] == "ok"]
        assert row["seeds"] == len(chosen) == 2
        assert row["test_acc_mean"] == np.mean(chosen)
        with np.load(tmp_path / f"{name}.npz") as f:
            desc = json.loads(str(f["arch"]))
            assert desc["dense_params"] == row["params"]
            assert desc["nonzero_params"] == sum(np.count_nonzero(f[k]) for k in f.files
                                                 if k != "arch")
    records = json.loads(open(unit_file(tmp_path, "zoo_fc16")).read())["records"]
    assert all("theta" not in r for r in records)

    # The exported file holds seed 0's kept params: it reproduces their test accuracy.
    desc, arrays = export.load(str(tmp_path / "zoo_cnn_small.npz"))
    params = {}
    for key, arr in arrays.items():
        layer, name = key.split("/")
        params.setdefault(layer, {})[name] = arr
    ds = data.from_config(cfg.data)
    logits = models.get("zoo_cnn_small").apply(params, ds.test_x)
    acc = float((np.asarray(logits).argmax(-1) == ds.test_y).mean())
    rec = json.loads(open(unit_file(tmp_path, "zoo_cnn_small")).read())["records"]
    (seed0,) = [r for r in rec if r["seed"] == 0]
    assert abs(acc - seed0["test_acc"]) < 1e-6

    metrics = (tmp_path / "metrics.jsonl").read_text()
    (tmp_path / "zoo_cnn_large.npz").unlink()
    again = zoo.run(cfg, str(tmp_path))  # resumed: no unit reruns, exports rebuilt from disk
    assert (tmp_path / "metrics.jsonl").read_text() == metrics
    assert again["models"] == json.loads((tmp_path / "summary.json").read_text())["models"]
    assert (tmp_path / "zoo_cnn_large.npz").exists()

    # A changed config into the same workdir retrains: no old result returns.
    cfg.seeds = (0, 5)
    changed = zoo.run(cfg, str(tmp_path))
    for name, row in changed["models"].items():
        assert row["seeds"] == 2
        assert row["test_acc_mean"] != again["models"][name]["test_acc_mean"], name
    runs = [f for f in os.listdir(tmp_path / "runs") if f.startswith("zoo_fc16_")
            and f.endswith(".json")]
    assert len(runs) == 2  # the first config's unit is kept beside, for a later re-use
