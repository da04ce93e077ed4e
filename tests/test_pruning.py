"""Pruning: masks, scorers, procedures and the two experiments, on tiny shapes (CPU)."""

from __future__ import annotations

import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from conftest import unit_file
from subspace_jax import config as C
from subspace_jax import export, models, train, vectorize
from subspace_jax.pruning import masks, scorers
from subspace_jax.pruning import procedures as P

TINY = models.mlp("tiny", (5,), n_in=16, n_out=3)       # x: N x 4 x 4 x 1
LINEAR = models.mlp("linear", (), n_in=16, n_out=3)
SHAPE = (4, 4, 1)


def tiny_data(n_train=64, n_eval=32, seed=0) -> train.Data:
    rng = np.random.default_rng(seed)
    xs = [rng.normal(size=(n, *SHAPE)).astype(np.float32) for n in (n_train, n_eval, n_eval)]
    ys = [(x.reshape(len(x), -1)[:, :3].argmax(1)).astype(np.int32) for x in xs]  # learnable
    return train.Data(*(jnp.asarray(a) for a in (xs[0], ys[0], xs[1], ys[1], xs[2], ys[2])))


def tiny_layout():
    return masks.model_layout(TINY)  # dense0/w 16x5, dense1/w 5x3 prunable; biases not


def test_layout_matches_ravel_order():
    params = TINY.init(jax.random.key(0))
    lay = masks.layout(params)
    flat, _ = ravel_pytree(params)
    assert lay.D == flat.size
    for name, off, size in zip(lay.names, lay.offsets, lay.sizes):
        layer, leaf = name.split("/")
        np.testing.assert_array_equal(flat[off:off + size], params[layer][leaf].ravel())
    assert [n for n, p in zip(lay.names, lay.prunable) if p] == ["dense0/w", "dense1/w"]
    # Configurable: biases too.
    assert sum(masks.layout(params, ("w", "b")).prunable) == 4
    # Mask pytree <-> flat vector; non-prunable leaves are explicit all-True arrays.
    mask = masks.ones_mask(params)
    mask["dense1"]["w"] = mask["dense1"]["w"].at[0, 0].set(False)
    mask_D = masks.to_flat(mask)
    assert mask_D[lay.offsets[lay.names.index("dense1/w")]] == 0 and mask_D.sum() == lay.D - 1
    back = masks.from_flat(mask_D, params)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), back, mask))


@pytest.mark.parametrize("mode", masks.MODES)
@pytest.mark.parametrize("density", [1.0, 0.5, 0.3, 0.07])
def test_exact_sparsity(mode, density):
    lay = tiny_layout()
    score_D = jax.random.normal(jax.random.key(1), (lay.D,))
    mask_D = masks.select(score_D, lay, density, mode)
    kept = np.asarray(masks.leaf_counts(mask_D, lay))
    for i, (size, prunable) in enumerate(zip(lay.sizes, lay.prunable)):
        if not prunable:
            assert kept[i] == size
        elif mode == "layerwise":
            assert kept[i] == max(1, masks.kept_count(density, size))
    if mode == "global":
        n_kept = sum(kept[i] for i in lay.prunable_leaves)
        assert n_kept == masks.kept_count(density, lay.n_prunable)
        # Without the guard, global keeps exactly the largest prunable scores.
        free_D = np.asarray(masks.select(score_D, lay, density, mode, min_one=False))
        idx = np.concatenate([np.arange(lay.offsets[i], lay.offsets[i] + lay.sizes[i])
                              for i in lay.prunable_leaves])
        s = np.asarray(score_D)[idx]
        k = masks.kept_count(density, lay.n_prunable)
        assert set(idx[free_D[idx] > 0]) == set(idx[np.argsort(-s, kind="stable")[:k]])


def test_ties_are_broken_by_index_deterministically():
    lay = tiny_layout()
    w0 = lay.offsets[lay.names.index("dense0/w")]
    score_D = jnp.zeros(lay.D).at[w0 + 1].set(-0.0)  # -0.0 must tie with +0.0
    for mode in masks.MODES:
        a = masks.select(score_D, lay, 0.25, mode)
        b = jax.jit(lambda s: masks.select(s, lay, 0.25, mode))(score_D)
        np.testing.assert_array_equal(a, b)
        for i in lay.prunable_leaves:  # within each tensor, the first weights win
            seg = np.asarray(a[lay.offsets[i]:lay.offsets[i] + lay.sizes[i]])
            k = int(seg.sum())
            assert k >= 1 and seg[:k].all() and not seg[k:].any()
    # Global: equal scores fill in flat order after each tensor's forced weight.
    g = masks.leaf_counts(masks.select(score_D, lay, 0.25, "global"), lay)
    assert sum(g[i] for i in lay.prunable_leaves) == masks.kept_count(0.25, lay.n_prunable)


