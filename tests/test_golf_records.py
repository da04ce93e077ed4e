"""experiments/golf_records.py and the layers its Keras recipes need ('same' padding,
fixed-slope leaky_relu, bias-free depthwise convs), checked against tools/check_model.py."""

import copy

import jax
import numpy as np
import pytest

from conftest import check_model
from experiments import golf_records as gr
from subspace_jax import data, export, models, report
from subspace_jax.workdir import Workdir


def test_keras_layers_count_run_and_export_as_the_numpy_checker_reads_them(tmp_path):
    # conv0 3x3 'same' 1->3 (27 + 3), pool 28->14; dw1 3x3 on 3, no bias (27), 14->12;
    # conv1 1x1 3->4 (12 + 4); gap; dense 4->10 (40 + 10): 123 params.
    model = gr.separable_gap(3, "same", (4,), alpha=0.3)
    assert models.param_count(model) == models.arch_param_count(model.arch) == 123
    assert "dw1/b" not in models.param_shapes(model.arch)
    rng = np.random.default_rng(0)
    params = {}
    for key, shape in models.param_shapes(model.arch).items():
        layer, name = key.split("/")
        params.setdefault(layer, {})[name] = rng.standard_normal(shape).astype(np.float32)
    x = rng.standard_normal((3, 28, 28, 1)).astype(np.float32)
    desc = export.export_model(str(tmp_path / "m.npz"), model, params)
    assert desc["dense_params"] == 123
    check = check_model()
    got_desc, arrays = check.load_model(str(tmp_path / "m.npz"))
    np.testing.assert_allclose(np.asarray(model.apply(params, x)),
                               check.forward(got_desc, arrays, x), rtol=1e-4, atol=1e-4)
    # The padding and the slope matter: without them the checker's logits differ.
    for change in ({"padding": "valid"}, {"alpha": 0.0}):
        other = {**got_desc, "layers": [{**got_desc["layers"][0], **change},
                                        *got_desc["layers"][1:]]}
        if "padding" in change:  # 'valid' leaves a 26 -> 13 -> 11 map: still runs
            assert check.forward(other, arrays, x).shape == (3, 10)
        assert not np.allclose(check.forward(other, arrays, x), check.forward(got_desc, arrays, x))
    with pytest.raises(ValueError, match="alpha"):
        models.from_arch({"input_shape": [28, 28, 1], "layers": [
            {"kind": "conv", "name": "conv0", "kernel": 3, "in": 1, "out": 2,
             "activation": "leaky_relu", "pool": False}]})


def test_shared_net_counts_shared_weights_once_and_the_checker_runs_it(tmp_path):
    model = gr.shared_separable()
    assert models.param_count(model) == models.arch_param_count(model.arch) == 1936
    shapes = models.param_shapes(model.arch)
    assert shapes["dw_shared/w"] == (3, 3, 26) and shapes["in3/scale"] == (1,)
    rng = np.random.default_rng(1)
    params = {}
    for key, shape in shapes.items():
        layer, name = key.split("/")
        params.setdefault(layer, {})[name] = (1 + rng.random(shape) if name == "scale" else
                                              rng.standard_normal(shape)).astype(np.float32)
    x = rng.standard_normal((4, 28, 28, 1)).astype(np.float32)
    desc = export.export_model(str(tmp_path / "s.npz"), model, params)
    assert desc["dense_params"] == 1936
    check = check_model()
    got_desc, arrays = check.load_model(str(tmp_path / "s.npz"))
    assert len(arrays) == len(shapes) and check.nonzero_count(arrays) == 1936
    np.testing.assert_allclose(np.asarray(model.apply(params, x)),
                               check.forward(got_desc, arrays, x), rtol=1e-4, atol=1e-4)
    # The blocks really share: changing the one stored pointwise conv changes every block.
    bumped = {**arrays, "conv_shared/w": arrays["conv_shared/w"] * 1.5}
    assert not np.allclose(check.forward(got_desc, bumped, x), check.forward(got_desc, arrays, x))
    # Instance norm: each sample standardised over all its values (sd with n - 1).
    h = rng.standard_normal((2, 5, 5, 3)).astype(np.float32)
    out = np.asarray(models.instance_norm(h, np.float32([2.0]), np.float32([0.5])))
    np.testing.assert_allclose(out.reshape(2, -1).mean(1), 0.5, atol=1e-5)
    np.testing.assert_allclose(out.reshape(2, -1).std(1, ddof=1), 2 / (1 + 1e-5), rtol=1e-4)
    # A repeated name must repeat the same layer.
    bad = copy.deepcopy(model.arch)
    second = [i for i, layer in enumerate(bad["layers"]) if layer.get("name") == "conv_shared"][1]
    bad["layers"][second]["activation"] = "none"
    with pytest.raises(ValueError, match="conv_shared"):
        models.from_arch(bad)


