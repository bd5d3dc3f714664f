"""Sampling strategies (nc and baselines), sample_folders and `ncdetect sample`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from conftest import naive_kcenter
from ncdetect.cli import SampleStrategy, app
from ncdetect.collapse.sampling import (
    STRATEGIES,
    greedy_herding,
    greedy_kcenter,
    n_keep,
    sample_folders,
    summary_path,
)
from ncdetect.data.manifest import read_manifest
from ncdetect.errors import ConfigError, NcdetectError
from test_collapse_metrics import write_emb_folder


def blobs(n=300, d=8, seed=0, bonafide_share=0.3):
    """Two Gaussian blobs; a few exact duplicate rows make distance ties that only utt_id can break."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < bonafide_share).astype(np.int64)
    x = rng.normal(size=(n, d)) + 4 * rng.normal(size=(2, d))[y]
    for i in range(0, 30, 3):  # rows i+1 and i+2 copy row i (same class as well)
        x[i + 1] = x[i + 2] = x[i]
        y[i + 1] = y[i + 2] = y[i]
    ids = np.array([f"utt{(n - i) * 7919 % 100003:06d}" for i in range(n)], dtype=object)  # not row order
    attacks = np.where(y == 1, "-", np.array(["A01", "A02", "A03"])[np.arange(n) % 3])
    return x.astype(np.float32), y, ids, attacks


def brute_force(x, y, ids, rates, metric="euclidean", reverse=False):
    """Sort each class by (distance to its mean, utt_id) and keep the first max(1, round(r * N_c))."""
    chosen = []
    for c in (0, 1):
        rows = np.flatnonzero(y == c)
        if rows.size == 0:
            continue
        xc = x[rows].astype(np.float64)
        mu = xc.mean(axis=0)
        if metric == "euclidean":
            d = np.linalg.norm(xc - mu, axis=1)
        else:
            d = 1 - xc @ mu / (np.linalg.norm(xc, axis=1) * np.linalg.norm(mu))
        sign = -1 if reverse else 1
        order = sorted(range(rows.size), key=lambda j, d=d, rows=rows: (sign * d[j], ids[rows[j]]))
        k = max(1, round(rates[c] * rows.size))
        chosen += list(rows[order[:k]])
    return np.sort(np.array(chosen))


# ---------------------------------------------------------------------------------------------------
# k and rates


def test_n_keep_uses_python_round_half_to_even():
    assert n_keep(0.5, 5) == 2  # round(2.5) = 2
    assert n_keep(0.5, 7) == 4  # round(3.5) = 4
    assert n_keep(0.3, 5) == 2  # 0.3 * 5 = 1.5 in floating point -> 2
    assert n_keep(0.01, 10) == 1  # round(0.1) = 0 -> at least one
    assert n_keep(1.0, 13) == 13
    assert n_keep(0.5, 0) == 0


def test_selection_sizes_follow_rounding():
    x = np.random.default_rng(0).normal(size=(12, 3)).astype(np.float32)
    y = np.array([0] * 5 + [1] * 7)
    for name, strategy in STRATEGIES.items():
        sel = strategy(x, y, 0.5)
        assert np.sum(y[sel.indices] == 0) == 2, name  # round(2.5) = 2
        assert np.sum(y[sel.indices] == 1) == 4, name  # round(3.5) = 4
        sel = strategy(x, y, 0.5, real_rate=1 / 7, fake_rate=0.6)
        assert np.sum(y[sel.indices] == 1) == 1 and np.sum(y[sel.indices] == 0) == 3, name


@pytest.mark.parametrize("name", list(STRATEGIES))
@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan")])
def test_rate_out_of_range_is_an_error(name, bad):
    x, y, ids, _ = blobs(40)
    with pytest.raises(ConfigError, match="rate"):
        STRATEGIES[name](x, y, bad, utt_ids=ids)


