"""Brute-force pruning (pruning/brute_force.py) and experiments/golf_prune.py, tiny shapes."""

from __future__ import annotations

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from experiments import golf_prune
from subspace_jax import config as C
from subspace_jax import data, export, models, train
from subspace_jax.pruning import brute_force as bf
from subspace_jax.pruning import procedures as P
from subspace_jax.pruning import scorers
from subspace_jax.workdir import Workdir

LINEAR = models.mlp("bf_linear", (), n_in=16, n_out=2)    # x: N x 4 x 4 x 1
TEACHER = models.mlp("bf_teacher", (5,), n_in=16, n_out=3)
SHAPE = (4, 4, 1)


def _flat_index(params, layer, leaf, *pos):
    """Flat (ravel_pytree) index of params[layer][leaf][pos]."""
    lay = bf.masks.layout(params)
    i = lay.names.index(f"{layer}/{leaf}")
    return lay.offsets[i] + int(np.ravel_multi_index(pos, lay.shapes[i]))


def linear_case(n=200):
    """Feature 0 decides the label; feature 5 is always zero, so its weights cannot matter."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 16)).astype(np.float32)
    x[:, 5] = 0.0
    y = (x[:, 0] > 0).astype(np.int32)
    w = np.zeros((16, 2), np.float32)
    w[0, 1] = 5.0          # the only useful weight: without it every logit is 0 (class 0)
    w[5] = [1.0, -1.0]     # irrelevant (its input is 0)
    params = {"dense0": {"w": jnp.asarray(w), "b": jnp.zeros(2)}}
    return params, x.reshape(n, *SHAPE), y


def teacher_case(n=200, seed=0):
    """Labels from the network itself: 100% accuracy at the start, then pruning costs."""
    params = TEACHER.init(jax.random.key(seed))
    x = np.random.default_rng(seed).normal(size=(n, *SHAPE)).astype(np.float32)
    # Output biases centred so the three classes are about equally frequent.
    params["dense1"]["b"] -= TEACHER.apply(params, x).mean(0)
    y = np.asarray(TEACHER.apply(params, x).argmax(-1), np.int32)
    return params, x, y


def _loop_eval(apply, params, theta_D, mask_D, x, y):
    """Reference: one plain evaluation of the masked network."""
    unravel = ravel_pytree(params)[1]
    w = unravel(jnp.asarray(np.where(mask_D > 0, theta_D, 0.0), jnp.float32))
    logits = np.asarray(apply(w, jnp.asarray(x)))
    loss = float(train.cross_entropy(jnp.asarray(logits), jnp.asarray(y)))
    return int((logits.argmax(-1) == y).sum()), loss


def _strip(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


@pytest.mark.parametrize("threshold", [0.9, 0.3])
def test_irrelevant_weight_goes_before_a_useful_one(threshold):
    params, x, y = linear_case()
    s = bf.Settings(threshold=threshold, margin=0.0, candidate_chunk=4, eval_chunk=64)
    out = bf.prune(LINEAR.apply, params, x, y, settings=s, log=None)
    irrelevant = [_flat_index(params, "dense0", "w", 5, j) for j in (0, 1)]
    useful = _flat_index(params, "dense0", "w", 0, 1)
    # Zero-valued entries are pruned from the start; the two irrelevant weights tie
    # (same accuracy, same loss), so the lower flat index goes first.
    assert out.history[0]["prunable_kept"] == 3
    removed = [h["removed"] for h in out.history[1:]]
    assert removed[:2] == [[irrelevant[0]], [irrelevant[1]]]
    if threshold == 0.9:  # without the useful weight accuracy falls to ~50%: it stays
        assert out.stop == "threshold" and len(removed) == 2
        assert out.mask_D[useful] == 1 and out.history[-1]["nonzero"] == 1
        assert out.history[-1]["val_acc"] == 1.0
    else:  # a low bar lets it go too, but only last
        assert removed[2:] == [[useful]] and out.stop == "all_pruned"
        assert 0.3 <= out.history[-1]["val_acc"] < 0.7


def split_case(n=200):
    """The halves disagree: feature 2 is zero on the choosing half, so its weight
    looks free there, but the deciding half's labels need it (y = x0 + x2 > 0)."""
    rng = np.random.default_rng(2)
    choose, decide = train.halves_index(n)
    x = np.zeros((n, 16), np.float32)
    x[:, 0] = rng.normal(size=n)
    x[decide, 2] = rng.normal(size=len(decide))
    y = (x[:, 0] + x[:, 2] > 0).astype(np.int32)
    w = np.zeros((16, 2), np.float32)
    w[0, 1] = w[2, 1] = 5.0
    params = {"dense0": {"w": jnp.asarray(w), "b": jnp.zeros(2)}}
    without_w2 = float(((x[decide, 0] > 0) == y[decide]).mean())  # deciding acc without it
    return params, x.reshape(n, *SHAPE), y, without_w2