def test_layer_collapse_guard():
    lay = tiny_layout()
    i0, i1 = [lay.names.index(n) for n in ("dense0/w", "dense1/w")]
    score_D = jnp.zeros(lay.D).at[lay.offsets[i0]:lay.offsets[i0] + lay.sizes[i0]].set(10.0)
    k = 3  # fewer than dense0/w's weights, so all top scores sit in dense0/w
    density = k / lay.n_prunable
    guarded = masks.leaf_counts(masks.select(score_D, lay, density, "global"), lay)
    assert guarded[i1] == 1 and guarded[i0] + guarded[i1] == k  # exact, nothing collapsed
    free = masks.leaf_counts(masks.select(score_D, lay, density, "global", min_one=False), lay)
    assert free[i1] == 0 and free[i0] == k
    rep = masks.report(free, lay)
    assert rep["collapsed"] == ["dense1/w"] and rep["nonzero"] == k + 5 + 3
    # Layerwise at density 0 keeps exactly one weight per tensor unless asked.
    lw = masks.leaf_counts(masks.select(score_D, lay, 0.0, "layerwise"), lay)
    assert lw[i0] == 1 and lw[i1] == 1
    lw_free = masks.select(score_D, lay, 0.0, "layerwise", min_one=False)
    assert masks.leaf_counts(lw_free, lay)[i1] == 0


def test_dead_weights_are_never_revived():
    lay = tiny_layout()
    score_D = jax.random.normal(jax.random.key(2), (lay.D,))
    alive = masks.select(score_D, lay, 0.5, "global")
    again = masks.select(-score_D, lay, 0.3, "global", alive_D=alive)  # prefers dead weights
    assert bool((again <= alive).all())
    assert int(sum(masks.leaf_counts(again, lay)[i] for i in lay.prunable_leaves)) == \
        masks.kept_count(0.3, lay.n_prunable)


def test_flops_per_weight_conv_and_dense():
    m = models.cnn("t", (2,), (3,), (True,), activation="prelu", in_size=6)
    lay = masks.model_layout(m)
    fpw = dict(zip(lay.names, masks.flops_per_weight(m, (6, 6, 1))))
    # 3x3 VALID conv on 6x6 -> 4x4 outputs: each kernel weight is 16 multiply-adds.
    assert fpw["conv0/w"] == 2 * 16 and fpw["conv0/b"] == 16 and fpw["conv0/slope"] == 16
    assert fpw["dense0/w"] == 2 and fpw["dense0/b"] == 1
    rep = masks.report(jnp.ones(lay.D), lay, masks.flops_per_weight(m, (6, 6, 1)))
    assert rep["flops"] == rep["dense_flops"] == 18 * 32 + 2 * 16 * 2 + 80 * 2 + 10


def test_flops_per_weight_sees_through_custom_vjp():
    @jax.custom_vjp
    def matmul(x, w):
        return x @ w

    matmul.defvjp(lambda x, w: (x @ w, (x, w)), lambda r, g: (g @ r[1].T, r[0].T @ g))
    init = lambda key: {"w": jnp.zeros((6, 3))}
    plain = types.SimpleNamespace(init=init, apply=lambda p, x: x.reshape(1, -1) @ p["w"])
    custom = types.SimpleNamespace(init=init, apply=lambda p, x: matmul(x.reshape(1, -1), p["w"]))
    assert masks.flops_per_weight(custom, (6,))[0] == masks.flops_per_weight(plain, (6,))[0] == 2


def test_masked_weights_stay_exactly_zero_through_training():
    data = tiny_data()
    tcfg = C.train_config(epochs=3, batch_size=16, learning_rate=0.05, weight_decay=1e-3)
    run = train.make_run(TINY, tcfg, C.subspace_config(0), 64)
    lay = tiny_layout()
    theta0_D = ravel_pytree(TINY.init(jax.random.key(3)))[0]
    mask_D = masks.select(jax.random.uniform(jax.random.key(4), (lay.D,)), lay, 0.3)
    hp = {**train.default_hp(tcfg), "mask": mask_D, "theta_init": theta0_D}
    res = jax.jit(run)(jax.random.key(5), hp, data)
    dead = np.asarray(mask_D) == 0
    assert dead.any() and (np.asarray(res.params)[dead] == 0.0).all()
    assert not np.allclose(np.asarray(res.params)[~dead], np.asarray(theta0_D)[~dead])


