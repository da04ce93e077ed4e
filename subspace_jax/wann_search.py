"""Weight-agnostic networks (Gaier & Ha 2019): fixed-size genomes, one jitted forward.

A genome is a dict of fixed-shape NumPy arrays over a feed-forward node order
``inputs (I) < hidden (H) < outputs (O)``, with ``K = H + O`` non-input nodes:

    in_conn   int8  I x K   state of input -> hidden/output connections
    hid_conn  int8  H x K   state of hidden j -> node k; only k > j (k < H) or outputs
    act       int32 K       activation id of every non-input node (outputs: linear)
    node_on   bool  H       hidden node present; present nodes are always the first ones

Connection states are ``OFF`` (absent), ``ON`` and ``DISABLED`` (NEAT's record of
a connection split by "insert node"; "re-enable" turns it back on). Index order
is a topological order by construction, so evaluation visits hidden nodes
0..H-1 with a masked mat-vec each (``lax.scan``); there are no output->output
connections, so all outputs are one matmul at the end.

Activations follow the paper's code: sin and cos take ``pi * x``, sigmoid is
``(tanh(x/2) + 1) / 2``, Gaussian ``exp(-x^2/2)`` and "inverse" is ``-x``
(negation, not 1/x: that is what the reference code does and it needs no
guard against division by zero). Pre-activations are clipped to +-``CLIP`` so
that deep linear chains with ``w = 2`` stay finite in float32.

The last input column is a constant-1 bias when ``prepare_inputs(bias=True)``.

Evolution (mutation, Pareto ranking, tournament selection) runs on the host
with a ``numpy.random.Generator``; evaluation is vmapped over the population
and the shared weight values (``population_scores``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from subspace_jax.data import MNIST_CLASSES

ACTIVATIONS = ("linear", "sigmoid", "tanh", "gaussian", "sin", "cos", "abs", "relu", "inverse")
LINEAR = 0
OFF, ON, DISABLED = 0, 1, 2
SHARED_WEIGHTS = (-2.0, -1.0, -0.5, 0.5, 1.0, 2.0)
CLIP = 1e4
KEYS = ("in_conn", "hid_conn", "act", "node_on")
MUTATIONS = ("activation", "insert_node", "add_connection", "reenable")
_SIGMOID, _COS = ACTIVATIONS.index("sigmoid"), ACTIVATIONS.index("cos")


# ------------------------------------------------------------------ inputs
def area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """n_out x n_in weights of exact area averaging (rows sum to 1)."""
    s = n_in / n_out
    lo = np.maximum(np.arange(n_out)[:, None] * s, np.arange(n_in)[None, :])
    hi = np.minimum((np.arange(n_out)[:, None] + 1) * s, np.arange(n_in)[None, :] + 1)
    return np.maximum(hi - lo, 0.0) / s


def area_downsample(img_NxRxC: np.ndarray, size: int) -> np.ndarray:
    """Area-average resize to size x size (each output pixel is the mean over
    the input area it covers, fractional pixels weighted by overlap)."""
    r = area_matrix(img_NxRxC.shape[1], size)
    c = area_matrix(img_NxRxC.shape[2], size)
    return (r @ img_NxRxC @ c.T).astype(np.float32)


def deskew(img_NxRxC: np.ndarray, chunk: int = 10_000) -> np.ndarray:
    """Removes the horizontal shear estimated from image moments.

    With intensity-weighted row/column means (mr, mc), alpha = cov(r, c) / var(r)
    and out(r, c) = in(r, c + alpha * (r - mr)), linearly interpolated along the
    row (zero outside). Digits lean by a shear, so this straightens them.
    """
    n, rows, cols = img_NxRxC.shape
    out = np.empty_like(img_NxRxC, dtype=np.float32)
    r = np.arange(rows, dtype=np.float64)[None, :, None]
    c = np.arange(cols, dtype=np.float64)[None, None, :]
    for s in range(0, n, chunk):
        img = img_NxRxC[s:s + chunk].astype(np.float64)
        mass = img.sum((1, 2), keepdims=True) + 1e-12
        mr = (img * r).sum((1, 2), keepdims=True) / mass
        mc = (img * c).sum((1, 2), keepdims=True) / mass
        var_r = (img * (r - mr) ** 2).sum((1, 2), keepdims=True) / mass
        cov = (img * (r - mr) * (c - mc)).sum((1, 2), keepdims=True) / mass
        alpha = np.where(var_r > 1e-2, cov / np.maximum(var_r, 1e-2), 0.0)
        src = c + alpha * (r - mr)                       # N x R x C source columns
        c0 = np.floor(src).astype(np.int64)
        frac = src - c0
        value = np.zeros_like(src)
        for offset, weight in ((0, 1.0 - frac), (1, frac)):
            idx = c0 + offset
            inside = (idx >= 0) & (idx < cols)
            gathered = np.take_along_axis(img, np.clip(idx, 0, cols - 1), axis=2)
            value += np.where(inside, weight * gathered, 0.0)
        out[s:s + chunk] = value
    return out


def prepare_inputs(x_NxRxCx1: np.ndarray, resolution: int = 16, deskew_images: bool = True,
                   bias: bool = True, mean: float = 0.1307, std: float = 0.3081) -> np.ndarray:
    """Standardised MNIST images -> N x I float32 intensities in [0, 1].

    Undoes the standardisation (background 0, so unconnected-looking blank
    pixels add nothing with a shared weight), optionally deskews at full
    resolution, area-averages to ``resolution`` and appends a bias column of 1s.
    """
    img = np.clip(x_NxRxCx1[..., 0] * std + mean, 0.0, 1.0).astype(np.float32)
    if deskew_images:
        img = deskew(img)
    if resolution != img.shape[1]:
        img = area_downsample(img, resolution)
    flat = img.reshape(len(img), -1)
    if bias:
        flat = np.concatenate([flat, np.ones((len(flat), 1), np.float32)], axis=1)
    return np.ascontiguousarray(flat, np.float32)


# ---------------------------------------------------------------- genomes
def empty_genome(n_in: int, n_hidden: int, n_out: int = MNIST_CLASSES) -> dict[str, np.ndarray]:
    k = n_hidden + n_out
    return {"in_conn": np.zeros((n_in, k), np.int8), "hid_conn": np.zeros((n_hidden, k), np.int8),
            "act": np.full(k, LINEAR, np.int32), "node_on": np.zeros(n_hidden, bool)}


def sizes(genome) -> tuple[int, int, int]:
    """(I, H, O) of a single genome."""
    n_in, k = genome["in_conn"].shape
    n_hidden = genome["hid_conn"].shape[0]
    return n_in, n_hidden, k - n_hidden


def n_connections(genome) -> int:
    return int((genome["in_conn"] == ON).sum() + (genome["hid_conn"] == ON).sum())


def n_hidden_used(genome) -> int:
    return int(genome["node_on"].sum())


def copy_genome(genome) -> dict[str, np.ndarray]:
    return {k: np.array(genome[k]) for k in KEYS}


def stack(genomes) -> dict[str, np.ndarray]:
    return {k: np.stack([g[k] for g in genomes]) for k in KEYS}


def unstack(pop) -> list[dict[str, np.ndarray]]:
    return [{k: np.array(pop[k][i]) for k in KEYS} for i in range(len(pop["act"]))]


def valid_sources(genome) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks of allowed connections (same shapes as in_conn, hid_conn):
    into present hidden nodes and outputs, from inputs or *earlier* present
    hidden nodes."""
    n_in, n_hidden, n_out = sizes(genome)
    on = genome["node_on"]
    dst_ok_K = np.concatenate([on, np.ones(n_out, bool)])
    in_ok = np.broadcast_to(dst_ok_K, (n_in, n_hidden + n_out))
    later = np.concatenate([np.triu(np.ones((n_hidden, n_hidden), bool), 1),
                            np.ones((n_hidden, n_out), bool)], axis=1)
    hid_ok = later & on[:, None] & dst_ok_K[None, :]
    return in_ok, hid_ok


