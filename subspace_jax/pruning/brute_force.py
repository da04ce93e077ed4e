"""Brute-force greedy pruning on the validation split (neural golf).

Neural golf asks for the fewest non-zero parameters at >= 98% (or 99%) MNIST
test accuracy, where weights, biases and PReLU slopes all count. So by
default *every* parameter is prunable (``prunable=None``; pass leaf names or
a ``(name, leaf) -> bool`` rule to restrict it, as in ``masks.layout``).

The rule: the split that chooses never decides. The validation split is cut
in two as ``train.validation_halves`` does (a fixed random split; the
choosing half is the one a fine-tuning ``train.make_run`` chooses its epoch on):

* the *choosing* half (``val_*`` in the history) ranks the candidates, says
  which are eligible, plans how many to remove and says whether fine-tuned
  weights are better;
* the *deciding* half (``decide_*``) chose nothing: it verifies each planned
  removal (the back-off), stops the pruning and carries the final claim
  "accuracy >= threshold + margin". A fine-tuned network is kept only if it
  is better on the choosing half AND still meets the requirement on the
  deciding half.

The caller scores the final network once on the test set.

One *pass*:

1. Candidates: for every alive prunable weight c, the choosing half's correct
   count and mean loss of the current network with c set to zero.
2. Ranking: higher accuracy first, then lower loss, then lower flat index
   (deterministic ties).
3. Eligible: candidates whose choosing-half accuracy stays >= ``threshold +
   margin``. If none is, pruning stops (``stop="threshold"``).
4. How many to remove, k: the cost of candidate c is the number of choosing
   images it loses, base - correct_c (negative if removing it helps). Take
   ranked eligible candidates while their summed positive costs fit in
   ``slack_use`` (default half) of the slack, base - required; at least 1 and
   at most ``max_fraction`` of the alive prunable weights (and
   ``max_remove``). k therefore shrinks as accuracy nears the threshold:
   e.g. with 50 images of slack a pass may take every free removal up to
   the cap, with 3 images of slack it takes the free ones plus one costing 1.
5. Verification with back-off, on the deciding half: costs do not add
   (removals interact), so the top k, ceil(k/2), ceil(k/4), ..., 1 together
   are evaluated in one vmapped call and the largest prefix whose deciding
   accuracy still meets ``threshold + margin`` is removed (among the
   prefixes the choosing half, which planned them, would keep too: a
   choice). If not even the top 1 does, pruning stops (``stop="refused"``):
   the choosing half would accept the removal, the half that chose nothing
   refuses it. So neither half's accuracy ever drops below ``threshold +
   margin``.
6. Optional fine-tuning (``finetune(theta_D, mask_D, step) -> theta_D``, e.g.
   ``make_finetune``: masked ``train.make_run``, a few epochs, its epoch
   chosen on the choosing half) after every ``finetune_every``-th pass. The
   fine-tuned weights are kept only if their choosing (accuracy, then loss)
   is better and their deciding accuracy still meets ``threshold + margin``;
   pruned weights stay exactly zero either way.

The margin, for the deciding half of the default 10,000 validation images
(n = 5,000) and the test split (10,000). The binomial sd of an accuracy near
p = 98% is sqrt(p (1 - p) / n) = 0.198% on 5,000 images and 0.140% on 10,000,
so a test score differs from a deciding score of the same network with sd
sqrt(0.198^2 + 0.140^2) = 0.243%, and even without any selection a one-sided
95% guarantee needs 1.645 x 0.243% = 0.40% (0.28% at 99%). What is left of
the selection: the deciding half ranks nothing, but every accepted removal
had to pass its gate (and the back-off takes the largest of ~7 prefixes that
passes), so the final network is the last one of a chain that was stopped
when the gate first refused: an optional-stopping effect. Its size is about
the sd of the *difference* between networks one removal apart on 5,000
images, sqrt(changed predictions) / 5,000: 0.06-0.14% for 10-50 changed
predictions; much smaller than ranking hundreds of candidates on the same
images, which on the previous protocol cost 0.50-0.68 points from
validation to test (golf seeds 0-2, README). ``MARGIN`` = 0.5% is 0.40% plus
0.1% for that; an estimate to be checked against the final test scores, not
a measured number. The price: half the images decide, so a claim is 1.4x
noisier than on all 10,000 (0.198% vs 0.140% sd at 98%), and ranking on
5,000 images confuses more near-tied candidates.

Cost. Scoring the candidates is one forward pass of the network over the
choosing half per alive prunable weight: 820 x 5,000 images per pass for
``golf_prelu`` (half of what scoring on all 10,000 cost). Two things make that affordable on a CPU:

* Candidates are vmapped in chunks of ``candidate_chunk`` (one compiled
  program per chunk shape, reused by every pass), scanning the validation
  images ``eval_chunk`` at a time so memory stays bounded (roughly
  candidate_chunk x eval_chunk x the largest activation).
* Candidates are grouped by layer (the leaves sharing a path prefix, e.g.
  ``conv1/{w,b,slope}``) and only that group's values are vmapped; the rest
  of the parameters are unbatched, so everything upstream of the layer is
  computed once per image chunk for all candidates instead of once per
  candidate. Zeroing a dense-layer weight then costs little more than that
  layer's matmul.

A pass also costs one vmapped evaluation of at most ``1 + ceil(log2
max_remove)`` networks (the verification) and, if enabled, the fine-tuning.
The number of passes is at least log(n_start / n_end) / -log(1 - max_fraction)
(while the slack is large), plus about one pass per removal once the slack
is used up; interactions cut it further: on golf_prelu after one epoch of
training, 64 planned removals with near-zero individual cost together lost
far more than the slack, and the back-off kept 4 per pass.

Measured on the previous protocol (candidates scored on all 10,000
validation images; golf_prelu, 820 params, trained 1 epoch to 93.9% validation
accuracy, defaults ``candidate_chunk=64``,
``eval_chunk=100``; this project's 2-core CPU shared with other jobs, load
average ~5, 2026-11-22): 12-15 s per pass once compiled, 19 s for the first
pass (six compilations of ~2 s). Per layer group: conv0 (72 candidates, each
the whole network) ~10 s, conv1 (190) ~4 s, conv2 (188) 0.6 s, dense0 (370)
1.3 s. Vmapping whole masks instead (every layer batched) took ~100 s per
pass on the same machine.

The comparison (``prune_along``): magnitude and OBD pruning (``scorers``)
along the same schedule of kept counts as the brute-force path, iteratively
(each level rescores the previous level's survivors, with their fine-tuned
weights when the same ``finetune`` hook is given; without fine-tuning,
iterative magnitude equals one-shot magnitude), global selection on the raw
scores without the layer-collapse guard (brute force may empty a layer too).
The arms follow counts, not a requirement, so their fine-tuned weights are
kept if better on the choosing half alone (no gate on the deciding half,
which thus stays an unbiased score of each arm); both halves are recorded.
"""