def _tiny_loss(model, n=24):
    data = tiny_data(n_train=n)
    _, apply_D, init_D = models.flat(model)
    return scorers.batch_loss(apply_D, data.train_x, data.train_y), apply_D, init_D, data


def test_obd_exact_hessian_diagonal_matches_brute_force():
    loss_D, _, init_D, _ = _tiny_loss(TINY)
    theta_D = init_D(jax.random.key(6))
    brute = jax.jit(lambda th: jnp.diag(jax.hessian(loss_D)(th)))(theta_D)
    exact = jax.jit(lambda th: scorers.hessian_diag_exact(loss_D, th, chunk=16))(theta_D)
    np.testing.assert_allclose(exact, brute, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(scorers.obd(theta_D, exact), 0.5 * brute * theta_D ** 2,
                               rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("model", [LINEAR, TINY], ids=lambda m: m.name)
def test_gauss_newton_diagonal_is_the_hessian_diagonal(model):
    # Logits are affine in each single weight of a ReLU net, so diag(GGN) == diag(H).
    loss_D, apply_D, init_D, data = _tiny_loss(model)
    theta_D = init_D(jax.random.key(7))
    brute = jax.jit(lambda th: jnp.diag(jax.hessian(loss_D)(th)))(theta_D)
    ggn = jax.jit(lambda th: scorers.gauss_newton_diag(apply_D, th, data.train_x, chunk=5))(theta_D)
    np.testing.assert_allclose(ggn, brute, rtol=1e-4, atol=1e-6)


def _synflow_scores(params):
    theta_D, unravel = ravel_pytree(params)
    apply_D = lambda th, x: TINY.apply(unravel(th), x)
    return scorers.synflow(apply_D, theta_D, jnp.ones_like(theta_D), SHAPE), unravel


def test_synflow_conserves_the_synaptic_flow_per_layer():
    params = TINY.init(jax.random.key(8))
    params = jax.tree_util.tree_map_with_path(  # bias-free: R is 1-homogeneous in each layer
        lambda p, x: jnp.zeros_like(x) if masks.leaf_name(p).endswith("/b") else x, params)
    score_D, unravel = _synflow_scores(params)
    s = unravel(score_D)
    abs_p = jax.tree.map(jnp.abs, params)
    R = TINY.apply(abs_p, jnp.ones((1, *SHAPE))).sum()
    np.testing.assert_allclose(s["dense0"]["w"].sum(), R, rtol=1e-5)
    np.testing.assert_allclose(s["dense1"]["w"].sum(), R, rtol=1e-5)


def test_synflow_is_invariant_to_rescaling_adjacent_layers():
    params = TINY.init(jax.random.key(9))
    alpha = 4.0
    scaled = {"dense0": {"w": alpha * params["dense0"]["w"], "b": alpha * params["dense0"]["b"]},
              "dense1": {"w": params["dense1"]["w"] / alpha, "b": params["dense1"]["b"]}}
    a, _ = _synflow_scores(params)
    b, _ = _synflow_scores(scaled)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # Hence the iterative SynFlow mask is unchanged too.
    lay = masks.layout(params)
    masks_ = []
    for p in (params, scaled):
        theta_D, unravel = ravel_pytree(p)
        apply_D = lambda th, x, unravel=unravel: TINY.apply(unravel(th), x)
        masks_.append(scorers.synflow_mask(apply_D, theta_D, 0.2, lay, SHAPE, rounds=5))
    np.testing.assert_array_equal(masks_[0], masks_[1])
    assert int(sum(masks.leaf_counts(masks_[0], lay)[i] for i in lay.prunable_leaves)) == \
        masks.kept_count(0.2, lay.n_prunable)


def test_rewinding_to_an_epoch_needs_a_constant_schedule():
    pcfg = P.prune_config()
    with pytest.raises(ValueError, match="constant"):
        P.make_pruning_run(TINY, C.train_config(epochs=3, schedule="cosine"), pcfg, 64,
                           imp=True, rewind_epoch=1, input_shape=SHAPE)
    with pytest.raises(ValueError, match="Unknown scorer"):
        P.make_pruning_run(TINY, C.train_config(), pcfg, 64, at_init=("nope",), input_shape=SHAPE)


def test_rewinding_to_epoch_k_restarts_from_the_dense_weights_after_k_epochs():
    data = tiny_data()
    tcfg = C.train_config(epochs=2, batch_size=16)
    no_sub = C.subspace_config(0)
    hp = {**train.default_hp(tcfg), "densities": jnp.asarray([1.0])}  # level 1 keeps all
    key = jax.random.key(0)
    tickets = {k: P.make_pruning_run(TINY, tcfg, P.prune_config(), 64, imp=True, rewind_epoch=k,
                                     input_shape=SHAPE)(key, hp, data)[f"imp/rewind{k}"].theta[0]
               for k in (0, 1)}
    # The same thing by hand: a 1-epoch dense run from the init, then the full
    # schedule from its weights, with the run's own keys.
    k = P.run_keys(key)
    theta0_D = models.flat(TINY)[2](k.init)
    thp = train.default_hp(tcfg)
    snap_cfg = C.train_config(epochs=1, batch_size=16, keep_best=False)
    snap_D = train.make_run(TINY, snap_cfg, no_sub, 64)(k.train, {**thp, "theta_init": theta0_D},
                                                        data).params
    assert not np.allclose(snap_D, theta0_D)
    ones = jnp.ones_like(theta0_D)
    by_hand = train.make_run(TINY, tcfg, no_sub, 64)(
        k.train, {**thp, "theta_init": snap_D, "mask": ones}, data).params
    np.testing.assert_allclose(tickets[1], by_hand, rtol=1e-5, atol=1e-6)
    assert not np.allclose(tickets[0], tickets[1], atol=1e-4)


def test_vmapped_over_seeds_equals_looped():
    data = tiny_data()
    tcfg = C.train_config(epochs=1, batch_size=16)
    run = P.make_pruning_run(TINY, tcfg, P.prune_config(score_batch=16), 64,
                             at_init=("random",), input_shape=SHAPE)
    hp = {k: np.asarray([v, v]) for k, v in train.default_hp(tcfg).items()}
    hp["learning_rate"] = np.asarray([1e-3, 3e-3], np.float32)
    hp["densities"] = np.asarray([[0.5, 0.1]] * 2, np.float32)
    keys = vectorize.run_keys([0, 1])
    v = vectorize.vmapped(run, keys, hp, data)
    lo = vectorize.looped(run, keys, hp, data)
    for arm in v:
        np.testing.assert_allclose(v[arm].final["val_acc"], lo[arm].final["val_acc"], atol=1e-6)
        np.testing.assert_allclose(v[arm].final["train_loss"], lo[arm].final["train_loss"],
                                   rtol=1e-4)
    np.testing.assert_array_equal(v["at_init/random"].mask, lo["at_init/random"].mask)
    # Seeds differ; the two hp rows of one seed share its init, so its random mask.
    assert not np.array_equal(v["at_init/random"].mask[0], v["at_init/random"].mask[1])
    np.testing.assert_array_equal(v["at_init/random"].mask[0, 0], v["at_init/random"].mask[0, 1])


def _quick(module, tmp_path):
    cfg = module.get_config(quick=True)
    cfg.data.source = "synthetic"
    return module.run(cfg, str(tmp_path)), cfg


def _nested(levels):
    return all((b <= a).all() for a, b in zip(levels[:-1], levels[1:]))


def test_lottery_quick_end_to_end(tmp_path):
    from experiments import lottery
    summary, cfg = _quick(lottery, tmp_path)
    for f in ("config.json", "metrics.jsonl", "summary.json", "summary.md", "lottery.png"):
        assert os.path.getsize(tmp_path / f) > 0
    methods = {r["method"] for r in summary["table"]}
    assert methods == {"dense", "imp/rewind0", "imp_control/rewind0"}
    # Masks: nested across levels, exact per-layer counts (output layer at its own rate).
    named, lay = masks.load_npz(unit_file(tmp_path, "lenet_300_100_imp_rewind0", ".masks.npz"))
    m = named["imp/rewind0"]  # [seeds, rows, levels, D]
    assert m.shape[:3] == (len(cfg.seeds), 1, cfg.levels)
    for seed_levels in m[:, 0]:
        assert _nested(seed_levels)
        for level, mask in enumerate(seed_levels, start=1):
            kept = masks.leaf_counts(jnp.asarray(mask), lay)
            d = np.float32((1 - cfg.rate) ** level)
            assert kept[lay.names.index("dense0/w")] == masks.kept_count(d, 784 * 300)
            assert abs(int(kept[lay.names.index("dense2/w")])
                       - (1 - cfg.output_rate) ** level * 1000) <= 0.5 + 1e-3  # d ** e on device
    # The exported ticket: the chosen level's mask, zeros where pruned, scored by NumPy alone.
    ticket = summary["ticket"]
    desc, arrays = export.load(str(tmp_path / "ticket.npz"))
    flat = np.concatenate([arrays[n].ravel() for n in lay.names])
    mask = m[0, 0, ticket["level"] - 1]
    assert not flat[~mask].any() and desc["nonzero_params"] == ticket["nonzero_params"]
    assert ticket["nonzero_params"] == np.count_nonzero(flat)
    assert "ticket.npz" in (tmp_path / "ticket_report.md").read_text()
    # Resuming skips the finished unit.
    summary2, _ = _quick(lottery, tmp_path)
    assert summary2["table"] == json.loads(json.dumps(summary["table"]))
    # A changed config into the same workdir retrains: no old result returns.
    cfg.rate = 0.6
    changed = lottery.run(cfg, str(tmp_path))
    kept = sorted({r["density_target"] for r in changed["table"] if r["method"] != "dense"})
    assert kept == pytest.approx(sorted(0.4 ** np.arange(1, cfg.levels + 1)))


def test_pruning_compare_quick_end_to_end(tmp_path):
    from experiments import pruning_compare
    summary, cfg = _quick(pruning_compare, tmp_path)
    for f in ("config.json", "metrics.jsonl", "summary.json", "summary.md",
              "accuracy_vs_density.png"):
        assert os.path.getsize(tmp_path / f) > 0
    model = cfg.models[0]
    table = summary["models"][model]["table"]
    expected = ({"dense"} | {f"at_init/{s}" for s in cfg.at_init}
                | {f"one_shot/{s}" for s in cfg.one_shot}
                | {f"iterative/{s}" for s in cfg.iterative})
    assert {r["method"] for r in table} == expected
    n_prunable = masks.model_layout(models.get(model)).n_prunable
    for r in table:  # global selection: the kept fraction is exact
        if r["method"] != "dense":
            kept = masks.kept_count(r["density_target"], n_prunable)
            assert r["density_mean"] == kept / n_prunable
    assert {r["method"] for r in summary["models"][model]["collapse"]} == \
        {f"collapse/{s}" for s in cfg.at_init}
    named, _ = masks.load_npz(unit_file(tmp_path, model, ".masks.npz"))
    for seed_levels in named[f"iterative/{cfg.iterative[0]}"][:, 0]:
        assert _nested(seed_levels)
    # A changed config into the same workdir retrains: no old result returns.
    cfg.densities = (0.2,)
    changed = pruning_compare.run(cfg, str(tmp_path))["models"][model]["table"]
    assert {r["density_target"] for r in changed if r["method"] != "dense"} == {0.2}


# ---------------------------------------------------------------- closed forms
def _softmax_regression(seed=0, n=24, T=1.0):
    """LINEAR (z = x W + b, 16 -> 3): theta_D, batch, and NumPy float64 helpers."""
    unravel, apply_D, init_D = models.flat(LINEAR)
    theta_D = init_D(jax.random.key(seed))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *SHAPE)).astype(np.float32)
    y = rng.integers(0, 3, n).astype(np.int32)
    X = x.reshape(n, -1).astype(np.float64)
    Y = np.eye(3)[y]

    def probs(p):
        z = (X @ p["dense0"]["w"] + p["dense0"]["b"]) / T
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def grad(p):  # dL/dW = X^T (P - Y) / (N T), dL/db = mean(P - Y) / T
        G = probs(p) - Y
        return {"dense0": {"w": X.T @ G / (n * T), "b": G.mean(0) / T}}

    def hvp(p, v):  # H v: dP = P * dz - P * sum(P * dz), dz = (X V_W + v_b) / T
        Pr = probs(p)
        dz = (X @ v["dense0"]["w"] + v["dense0"]["b"]) / T
        dP = Pr * dz - Pr * (Pr * dz).sum(1, keepdims=True)
        return {"dense0": {"w": X.T @ dP / (n * T), "b": dP.mean(0) / T}}

    def tree(v_D):
        return jax.tree.map(lambda a: np.asarray(a, np.float64), unravel(jnp.asarray(v_D)))

    flat = lambda t: np.asarray(ravel_pytree(t)[0], np.float64)
    return theta_D, apply_D, jnp.asarray(x), jnp.asarray(y), tree, flat, grad, hvp