def test_real_and_fake_rate_are_checked_by_name():
    x, y, _ids, _ = blobs(40)
    with pytest.raises(ConfigError, match="real_rate"):
        STRATEGIES["nc"](x, y, 0.5, real_rate=0)
    with pytest.raises(ConfigError, match="fake_rate"):
        STRATEGIES["nc"](x, y, 0.5, fake_rate=2)


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_rate_one_keeps_everything(name):
    x, y, ids, _ = blobs(60)
    sel = STRATEGIES[name](x, y, 1.0, utt_ids=ids)
    assert sel.indices.tolist() == list(range(60))
    assert sel.distances.shape == (60,) and np.isfinite(sel.distances).all()


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_class_with_one_sample_and_class_with_none(name):
    x, _, ids, _ = blobs(30)
    y = np.zeros(30, dtype=np.int64)
    y[17] = 1
    sel = STRATEGIES[name](x, y, 0.1, utt_ids=ids)
    assert 17 in sel.indices  # k = max(1, round(0.1 * 1)) = 1
    assert np.sum(y[sel.indices] == 0) == 3
    only_spoof = STRATEGIES[name](x, np.zeros(30, dtype=np.int64), 0.1, utt_ids=ids)
    assert len(only_spoof) == 3
    assert any("bonafide has no samples" in note for note in only_spoof.notices)


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_nan_rows_are_a_clear_error(name):
    x, y, ids, _ = blobs(40)
    x[23, 5] = np.nan
    with pytest.raises(NcdetectError, match=rf"row 23 \(utt_id {ids[23]}\)"):
        STRATEGIES[name](x, y, 0.5, utt_ids=ids)


def test_mismatched_lengths_are_an_error():
    x, y, ids, _ = blobs(40)
    with pytest.raises(NcdetectError, match="39 labels for 40"):
        STRATEGIES["nc"](x, y[:-1], 0.5)
    with pytest.raises(NcdetectError, match="utt_ids"):
        STRATEGIES["nc"](x, y, 0.5, utt_ids=ids[:-2])


def test_fake_mode_only_for_nc():
    x, y, _ids, attacks = blobs(40)
    with pytest.raises(ConfigError, match="applies to strategy nc only"):
        STRATEGIES["random"](x, y, 0.5, fake_mode="attack", attacks=attacks)
    with pytest.raises(ConfigError, match="fake_mode must be one of"):
        STRATEGIES["nc"](x, y, 0.5, fake_mode="bogus")
    with pytest.raises(ConfigError, match="needs the attack"):
        STRATEGIES["nc"](x, y, 0.5, fake_mode="attack")


# ---------------------------------------------------------------------------------------------------
# nc and farthest against brute force


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("rate", [0.05, 0.1, 0.37, 0.5])
def test_nc_equals_brute_force(metric, rate):
    x, y, ids, _ = blobs(400, seed=3)
    sel = STRATEGIES["nc"](x, y, rate, metric=metric, utt_ids=ids)
    ref = brute_force(x, y, ids, {0: rate, 1: rate}, metric=metric)
    assert sel.indices.tolist() == ref.tolist()


def test_nc_ties_broken_by_utt_id():
    # Five identical points: all at the same distance; the two smallest utt_ids win, whatever the row order.
    x = np.ones((6, 2), dtype=np.float32)
    x[5] = [3, 3]
    y = np.zeros(6, dtype=np.int64)
    ids = np.array(["e", "c", "a", "d", "b", "z"], dtype=object)
    sel = STRATEGIES["nc"](x, y, 2 / 6, utt_ids=ids)  # k = 2
    assert sorted(ids[sel.indices]) == ["a", "b"]
    # Without utt_ids the row order breaks ties.
    assert STRATEGIES["nc"](x, y, 2 / 6).indices.tolist() == [0, 1]


def test_nc_separate_rates_and_distances():
    x, y, ids, _ = blobs(400, seed=4)
    sel = STRATEGIES["nc"](x, y, 0.5, real_rate=0.2, fake_rate=0.05, utt_ids=ids)
    assert sel.indices.tolist() == brute_force(x, y, ids, {0: 0.05, 1: 0.2}).tolist()
    for i, d in zip(sel.indices, sel.distances, strict=True):
        mu = x[y == y[i]].astype(np.float64).mean(axis=0)
        assert d == pytest.approx(np.linalg.norm(x[i] - mu), rel=1e-9)