from __future__ import annotations

import math
import time
from functools import partial
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from subspace_jax import config as C
from subspace_jax import train
from subspace_jax.pruning import masks, procedures, scorers

MARGIN = 0.005  # module docstring: one-sided 95% deciding half (5,000) vs test, + 0.1% for the gate
STOPS = ("threshold", "refused", "max_passes", "all_pruned", "start_below_threshold")
SCORES = ("val_correct", "val_loss", "decide_correct", "decide_loss")  # choosing, deciding half


class Settings(NamedTuple):
    threshold: float = 0.98      # accuracy to keep on both validation halves (plus margin)
    margin: float = MARGIN
    candidate_chunk: int = 64    # candidates per compiled call (vmapped)
    eval_chunk: int = 100        # validation images per step inside a call (divides n // 2)
    max_fraction: float = 0.1    # at most this fraction of alive prunable weights per pass
    slack_use: float = 0.5       # share of the slack (images) the planned removals may spend
    max_remove: int = 64         # hard cap on removals per pass (fixes the verification shape)
    max_passes: int = 1000
    finetune_every: int = 1      # with a finetune hook: after every n-th pass (0 = never)


class Pruned(NamedTuple):
    params: Any                  # pytree, pruned entries exactly 0.0
    mask: Any                    # bool pytree (True = kept)
    theta_D: np.ndarray          # flat params (ravel_pytree order)
    mask_D: np.ndarray           # flat float32 0/1
    history: list                # one dict per pass (val_* choosing, decide_*); entry 0: start
    stop: str | None             # one of STOPS; None while running