def check_genome(genome) -> None:
    """Raises ValueError when a genome breaks an invariant."""
    n_in, n_hidden, n_out = sizes(genome)
    if genome["act"].shape != (n_hidden + n_out,) or genome["node_on"].shape != (n_hidden,):
        raise ValueError("act / node_on shapes do not match the connection arrays")
    for name in ("in_conn", "hid_conn"):
        if not np.isin(genome[name], (OFF, ON, DISABLED)).all():
            raise ValueError(f"{name} holds a state other than OFF/ON/DISABLED")
    in_ok, hid_ok = valid_sources(genome)
    if (genome["in_conn"][~in_ok] != OFF).any() or (genome["hid_conn"][~hid_ok] != OFF).any():
        raise ValueError("a connection is not feed-forward or touches an absent node")
    on = genome["node_on"]
    if on.sum() and not on[:on.sum()].all():
        raise ValueError("present hidden nodes are not the first ones")
    if not ((genome["act"] >= 0) & (genome["act"] < len(ACTIVATIONS))).all():
        raise ValueError("activation id out of range")
    if (genome["act"][n_hidden:] != LINEAR).any():
        raise ValueError("output nodes must be linear")


def init_population(rng: np.random.Generator, pop_size: int, n_in: int, n_hidden: int,
                    n_out: int = MNIST_CLASSES, p_enable: float = 0.05) -> dict[str, np.ndarray]:
    """Minimal networks: no hidden nodes, each input->output connection on with
    probability ``p_enable`` (at least one per genome so every mutation can act)."""
    genomes = []
    for _ in range(pop_size):
        g = empty_genome(n_in, n_hidden, n_out)
        on = rng.random((n_in, n_out)) < p_enable
        if not on.any():
            on[rng.integers(n_in), rng.integers(n_out)] = True
        g["in_conn"][:, n_hidden:] = np.where(on, ON, OFF)
        genomes.append(g)
    return stack(genomes)


