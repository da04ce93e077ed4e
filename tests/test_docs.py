"""tools/make_docs.py: every committed page equals what its data give (pure Python, < 1 s)."""

import importlib.util
import json
import os
import shutil

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("make_docs",
                                               os.path.join(ROOT, "tools", "make_docs.py"))
make_docs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_docs)


@pytest.fixture(scope="module")
def pages():
    return make_docs.build(ROOT)


def test_committed_pages_match_their_data(pages):
    stale = []
    for rel, text in pages.items():
        path = os.path.join(ROOT, rel)
        if not os.path.exists(path) or open(path).read() != text:
            stale.append(rel)
    assert not stale, (f"{stale} differ from what their JSON gives: run "
                       "`python tools/make_docs.py` and commit the result")


def test_every_experiment_has_a_page(pages):
    names = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "experiments"))
                   if f.endswith(".py") and not f.startswith("_"))
    for name in names:
        page = make_docs.ON_PAGE.get(name, name)
        assert f"docs/results/{page}.md" in pages, name
        assert f"--experiment={name}" in pages[f"docs/results/{page}.md"], name


def test_bias_of_the_previous_protocol_is_measured_from_the_data():
    """The numbers issue 11 quotes: first d whose test mean reaches the threshold."""
    by_kind = {k: make_docs.load(ROOT, f"gpu_h100/intrinsic_dimension"
                                       f"{'' if k == 'dense' else '_' + k}/summary.json")
               for k in make_docs.KINDS}
    got = {(r["baseline"], r["kind"]): (r["d_val"], r["d_test"])
           for r in make_docs.bias(by_kind) if r["model"] == "fc_200_200"}
    assert got[("global", "dense")] == (637, 800)
    assert got[("global", "sparse")] == (630, 800)
    assert got[("global", "fastfood")] == (624, 673)
    assert got[("individual", "dense")] == (476, 566)


def test_claims_follow_the_data(pages):
    idim, lottery = (pages[f"docs/results/{n}.md"] for n in ("intrinsic_dimension", "lottery"))
    assert "fc_200_200, global: the intervals of sparse and fastfood do not overlap" in idim
    assert "fc_200_200, individual: the intervals of dense and sparse do not overlap" in idim
    assert "| 80.0% | 97.71 ± 0.17 |" in lottery
    assert "control 5.3-10.0" in lottery
    assert "Previous protocol" in idim and "deciding half scored" in idim  # the CPU re-run is in


def test_changed_data_changes_the_page_and_check_fails(tmp_path):
    shutil.copytree(os.path.join(ROOT, "docs", "results"), tmp_path / "docs" / "results")
    shutil.copy(os.path.join(ROOT, "README.md"), tmp_path / "README.md")
    assert make_docs.main(["--root", str(tmp_path)]) == 0        # pages for this data
    assert make_docs.main(["--root", str(tmp_path), "--check"]) == 0
    path = tmp_path / "docs" / "results" / "gpu_h100" / "lottery" / "summary.json"
    summary = json.loads(path.read_text())
    row = next(r for r in summary["table"] if r["method"] == "imp/rewind0")
    row["test_acc_mean"] = 0.9912
    path.write_text(json.dumps(summary))
    assert make_docs.main(["--root", str(tmp_path), "--check"]) == 1
    assert "99.12 ± 0.17" in make_docs.build(str(tmp_path))["docs/results/lottery.md"]


def _rerun_summary():
    """A current-protocol summary of the shape experiments/intrinsic_dimension.py writes."""
    row = {"d": 400, "phase": "grid", "seeds": 3, "ok": 2, "diverged": 1,
           "val_acc_mean": 0.905, "val_acc_sd": 0.01, "decide_acc_mean": 0.9012,
           "decide_acc_sd": 0.02, "train_acc_mean": 0.91, "train_acc_sd": 0.0,
           "test_acc_mean": 0.8987, "test_acc_sd": 0.01}
    est = {"d": 400, "d_interp": 390.0, "ci": [380.0, 410.0], "censored": None,
           "d_range": [50, 1600]}
    model = {"params": 199210, "projection": "sparse", "measure_on": "val",
             "decided_on": "decide_acc", "thresholds": {"global": 0.9},
             "full": dict(row, d=199210, phase="full"), "curve": [row],
             "d_int90": {"global": est},
             "no_estimate": {"individual": "all 3 full-space baseline runs diverged"}}
    return {"models": {"fc_200_200": model}, "failed_units": []}


def test_rerun_section_shows_the_new_protocol_or_pending():
    previous = {"sparse": make_docs.load(ROOT, "gpu_h100/intrinsic_dimension_sparse/summary.json")}
    assert "Pending" in "\n".join(make_docs.rerun_section(None, previous))
    summary = _rerun_summary()
    text = "\n".join(make_docs.rerun_section(summary, previous))
    assert make_docs.CURRENT in text and "Pending" not in text
    assert "| fc_200_200 | global | 90.00 | 400 [380, 410] | 390 | decide_acc |" in text
    assert "no estimate: all 3 full-space baseline runs diverged" in text
    assert "| 90.12 ± 2.00 |" in text and "| 2 | 1 |" in text       # decide half, ok, diverged
    assert "| fc_200_200 | global | 630 [627, 629] | 800 | 400 [380, 410] | - |" in text
    # The page: the current re-run first, then both superseded ones, each with its rule.
    page = make_docs.intrinsic_dimension(ROOT)
    at = [page.index(rule) for rule in (make_docs.CURRENT, make_docs.PARITY, make_docs.NEW)]
    assert at == sorted(at)