def _record(seed, val, test, status="ok"):
    return {"seed": seed, "val_acc": val, "decide_acc": val, "test_acc": test, "status": status}


def test_chosen_seed_is_the_best_on_the_choosing_half_never_on_test():
    records = [_record(0, 0.97, 0.99), _record(1, 0.98, 0.96), _record(2, 0.99, 0.999, "diverged")]
    assert report.best_seed(records) == 1          # not 0 (best test), not 2 (diverged)
    assert report.best_seed([_record(3, 0.98, 0.9), _record(1, 0.98, 0.95)]) == 1  # tie: smaller
    assert report.best_seed([_record(0, 0.9, 0.9, "diverged")]) is None


def test_golf_records_end_to_end_resume_and_a_changed_config(tmp_path, capsys):
    """One recipe on synthetic data (~10 s, one compile): counts, choice, export, resume."""
    cfg = gr.get_config(quick=True)
    cfg.recipes = ("hexhowells_820",)
    cfg.data.source, cfg.data.val_size, cfg.data.synthetic_size = "synthetic", 128, 512
    cfg.data.train_size = 0
    cfg.train.hexhowells_820.eval_chunk = 64
    summary = gr.run(cfg, str(tmp_path))
    row = summary["recipes"]["hexhowells_820"]
    built = gr.RECIPES["hexhowells_820"].build()
    assert row["dense_params"] == models.param_count(built) == row["claim"]["dense"] == 820
    assert row["ok"] == 2 and row["diverged"] == 0
    per_seed = row["per_seed"]
    best = max(per_seed, key=lambda r: (r["val_acc"], -r["seed"]))
    assert row["chosen"]["seed"] == best["seed"]
    assert row["chosen"]["test_acc"] == best["test_acc"]
    # The export is the chosen seed's kept network: its counts are the table's.
    check = check_model()
    desc, arrays = check.load_model(str(tmp_path / "hexhowells_820.npz"))
    assert check.nonzero_count(arrays) == row["chosen"]["nonzero_params"] == best["nonzero_params"]
    assert sum(a.size for a in arrays.values()) == 820
    ds = data.from_config(cfg.data)
    (sel_x, sel_y), _ = jax.device_get(gr.train.validation_halves(ds.val_x, ds.val_y))
    logits = check.forward(desc, arrays, np.asarray(sel_x))
    assert np.isclose((logits.argmax(-1) == sel_y).mean(), row["chosen"]["val_acc"], atol=1e-6)
    assert (tmp_path / "summary.md").read_text().count("| hexhowells_820 |") == 1

    capsys.readouterr()
    again = gr.run(cfg, str(tmp_path))             # finished: reused, nothing trained
    assert "skipped (already finished)" in capsys.readouterr().out
    assert again["recipes"] == summary["recipes"]

    wd = Workdir(str(tmp_path))
    (unit,) = gr.units_for(cfg, wd, ds, None)
    assert wd.run_record(unit.id) is not None
    for field, value in (("epochs", 2), ("learning_rate", 1e-3)):
        changed = copy.deepcopy(cfg)
        changed.train.hexhowells_820[field] = value
        (other,) = gr.units_for(changed, wd, ds, None)
        assert other.id != unit.id and wd.run_record(other.id) is None