def print_line(line: str) -> None:
    print(line, flush=True)


def every_parameter(name: str, leaf) -> bool:
    """The default prunable rule: weights, biases and slopes all count in golf."""
    return True


def required_correct(accuracy: float, n: int) -> int:
    """The smallest count c with c / n >= accuracy (robust to float noise in accuracy * n)."""
    return math.ceil(round(accuracy * n, 6))


# ---------------------------------------------------------------- evaluation
def _tree(w_D, lay: masks.Layout, treedef, replace: dict | None = None):
    """Params pytree from the flat vector, with some leaves replaced (e.g. by batched ones)."""
    replace = replace or {}
    leaves = [replace[i] if i in replace else w_D[o:o + s].reshape(sh)
              for i, (o, s, sh) in enumerate(zip(lay.offsets, lay.sizes, lay.shapes))]
    return jax.tree.unflatten(treedef, leaves)


def _stats(apply, params, x, y, chunk):
    loss, acc = train.evaluate(apply, params, x, y, chunk)
    return jnp.round(acc * x.shape[0]).astype(jnp.int32), loss  # exact count for n < 2^23


@partial(jax.jit, static_argnames=("apply", "lay", "treedef", "chunk"))
def evaluate_masks(theta_D, masks_MxD, x, y, *, apply, lay, treedef, chunk):
    """(correct_M int32, mean loss_M) of the network under each of M masks (vmapped)."""
    def one(m_D):
        return _stats(apply, _tree(jnp.where(m_D > 0, theta_D, 0.0), lay, treedef), x, y, chunk)
    return jax.vmap(one)(masks_MxD)


@partial(jax.jit, static_argnames=("apply", "lay", "treedef", "group", "chunk"))
def evaluate_removals(w_D, pos_K, x, y, *, apply, lay, treedef, group, chunk):
    """(correct_K, loss_K) of ``w_D`` with one entry of ``group`` zeroed per candidate.

    ``group``: leaf indices; their entries, concatenated in that order, are
    the positions ``pos_K`` index (a position >= their total size removes
    nothing: padding). Only these leaves are batched, so the network
    upstream of them runs once per image chunk for all K candidates.
    """
    vals_S = jnp.concatenate([w_D[lay.offsets[i]:lay.offsets[i] + lay.sizes[i]] for i in group])

    def one(pos):
        v_S = vals_S.at[pos].set(0.0, mode="drop")
        starts = np.cumsum([0] + [lay.sizes[i] for i in group])
        batched = {i: v_S[a:b].reshape(lay.shapes[i]) for i, a, b in zip(group, starts, starts[1:])}
        return _stats(apply, _tree(w_D, lay, treedef, batched), x, y, chunk)

    return jax.vmap(one)(pos_K)


def leaf_groups(lay: masks.Layout) -> list[tuple[int, ...]]:
    """Prunable leaves grouped by path prefix (``conv1/w``, ``conv1/b`` -> one group)."""
    groups: dict[str, list[int]] = {}
    for i in lay.prunable_leaves:
        groups.setdefault(lay.names[i].rpartition("/")[0], []).append(i)
    return [tuple(g) for g in groups.values()]