@pytest.mark.parametrize("refused", [True, False])
def test_the_half_that_chose_nothing_decides(refused):
    params, x, y, without_w2 = split_case()
    w2 = _flat_index(params, "dense0", "w", 2, 1)
    assert 0.6 < without_w2 < 0.9
    # A bar between: the deciding half keeps w2 (refused) or lets it go.
    threshold = without_w2 + (0.05 if refused else -0.05)
    s = bf.Settings(threshold=threshold, margin=0.0, candidate_chunk=4, eval_chunk=50)
    hv = bf.make_halves(LINEAR.apply, params, x, y, eval_chunk=50, candidate_chunk=4)
    theta_D = np.asarray(ravel_pytree(params)[0])
    idx, correct, _ = hv.choose.candidates(theta_D, bf.start_mask(theta_D, hv.lay))
    # The choosing half would accept removing w2 at no cost (and nothing else) ...
    assert list(idx[correct >= bf.required_correct(threshold, 100)]) == [w2]
    assert correct[list(idx).index(w2)] == 100
    out = bf.prune(LINEAR.apply, params, x, y, settings=s, log=None)
    if refused:  # ... the deciding half refuses it: nothing is removed
        assert out.stop == "refused" and len(out.history) == 1
        assert out.mask_D[w2] == 1 and out.history[0]["decide_acc"] == 1.0
        assert out.history[0]["refused"]["decide_correct_tried"][-1] == round(100 * without_w2)
    else:  # ... or accepts it, and then the choosing half has no eligible candidate left
        assert out.stop == "threshold" and [h["removed"] for h in out.history[1:]] == [[w2]]
        assert out.history[-1]["val_acc"] == 1.0
        assert out.history[-1]["decide_acc"] == pytest.approx(without_w2)


def test_finetuned_weights_kept_only_if_the_deciding_half_still_meets_the_bar():
    params, x, y, without_w2 = split_case()
    w0, w2 = (_flat_index(params, "dense0", "w", i, 1) for i in (0, 2))
    hv = bf.make_halves(LINEAR.apply, params, x, y, eval_chunk=50)
    theta_D = np.asarray(ravel_pytree(params)[0])
    mask_D = np.ones_like(theta_D)
    sc = hv.scores(theta_D, mask_D)

    def fake_finetune(th, m, step):  # better on the choosing half (lower loss), w2 lost
        out = np.array(th)
        out[w0], out[w2] = 8.0, 0.0
        return out

    need = bf.required_correct(without_w2 + 0.05, 100)
    _, new, kept = bf.maybe_finetune(fake_finetune, hv, theta_D, mask_D, 1, sc, need)
    assert new == sc and not kept                          # refused on the deciding half
    th, new, kept = bf.maybe_finetune(fake_finetune, hv, theta_D, mask_D, 1, sc)
    assert kept and new["val_loss"] < sc["val_loss"] and th[w0] == 8.0   # no bar: kept
    assert new["decide_correct"] == round(100 * without_w2)


