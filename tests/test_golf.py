"""Neural golf: separable/gap layers (counts, export, NumPy checker) and experiments/golf.py."""

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optuna
import pytest

from experiments import golf
from subspace_jax import data, export, models, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _checker():
    spec = importlib.util.spec_from_file_location(
        "check_model", os.path.join(ROOT, "tools", "check_model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Counts by hand (w + b + PReLU slopes):
# sep_gap: conv0 5*5*1*4+4+4, dw1 3*3*4+4, conv1 4*8+8+8, dw2 3*3*8+8, conv2 8*16+16+16,
#   dense 16*10+10.
# sep: conv0 5*5*3+3, dw1 4*4*3+3, conv1 3*6+6, dw2 3*3*6+6, conv2 6*8+8; sizes
#   28->24->12->9->4->2: dense 2*2*8*10+10.
# gap_p101: conv0 5*5*4+4+4, conv1 3*3*4*8+8+8, conv2 3*3*8*12+12+12, dense 12*10+10.
SPECS = {
    "sep_gap": (lambda: models.get("golf_sep_gap"), 108 + 40 + 48 + 80 + 160 + 170),
    "sep": (lambda: models.golf_cnn((3, 6, 8), (5, 4, 3), "relu", separable=True),
            78 + 51 + 24 + 60 + 56 + 330),
    "gap_p101": (lambda: models.golf_cnn((4, 8, 12), (5, 3, 3), "prelu", gap=True,
                                         pools=(True, False, True)), 108 + 304 + 888 + 130),
}


def _random_params(model, seed=1):
    """Random values for every parameter the arch implies (slopes away from 0.25,
    so a transposed or misnamed array would show in the outputs); NumPy only:
    compiling ``init`` costs seconds on a busy CPU."""
    rng = np.random.default_rng(seed)
    params = {}
    for key, shape in models.param_shapes(model.arch).items():
        layer, name = key.split("/")
        params.setdefault(layer, {})[name] = 0.5 * rng.standard_normal(shape).astype(np.float32)
    return params


@pytest.mark.parametrize("name", sorted(SPECS))
def test_counts_are_exact(name):
    build, count = SPECS[name]
    model = build()
    shapes = jax.eval_shape(model.init, jax.random.key(0))    # what init builds, untraced
    assert models.num_params(shapes) == models.param_count(model) == count
    assert models.arch_param_count(model.arch) == count
    assert jax.tree.structure(shapes) == jax.tree.structure(_random_params(model))
    x = np.zeros((2, 28, 28, 1), np.float32)
    assert jax.eval_shape(model.apply, shapes, x).shape == (2, 10)


def test_golf_family_keeps_old_names_and_layers():
    assert models.golf_cnn(activation="prelu").name == "golf_c4-5-4_k4-3-3_prelu"
    assert [layer["kind"] for layer in models.get("golf_relu").arch["layers"]] == [
        "conv", "conv", "conv", "flatten", "dense"]
    kinds = [layer["kind"] for layer in models.get("golf_sep_gap").arch["layers"]]
    assert kinds == ["conv", "depthwise", "conv", "depthwise", "conv", "gap", "dense"]
    assert models.get("golf_sep_gap").name == "golf_c4-8-16_k5-3-3_prelu_sep_gap"


def test_depthwise_slice_equals_lax_conv():
    kx, kw, kb = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(kx, (2, 11, 9, 3))
    w = jax.random.normal(kw, (4, 4, 3))
    b = jax.random.normal(kb, (3,))
    np.testing.assert_allclose(models.depthwise2d(x, w, b, "slice"),
                               models.depthwise2d(x, w, b, "lax"), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_numpy_forward_equals_apply_and_load_round_trip(name, tmp_path):
    model = SPECS[name][0]()
    params = _random_params(model)
    path = str(tmp_path / "m.npz")
    desc = export.export_model(path, model, params)
    assert desc["dense_params"] == SPECS[name][1]

    check = _checker()
    loaded, arrays = check.load_model(path)
    images_NxHxW = np.random.default_rng(0).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    x = check.normalise(images_NxHxW, loaded)
    want = jax.jit(model.apply)(params, np.asarray(x, np.float32))
    np.testing.assert_allclose(check.forward(loaded, arrays, x), want, atol=1e-4, rtol=1e-4)

    again, again_params = export.load_model(path)
    np.testing.assert_allclose(jax.jit(again.apply)(again_params, np.asarray(x, np.float32)),
                               want, atol=1e-5, rtol=1e-5)
    assert (jax.tree.structure(jax.eval_shape(again.init, jax.random.key(0)))
            == jax.tree.structure(params))


def test_depthwise_nonzero_count_and_shape_check(tmp_path):
    model = models.get("golf_sep_gap")
    params = _random_params(model)
    params["dw1"]["w"][0] = 0.0                               # 3*4 = 12 weights pruned
    desc = export.export_model(str(tmp_path / "m.npz"), model, params)
    assert (desc["dense_params"], desc["nonzero_params"]) == (606, 606 - 12)
    assert _checker().nonzero_count(_checker().load_model(str(tmp_path / "m.npz"))[1]) == 594
    params["dw2"]["w"] = params["dw2"]["w"][..., :4]
    with pytest.raises(ValueError, match="do not match"):
        export.export_model(str(tmp_path / "bad.npz"), model, params)


# ---------------------------------------------------------------- experiment
def _quick_cfg():
    cfg = golf.get_config(quick=True)
    cfg.data.source = "synthetic"
    cfg.data.val_size = 128
    cfg.data.train_size = 0
    return cfg


def _records(workdir):
    """Every trial of the stored study, as the search reads it back."""
    study = optuna.load_study(study_name=golf.STUDY, storage=f"sqlite:///{workdir}/study.db")
    return golf.trial_records(study), study


def _asks(trials):
    return [(t["number"], t["role"], t["state"], t["params"], t["value"]) for t in trials]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One uninterrupted quick search (shared: it compiles and trains)."""
    path = tmp_path_factory.mktemp("golf_quick")
    cfg = _quick_cfg()
    return cfg, path, golf.run(cfg, str(path))


def test_quick_end_to_end_resume_and_export(quick_run):
    cfg, tmp_path, summary = quick_run
    for name in ("config.json", "metrics.jsonl", "summary.json", "summary.md",
                 "accuracy_vs_params.png", "golf.npz", "study.db", "runs/final.json"):
        assert (tmp_path / name).exists(), name
    trials, study = _records(tmp_path)
    assert [t["number"] for t in trials] == list(range(len(trials)))
    assert {"search_config", "batch_0000", "batch_0001"} <= set(study.user_attrs)
    trained = [t for t in trials if t["role"] != "rejected"]
    assert len(trained) == 4 and all(t["dense_params"] <= cfg.budget for t in trained)
    assert all("test_acc" not in t for t in trials)       # the search never sees test
    lrs = {t["params"]["learning_rate"] for t in trained}
    assert len(lrs) == 4                                  # followers differ in lr
    assert [t["batch"] for t in trained] == [0, 0, 1, 1]
    assert all(t["state"] == "complete" and t["value"] == np.mean(t["val_acc"]) for t in trained)

    final = summary["final"]
    assert final["seeds"] == 2 and len(final["per_seed"]) == 2
    assert final["dense_params"] == 250 and 0 <= final["test_acc_mean"] <= 1
    assert "| golf_c3-4-6_k4-3-3_prelu_sep_gap | 250 |" in (tmp_path / "summary.md").read_text()

    # golf.npz is the kept params of the seed best on the choosing half (ok runs):
    # the NumPy checker reproduces its test accuracy.
    check = _checker()
    desc, arrays = check.load_model(str(tmp_path / "golf.npz"))
    ds = data.from_config(cfg.data)
    images = np.round((ds.test_x[..., 0] * data.STD + data.MEAN) * 255).astype(np.uint8)
    acc = float((check.forward(desc, arrays, check.normalise(images, desc)).argmax(-1)
                 == ds.test_y).mean())
    ok = [r for r in final["per_seed"] if r["status"] == "ok"]
    chosen = max(ok, key=lambda r: (r["val_acc"], -r["seed"]))
    assert final["exported"]["seed"] == chosen["seed"]
    assert final["exported"]["test_acc"] == chosen["test_acc"]
    assert abs(acc - chosen["test_acc"]) < 1e-6
    assert check.nonzero_count(arrays) == desc["nonzero_params"] == chosen["nonzero_params"]

    # Resumed: nothing retrains or is asked again, the export is rebuilt from the records.
    metrics = (tmp_path / "metrics.jsonl").read_text()
    (tmp_path / "golf.npz").unlink()
    again = golf.run(cfg, str(tmp_path))
    assert (tmp_path / "metrics.jsonl").read_text() == metrics
    assert _asks(_records(tmp_path)[0]) == _asks(trials)
    assert again == json.loads((tmp_path / "summary.json").read_text())
    assert again["final"] == json.loads(json.dumps(summary["final"]))
    assert (tmp_path / "golf.npz").exists()

    changed = _quick_cfg()
    changed.space.learning_rate = (1e-3, 1e-2)    # a different search: refused, files untouched
    with pytest.raises(ValueError, match=r"other settings \(config\.space\)"):
        golf.run(changed, str(tmp_path))
    assert json.loads((tmp_path / "config.json").read_text())["space"]["learning_rate"] == [
        0.01, 0.05]
    assert len(_records(tmp_path)[1].trials) == len(study.trials)


def test_search_interrupted_in_training_resumes_as_if_uninterrupted(quick_run, tmp_path,
                                                                     monkeypatch):
    cfg, reference, _ = quick_run
    calls = []
    train_rows = golf.train_rows

    def interrupted(*args, **kwargs):  # batch 2's training is cut off (Ctrl-C)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return train_rows(*args, **kwargs)
    monkeypatch.setattr(golf, "train_rows", interrupted)
    # The search alone (as golf.run calls it), one compiled program for both tries.
    wd, ds, dat = sweep.prepare(cfg, str(tmp_path))
    runs = golf._Runs(cfg, len(ds.train_y))
    dat = dat._replace(test_x=jnp.zeros_like(dat.test_x), test_y=jnp.zeros_like(dat.test_y))
    with pytest.raises(KeyboardInterrupt):
        golf.search(cfg, wd, dat, runs)
    partial, study = _records(tmp_path)
    assert "batch_0001" not in study.user_attrs and "asked_0001" in study.user_attrs
    assert {t["state"] for t in partial if t["batch"] == 1 and t["role"] != "rejected"} == \
        {"running"}
    golf.search(cfg, wd, dat, runs)
    # The same asks, numbers and values as the search that ran through.
    assert _asks(_records(tmp_path)[0]) == _asks(_records(reference)[0])
    search_lines = [line for line in (reference / "metrics.jsonl").read_text().splitlines()
                    if '"phase": "search"' in line]
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == search_lines


def test_search_interrupted_while_asking_voids_those_asks(tmp_path, monkeypatch):
    monkeypatch.setattr(golf, "train_rows", lambda *a, **k: (_ for _ in ()).throw(
        RuntimeError("boom")))  # no training, no compilation
    check_budget, calls = golf.check_budget, []

    def cut(cfg, params):  # the first ask of batch 2 is cut off before it is told
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return check_budget(cfg, params)
    monkeypatch.setattr(golf, "check_budget", cut)
    with pytest.raises(KeyboardInterrupt):
        golf.run(_quick_cfg(), str(tmp_path))
    monkeypatch.setattr(golf, "check_budget", check_budget)
    golf.run(_quick_cfg(), str(tmp_path))
    trials, study = _records(tmp_path)
    void = [t for t in study.trials if t.user_attrs.get("role") == "abandoned"]
    assert len(void) == 1 and void[0].state == optuna.trial.TrialState.FAIL
    assert void[0].number not in [t["number"] for t in trials]
    assert [t["batch"] for t in trials] == [0, 0, 1, 1]


def test_an_old_json_record_workdir_is_refused(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "batch_0000.json").write_text("{}")
    with pytest.raises(ValueError, match="older version"):
        golf.run(_quick_cfg(), str(tmp_path))
    assert not (tmp_path / "config.json").exists()


def test_budget_is_respected_before_training_and_asks_are_deterministic():
    cfg = golf.get_config()
    cfg.budget = 200
    storages = [optuna.storages.InMemoryStorage() for _ in range(2)]
    for st in storages:
        optuna.create_study(study_name=golf.STUDY, storage=st, direction="maximize")
    n_rejected = 0
    for batch in (0, 2):                           # a random batch, then a TPE batch
        (asked, rejected), (again, _) = [golf.ask_batch(cfg, golf.load_study(cfg, st, batch),
                                                        batch) for st in storages]
        assert [p for _, p in asked] == [p for _, p in again]
        leader = asked[0][1]
        reason, n = golf.check_budget(cfg, leader)
        assert reason is None and n <= 200
        assert all(r["status"] in ("over_budget", "invalid_shape") for r in rejected)
        assert all(golf.check_budget(cfg, r["params"])[0] == r["status"] for r in rejected)
        n_rejected += len(rejected)
        assert all(golf.static_params(p) == golf.static_params(leader) for _, p in asked)
        assert len({p["learning_rate"] for _, p in asked}) == cfg.search.trials_per_batch
        for st, trials in zip(storages, (asked, again)):  # told alike: the next asks agree
            study = golf.load_study(cfg, st, batch)
            for t, _ in trials:
                study.tell(t.number, 0.5)
    assert n_rejected > 0   # most of the space is over 200 params


@pytest.mark.parametrize("field,value,match", [
    ("budget", 0, r"config\.budget=0"),
    ("budget", 50, r"config\.budget=50: the smallest model"),
    ("final_seeds", 0, r"config\.final_seeds"),
    ("targets", (1.5,), r"config\.targets"),
    ("space.channels", ((4, 2), (2, 16), (2, 24)), r"config\.space\.channels\[0\]"),
    ("space.kernels", ((3, 7), (2, 5)), r"config\.space\.channels, kernels and pools"),
    ("space.activations", ("tanh",), r"config\.space\.activations"),
    ("space.gap", (), r"config\.space\.gap is empty"),
    ("space.batch_sizes", (0,), r"config\.space\.batch_sizes"),
    ("space.schedules", ("linear",), r"config\.space\.schedules"),
    ("space.learning_rate", (0.0, 0.1), r"config\.space\.learning_rate"),
    ("space.weight_decay", (0.0, 1e-3), r"config\.space\.weight_decay"),
    ("space.aug_scale", (0.1, 1.0), r"config\.space\.aug_scale"),
    ("space.augment", ("yes",), r"config\.space\.augment"),
    ("space.label_smoothing", (0.2, 0.1), r"config\.space\.label_smoothing"),
    ("space.distill_temperature", (0.0, 1.0), r"config\.space\.distill_temperature"),
    ("teacher", "no/such/teacher.npz", r"config\.teacher"),
    ("space.prune_to", (-5,), r"config\.space\.prune_to"),
    ("space.gmp_end", (0.05,), r"config\.space\.gmp_end"),
    ("search.trials_per_batch", 0, r"config\.search\.trials_per_batch"),
    ("search.batches", 0, r"config\.search\.batches"),
])
def test_bad_config_values_name_the_field(field, value, match, tmp_path):
    cfg = golf.get_config()
    *parents, leaf = field.split(".")
    node = cfg
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ValueError, match=match):
        golf.run(cfg, str(tmp_path))
    assert not (tmp_path / "config.json").exists()   # refused before anything is written


def test_batch_size_larger_than_training_set_names_the_field(tmp_path):
    cfg = _quick_cfg()
    cfg.space.batch_sizes = (5000,)
    with pytest.raises(ValueError, match=r"config\.space\.batch_sizes"):
        golf.run(cfg, str(tmp_path))


def test_a_failed_batch_is_recorded_and_never_stops_the_search(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("boom")
    monkeypatch.setattr(golf, "train_rows", boom)     # no training, no compilation
    summary = golf.run(_quick_cfg(), str(tmp_path))
    assert summary["search"]["failed"] == 4 and summary["final"] is None
    trials, study = _records(tmp_path)
    for b in (0, 1):
        assert "boom" in study.user_attrs[f"batch_{b:04d}"]["error"]
        assert {t["status"] for t in trials if t["batch"] == b} == {"failed"}
        assert {t["state"] for t in trials if t["batch"] == b} == {"fail"}
    assert (tmp_path / "summary.md").exists() and not (tmp_path / "golf.npz").exists()


def test_reaching_a_target_is_decided_on_the_deciding_half():
    """A trial whose choosing-half value crosses the target but whose deciding
    half does not is not reported as reaching it; a larger one that holds is."""
    cfg = golf.get_config(quick=True)
    cfg.targets = (0.98,)
    trial = lambda n, params, value, decide: {
        "number": n, "state": "complete", "role": "leader", "status": "ok", "model": f"m{n}",
        "dense_params": params, "value": value, "decide_acc": decide, "params": {}}
    history = [trial(0, 500, 0.982, [0.975, 0.977]),   # flattered by its own choice
               trial(1, 700, 0.981, [0.981, 0.983]),
               trial(2, 900, 0.990, [0.989, 0.991])]
    s = golf.summarise(cfg, history, None, None)
    hit = s["smallest_reaching"]["0.98"]
    assert hit["number"] == 1 and hit["decide_acc"] == pytest.approx(0.982)
    assert s["search"]["best_trial"]["number"] == 2  # the choice itself stays on the value
    assert "| 98% | trial 1: m1 | 700 | 98.10 | 98.20 |" in golf.markdown(s)


def test_training_options_are_off_by_default_and_searchable(tmp_path):
    """Default space: no option searched or pinned (older studies resume); turned
    on, each is a search choice and the quick search trains with all of them."""
    default = golf.get_config(quick=True)
    assert set(golf.distributions(default)) == {
        "c0", "c1", "c2", "k0", "k1", "k2", "activation", "separable", "gap", "batch_size",
        "epochs", "schedule", "learning_rate", "weight_decay"}
    pinned_space = golf._pinned(default)["space"]
    assert not set(pinned_space) & (set(golf.STATIC_OPTIONS) | set(golf.RUN_OPTIONS))
    assert "teacher" not in golf._pinned(default)
    cfg = _quick_cfg()
    teachers = [str(tmp_path / f"teacher{i}.npz") for i in range(2)]   # an ensemble
    for i, path in enumerate(teachers):
        export.export_model(path, "golf_relu", _random_params(models.get("golf_relu"), seed=i))
    cfg.teacher = ",".join(teachers)
    cfg.space.augment = (True,)
    cfg.space.aug_rotate = (5.0, 15.0)
    cfg.space.elastic_sigma = (4.0,)
    cfg.space.ema = (True,)
    cfg.space.label_smoothing = (0.0, 0.1)
    cfg.space.distill_alpha = (0.0, 0.5)
    cfg.space.schedules = ("onecycle",)
    cfg.space.prune_to = (60,)
    cfg.space.gmp_start = (0.0,)
    cfg.space.gmp_end = (1.0,)
    cfg.space.bn = (True,)
    dists = golf.distributions(cfg)
    assert {"augment", "elastic_sigma", "ema", "aug_rotate", "label_smoothing",
            "distill_alpha"} <= set(dists) and "aug_shift" not in dists  # fixed: not searched
    assert golf.run_numbers(cfg, {"learning_rate": 0.01, "aug_rotate": 7.0})["aug_shift"] == 2.0
    summary = golf.run(cfg, str(tmp_path / "wd"))
    assert summary["final"] is not None and summary["final"]["seeds"] == 2
    assert summary["final"]["recipe"]["ema"] is True
    assert 0 <= summary["final"]["recipe"]["label_smoothing"] <= 0.1
    assert len(os.listdir(tmp_path / "wd" / "teachers")) == 2
    assert summary["final"]["nonzero_params_mean"] == 60          # pruned during training
    assert summary["final"]["dense_params"] == golf.exported_count(golf.build_model(
        cfg, summary["final"]["recipe"]))                        # BN folded away
    desc = export.load(str(tmp_path / "wd" / "golf.npz"))[0]
    assert desc["nonzero_params"] == 60