# --------------------------------------------------------------- mutations
def _pick(rng, mask):
    """A uniformly random index tuple where ``mask`` is true, or None."""
    idx = np.flatnonzero(mask)
    if not len(idx):
        return None
    return np.unravel_index(rng.choice(idx), mask.shape)


def permute_hidden(genome, perm_H: np.ndarray) -> dict[str, np.ndarray]:
    """Relabels hidden nodes: new node i is old node ``perm_H[i]``."""
    n_in, n_hidden, n_out = sizes(genome)
    perm_K = np.concatenate([perm_H, np.arange(n_hidden, n_hidden + n_out)])
    return {"in_conn": genome["in_conn"][:, perm_K],
            "hid_conn": genome["hid_conn"][perm_H][:, perm_K],
            "act": genome["act"][perm_K], "node_on": genome["node_on"][perm_H]}


def _set_conn(g, src: int, dst: int, state) -> None:
    """Sets connection src->dst; sources index inputs first, then hidden nodes."""
    n_in = g["in_conn"].shape[0]
    if src < n_in:
        g["in_conn"][src, dst] = state
    else:
        g["hid_conn"][src - n_in, dst] = state


def mutate_add_connection(genome, rng):
    in_ok, hid_ok = valid_sources(genome)
    free = np.concatenate([in_ok & (genome["in_conn"] == OFF),
                           hid_ok & (genome["hid_conn"] == OFF)])
    pick = _pick(rng, free)
    if pick is None:
        return None
    g = copy_genome(genome)
    _set_conn(g, *pick, ON)
    return g