PRELU_CNN = models.cnn("bf_cnn", (2,), (3,), (True,), activation="prelu", in_size=8)  # 212


@pytest.mark.parametrize("model", [TEACHER, PRELU_CNN], ids=lambda m: m.name)
def test_candidates_vmapped_equal_a_python_loop(model):
    if model is TEACHER:
        params, x, y = teacher_case()
    else:  # conv + PReLU slopes: three leaves per layer group, sorted b, slope, w
        params = model.init(jax.random.key(3))
        params["conv0"]["slope"] = jnp.asarray([-0.5, 0.7])
        x = np.random.default_rng(3).normal(size=(96, 8, 8, 1)).astype(np.float32)
        y = np.asarray(model.apply(params, x).argmax(-1), np.int32)
    theta_D = np.asarray(ravel_pytree(params)[0])
    ev = bf.make_evaluator(model.apply, params, x, y, eval_chunk=64, candidate_chunk=7)
    mask_D = np.ones_like(theta_D)
    mask_D[[0, 3, 90]] = 0  # some already pruned: they are not candidates
    idx, correct, loss = ev.candidates(theta_D, mask_D)
    assert sorted(idx) == sorted(set(range(theta_D.size)) - {0, 3, 90})
    for i, c, l in list(zip(idx, correct, loss))[::3]:
        m = mask_D.copy()
        m[i] = 0
        want_c, want_l = _loop_eval(model.apply, params, theta_D, m, x, y)
        assert c == want_c
        np.testing.assert_allclose(l, want_l, rtol=1e-5, atol=1e-6)
    # Whole masks, vmapped, equal the loop too.
    rng = np.random.default_rng(1)
    masks_MxD = (rng.random((5, theta_D.size)) > 0.3).astype(np.float32)
    c_M, l_M = ev.masks(theta_D, masks_MxD)
    for m, c, l in zip(masks_MxD, c_M, l_M):
        want_c, want_l = _loop_eval(model.apply, params, theta_D, m, x, y)
        assert c == want_c
        np.testing.assert_allclose(l, want_l, rtol=1e-5, atol=1e-6)


def test_threshold_respected_zeros_exact_deterministic_and_compiled_once():
    params, x, y = teacher_case()
    s = bf.Settings(threshold=0.8, margin=0.05, candidate_chunk=16, eval_chunk=50)
    half = len(y) // 2
    choose, decide = train.halves_index(len(y))  # as train.validation_halves cuts them
    need = bf.required_correct(0.85, half)
    before = bf.evaluate_removals._cache_size()
    out = bf.prune(TEACHER.apply, params, x, y, settings=s, log=None)
    compiled = bf.evaluate_removals._cache_size() - before
    assert compiled <= len(bf.leaf_groups(bf.masks.layout(params, bf.every_parameter)))
    assert out.stop in ("threshold", "refused") and len(out.history) > 3
    assert all(h["val_correct"] >= need and h["decide_correct"] >= need for h in out.history)
    # Independently re-evaluated: the final network meets threshold + margin on each half ...
    c, _ = _loop_eval(TEACHER.apply, params, out.theta_D, out.mask_D, x[choose], y[choose])
    d, _ = _loop_eval(TEACHER.apply, params, out.theta_D, out.mask_D, x[decide], y[decide])
    assert c == out.history[-1]["val_correct"] >= need
    assert d == out.history[-1]["decide_correct"] >= need
    # ... and the stop is explained: no single further removal keeps the choosing half
    # (threshold), or the deciding half refuses the best one the choosing half ranked.
    half_evals = []
    for i in np.flatnonzero(out.mask_D):
        m = out.mask_D.copy()
        m[i] = 0
        half_evals.append((_loop_eval(TEACHER.apply, params, out.theta_D, m, x[choose],
                                      y[choose]), i, m))
    if out.stop == "threshold":
        assert all(c < need for (c, _), _, _ in half_evals)
    else:
        (c, _), i, m = min(half_evals, key=lambda e: (-e[0][0], e[0][1], e[1]))
        assert c >= need
        assert _loop_eval(TEACHER.apply, params, out.theta_D, m, x[decide], y[decide])[0] < need
    # Pruned entries are exactly +0.0, in the flat vector and in the params pytree.
    dead = out.mask_D == 0
    assert dead.sum() > 0 and np.all(out.theta_D[dead] == 0) and not np.signbit(
        out.theta_D[dead]).any()
    for p, m in zip(jax.tree.leaves(out.params), jax.tree.leaves(out.mask)):
        assert np.all(np.asarray(p)[~np.asarray(m)] == 0)
    assert export.count_params(out.params)[1] == out.history[-1]["nonzero"]
    # Removals per pass shrink as the slack is used up; each pass removes >= 1.
    ks = [h["k"] for h in out.history[1:]]
    assert min(ks) >= 1 and ks[0] >= ks[-1]
    # Deterministic, and the compiled evaluators are reused.
    again = bf.prune(TEACHER.apply, params, x, y, settings=s, log=None)
    assert bf.evaluate_removals._cache_size() - before == compiled
    assert _strip(again.history) == _strip(out.history)
    np.testing.assert_array_equal(again.theta_D, out.theta_D)


