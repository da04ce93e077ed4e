"""launch.py end to end: every experiment's quick form, resumption, bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import available

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(*args):
    return subprocess.run([sys.executable, "launch.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def test_subspace_sweep_quick_end_to_end_and_resume(tmp_path):
    args = ["--experiment=subspace_sweep", "--quick", f"--workdir={tmp_path}",
            "--config.data.source=synthetic", "--config.data.val_size=128",
            "--config.data.train_size=0"]
    first = launch(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    for name in ("config.json", "metrics.jsonl", "summary.json", "summary.md", "accuracy_vs_d.png",
                 "val_curves.png"):
        assert (tmp_path / name).exists(), name
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["models"]) == {"zoo_cnn_small", "zoo_fc16"}
    rows = summary["models"]["zoo_fc16"]["subspace"]
    assert [r["d"] for r in rows] == [10, 100]
    assert all(r["learning_rate"] in (0.03, 0.1) for r in rows)
    for r in rows + summary["models"]["zoo_fc16"]["full"]:  # one seed: its curve and its record
        assert len(r["val_acc_curve"]) == summary["epochs"] == 2
        assert r["val_acc_curve"][int(r["best_epoch_mean"]) - 1] == pytest.approx(r["val_acc_mean"])
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert all("epoch" in json.loads(line) for line in lines)
    assert "ETA" in first.stdout

    second = launch(*args)  # everything finished: nothing is recomputed
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("skipped (already finished)") == 4
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == lines

    # A changed config into the same workdir: the subspace units depend on the
    # subspace dims, the full-space units do not, so only those are reused.
    third = launch(*args, "--config.dims=(10,50)")
    assert third.returncode == 0, third.stderr[-3000:]
    assert third.stdout.count("skipped (already finished)") == 2
    changed = json.loads((tmp_path / "summary.json").read_text())
    assert [r["d"] for r in changed["models"]["zoo_fc16"]["subspace"]] == [10, 50]
    assert changed["models"]["zoo_fc16"]["full"] == summary["models"]["zoo_fc16"]["full"]


def test_subspace_sweep_lr_rule_rows():
    from experiments import subspace_sweep as exp

    cfg = exp.get_config(quick=True)
    fixed = exp.subspace_hp(cfg, [10, 4000])
    np.testing.assert_array_equal(fixed["d_active"], [10, 10, 4000, 4000])
    np.testing.assert_allclose(fixed["learning_rate"], [0.03, 0.1, 0.03, 0.1], rtol=1e-6)
    cfg.subspace_lr_rule, cfg.subspace_lr_d0 = "sqrt", 1000
    np.testing.assert_allclose(exp.subspace_hp(cfg, [10, 4000])["learning_rate"],
                               [0.03, 0.1, 0.015, 0.05], rtol=1e-6)  # sqrt(1000 / 4000) = 1/2
    cfg.subspace_lr_rule = "cubic"
    with pytest.raises(ValueError, match="subspace_lr_rule"):
        exp.validate(cfg)


def test_unknown_experiment_lists_valid_ones():
    r = launch("--experiment=nope")
    assert r.returncode != 0
    assert "subspace_sweep" in r.stderr and "nope" in r.stderr


def test_unknown_config_field_lists_valid_fields():
    r = launch("--experiment=subspace_sweep", "--config.train.epoch=3")
    assert r.returncode != 0
    assert "train.epoch" in r.stderr and "train.epochs" in r.stderr


def test_bad_model_name_is_a_clear_error(tmp_path):
    r = launch("--experiment=subspace_sweep", "--quick", f"--workdir={tmp_path}",
               "--config.models=(\"resnet\",)")
    assert r.returncode != 0
    assert "resnet" in r.stderr and "conv_subspace" in r.stderr


def _doc_commands(module):
    """The argument lists of the ``python launch.py ...`` commands in a docstring."""
    import shlex
    text = module.__doc__.replace("\\\n", " ")
    return [shlex.split(line.split("python launch.py", 1)[1].split("#", 1)[0])
            for line in text.splitlines() if "python launch.py" in line]


@pytest.mark.parametrize("name", available())
def test_every_docstring_command_parses_and_validates(name, monkeypatch):
    """Each command a module docstring gives names real fields with valid values
    (a renamed field or a bad example value fails here); the quick form differs."""
    import importlib

    from absl import flags
    from ml_collections import config_flags

    import launch
    module = importlib.import_module(f"experiments.{name}")
    commands = _doc_commands(module)
    assert any(f"--experiment={name}" in c for c in commands)
    for args in commands:
        (exp,) = [a.split("=", 1)[1] for a in args if a.startswith("--experiment=")]
        target = importlib.import_module(f"experiments.{exp}")
        quick = "--quick" in args
        cfg, default = target.get_config(quick), target.get_config(quick)
        argv = ["launch.py", *[a for a in args if a.startswith("--config.")]]
        monkeypatch.setattr(sys, "argv", argv)  # config_flags reads overrides from sys.argv
        fv = flags.FlagValues()
        config_flags.DEFINE_config_dict("config", cfg, flag_values=fv)
        fv(argv)
        try:
            launch.checks.overrides(fv.config, default)
            target.validate(fv.config)
        except ValueError as e:  # only an input made by an earlier command may be missing
            made_earlier = (("model_file" in str(e) and "no such file" in str(e))
                            or ("golf_workdir" in str(e) and ": no runs/" in str(e)))
            assert made_earlier, (args, e)
    assert module.get_config(quick=True).to_dict() != module.get_config(quick=False).to_dict()