def mutate_insert_node(genome, rng):
    """Splits a random ON connection src->dst into src->new->dst (the old one is
    DISABLED). The new node takes the first free slot, then is moved just before
    ``dst`` (or after all present nodes when dst is an output) so that index
    order stays topological; present nodes keep their relative order."""
    n_in, n_hidden, n_out = sizes(genome)
    used = n_hidden_used(genome)
    if used >= n_hidden:
        return None
    pick = _pick(rng, np.concatenate([genome["in_conn"] == ON, genome["hid_conn"] == ON]))
    if pick is None:
        return None
    src, dst = pick
    g = copy_genome(genome)
    _set_conn(g, src, dst, DISABLED)
    new = used
    g["node_on"][new] = True
    g["act"][new] = rng.integers(len(ACTIVATIONS))
    pos = dst if dst < n_hidden else used          # dst hidden: right before it
    perm = np.concatenate([np.arange(pos), [new], np.arange(pos, new),
                           np.arange(new + 1, n_hidden)]).astype(np.int64)
    g = permute_hidden(g, perm)
    dst_new = dst + 1 if dst < n_hidden else dst   # a hidden dst moved one place down
    _set_conn(g, src, pos, ON)                     # src < pos, unmoved
    g["hid_conn"][pos, dst_new] = ON
    return g


def mutate_activation(genome, rng):
    used = n_hidden_used(genome)
    if used == 0:
        return None
    g = copy_genome(genome)
    node = rng.integers(used)
    choices = [a for a in range(len(ACTIVATIONS)) if a != g["act"][node]]
    g["act"][node] = rng.choice(choices)
    return g


def mutate_reenable(genome, rng):
    pick = _pick(rng, np.concatenate([genome["in_conn"] == DISABLED,
                                      genome["hid_conn"] == DISABLED]))
    if pick is None:
        return None
    g = copy_genome(genome)
    _set_conn(g, *pick, ON)
    return g


_MUTATE = {"activation": mutate_activation, "insert_node": mutate_insert_node,
           "add_connection": mutate_add_connection, "reenable": mutate_reenable}


def mutate(genome, rng, probs) -> tuple[dict[str, np.ndarray], str]:
    """One mutation drawn with ``probs`` (dict over MUTATIONS); when the drawn one
    cannot act (no free slot, nothing disabled, ...) the others are tried in
    random order. Returns (child, name of the mutation applied or 'none')."""
    p = np.asarray([probs[m] for m in MUTATIONS], float)
    first = rng.choice(len(MUTATIONS), p=p / p.sum())
    rest = [i for i in rng.permutation(len(MUTATIONS)) if i != first]
    for i in [first, *rest]:
        child = _MUTATE[MUTATIONS[i]](genome, rng)
        if child is not None:
            return child, MUTATIONS[i]
    return copy_genome(genome), "none"


# ------------------------------------------------------------ Pareto ranking
def nondominated_fronts(obj_PxM: np.ndarray) -> np.ndarray:
    """Front index per individual (0 = non-dominated), all objectives maximised."""
    obj = np.asarray(obj_PxM, float)
    geq = (obj[:, None, :] >= obj[None, :, :]).all(-1)
    gt = (obj[:, None, :] > obj[None, :, :]).any(-1)
    dom_PxP = geq & gt                                  # [i, j]: i dominates j
    n_dominators = dom_PxP.sum(0)
    front = np.full(len(obj), -1)
    current = np.flatnonzero(n_dominators == 0)
    f = 0
    while len(current):
        front[current] = f
        n_dominators = n_dominators - dom_PxP[current].sum(0)
        n_dominators[front >= 0] = -1                   # assigned: never picked again
        current = np.flatnonzero(n_dominators == 0)
        f += 1
    return front