def test_resume_continues_the_same_path():
    params, x, y = teacher_case(seed=1)
    s = bf.Settings(threshold=0.8, margin=0.0, candidate_chunk=16, eval_chunk=64)
    full = bf.prune(TEACHER.apply, params, x, y, settings=s, log=None)
    states = []
    bf.prune(TEACHER.apply, params, x, y, settings=s._replace(max_passes=2), log=None,
             on_pass=states.append)
    assert states[-1].stop == "max_passes"
    # After pass 1, as a crash would leave it; and after stopping at max_passes=2, now raised.
    for state in (states[0], states[-1]):
        resumed = bf.prune(TEACHER.apply, params, x, y, settings=s, log=None, resume=state)
        assert _strip(resumed.history) == _strip(full.history)
        np.testing.assert_array_equal(resumed.mask_D, full.mask_D)
        assert resumed.stop == full.stop in ("threshold", "refused")


def test_schedule_helpers():
    s = bf.Settings(max_fraction=0.1, slack_use=0.5, max_remove=64)
    free = np.zeros(300, np.int64)
    assert bf.plan_count(free, slack=100, n_alive=820, s=s) == 64      # capped by max_remove
    assert bf.plan_count(free, slack=100, n_alive=50, s=s) == 5        # 10% of those alive
    costs = np.array([0, 0, 1, 1, 2, 5])
    assert bf.plan_count(costs, slack=4, n_alive=820, s=s) == 4         # spends <= 2 images
    assert bf.plan_count(costs, slack=0, n_alive=820, s=s) == 2         # only the free ones
    assert bf.plan_count(np.array([3]), slack=0, n_alive=820, s=s) == 1  # always >= 1
    assert bf.ladder(5, 64) == [5, 3, 2, 1, 1, 1, 1]
    assert bf.ladder(64, 64) == [64, 32, 16, 8, 4, 2, 1]
    assert bf.required_correct(0.984, 10_000) == 9840
    assert bf.required_correct(0.98 + 0.004, 10_000) == 9840
    order = bf.rank(np.array([7, 3, 5, 1]), np.array([9, 9, 9, 8]), np.array([0.5, 0.5, 0.4, 0.]))
    assert list(order) == [2, 1, 0, 3]  # accuracy, then loss, then index