def test_snip_equals_the_closed_form_of_softmax_regression():
    theta_D, apply_D, x, y, tree, flat, grad, _ = _softmax_regression()
    mask_D = (jax.random.uniform(jax.random.key(9), theta_D.shape) > 0.3).astype(jnp.float32)
    w = tree(theta_D * mask_D)  # the gradient is taken at the masked weights
    want_D = np.abs(flat(w) * flat(grad(w)))
    got_D = scorers.snip(scorers.batch_loss(apply_D, x, y), theta_D, mask_D)
    np.testing.assert_allclose(got_D, want_D, rtol=1e-4, atol=1e-7)
    assert not np.asarray(got_D)[np.asarray(mask_D) == 0].any()  # pruned weights score 0


@pytest.mark.parametrize("T", [1.0, 200.0])
def test_grasp_equals_the_closed_form_of_softmax_regression(T):
    theta_D, apply_D, x, y, tree, flat, grad, hvp = _softmax_regression(seed=1, T=T)
    mask_D = jnp.ones_like(theta_D)
    w = tree(theta_D)
    want_D = flat(w) * flat(hvp(w, grad(w)))  # keep-score theta * H g
    got_D = scorers.grasp(scorers.batch_loss(apply_D, x, y, T), theta_D, mask_D)
    scale = np.abs(want_D).max()
    assert scale > 0
    np.testing.assert_allclose(np.asarray(got_D) / scale, want_D / scale, atol=1e-4)