def crowding_distance(obj_PxM: np.ndarray, front_P: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance within each front (boundaries get inf)."""
    obj = np.asarray(obj_PxM, float)
    dist = np.zeros(len(obj))
    for f in np.unique(front_P):
        members = np.flatnonzero(front_P == f)
        for m in range(obj.shape[1]):
            vals = obj[members, m]
            order = np.argsort(vals, kind="stable")
            span = vals[order[-1]] - vals[order[0]]
            d = np.zeros(len(members))
            d[order[0]] = d[order[-1]] = np.inf
            if len(members) > 2 and span > 0:
                d[order[1:-1]] = (vals[order[2:]] - vals[order[:-2]]) / span
            dist[members] += d
    return dist


def pareto_rank(obj_PxM: np.ndarray) -> np.ndarray:
    """0 = best: by front, then larger crowding distance, then index (deterministic)."""
    front = nondominated_fronts(obj_PxM)
    crowd = crowding_distance(obj_PxM, front)
    order = np.lexsort((np.arange(len(front)), -crowd, front))
    rank = np.empty(len(front), int)
    rank[order] = np.arange(len(front))
    return rank


def rank_population(fitness_PxW: np.ndarray, conns_P: np.ndarray, rng,
                    p_connection_objective: float) -> tuple[np.ndarray, str]:
    """The paper's alternation: with probability ``p_connection_objective`` rank
    on (mean fitness, fewer connections), otherwise on (mean, max fitness)."""
    mean, best = fitness_PxW.mean(1), fitness_PxW.max(1)
    if rng.random() < p_connection_objective:
        return pareto_rank(np.stack([mean, -np.maximum(conns_P, 1)], 1)), "connections"
    return pareto_rank(np.stack([mean, best], 1)), "max"


def next_generation(pop, fitness_PxW, rng, *, p_connection_objective: float,
                    elite_ratio: float, cull_ratio: float, tournament: int, mutation_probs):
    """Rank, keep the elite unchanged, fill the rest with mutated tournament
    winners drawn from the population minus its culled worst part."""
    genomes = unstack(pop)
    conns = np.asarray([n_connections(g) for g in genomes])
    rank, objective = rank_population(fitness_PxW, conns, rng, p_connection_objective)
    order = np.argsort(rank)
    n = len(genomes)
    n_elite = int(round(elite_ratio * n))
    pool = order[:max(1, n - int(round(cull_ratio * n)))]
    children = [copy_genome(genomes[i]) for i in order[:n_elite]]
    counts = dict.fromkeys((*MUTATIONS, "none"), 0)
    for _ in range(n - n_elite):
        entrants = rng.choice(pool, size=min(tournament, len(pool)), replace=False)
        parent = entrants[np.argmin(rank[entrants])]
        child, name = mutate(genomes[parent], rng, mutation_probs)
        counts[name] += 1
        children.append(child)
    return stack(children), {"objective": objective, "mutations": counts}


# --------------------------------------------------------------- evaluation
def _apply_act(act_id, pre):
    # Under vmap the id is per genome, so every branch is computed anyway; sharing
    # tanh (tanh, sigmoid) and sin (sin, cos = sin shifted by pi/2) leaves three
    # transcendentals instead of five.
    t = jnp.tanh(jnp.where(act_id == _SIGMOID, 0.5, 1.0) * pre)
    s = jnp.sin(jnp.pi * pre + jnp.where(act_id == _COS, 0.5 * jnp.pi, 0.0))
    cases = (pre, 0.5 * (t + 1.0), t, jnp.exp(-0.5 * pre * pre), s, s, jnp.abs(pre),
             jnp.maximum(pre, 0.0), -pre)
    return lax.select_n(jnp.clip(act_id, 0, len(cases) - 1), *cases)


def _propagate(z_BxK, wh_HxK, act_K, on_H, scale):
    """Visits hidden nodes in index order, then all outputs at once.

    z: drive from the inputs into every non-input node (already weighted);
    wh: hidden -> later node weights (0 where there is no connection);
    scale: multiplies every pre-activation (the shared weight, or 1).
    """
    n_hidden = wh_HxK.shape[0]
    h_BxH = jnp.zeros((z_BxK.shape[0], n_hidden), z_BxK.dtype)
    if n_hidden:
        def node(h_BxH, k):
            pre_B = scale * (z_BxK[:, k] + h_BxH @ wh_HxK[:, k])
            v_B = _apply_act(act_K[k], jnp.clip(pre_B, -CLIP, CLIP))
            # Absent nodes output 0 (act(0) is 1 for gaussian and cos).
            return h_BxH.at[:, k].set(jnp.where(on_H[k], v_B, 0.0)), None

        h_BxH, _ = lax.scan(node, h_BxH, jnp.arange(n_hidden))
    pre_BxO = jnp.clip(scale * (z_BxK[:, n_hidden:] + h_BxH @ wh_HxK[:, n_hidden:]), -CLIP, CLIP)
    return jax.vmap(_apply_act, in_axes=(0, 1), out_axes=1)(act_K[n_hidden:], pre_BxO)


def forward(genome, shared_weight, x_BxI):
    """Output-node values B x O of one genome with every connection = shared_weight."""
    genome = jax.tree.map(jnp.asarray, genome)  # NumPy genomes work outside jit too
    a_in_IxK = (genome["in_conn"] == ON).astype(x_BxI.dtype)
    a_hid_HxK = (genome["hid_conn"] == ON).astype(x_BxI.dtype) * genome["node_on"][:, None]
    # The input matmul comes before the weight: vmapped over weights, it runs once.
    z_BxK = x_BxI @ a_in_IxK
    return _propagate(z_BxK, a_hid_HxK, genome["act"], genome["node_on"], shared_weight)


def forward_weighted(genome, params, x_BxI):
    """Like ``forward`` with individual weights ``params = {'in': IxK, 'hid': HxK}``
    (only entries of ON connections matter)."""
    genome = jax.tree.map(jnp.asarray, genome)
    a_in_IxK = (genome["in_conn"] == ON).astype(x_BxI.dtype)
    a_hid_HxK = (genome["hid_conn"] == ON).astype(x_BxI.dtype) * genome["node_on"][:, None]
    z_BxK = x_BxI @ (a_in_IxK * params["in"])
    return _propagate(z_BxK, a_hid_HxK * params["hid"], genome["act"], genome["node_on"], 1.0)


def scores(logits_BxO, y_B):
    """(mean log-likelihood of the softmax, accuracy) of one batch."""
    logp_BxO = jax.nn.log_softmax(logits_BxO)
    loglik = jnp.take_along_axis(logp_BxO, y_B[:, None], 1).mean()
    return loglik, (jnp.argmax(logits_BxO, -1) == y_B).mean()


@jax.jit
def population_scores(pop, weights_W, x_BxI, y_B):
    """(loglik, accuracy), each P x W: every genome at every shared weight."""
    def one(genome, w):
        return scores(forward(genome, w, x_BxI), y_B)

    over_weights = jax.vmap(one, in_axes=(None, 0))
    return jax.vmap(over_weights, in_axes=(0, None))(pop, weights_W)


@jax.jit
def _logits_over_weights(genome, weights_W, x_BxI):
    return jax.vmap(forward, in_axes=(None, 0, None))(genome, weights_W, x_BxI)


def truncate_hidden(pop, n_keep: int):
    """Drops hidden slots >= n_keep (all absent when n_keep >= every genome's
    used count), so evaluation cost follows the networks' actual size."""
    n_hidden = pop["node_on"].shape[-1]
    cols = np.concatenate([np.arange(n_keep), np.arange(n_hidden, pop["act"].shape[-1])])
    return {"in_conn": pop["in_conn"][..., cols], "hid_conn": pop["hid_conn"][..., :n_keep, :][..., cols],
            "act": pop["act"][..., cols], "node_on": pop["node_on"][..., :n_keep]}


def hidden_bucket(n_used: int, n_hidden: int, step: int = 8) -> int:
    """Rounds the largest used hidden count up to a multiple of ``step`` so the
    number of distinct compiled shapes stays small."""
    return min(n_hidden, -(-n_used // step) * step)


def evaluate_population(pop, weights_W, x_BxI, y_B, chunk: int = 64):
    """NumPy (loglik, accuracy), each P x W, in population chunks of a fixed size."""
    n = len(pop["act"])
    used = int(pop["node_on"].sum(-1).max()) if n else 0
    small = truncate_hidden(pop, hidden_bucket(used, pop["node_on"].shape[-1]))
    chunk = min(chunk, n)
    pad = -n % chunk
    if pad:  # repeat the last genome so every call has the same shape
        small = {k: np.concatenate([v, np.repeat(v[-1:], pad, 0)]) for k, v in small.items()}
    w = jnp.asarray(weights_W, jnp.float32)
    x, y = jnp.asarray(x_BxI), jnp.asarray(y_B)
    outs = [population_scores({k: v[s:s + chunk] for k, v in small.items()}, w, x, y)
            for s in range(0, n + pad, chunk)]
    loglik = np.concatenate([np.asarray(o[0]) for o in outs])[:n]
    acc = np.concatenate([np.asarray(o[1]) for o in outs])[:n]
    return loglik, acc


def genome_logits(genome, weights_W, x_NxI, chunk: int = 2000) -> np.ndarray:
    """W x N x O output values of one genome at each weight, in row chunks."""
    g = truncate_hidden(genome, n_hidden_used(genome))
    n = len(x_NxI)
    chunk = min(chunk, n)
    pad = -n % chunk
    x = np.concatenate([x_NxI, np.zeros((pad, x_NxI.shape[1]), x_NxI.dtype)]) if pad else x_NxI
    w = jnp.asarray(weights_W, jnp.float32)
    parts = [np.asarray(_logits_over_weights(g, w, jnp.asarray(x[s:s + chunk])))
             for s in range(0, n + pad, chunk)]
    return np.concatenate(parts, axis=1)[:, :n]


def accuracy_per_weight(logits_WxNxO: np.ndarray, y_N: np.ndarray) -> np.ndarray:
    return (logits_WxNxO.argmax(-1) == y_N[None]).mean(-1)


def ensemble_vote(logits_WxNxO: np.ndarray) -> np.ndarray:
    """Majority vote of the per-weight predictions; ties go to the class with
    the larger mean softmax probability among the voters."""
    n_out = logits_WxNxO.shape[-1]
    votes_NxO = np.eye(n_out)[logits_WxNxO.argmax(-1)].sum(0)
    z = logits_WxNxO - logits_WxNxO.max(-1, keepdims=True)
    prob_NxO = (np.exp(z) / np.exp(z).sum(-1, keepdims=True)).mean(0)
    return (votes_NxO + 1e-3 * prob_NxO).argmax(-1)


# ------------------------------------------------- individual weight tuning
@functools.partial(jax.jit, static_argnames=("steps", "batch_size"))
def tune_weights(genome, w0, x_NxI, y_N, key, learning_rate, *, steps: int, batch_size: int):
    """Adam on the cross-entropy, every ON connection its own weight, starting
    from the shared weight ``w0``. Returns (params, loss per step)."""
    params = {"in": jnp.full(genome["in_conn"].shape, w0, x_NxI.dtype),
              "hid": jnp.full(genome["hid_conn"].shape, w0, x_NxI.dtype)}
    opt = optax.adam(learning_rate)

    def loss_fn(p, xb, yb):
        return -scores(forward_weighted(genome, p, xb), yb)[0]

    def step(carry, k):
        p, state = carry
        idx = jax.random.randint(k, (batch_size,), 0, x_NxI.shape[0])
        loss, grad = jax.value_and_grad(loss_fn)(p, x_NxI[idx], y_N[idx])
        updates, state = opt.update(grad, state, p)
        return (optax.apply_updates(p, updates), state), loss

    (params, _), losses = lax.scan(step, (params, opt.init(params)), jax.random.split(key, steps))
    return params, losses


@jax.jit
def _weighted_logits(genome, params, x_BxI):
    return forward_weighted(genome, params, x_BxI)


def weighted_accuracy(genome, params, x_NxI, y_N, chunk: int = 2000) -> float:
    correct = 0
    for s in range(0, len(x_NxI), chunk):
        logits = np.asarray(_weighted_logits(genome, params, jnp.asarray(x_NxI[s:s + chunk])))
        correct += int((logits.argmax(-1) == y_N[s:s + chunk]).sum())
    return correct / len(x_NxI)