def test_finetune_hook_and_comparison_counts():
    params, x, y = teacher_case()
    theta_D = np.asarray(ravel_pytree(params)[0])
    hv = bf.make_halves(TEACHER.apply, params, x, y, eval_chunk=50)
    mask_D = np.ones_like(theta_D)
    counts = [80, 50, 30]
    magnitude = bf.make_score("magnitude", TEACHER.apply, params)
    rows, th, m = bf.prune_along(magnitude, hv, theta_D, mask_D, counts)
    assert [r["prunable_kept"] for r in rows] == counts
    assert np.all(th[m == 0] == 0) and int(m.sum()) == 30
    keep = np.argsort(-np.abs(theta_D), kind="stable")[:30]  # magnitude one-shot = iterative
    assert set(np.flatnonzero(m)) == set(keep)
    obd = bf.make_score("obd", TEACHER.apply, params, x, y,
                        P.prune_config(obd_hessian="gauss_newton"))
    # The registry's OBD of the alive weights: 0.5 h_kk w_k^2 with the Gauss-Newton diagonal.
    half_D = (np.arange(theta_D.size) % 2).astype(np.float32)
    w_D = jnp.asarray(theta_D * half_D)
    apply_D = lambda th, xx: TEACHER.apply(ravel_pytree(params)[1](th), xx)
    np.testing.assert_allclose(obd(theta_D, half_D, 0),
                               scorers.obd(w_D, scorers.gauss_newton_diag(apply_D, w_D, x)),
                               rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match="rounds"):
        bf.make_score("synflow", TEACHER.apply, params)
    rows, th, m = bf.prune_along(obd, hv, theta_D, mask_D, counts)
    assert all(0 <= r["decide_acc"] <= 1 and r["decide_correct"] >= 0 for r in rows)
    assert [r["prunable_kept"] for r in rows] == counts and np.all(th[m == 0] == 0)

    data = train.Data(*(jnp.asarray(a) for a in (x, y, x[:64], y[:64], x[:8], y[:8])))
    ft = bf.make_finetune(TEACHER, C.train_config(epochs=1, batch_size=32, eval_chunk=32), data)
    tuned = ft(th, m, 0)
    assert np.all(tuned[m == 0] == 0) and not np.array_equal(tuned, th)
    rows, th2, m2 = bf.prune_along(magnitude, hv, theta_D, mask_D, counts, finetune=ft)
    assert [r["prunable_kept"] for r in rows] == counts and np.all(th2[m2 == 0] == 0)
    assert all(r["finetuned"] in (True, False) for r in rows)

    # Brute force with the hook: fine-tuned weights are kept only when the choosing half
    # improves, pruned ones stay exactly zero, and the threshold holds after every pass.
    s = bf.Settings(threshold=0.5, margin=0.05, eval_chunk=32, max_passes=6)
    out = bf.prune(TEACHER.apply, params, x[:64], y[:64], settings=s, finetune=ft, log=None)
    assert len(out.history) == 7 and all(h["finetuned"] in (True, False) for h in out.history[1:])
    need = bf.required_correct(0.55, 32)
    assert all(h["val_correct"] >= need and h["decide_correct"] >= need for h in out.history)
    assert np.all(out.theta_D[out.mask_D == 0] == 0)
    choose = train.halves_index(64)[0]
    assert _loop_eval(TEACHER.apply, params, out.theta_D, out.mask_D, x[:64][choose],
                      y[:64][choose])[0] == out.history[-1]["val_correct"]


def _quick_cfg(tmp_path):
    cfg = golf_prune.get_config(quick=True)
    cfg.data.source = "synthetic"
    cfg.data.val_size = 128
    cfg.data.train_size = 0
    # Random init instead of 3 epochs, and no fine-tuning: compiling the conv net's training
    # would double the test's time (make_finetune inside prune and prune_along is tested on
    # a tiny MLP above; `launch.py --experiment=golf_prune --quick` runs the full quick form).
    cfg.bootstrap.epochs = 0
    cfg.finetune_every = 0
    cfg.threshold = 0.02
    return cfg


