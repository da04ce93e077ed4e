"""Weight-agnostic networks: masked evaluation vs a plain graph walk, mutations,
Pareto ranking, vmapped == looped, input preprocessing, the quick experiment
end to end and its resumption."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from subspace_jax import wann_search

# Written independently of wann_search._apply_act (sigmoid via exp, cos directly).
NP_ACTS = [lambda x: x, lambda x: 1.0 / (1.0 + np.exp(-x)), np.tanh,
           lambda x: np.exp(-x * x / 2.0), lambda x: np.sin(np.pi * x),
           lambda x: np.cos(np.pi * x), np.abs, lambda x: np.maximum(x, 0.0), lambda x: -x]


def graph_eval(genome, w, x_BxI):
    """Reference: explicit node and edge lists, Kahn's topological order (not
    the index order), each node = act(w * sum of its sources), float64."""
    n_in, n_hidden, n_out = wann_search.sizes(genome)
    name = lambda col: ("h", col) if col < n_hidden else ("o", col - n_hidden)  # noqa: E731
    nodes = ([("i", i) for i in range(n_in)] + [("h", j) for j in range(n_hidden)
                                                  if genome["node_on"][j]]
             + [("o", o) for o in range(n_out)])
    edges = [(("i", s), name(c)) for s, c in zip(*np.nonzero(genome["in_conn"] == wann_search.ON))]
    edges += [(("h", s), name(c)) for s, c in zip(*np.nonzero(genome["hid_conn"] == wann_search.ON))]
    sources = {n: [s for s, d in edges if d == n] for n in nodes}
    indegree = {n: len(sources[n]) for n in nodes}
    ready, order = [n for n in nodes if indegree[n] == 0], []
    while ready:
        n = ready.pop()
        order.append(n)
        for s, d in edges:
            if s == n:
                indegree[d] -= 1
                if indegree[d] == 0:
                    ready.append(d)
    assert len(order) == len(nodes), "graph has a cycle"
    x = np.asarray(x_BxI, np.float64)
    value = {}
    for n in order:
        if n[0] == "i":
            value[n] = x[:, n[1]]
            continue
        pre = w * sum((value[s] for s in sources[n]), np.zeros(len(x)))
        act = genome["act"][n[1] if n[0] == "h" else n_hidden + n[1]]
        value[n] = NP_ACTS[act](np.clip(pre, -wann_search.CLIP, wann_search.CLIP))
    return np.stack([value[("o", o)] for o in range(n_out)], 1)


def random_genome(rng, n_in=7, n_hidden=6, n_out=4, density=0.3, max_used=None):
    """Any valid genome: random present nodes, states (incl. DISABLED), activations."""
    g = wann_search.empty_genome(n_in, n_hidden, n_out)
    g["node_on"][:rng.integers(0, (n_hidden if max_used is None else max_used) + 1)] = True
    g["act"][:n_hidden] = rng.integers(0, len(wann_search.ACTIVATIONS), n_hidden)
    in_ok, hid_ok = wann_search.valid_sources(g)
    for key, ok in (("in_conn", in_ok), ("hid_conn", hid_ok)):
        u = rng.random(ok.shape)
        g[key] = np.where(ok & (u < density), wann_search.ON,
                          np.where(ok & (u < 1.3 * density), wann_search.DISABLED, wann_search.OFF)).astype(np.int8)
    wann_search.check_genome(g)
    return g


def mutated_genome(rng, steps=40, n_in=7, n_hidden=6, n_out=4):
    g = wann_search.unstack(wann_search.init_population(rng, 1, n_in, n_hidden, n_out, 0.3))[0]
    probs = dict(zip(wann_search.MUTATIONS, (0.3, 0.3, 0.3, 0.1)))
    for _ in range(steps):
        g, _ = wann_search.mutate(g, rng, probs)
    return g


WEIGHTS = (*wann_search.SHARED_WEIGHTS, 0.3)


def test_masked_forward_equals_graph_evaluation():
    rng = np.random.default_rng(0)
    fwd = jax.jit(wann_search.forward)
    genomes = [random_genome(rng) for _ in range(12)] + [mutated_genome(rng) for _ in range(12)]
    assert any(wann_search.n_hidden_used(g) >= 4 for g in genomes)
    for g in genomes:
        x = rng.uniform(0, 0.5, (5, 7)).astype(np.float32)
        for w in WEIGHTS:
            got = np.asarray(fwd(g, jnp.float32(w), jnp.asarray(x)))
            np.testing.assert_allclose(got, graph_eval(g, w, x), rtol=1e-3, atol=1e-4)


def test_forward_weighted_with_equal_weights_is_forward():
    rng = np.random.default_rng(1)
    g = random_genome(rng)
    x = jnp.asarray(rng.uniform(0, 1, (4, 7)), jnp.float32)
    params = {"in": jnp.full(g["in_conn"].shape, -0.5), "hid": jnp.full(g["hid_conn"].shape, -0.5)}
    np.testing.assert_allclose(jax.jit(wann_search.forward_weighted)(g, params, x), jax.jit(wann_search.forward)(g, -0.5, x),
                               rtol=1e-5, atol=1e-6)


def test_mutations_keep_genomes_feed_forward_and_valid():
    rng = np.random.default_rng(2)
    g = wann_search.unstack(wann_search.init_population(rng, 1, 10, 6, 3, 0.2))[0]
    seen = set()
    for _ in range(300):
        op = wann_search.MUTATIONS[rng.integers(len(wann_search.MUTATIONS))]
        child = getattr(wann_search, f"mutate_{op}")(g, rng)
        if child is None:
            if op == "insert_node":
                assert wann_search.n_hidden_used(g) == 6   # only when every slot is taken
            continue
        wann_search.check_genome(child)                   # feed-forward, compact, states valid
        seen.add(op)
        disabled = lambda x: int((x["in_conn"] == wann_search.DISABLED).sum()  # noqa: E731
                                 + (x["hid_conn"] == wann_search.DISABLED).sum())
        if op == "insert_node":
            assert wann_search.n_connections(child) == wann_search.n_connections(g) + 1
            assert disabled(child) == disabled(g) + 1
            assert wann_search.n_hidden_used(child) == wann_search.n_hidden_used(g) + 1
        elif op == "add_connection":
            assert wann_search.n_connections(child) == wann_search.n_connections(g) + 1
        elif op == "reenable":
            assert disabled(child) == disabled(g) - 1
        else:
            assert (child["act"] != g["act"]).sum() == 1
        g = child
    assert seen == set(wann_search.MUTATIONS)
    assert wann_search.n_hidden_used(g) == 6


def test_insert_node_puts_new_node_on_the_path():
    """Splitting src->dst with a linear new node turns w*a into w*(w*a)."""
    g = wann_search.empty_genome(2, 3, 1)
    g["in_conn"][0, 3] = wann_search.ON                      # input 0 -> output
    rng = np.random.default_rng(0)
    child = wann_search.mutate_insert_node(g, rng)
    child["act"][0] = wann_search.LINEAR
    x = jnp.asarray([[0.7, 0.2]], jnp.float32)
    assert float(wann_search.forward(child, 2.0, x)[0, 0]) == pytest.approx(4 * 0.7, rel=1e-6)
    # Now input 1 -> h0 -> output; split one of those two: a three-connection chain.
    child["in_conn"][0, 0] = wann_search.DISABLED
    child["in_conn"][1, 0] = wann_search.ON
    child2 = wann_search.mutate_insert_node(child, np.random.default_rng(5))
    wann_search.check_genome(child2)
    child2["act"][:2] = wann_search.LINEAR
    got = np.asarray(wann_search.forward(child2, 0.5, x))
    assert float(got[0, 0]) == pytest.approx(0.5 ** 3 * 0.2, rel=1e-6)
    np.testing.assert_allclose(got, graph_eval(child2, 0.5, np.asarray(x)), rtol=1e-6)


def test_pareto_ranking_hand_example():
    #              A       B       C       D       E         F
    obj = np.array([[3, 1], [1, 3], [2, 2], [1, 1], [.5, .5], [2, .5]])
    front = wann_search.nondominated_fronts(obj)
    np.testing.assert_array_equal(front, [0, 0, 0, 1, 2, 1])
    crowd = wann_search.crowding_distance(obj, front)
    assert np.isinf(crowd[[0, 1]]).all() and np.isfinite(crowd[2])
    rank = wann_search.pareto_rank(obj)
    assert set(rank[[0, 1]]) == {0, 1} and rank[2] == 2
    assert set(rank[[3, 5]]) == {3, 4} and rank[4] == 5
    # Objective alternation: X has fewer connections, Y a better best weight, same mean.
    fit = np.array([[0.6, 0.6], [0.3, 0.9]])
    conns = np.array([3, 10])
    r1, o1 = wann_search.rank_population(fit, conns, np.random.default_rng(0), 1.0)
    r0, o0 = wann_search.rank_population(fit, conns, np.random.default_rng(0), 0.0)
    assert o1 == "connections" and list(r1) == [0, 1]
    assert o0 == "max" and list(r0) == [1, 0]


def test_population_vmapped_equals_looped():
    rng = np.random.default_rng(3)
    genomes = ([random_genome(rng, n_hidden=12, max_used=5) for _ in range(5)]
               + [mutated_genome(rng, steps=12, n_hidden=12) for _ in range(4)])
    pop = wann_search.stack(genomes)
    assert wann_search.hidden_bucket(pop["node_on"].sum(1).max(), 12) < 12   # truncation is exercised
    x = rng.uniform(0, 1, (32, 7)).astype(np.float32)
    y = rng.integers(0, 4, 32).astype(np.int32)
    w = np.asarray(wann_search.SHARED_WEIGHTS, np.float32)
    loglik, acc = wann_search.evaluate_population(pop, w, x, y, chunk=4)   # chunks + padding + truncation
    one = jax.jit(lambda g, wi: wann_search.scores(wann_search.forward(g, wi, jnp.asarray(x)), jnp.asarray(y)))
    for p, g in enumerate(genomes):
        for i, wi in enumerate(w):
            ll, a = one(g, wi)
            np.testing.assert_allclose(loglik[p, i], ll, rtol=1e-5, atol=1e-5)
            assert acc[p, i] == pytest.approx(float(a))


def test_next_generation_elites_and_validity():
    rng = np.random.default_rng(4)
    pop = wann_search.init_population(rng, 10, 7, 4, 3, 0.3)
    fit = rng.random((10, 6))
    probs = dict(zip(wann_search.MUTATIONS, (0.5, 0.25, 0.2, 0.05)))
    new, info = wann_search.next_generation(pop, fit, rng, p_connection_objective=0.0, elite_ratio=0.2,
                                            cull_ratio=0.2, tournament=3, mutation_probs=probs)
    rank = wann_search.pareto_rank(np.stack([fit.mean(1), fit.max(1)], 1))
    for slot, i in enumerate(np.argsort(rank)[:2]):   # elites copied unchanged, in rank order
        for k in wann_search.KEYS:
            np.testing.assert_array_equal(new[k][slot], pop[k][i])
    assert sum(info["mutations"].values()) == 8
    for g in wann_search.unstack(new):
        wann_search.check_genome(g)


def test_area_downsample_and_deskew():
    img = np.random.default_rng(5).random((3, 28, 28)).astype(np.float32)
    small = wann_search.area_downsample(img, 16)
    assert small.shape == (3, 16, 16)
    np.testing.assert_allclose(small.mean((1, 2)), img.mean((1, 2)), rtol=1e-5)
    np.testing.assert_allclose(wann_search.area_downsample(img, 14),
                               img.reshape(3, 14, 2, 14, 2).mean((2, 4)), rtol=1e-5)
    bar = np.zeros((1, 28, 28), np.float32)            # a slanted stroke
    for r in range(4, 24):
        bar[0, r, 8 + r // 2: 11 + r // 2] = 1.0
    straight = wann_search.deskew(bar)[0]
    cols = np.arange(28)
    centre = [(straight[r] * cols).sum() / straight[r].sum() for r in range(4, 24)]
    assert np.ptp(centre) < 1.5                         # was 10 columns before
    x = wann_search.prepare_inputs(bar[..., None] / 0.3081 - 0.1307 / 0.3081, 16, True, True)
    assert x.shape == (1, 257) and x[0, -1] == 1.0 and 0 <= x.min() and x.max() <= 1


def test_ensemble_vote():
    logits = np.zeros((3, 2, 3))                      # voters x samples x classes
    logits[0, 0, 2] = logits[1, 0, 2] = 1.0           # sample 0: two votes for 2 ...
    logits[2, 0, 0] = 10.0                            # ... beat one confident vote for 0
    logits[0, 1, 0], logits[1, 1, 1], logits[2, 1, 2] = 0.5, 5.0, 0.2  # one vote each:
    np.testing.assert_array_equal(wann_search.ensemble_vote(logits), [2, 1])   # mean probability decides


def test_tuning_individual_weights_learns(synthetic):
    """A fully connected input->output genome with one shared weight is at chance
    (every logit equal); Adam on individual weights makes it a linear classifier."""
    x = wann_search.prepare_inputs(synthetic.train_x, 16, False, True)
    g = wann_search.empty_genome(x.shape[1], 0, 10)
    g["in_conn"][:] = wann_search.ON
    params, losses = wann_search.tune_weights(g, jnp.float32(0.1), jnp.asarray(x),
                                              jnp.asarray(synthetic.train_y), jax.random.key(0),
                                              jnp.float32(1e-2), steps=100, batch_size=64)
    assert float(losses[0]) == pytest.approx(np.log(10), rel=1e-4)
    assert float(losses[-10:].mean()) < 0.5 * float(losses[0])
    xv = wann_search.prepare_inputs(synthetic.val_x, 16, False, True)
    assert wann_search.weighted_accuracy(g, params, xv, synthetic.val_y) > 0.8


def quick_config(**evolution):
    from experiments import wann as exp
    cfg = exp.get_config(quick=True)
    cfg.data.source = "synthetic"
    cfg.data.synthetic_size = 700
    cfg.data.val_size = 200
    cfg.tune.steps = 20
    cfg.evolution.update(evolution)
    return exp, cfg


def test_quick_experiment_end_to_end(tmp_path):
    exp, cfg = quick_config()
    summary = exp.run(cfg, str(tmp_path))
    for name in ("config.json", "metrics.jsonl", "summary.json", "summary.md", "population.npz",
                 "champion.npz", "topology.png", "accuracy_vs_weight.png", "generations.png"):
        assert (tmp_path / name).exists(), name
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in rows] == list(range(1, cfg.evolution.generations + 1))
    s = json.loads((tmp_path / "summary.json").read_text())
    for key in ("random_weight_test_acc_mean", "random_weight_test_acc_sd", "best_weight",
                "best_weight_test_acc", "ensemble_test_acc", "tuned_test_acc", "connections"):
        assert s[key] is not None, key
    assert s["connections"] == summary["connections"] > 0
    # Recomputed from champion.npz by the independent graph evaluator: the best
    # shared weight is the validation argmax of the grid, and its test accuracy,
    # the per-shared-weight accuracies and the ensemble's are what the summary says.
    from subspace_jax import data
    with np.load(tmp_path / "champion.npz") as f:
        genome = {k: f[k] for k in f.files if not k.startswith("tuned_")}
    ds = data.from_config(cfg.data)
    prep = lambda x: wann_search.prepare_inputs(x, cfg.input.resolution, cfg.input.deskew,  # noqa: E731
                                                cfg.input.bias, data.MEAN, data.STD)
    x_val, x_te = prep(ds.val_x), prep(ds.test_x)
    acc = lambda w, x, y: float((graph_eval(genome, w, x).argmax(1) == y).mean())  # noqa: E731
    assert s["best_weight_val_acc"] == max(s["val_acc_grid"])
    assert acc(s["best_weight"], x_val, ds.val_y) == pytest.approx(s["best_weight_val_acc"])
    assert acc(s["best_weight"], x_te, ds.test_y) == pytest.approx(s["best_weight_test_acc"])
    shared = cfg.evolution.shared_weights
    for w in shared:
        assert acc(w, x_te, ds.test_y) == pytest.approx(s["shared_weight_test_acc"][str(float(w))])
    votes = wann_search.ensemble_vote(np.stack([graph_eval(genome, w, x_te) for w in shared]))
    assert float((votes == ds.test_y).mean()) == pytest.approx(s["ensemble_test_acc"])
    assert "Gaier & Ha" in (tmp_path / "summary.md").read_text()


def test_resume_skips_finished_generations(tmp_path, capsys):
    exp, short = quick_config(generations=2, checkpoint_every=1)
    _, full = quick_config(generations=4, checkpoint_every=1)
    exp.run(short, str(tmp_path / "a"))
    capsys.readouterr()
    exp.run(full, str(tmp_path / "a"))                 # continues at generation 3
    out = capsys.readouterr().out
    assert "resumed after generation 2" in out and "[wann 1/4]" not in out and "[wann 3/4]" in out
    exp.run(full, str(tmp_path / "b"))                 # uninterrupted reference
    strip = lambda p: [{k: v for k, v in json.loads(line).items() if k != "seconds"}  # noqa: E731
                       for line in (p / "metrics.jsonl").read_text().splitlines()]
    assert strip(tmp_path / "a") == strip(tmp_path / "b")
    before = (tmp_path / "a" / "metrics.jsonl").read_text()
    capsys.readouterr()
    exp.run(full, str(tmp_path / "a"))                 # all finished: no generation recomputed
    out = capsys.readouterr().out
    assert "resumed after generation 4" in out and "[wann" not in out
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == before
    _, other = quick_config(generations=4, population=8)
    with pytest.raises(ValueError, match="different config"):
        exp.run(other, str(tmp_path / "a"))