def test_farthest_is_the_reverse():
    x, y, ids, _ = blobs(400, seed=5)
    sel = STRATEGIES["farthest"](x, y, 0.1, utt_ids=ids)
    assert sel.indices.tolist() == brute_force(x, y, ids, {0: 0.1, 1: 0.1}, reverse=True).tolist()
    near = STRATEGIES["nc"](x, y, 0.1, utt_ids=ids)
    assert sel.distances.min() > near.distances.max() * 0.5
    assert not set(sel.indices) & set(near.indices)


# ---------------------------------------------------------------------------------------------------
# fake modes


def test_attack_mode_keeps_every_attack_including_a_single_one():
    x, y, ids, attacks = blobs(300, seed=6)
    attacks = attacks.astype(object)
    lone = np.flatnonzero(y == 0)[-1]
    attacks[lone] = "A99"  # an attack with a single utterance
    sel = STRATEGIES["nc"](x, y, 0.1, fake_mode="attack", attacks=attacks, utt_ids=ids)
    spoof_sel = sel.indices[y[sel.indices] == 0]
    assert lone in spoof_sel
    dist_all = STRATEGIES["nc"](x, y, 1.0, utt_ids=ids)  # distances of every row to its class mean
    for a in ("A01", "A02", "A03"):
        members = np.flatnonzero((y == 0) & (attacks == a))
        k = max(1, round(0.1 * members.size))
        picked = np.intersect1d(spoof_sel, members)
        assert picked.size == k
        # the nearest k of this attack by distance to the spoof class mean
        order = sorted(members, key=lambda i: (dist_all.distances[i], ids[i]))
        assert sorted(picked) == sorted(order[:k])
    # bonafide still follows Algorithm 1
    bona = sel.indices[y[sel.indices] == 1]
    assert bona.tolist() == [i for i in brute_force(x, y, ids, {0: 0.1, 1: 0.1}) if y[i] == 1]


def test_kmeans_mode_total_and_seed():
    x, y, ids, attacks = blobs(400, seed=7)
    a = STRATEGIES["nc"](x, y, 0.2, fake_mode="kmeans", attacks=attacks, utt_ids=ids, seed=3)
    b = STRATEGIES["nc"](x, y, 0.2, fake_mode="kmeans", attacks=attacks, utt_ids=ids, seed=3)
    assert a.indices.tolist() == b.indices.tolist()
    n_spoof = int(np.sum(y == 0))
    assert np.sum(y[a.indices] == 0) == max(1, round(0.2 * n_spoof))
    # Clusters of well separated groups: every group contributes in proportion to its size.
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [50, 0], [0, 50]])
    group = np.repeat([0, 1, 2], [100, 60, 40])
    xs = (centres[group] + rng.normal(size=(200, 2))).astype(np.float32)
    sel = STRATEGIES["nc"](xs, np.zeros(200, dtype=np.int64), 0.1, fake_mode="kmeans",
                           attacks=np.array(["A01", "A02", "A03"])[group])
    assert np.bincount(group[sel.indices], minlength=3).tolist() == [10, 6, 4]


def test_spread_mode_takes_evenly_spaced_ranks():
    x, y, ids, _ = blobs(300, seed=8)
    sel = STRATEGIES["nc"](x, y, 0.1, fake_mode="spread", utt_ids=ids)
    spoof = np.flatnonzero(y == 0)
    every = STRATEGIES["nc"](x, y, 1.0, utt_ids=ids)
    order = sorted(spoof, key=lambda i: (every.distances[i], ids[i]))
    k = max(1, round(0.1 * spoof.size))
    expected = [order[int((j + 0.5) * spoof.size / k)] for j in range(k)]
    assert sorted(sel.indices[y[sel.indices] == 0]) == sorted(expected)
    d = sel.distances[y[sel.indices] == 0]
    near = STRATEGIES["nc"](x, y, 0.1, utt_ids=ids)
    assert d.max() > near.distances[y[near.indices] == 0].max()  # reaches past the nearest fraction


# ---------------------------------------------------------------------------------------------------
# baselines