def test_golf_prune_quick_end_to_end_and_resume(tmp_path):
    cfg = _quick_cfg(tmp_path)
    summary = golf_prune.run(cfg, str(tmp_path))
    for name in ("summary.json", "summary.md", "val_acc_vs_nonzero.png", "metrics.jsonl",
                 "pruned.npz", "start.npz", "state.json", "state.npz", "runs/compare.json"):
        assert (tmp_path / name).exists(), name
    assert summary["passes"] == 2 and summary["stop"] == "max_passes"
    final = summary["final"]
    assert set(final) == {"start", "brute_force", "magnitude", "obd"}
    kept = summary["brute_force"][-1]["prunable_kept"]
    assert all(rows[-1]["prunable_kept"] == kept for rows in summary["compare"].values())
    assert all(min(r["val_acc"], r["decide_acc"]) >= cfg.threshold
               for r in summary["brute_force"])
    assert summary["choose_size"] == summary["decide_size"] == 64
    assert all({"val_acc", "decide_acc", "test_acc"} <= set(r) for r in final.values())
    assert "| val acc % (chooses) | val acc % (decides) | test acc % |" in (
        tmp_path / "summary.md").read_text()
    # The export holds the pruned network; its description has the non-zero count.
    desc, arrays = export.load(str(tmp_path / "pruned.npz"))
    nonzero = sum(int(np.count_nonzero(a)) for a in arrays.values())
    assert desc["nonzero_params"] == nonzero == final["brute_force"]["nonzero"]
    model, params = export.load_model(str(tmp_path / "pruned.npz"))
    ds = data.from_config(cfg.data)
    acc = float((np.asarray(model.apply(params, ds.test_x)).argmax(-1) == ds.test_y).mean())
    assert abs(acc - final["brute_force"]["test_acc"]) < 1e-6
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert sum(json.loads(r)["method"] == "brute_force" for r in lines) == 2

    # Re-run: nothing is redone (no new metric lines), same summary.
    again = golf_prune.run(cfg, str(tmp_path))
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == lines
    assert again["final"] == summary["final"]
    # A different config in the same workdir is refused, not mixed in.
    cfg.margin = 0.01
    with pytest.raises(ValueError, match="fresh --workdir"):
        golf_prune.run(cfg, str(tmp_path))


def test_golf_prune_model_file_errors(tmp_path):
    cfg = golf_prune.get_config()
    with pytest.raises(ValueError, match="model_file is empty"):
        golf_prune.run(cfg, str(tmp_path))
    cfg.model_file = str(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="model_file=.*no such file"):
        golf_prune.run(cfg, str(tmp_path))
    bad = tmp_path / "bad.npz"
    bad.write_text("not an npz")
    cfg.model_file = str(bad)
    cfg.data.source = "synthetic"
    cfg.data.val_size = 128
    with pytest.raises(ValueError, match="model_file=.*not a model exported"):
        golf_prune.run(cfg, str(tmp_path))