class Evaluator(NamedTuple):
    """The compiled evaluators of one network on one validation split."""
    apply: Callable
    lay: masks.Layout
    treedef: Any
    x: jax.Array
    y: jax.Array
    eval_chunk: int
    candidate_chunk: int

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    def masks(self, theta_D, masks_MxD) -> tuple[np.ndarray, np.ndarray]:
        c, l = evaluate_masks(jnp.asarray(theta_D), jnp.asarray(masks_MxD, jnp.float32),
                              self.x, self.y, apply=self.apply, lay=self.lay,
                              treedef=self.treedef, chunk=self.eval_chunk)
        return np.asarray(c), np.asarray(l)

    def one(self, theta_D, mask_D) -> tuple[int, float]:
        c, l = self.masks(theta_D, np.asarray(mask_D)[None])
        return int(c[0]), float(l[0])

    def candidates(self, theta_D, mask_D):
        """(flat index_C, correct_C, loss_C) of removing each alive prunable weight alone.

        Ordered by group, then by flat index within a group.
        """
        w_D = jnp.asarray(np.where(mask_D > 0, theta_D, 0.0), jnp.float32)
        idx, correct, loss = [np.zeros(0, np.int64)], [np.zeros(0, np.int32)], [np.zeros(0, np.float32)]
        for group in leaf_groups(self.lay):
            flat = np.concatenate([self.lay.offsets[i] + np.arange(self.lay.sizes[i])
                                   for i in group])
            pos = np.flatnonzero(mask_D[flat] > 0)
            if not len(pos):
                continue
            # Fixed per group (one compile each), balanced so the padding is small.
            K = -(-len(flat) // -(-len(flat) // self.candidate_chunk))
            padded = np.concatenate([pos, np.full(-len(pos) % K, len(flat))]).astype(np.int32)
            outs = [evaluate_removals(w_D, padded[a:a + K], self.x, self.y, apply=self.apply,
                                      lay=self.lay, treedef=self.treedef, group=group,
                                      chunk=self.eval_chunk)
                    for a in range(0, len(padded), K)]
            idx.append(flat[pos])
            correct.append(np.concatenate([np.asarray(c) for c, _ in outs])[:len(pos)])
            loss.append(np.concatenate([np.asarray(l) for _, l in outs])[:len(pos)])
        return np.concatenate(idx), np.concatenate(correct), np.concatenate(loss)


def make_evaluator(model_apply, params_like, x, y, eval_chunk: int = 100,
                   candidate_chunk: int = 64, prunable=None) -> Evaluator:
    lay = masks.layout(params_like, prunable or every_parameter)
    return Evaluator(model_apply, lay, jax.tree.structure(params_like), jnp.asarray(x),
                     jnp.asarray(y), int(eval_chunk), int(candidate_chunk))


class Halves(NamedTuple):
    """The evaluators of one network on the two halves of the validation split."""
    choose: Evaluator   # the first n // 2 images: rank, plan, accept fine-tuning (val_*)
    decide: Evaluator   # the rest: verify, stop, carry the claim (decide_*)

    @property
    def lay(self) -> masks.Layout:
        return self.choose.lay

    def scores(self, theta_D, mask_D) -> dict:
        """``SCORES`` of the masked network: correct count and mean loss on each half."""
        c, l = self.choose.one(theta_D, mask_D)
        dc, dl = self.decide.one(theta_D, mask_D)
        return {"val_correct": c, "val_loss": l, "decide_correct": dc, "decide_loss": dl}


def make_halves(model_apply, params_like, val_x, val_y, eval_chunk: int = 100,
                candidate_chunk: int = 64, prunable=None) -> Halves:
    """Splits the validation split as ``train.validation_halves`` (and so fine-tuning) does."""
    return Halves(*(make_evaluator(model_apply, params_like, x, y, eval_chunk, candidate_chunk,
                                   prunable)
                    for x, y in train.validation_halves(val_x, val_y)))


# ---------------------------------------------------------------- one pass
def rank(index_C, correct_C, loss_C) -> np.ndarray:
    """Order of candidates, best removal first: higher accuracy, lower loss, lower index."""
    return np.lexsort((index_C, loss_C, -np.asarray(correct_C, np.int64)))


def plan_count(cost_E, slack: int, n_alive: int, s: Settings) -> int:
    """How many of the ranked eligible candidates (costs ``cost_E``, in images) to try."""
    cap = max(1, min(s.max_remove, int(s.max_fraction * n_alive), len(cost_E)))
    spent = np.cumsum(np.maximum(np.asarray(cost_E[:cap], np.int64), 0))
    k = int(np.searchsorted(spent, s.slack_use * slack, side="right"))
    return max(1, min(k, cap))


def ladder(k: int, max_remove: int) -> list[int]:
    """k, ceil(k/2), ceil(k/4), ..., 1, padded with 1s to a fixed length (one compile)."""
    out = [k]
    while out[-1] > 1:
        out.append(-(-out[-1] // 2))
    return out + [1] * (1 + math.ceil(math.log2(max(max_remove, 1))) - len(out))


def _nonzero(theta_D) -> int:
    return int(np.count_nonzero(theta_D))


def prunable_entries(lay: masks.Layout) -> np.ndarray:
    """Flat bool: which entries may be pruned."""
    out = np.zeros(lay.D, bool)
    for i in lay.prunable_leaves:
        out[lay.offsets[i]:lay.offsets[i] + lay.sizes[i]] = True
    return out


def start_mask(theta_D, lay: masks.Layout, mask=None) -> np.ndarray:
    """Flat 0/1 start mask: ``mask`` (bool pytree, default all kept) and, for prunable
    entries, ``theta != 0`` (an exported pruned network keeps its zeros)."""
    mask_D = (np.ones(lay.D, np.float32) if mask is None
              else np.asarray(masks.to_flat(mask), np.float32))
    mask_D[prunable_entries(lay) & (np.asarray(theta_D) == 0)] = 0.0
    return mask_D


def _record(step, theta_D, mask_D, hv: Halves, sc: dict, **extra) -> dict:
    return {"pass": step, "nonzero": _nonzero(theta_D),
            "prunable_kept": int((mask_D[prunable_entries(hv.lay)] > 0).sum()),
            "val_correct": int(sc["val_correct"]), "val_acc": sc["val_correct"] / hv.choose.n,
            "val_loss": float(sc["val_loss"]), "decide_correct": int(sc["decide_correct"]),
            "decide_acc": sc["decide_correct"] / hv.decide.n,
            "decide_loss": float(sc["decide_loss"]), **extra}


def maybe_finetune(finetune, hv: Halves, theta_D, mask_D, step: int, sc: dict,
                   need_decide: int | None = None):
    """Fine-tunes; keeps the result only if it is better on the choosing half
    (accuracy, then loss) and, with ``need_decide``, still has that many
    correct on the deciding half.

    Returns ``(theta_D, scores, kept)``; pruned entries are exactly zero.
    """
    new_D = np.where(mask_D > 0, np.asarray(finetune(theta_D, mask_D, step), np.float32),
                     np.float32(0.0))
    new = hv.scores(new_D, mask_D)
    better = (new["val_correct"], -new["val_loss"]) > (sc["val_correct"], -sc["val_loss"])
    if better and (need_decide is None or new["decide_correct"] >= need_decide):
        return new_D, new, True
    return theta_D, sc, False


def _pruned(theta_D, mask_D, history, stop, params_like) -> Pruned:
    unravel = ravel_pytree(params_like)[1]
    history = [dict(h) for h in history]  # a snapshot: the caller's list grows
    params = unravel(jnp.asarray(theta_D))
    mask = jax.tree.map(lambda m: np.asarray(m) > 0, unravel(jnp.asarray(mask_D)))
    return Pruned(params, mask, theta_D, mask_D, history, stop)


def _pct(h: dict) -> str:
    return f"val acc {100 * h['val_acc']:.2f}% (chooses), {100 * h['decide_acc']:.2f}% (decides)"


def prune(model_apply, params, val_x, val_y, *, settings: Settings | None = None,
          prunable=None, mask=None, finetune: Callable | None = None,
          resume: Pruned | None = None, on_pass: Callable | None = None,
          log: Callable | None = None) -> Pruned:
    """Greedy brute-force pruning on the validation split (``val_x``, ``val_y``),
    choosing on one half (``train.validation_halves``) and deciding on the other; see the
    module docstring.

    Args:
      model_apply: ``apply(params, x) -> logits``.
      params: the trained params (pytree).
      settings: thresholds, chunk sizes and the removal schedule (``Settings()``
        defaults when ``None``).
      prunable: leaf names or a ``(name, leaf) -> bool`` rule; ``None`` = all.
      mask: optional starting bool mask pytree (True = kept). Prunable entries
        that are exactly zero at the start count as pruned too, so a pruned
        exported network keeps its zeros through fine-tuning.
      finetune: optional ``finetune(theta_D, mask_D, step) -> theta_D`` hook.
      resume: a ``Pruned`` from ``on_pass`` of an earlier call with the same
        arguments: continues after its last pass (also after a stop at
        ``max_passes``, if ``settings.max_passes`` is now larger).
      on_pass: called with the ``Pruned`` state after every pass (e.g. to
        save it); also once at the end.
      log: ``log(line)`` for progress lines, e.g. ``print_line``; ``None``: silent.

    Returns the final ``Pruned``: params with removed entries exactly 0.0, the
    mask, and the history (entry 0 is the start; each pass records non-zero
    params, prunable weights kept, correct/acc/loss on the choosing half
    (``val_*``) and the deciding half (``decide_*``), the removed flat
    indices, planned and accepted k, both halves' correct counts of every
    tried prefix, whether fine-tuning was kept, seconds).
    """
    s = Settings() if settings is None else Settings(*settings)
    if not 0.0 <= s.threshold + s.margin <= 1.0:
        raise ValueError(f"threshold + margin = {s.threshold + s.margin} must be in [0, 1]")
    if s.candidate_chunk < 1 or s.eval_chunk < 1 or s.max_remove < 1:
        raise ValueError("candidate_chunk, eval_chunk and max_remove must be >= 1")
    say = log or (lambda line: None)
    hv = make_halves(model_apply, params, val_x, val_y, s.eval_chunk, s.candidate_chunk,
                     prunable)
    lay = hv.lay
    need = required_correct(s.threshold + s.margin, hv.choose.n)
    need_dec = required_correct(s.threshold + s.margin, hv.decide.n)
    prunable_D = prunable_entries(lay)
    t_start = time.time()

    if resume is not None:
        theta_D = np.asarray(resume.theta_D, np.float32)
        mask_D = np.asarray(resume.mask_D, np.float32)
        history = [dict(h) for h in resume.history]
        if resume.stop not in (None, "max_passes"):  # max_passes may have been raised
            return _pruned(theta_D, mask_D, history, resume.stop, params)
    else:
        theta_D = np.asarray(ravel_pytree(params)[0], np.float32)
        mask_D = start_mask(theta_D, lay, mask)
        theta_D = np.where(mask_D > 0, theta_D, np.float32(0.0))
        history = [_record(0, theta_D, mask_D, hv, hv.scores(theta_D, mask_D), removed=[],
                           seconds=0.0)]
    sc = {k: history[-1][k] for k in SCORES}
    say(f"brute force: start {history[0]['nonzero']:,} non-zero, {_pct(history[0])}; keeping "
        f">= {100 * (s.threshold + s.margin):.2f}%: {need:,}/{hv.choose.n:,} choosing, "
        f"{need_dec:,}/{hv.decide.n:,} deciding images")

    stop = None
    while stop is None:
        step = len(history)
        alive = np.flatnonzero(prunable_D & (mask_D > 0))
        if sc["val_correct"] < need or sc["decide_correct"] < need_dec:
            stop = "start_below_threshold"
        elif not len(alive):
            stop = "all_pruned"
        elif step > s.max_passes:
            stop = "max_passes"
        if stop:
            break
        t0 = time.time()
        # Choices, on the choosing half: candidates, ranking, eligibility, k.
        idx_C, correct_C, loss_C = hv.choose.candidates(theta_D, mask_D)
        order = rank(idx_C, correct_C, loss_C)
        eligible = order[correct_C[order] >= need]
        if not len(eligible):
            stop = "threshold"
            break
        k_plan = plan_count(sc["val_correct"] - correct_C[eligible], sc["val_correct"] - need,
                            len(alive), s)
        ks = ladder(k_plan, s.max_remove)
        trial_JxD = np.tile(mask_D, (len(ks), 1))
        for j, k in enumerate(ks):
            trial_JxD[j, idx_C[eligible[:k]]] = 0.0
        # The decision, on the deciding half: the largest prefix it accepts (among those
        # the choosing half would keep too, so neither half falls below the bar).
        c_J, l_J = hv.choose.masks(theta_D, trial_JxD)
        dc_J, dl_J = hv.decide.masks(theta_D, trial_JxD)
        j = next((j for j in range(len(ks)) if c_J[j] >= need and dc_J[j] >= need_dec), None)
        tried = {"val_correct_tried": [int(c) for c in c_J],
                 "decide_correct_tried": [int(c) for c in dc_J]}
        if j is None:  # the top 1 was eligible on the choosing half: the deciding half refuses
            stop = "refused"
            say(f"pass {step}: the deciding half refuses the best removal "
                f"({int(dc_J[-1]):,} < {need_dec:,} correct)")
            history[-1]["refused"] = {"k_planned": k_plan, **tried}
            break
        removed = idx_C[eligible[:ks[j]]]
        mask_D = trial_JxD[j]
        theta_D = np.where(mask_D > 0, theta_D, np.float32(0.0))
        sc = {"val_correct": int(c_J[j]), "val_loss": float(l_J[j]),
              "decide_correct": int(dc_J[j]), "decide_loss": float(dl_J[j])}
        tuned = None
        if finetune is not None and s.finetune_every and step % s.finetune_every == 0:
            theta_D, sc, tuned = maybe_finetune(finetune, hv, theta_D, mask_D, step, sc,
                                                need_dec)
        history.append(_record(step, theta_D, mask_D, hv, sc,
                               removed=[int(i) for i in np.sort(removed)],
                               candidates=len(idx_C), eligible=len(eligible),
                               k_planned=k_plan, k=int(ks[j]), **tried, finetuned=tuned,
                               seconds=time.time() - t0))
        h = history[-1]
        say(f"pass {step}: {h['nonzero']:,} non-zero (-{h['k']} of {h['k_planned']} planned, "
            f"{h['eligible']}/{h['candidates']} eligible), {_pct(h)}"
            f"{', fine-tuned' if tuned else ''}  {h['seconds']:.1f}s, "
            f"elapsed {time.time() - t_start:.0f}s")
        if on_pass is not None:
            on_pass(_pruned(theta_D, mask_D, history, None, params))
    out = _pruned(theta_D, mask_D, history, stop, params)
    say(f"brute force stopped ({stop}) after {len(history) - 1} passes: "
        f"{history[-1]['nonzero']:,} non-zero, {_pct(history[-1])}")
    if on_pass is not None:
        on_pass(out)
    return out


# ---------------------------------------------------------------- fine-tuning hook
def make_finetune(model, tcfg, data: train.Data, seed: int = 0) -> Callable:
    """``finetune(theta_D, mask_D, step) -> theta_D``: masked training (``train.make_run``).

    ``tcfg`` is a ``config.train_config`` (epochs, learning rate, ...); the
    parameters of the best epoch on the choosing half (``make_run``'s ``val_*``,
    the same half ``prune`` chooses on) are returned. The test split is
    replaced by one validation image so fine-tuning never touches it. One
    compiled program serves every call; ``step`` varies the data order.
    """
    run = jax.jit(train.make_run(model, tcfg, C.subspace_config(0), int(data.train_x.shape[0])))
    no_test = data._replace(test_x=data.val_x[:1], test_y=data.val_y[:1])
    hp0 = train.default_hp(tcfg)
    root = jax.random.key(seed)

    def finetune(theta_D, mask_D, step):
        hp = {**hp0, "theta_init": jnp.asarray(theta_D, jnp.float32),
              "mask": jnp.asarray(mask_D, jnp.float32)}
        return np.asarray(run(jax.random.fold_in(root, step), hp, no_test).params)

    return finetune


# ---------------------------------------------------------------- comparison
def make_score(name: str, model_apply, params_like, x=None, y=None, pcfg=None) -> Callable:
    """``score(theta_D, mask_D, step)``: registered scorer ``name`` (``scorers.REGISTRY``)
    of the alive weights, on the examples (``x``, ``y``) if it needs data.

    ``pcfg``: a ``procedures.prune_config`` (its ``obd_hessian``, ``hessian_chunk``, ...);
    one key for every level. Rounds-based scorers (SynFlow) are refused: ``prune_along``
    selects once per level.
    """
    entry = scorers.get(name)
    if entry.rounds is not None:
        raise ValueError(f"scorer {name!r} prunes in rounds; prune_along selects once per level")
    unravel = ravel_pytree(params_like)[1]
    ctx = scorers.Context(lambda th, xx: model_apply(unravel(th), xx), (),
                          procedures.prune_config() if pcfg is None else pcfg)
    batch = (jnp.asarray(x), jnp.asarray(y)) if entry.needs_batch else None
    score = jax.jit(lambda w_D, m_D, b: entry.score(ctx, jax.random.key(0), w_D, m_D, b))
    return lambda theta_D, mask_D, step: np.asarray(score(
        jnp.asarray(np.where(mask_D > 0, theta_D, 0.0), jnp.float32),
        jnp.asarray(mask_D, jnp.float32), batch))


_select = jax.jit(masks.select, static_argnames=("lay", "mode"))  # one compile for all counts


def prune_along(score: Callable, hv: Halves, theta_D, mask_D, counts: Sequence[int],
                finetune: Callable | None = None, log: Callable | None = None):
    """Prunes by ``score`` to each kept count of prunable weights in turn (descending).

    Each level scores the previous level's survivors (fine-tuned ones when
    ``finetune`` is given, kept only if better on the choosing half: the arms
    have no requirement for the deciding half to gate) and keeps the top
    ``count`` globally (``masks.select``, ties to the lower index, no
    layer-collapse guard). Returns ``(rows, theta_D, mask_D)``: one row per
    count (non-zero params, correct/acc/loss on both halves) and the last
    level's network.
    """
    lay = hv.lay
    theta_D = np.where(mask_D > 0, np.asarray(theta_D, np.float32), np.float32(0.0))
    mask_D = np.asarray(mask_D, np.float32)
    rows = []
    for step, count in enumerate(counts):
        s_D = score(theta_D, mask_D, step)
        new_D = np.asarray(_select(jnp.asarray(s_D), lay, count / lay.n_prunable, "global",
                                   jnp.asarray(mask_D), False))
        kept = int((new_D[prunable_entries(lay)] > 0).sum())
        if kept != count:
            raise ValueError(f"selection kept {kept} prunable weights, asked for {count}")
        mask_D = new_D
        theta_D = np.where(mask_D > 0, theta_D, np.float32(0.0))
        sc = hv.scores(theta_D, mask_D)
        tuned = None
        if finetune is not None:
            theta_D, sc, tuned = maybe_finetune(finetune, hv, theta_D, mask_D, step, sc)
        rows.append(_record(step + 1, theta_D, mask_D, hv, sc, finetuned=tuned))
        if log:
            log(f"  level {step + 1}/{len(counts)}: {rows[-1]['nonzero']:,} non-zero, "
                f"{_pct(rows[-1])}")
    return rows, theta_D, mask_D