# ---------------------------------------------------------------- IMP and its control
@pytest.fixture(scope="module")
def imp_out():
    """IMP with the control on TINY, layerwise, 2 levels; row 0 trains (lr 1e-2), row 1
    barely moves (lr 1e-12), so its final losses are those of its starting points."""
    tcfg = C.train_config(epochs=2, batch_size=16, learning_rate=1e-2)
    pcfg = P.prune_config(mode="layerwise", finetune_epochs=1, score_batch=16)
    run = P.make_pruning_run(TINY, tcfg, pcfg, 64, imp=True, control=True,
                             input_shape=SHAPE)
    densities = np.asarray([0.5, 0.25], np.float32)
    hp = {"learning_rate": np.asarray([1e-2, 1e-12], np.float32),
          "weight_decay": np.zeros(2, np.float32), "d_active": np.zeros(2, np.int32),
          "densities": np.tile(densities, (2, 1))}
    keys = vectorize.run_keys([0])
    out = jax.device_get(vectorize.vmapped(run, keys, hp, tiny_data()))
    return out, densities, keys[0]


def test_imp_keeps_the_largest_surviving_magnitudes_per_layer(imp_out):
    out, densities, _ = imp_out
    lay = masks.model_layout(TINY, ("w",))
    imp = out["imp/rewind0"]
    prev_theta = np.asarray(out["dense"].params[0, 0])  # level 1 prunes the trained dense net
    prev_mask = np.ones(lay.D, bool)
    for level, d in enumerate(densities):
        mask = np.asarray(imp.mask[0, 0, level])
        assert not (mask & ~prev_mask).any()  # survivors only
        for i in lay.prunable_leaves:
            seg = slice(lay.offsets[i], lay.offsets[i] + lay.sizes[i])
            kept, alive = mask[seg], prev_mask[seg]
            assert kept.sum() == masks.kept_count(d, lay.sizes[i]), lay.names[i]
            mag = np.abs(prev_theta[seg])
            assert mag[kept].min() >= mag[alive & ~kept].max(), lay.names[i]
        for i in set(range(len(lay.sizes))) - set(lay.prunable_leaves):  # biases stay
            assert mask[lay.offsets[i]:lay.offsets[i] + lay.sizes[i]].all()
        prev_theta, prev_mask = np.asarray(imp.theta[0, 0, level]), mask