@pytest.mark.parametrize("name", ["random", "kcenter"])
def test_same_seed_same_selection(name):
    x, y, ids, _ = blobs(300, seed=9)
    a = STRATEGIES[name](x, y, 0.1, seed=5, utt_ids=ids)
    b = STRATEGIES[name](x, y, 0.1, seed=5, utt_ids=ids)
    c = STRATEGIES[name](x, y, 0.1, seed=6, utt_ids=ids)
    assert a.indices.tolist() == b.indices.tolist()
    assert a.indices.tolist() != c.indices.tolist()


def test_random_is_class_stratified_and_independent_per_class():
    x, y, _ids, _ = blobs(300, seed=10)
    a = STRATEGIES["random"](x, y, 0.1, seed=1)
    b = STRATEGIES["random"](x, y, 0.1, real_rate=0.5, seed=1)
    # Changing the bonafide rate leaves the spoof draw unchanged.
    assert a.indices[y[a.indices] == 0].tolist() == b.indices[y[b.indices] == 0].tolist()


@pytest.mark.parametrize("seed", [0, 1])
def test_kcenter_equals_the_plain_greedy_loop(seed):
    rng = np.random.default_rng(seed)
    centres = 5 * rng.normal(size=(8, 16))
    x = (rng.normal(size=(600, 16)) + centres[rng.integers(0, 8, 600)]).astype(np.float32)
    for k in (1, 7, 150, 400):
        got = greedy_kcenter(torch.from_numpy(x), k, start=11, block=16, top=4)
        assert got.tolist() == naive_kcenter(x, k, 11), k