def _checker():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("check_model",
                                                  os.path.join(root, "tools", "check_model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_golf_prune_takes_a_seed_of_a_golf_final(tmp_path):
    from experiments import golf
    gcfg = golf.get_config(quick=True)
    recipe = {"c0": 2, "c1": 2, "c2": 2, "k0": 3, "k1": 3, "k2": 3, "activation": "prelu",
              "separable": False, "gap": True, "learning_rate": 0.01}
    model = golf.build_model(gcfg, recipe)
    size = models.arch_param_count(model.arch)
    rng = np.random.default_rng(0)
    thetas = [rng.normal(size=size).astype(np.float32) for _ in range(3)]
    thetas[2][:5] = 0.0
    gdir = tmp_path / "golf"
    (gdir / "runs").mkdir(parents=True)
    (gdir / "config.json").write_text(json.dumps(gcfg.to_dict()))
    records = [{"seed": k, "status": "diverged" if k == 1 else "ok", "val_acc": 0.9,
                "theta": t.tolist()} for k, t in enumerate(thetas)]
    (gdir / "runs" / "final.json").write_text(json.dumps(
        {"trial": 3, "model": model.name, "params": recipe, "records": records}))

    cfg = golf_prune.get_config()
    cfg.golf_workdir = str(gdir)
    cfg.golf_seed = 2
    golf_prune.validate(cfg)
    path = golf_prune.export_golf_seed(cfg, Workdir(str(tmp_path / "wd")))
    assert os.path.basename(path) == "golf_seed2.npz"
    # The NumPy checker reads the exported seed as the golf model with that seed's theta.
    check = _checker()
    desc, arrays = check.load_model(path)
    assert check.nonzero_count(arrays) == desc["nonzero_params"] == size - 5
    x = rng.normal(size=(3, 28, 28, 1)).astype(np.float32)
    want = np.asarray(jax.jit(model.apply)(models.unflatten(model, thetas[2]), x))
    np.testing.assert_allclose(check.forward(desc, arrays, x), want, rtol=1e-4, atol=1e-4)
    # Exporting again gives the same run key (content, not zip timestamps).
    assert golf_prune._model_digest(path) == golf_prune._model_digest(
        golf_prune.export_golf_seed(cfg, Workdir(str(tmp_path / "wd2"))))
    # Bad input: one message naming the field and what would be valid.
    for seed, why in ((1, "diverged"), (7, "not a final seed")):
        cfg.golf_seed = seed
        with pytest.raises(ValueError, match=f"config.golf_seed={seed}: {why}.*valid: 0, 2"):
            golf_prune.validate(cfg)
    cfg.golf_workdir = str(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="config.golf_workdir=.*no .*config.json"):
        golf_prune.validate(cfg)
    cfg.model_file = path
    with pytest.raises(ValueError, match="not both"):
        golf_prune.validate(cfg)


def test_golf_prune_folds_a_batch_norm_golf_seed(tmp_path):
    from experiments import golf
    from subspace_jax import data
    gcfg = golf.get_config(quick=True)
    gcfg.data.update(source="synthetic", synthetic_size=512, val_size=128, train_size=0)
    recipe = {"c0": 2, "c1": 2, "c2": 2, "k0": 3, "k1": 3, "k2": 3, "activation": "relu",
              "separable": False, "gap": True, "bn": True, "learning_rate": 0.01}
    model = golf.build_model(gcfg, recipe)
    theta = np.random.default_rng(1).normal(size=models.arch_param_count(model.arch))
    gdir = tmp_path / "golf"
    (gdir / "runs").mkdir(parents=True)
    (gdir / "config.json").write_text(json.dumps(gcfg.to_dict()))
    (gdir / "runs" / "final.json").write_text(json.dumps(
        {"trial": 0, "model": model.name, "params": recipe,
         "records": [{"seed": 0, "status": "ok", "val_acc": 0.9, "theta": theta.tolist()}]}))
    cfg = golf_prune.get_config()
    cfg.golf_workdir, cfg.golf_seed = str(gdir), 0
    path = golf_prune.export_golf_seed(cfg, Workdir(str(tmp_path / "wd")))
    check = _checker()
    desc, arrays = check.load_model(path)
    assert desc["dense_params"] == golf.exported_count(model) < theta.size   # gamma, beta gone
    train_x = data.from_config(gcfg.data).train_x
    folded = models.fold_bn(model, models.unflatten(model, theta), jnp.asarray(train_x))
    x = np.asarray(train_x[:3])
    want = models.from_arch(models.folded_arch(model.arch)).apply(folded, x)
    np.testing.assert_allclose(check.forward(desc, arrays, x), want, rtol=1e-4, atol=1e-4)


def test_golf_prune_compares_any_registered_scorer_that_selects_once():
    cfg = golf_prune.get_config(quick=True)
    cfg.compare.methods = ("magnitude", "snip", "random")
    golf_prune.validate(cfg)
    cfg.compare.methods = ("synflow",)  # prunes in rounds: prune_along cannot follow counts
    with pytest.raises(ValueError, match="unknown \\['synflow'\\]; valid: random, magnitude, snip"):
        golf_prune.validate(cfg)