def test_lottery_control_trains_the_mask_from_a_fresh_init(imp_out):
    out, densities, key = imp_out
    _, apply_D, init_D = models.flat(TINY)
    data = tiny_data()
    k = P.run_keys(key)

    def train_loss(theta_D):
        return float(train.cross_entropy(apply_D(jnp.asarray(theta_D), data.train_x),
                                         data.train_y))

    rewound = init_D(k.init)
    for level in range(len(densities)):
        mask = np.asarray(out["imp/rewind0"].mask[0, 1, level], np.float32)
        fresh = np.asarray(init_D(jax.random.fold_in(k.reinit, level)))
        control = float(out["imp_control/rewind0"].final["train_loss"][0, 1, level])
        ticket = float(out["imp/rewind0"].final["train_loss"][0, 1, level])
        assert control == pytest.approx(train_loss(fresh * mask), abs=1e-5)
        assert ticket == pytest.approx(train_loss(rewound * mask), abs=1e-5)
        assert abs(control - ticket) > 1e-3  # a different start, not the rewound weights
    fresh0, fresh1 = (init_D(jax.random.fold_in(k.reinit, lv)) for lv in (0, 1))
    assert not np.allclose(fresh0, fresh1)  # a new init at every level


def test_every_registered_scorer_prunes_to_the_exact_density_and_one_line_adds_one(monkeypatch):
    lay = tiny_layout()
    pcfg = P.prune_config(synflow_rounds=3)
    theta_D = models.flat(TINY)[2](jax.random.key(0))
    alive_D = jnp.ones(lay.D, jnp.float32)
    x, y = tiny_data().train_x[:8], tiny_data().train_y[:8]
    assert P.AT_INIT == ("random", "magnitude", "snip", "grasp", "synflow")
    assert P.AFTER_TRAINING == ("magnitude", "obd") and set(P.SCORERS) == set(scorers.REGISTRY)
    for name in P.SCORERS:
        batch = (x, y) if scorers.REGISTRY[name].needs_batch else None
        m = P.make_pruner(TINY, lay, name, pcfg, SHAPE)(jax.random.key(1), theta_D, 0.3,
                                                         alive_D, batch)
        kept = np.asarray(masks.leaf_counts(m, lay))[list(lay.prunable_leaves)].sum()
        assert kept == masks.kept_count(0.3, lay.n_prunable), name
        assert set(np.unique(np.asarray(m))) <= {0.0, 1.0}
    # A new scorer is one registry entry: no other code names it.
    monkeypatch.setitem(scorers.REGISTRY, "smallest", scorers.Scorer(
        lambda ctx, key, th, alive, b: -jnp.abs(th), False, True, False))
    got = P.make_pruner(TINY, lay, "smallest", pcfg, SHAPE)(None, theta_D, 0.3, alive_D, None)
    np.testing.assert_array_equal(got, masks.select(-jnp.abs(theta_D), lay, 0.3))
    assert not P.needs_batch(("smallest", "magnitude")) and P.needs_batch(("smallest", "obd"))