def test_kcenter_with_duplicates_returns_distinct_rows():
    x = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)  # 3 distinct points, 12 rows
    picks = greedy_kcenter(torch.from_numpy(x), 8, start=0)
    assert len(set(picks.tolist())) == 8
    assert {int(p) // 4 for p in picks[:3]} == {0, 1, 2}  # the distinct points come first


def test_kcenter_covers_better_than_nc():
    x, y, _ids, _ = blobs(400, seed=11)
    spoof = x[y == 0].astype(np.float64)

    def radius(sel):
        chosen = x[sel.indices[y[sel.indices] == 0]].astype(np.float64)
        return np.max(np.min(np.linalg.norm(spoof[:, None] - chosen[None], axis=2), axis=1))

    assert radius(STRATEGIES["kcenter"](x, y, 0.1)) < radius(STRATEGIES["nc"](x, y, 0.1))


def naive_herding(x, k):
    x = x.astype(np.float64)
    mu = x.mean(axis=0)
    acc = np.zeros(x.shape[1])
    picks = []
    for t in range(1, k + 1):
        err = np.linalg.norm(t * mu - acc - x, axis=1)
        err[picks] = np.inf
        i = int(np.argmin(err))
        picks.append(i)
        acc += x[i]
    return picks


def test_herding_matches_reference_and_tracks_the_mean():
    rng = np.random.default_rng(12)
    x = rng.normal(size=(300, 6)).astype(np.float32) * 3
    picks = greedy_herding(torch.from_numpy(x), 30, torch.from_numpy(x.astype(np.float64).mean(axis=0)))
    assert picks.tolist() == naive_herding(x, 30)
    mu = x.mean(axis=0)
    herd_err = np.linalg.norm(x[picks].mean(axis=0) - mu)
    rand_err = np.mean(
        [np.linalg.norm(x[rng.choice(300, 30, replace=False)].mean(axis=0) - mu) for _ in range(20)]
    )
    assert herd_err < 0.2 * rand_err


# ---------------------------------------------------------------------------------------------------
# folders and the command line


def test_sample_folders_union_dedup_and_summary(tmp_path):
    x1, y1, _, att1 = blobs(200, seed=13)
    x2, y2, _, att2 = blobs(100, seed=14)
    ids1 = [f"u{i:04d}" for i in range(200)]
    ids2 = [f"u{i:04d}" for i in range(150, 250)]  # u0150..u0199 are in both folders
    e1 = write_emb_folder(tmp_path / "e1", x1, y1, attacks=att1, utt_ids=ids1, source="resnet_a")
    e2 = write_emb_folder(tmp_path / "e2", x2, y2, attacks=att2, utt_ids=ids2, source="convnext_b")
    # The overlapping utterances get identical rows in e2, so that both folders select them.
    x2[:50] = x1[150:]
    y2[:50] = y1[150:]
    write_emb_folder(tmp_path / "e2", x2, y2, attacks=np.r_[att1[150:], att2[50:]], utt_ids=ids2,
                     source="convnext_b")
    out = tmp_path / "sel" / "train.csv"
    df = sample_folders([e1, e2], strategy="nc", rate=1.0, out=out)
    assert len(df) == 250  # 200 + 100 - 50 duplicates
    assert df.attrs["summary"]["duplicates_dropped"] == 50
    first = df.set_index("utt_id")
    assert (first.loc[[f"u{i:04d}" for i in range(150, 200)], "source"] == "resnet_a").all()
    assert {"source", "distance", "strategy"} <= set(df.columns) and "score" not in df.columns

    back = read_manifest(out)
    assert len(back) == 250 and list(back.columns[:6]) == ["utt_id", "path", "label", "dataset", "attack",
                                                          "speaker"]
    summary = json.loads(summary_path(out).read_text())
    assert summary_path(out).name == "train.summary.json"
    assert summary["overall"] == {"total": 250, "selected": 250, "rate": 1.0}
    assert [s["source"] for s in summary["per_source"]] == ["resnet_a", "convnext_b"]
    assert summary["per_source"][1]["overall"]["selected"] == 100  # before deduplication


def test_sample_folders_rates_per_class_and_attack(tmp_path):
    x, y, ids, att = blobs(300, seed=15)
    e = write_emb_folder(tmp_path / "e", x, y, attacks=att, utt_ids=list(ids))
    df = sample_folders([e], strategy="random", rate=0.1, real_rate=0.5, seed=2)
    s = df.attrs["summary"]
    n_b, n_s = int(np.sum(y == 1)), int(np.sum(y == 0))
    assert s["per_class"]["bonafide"]["selected"] == max(1, round(0.5 * n_b))
    assert s["per_class"]["spoof"]["selected"] == max(1, round(0.1 * n_s))
    assert s["per_class"]["spoof"]["rate"] == pytest.approx(round(0.1 * n_s) / n_s, abs=1e-6)
    assert sum(v["selected"] for v in s["per_attack"].values()) == len(df)
    assert set(s["per_attack"]) == {"-", "A01", "A02", "A03"}


def test_sample_folders_errors_name_the_folder(tmp_path):
    x, y, _ids, _ = blobs(40)
    e = write_emb_folder(tmp_path / "e", x, y)
    np.save(e / "embeddings.npy", x[:-1])
    with pytest.raises(NcdetectError, match=r"index\.csv: 40 rows but embeddings\.npy has 39"):
        sample_folders([e], rate=0.5)
    x[7, 0] = np.inf
    e = write_emb_folder(tmp_path / "f", x, y)
    with pytest.raises(NcdetectError, match=r"f/embeddings\.npy: row 7"):
        sample_folders([e], rate=0.5)
    with pytest.raises(ConfigError):
        sample_folders([e], rate=0)


def test_cli_strategy_names_match_registry():
    assert [s.value for s in SampleStrategy] == list(STRATEGIES)


def test_cli_sample(tmp_path):
    x, y, _ids, att = blobs(200, seed=16)
    e = write_emb_folder(tmp_path / "emb", x, y, attacks=att)
    out = tmp_path / "picked.csv"
    runner = CliRunner()
    res = runner.invoke(app, ["sample", str(e), "--strategy", "nc", "--rate", "0.1", "--fake-mode", "attack",
                              "--metric", "cosine", "--seed", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out)
    assert (df["strategy"] == "nc").all() and "per attack" in res.output
    assert (tmp_path / "picked.summary.json").is_file()
    # the same selection as the library call
    lib = sample_folders([e], strategy="nc", rate=0.1, fake_mode="attack", metric="cosine", seed=3)
    assert df["utt_id"].tolist() == lib["utt_id"].tolist()

    res = runner.invoke(app, ["sample", str(e), "--strategy", "nc", "--rate", "0", "--out", str(out)])
    assert res.exit_code != 0 and isinstance(res.exception, ConfigError)
    res = runner.invoke(app, ["sample", str(e), "--strategy", "bogus", "--rate", "0.1", "--out", str(out)])
    assert res.exit_code == 2