def test_imp_prunes_a_network_it_is_handed(imp_out):
    """``imp`` called on the fixture's dense weights gives its fused arm; handed level 1's
    ticket and mask, its first level is the fused level 2."""
    out, densities, key = imp_out
    k = P.run_keys(key)
    tcfg = C.train_config(epochs=2, batch_size=16, learning_rate=1e-2)  # as imp_out, row 0
    pcfg = P.prune_config(mode="layerwise")
    lay = masks.model_layout(TINY, ("w",))
    init_D = models.flat(TINY).init_D
    prune = P.make_pruner(TINY, lay, "magnitude", pcfg, SHAPE)
    run_train = train.make_run(TINY, tcfg, C.subspace_config(0), 64)
    thp = {"learning_rate": np.float32(1e-2), "weight_decay": np.float32(0),
           "d_active": np.int32(0)}
    imp = jax.jit(lambda theta_D, alive_D, dens_L: P.imp(
        prune, run_train, k.score, k.train, thp, tiny_data(), theta_D, alive_D, init_D(k.init),
        dens_L, k.reinit, init_D))
    fused = out["imp/rewind0"]
    mask_LxD, ticket, control = imp(out["dense"].params[0, 0], jnp.ones(lay.D), densities)
    np.testing.assert_array_equal(mask_LxD > 0, fused.mask[0, 0])
    np.testing.assert_allclose(ticket.params, fused.theta[0, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(control.final["train_loss"],
                               out["imp_control/rewind0"].final["train_loss"][0, 0], rtol=1e-5)
    # From level 1's ticket and mask: the next level, exact per-layer counts, survivors only;
    # large dead weights must stay dead.
    dens2_L = np.asarray([densities[1], densities[1] / 2], np.float32)  # of the full network
    handed_D = fused.theta[0, 0, 0] + 10.0 * (1 - mask_LxD[0])
    mask2_LxD, ticket2, _ = imp(handed_D, mask_LxD[0], dens2_L)
    np.testing.assert_array_equal(mask2_LxD[0] > 0, fused.mask[0, 0, 1])
    np.testing.assert_allclose(ticket2.params[0], fused.theta[0, 0, 1], rtol=1e-5, atol=1e-6)
    kept = masks.leaf_counts(mask2_LxD[1], lay)
    for i in lay.prunable_leaves:
        assert kept[i] == masks.kept_count(dens2_L[1], lay.sizes[i]), lay.names[i]
    assert not np.asarray((mask2_LxD[1] > 0) & (mask2_LxD[0] == 0)).any()


# ---------------------------------------------------------------- iterative pruning
def test_iterative_prunes_the_previous_levels_fine_tuned_survivors():
    """``iterative`` on the dense weights is make_pruning_run's ``iterative`` arm; each level
    keeps the global count of the largest magnitudes among the previous level's survivors,
    scored on its fine-tuned weights; pruned weights are exactly zero; with a learning rate
    of ~0 each level's fine-tune starts from the previous level's result under the new mask."""
    tcfg = C.train_config(epochs=2, batch_size=16, learning_rate=1e-2)
    pcfg = P.prune_config(finetune_epochs=1)  # global: the count is exact over all kernels
    densities = np.asarray([0.5, 0.2], np.float32)
    hp = {"learning_rate": np.float32(1e-2), "weight_decay": np.float32(0),
          "d_active": np.int32(0), "densities": densities}
    data, key = tiny_data(), jax.random.key(0)
    fused = jax.jit(P.make_pruning_run(TINY, tcfg, pcfg, 64, iterative=("magnitude",),
                                       input_shape=SHAPE))(key, hp, data)
    lay = masks.model_layout(TINY, ("w",))
    prune = P.make_pruner(TINY, lay, "magnitude", pcfg, SHAPE)
    run_ft = train.make_run(TINY, C.train_config(epochs=1, batch_size=16, learning_rate=1e-2),
                            C.subspace_config(0), 64)
    keys = P.run_keys(key)
    score_key = jax.random.fold_in(keys.score, 100)  # make_pruning_run's, for its first arm
    theta_D = fused["dense"].params
    iterate = jax.jit(lambda thp: P.iterative(prune, run_ft, score_key, keys.train, thp, data,
                                              theta_D, jnp.ones(lay.D), jnp.asarray(densities)))
    thp = {name: hp[name] for name in P.TRAIN_HP}
    mask_LxD, res = jax.device_get(iterate(thp))
    arm = fused["iterative/magnitude"]
    np.testing.assert_array_equal(mask_LxD > 0, arm.mask)
    for metric in ("val_acc", "train_loss"):  # the arm keeps no params, only metrics
        np.testing.assert_allclose(res.final[metric], arm.final[metric], rtol=1e-5, atol=1e-6)

    prunable = np.zeros(lay.D, bool)
    for i in lay.prunable_leaves:
        prunable[lay.offsets[i]:lay.offsets[i] + lay.sizes[i]] = True
    prev_theta, prev_mask = np.asarray(theta_D), np.ones(lay.D, bool)
    for level, d in enumerate(densities):
        mask = mask_LxD[level] > 0
        assert (mask[prunable]).sum() == masks.kept_count(d, lay.n_prunable)
        assert mask[~prunable].all()  # biases stay
        assert not (mask & ~prev_mask).any()  # nested: survivors of the previous level only
        mag = np.abs(prev_theta)
        assert mag[mask & prunable].min() >= mag[prev_mask & ~mask & prunable].max()
        assert (res.params[level][~mask] == 0.0).all()
        prev_theta, prev_mask = res.params[level], mask

    frozen = {**thp, "learning_rate": np.float32(1e-12)}
    mask0_LxD, res0 = jax.device_get(iterate(frozen))
    np.testing.assert_allclose(res0.params[0], np.asarray(theta_D) * mask0_LxD[0], atol=1e-6)
    np.testing.assert_allclose(res0.params[1], res0.params[0] * mask0_LxD[1], atol=1e-6)
