"""Selection variants (bonafide modes, order, cross-source, margin, nc-kcenter), per-source random streams,
per-source class means, and the coverage a selection reports. Each variant is checked against a
brute-force reference written independently of the frame, on small arrays."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from conftest import naive_kcenter
from ncdetect.collapse.coverage import nearest_distance, space_coverage
from ncdetect.collapse.metrics import nc_metrics
from ncdetect.collapse.sampling import STRATEGIES, format_summary, sample_folders, select, summary_path
from ncdetect.collapse.strategies import uses_seed
from ncdetect.errors import ConfigError, NcdetectError, ProtocolError
from ncdetect.registry import Registry


def pool(n=300, d=8, seed=0, n_speakers=4):
    """Blobs per class, attacks for spoof and speakers for bonafide, utt_ids not in row order."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(np.int64)
    x = rng.normal(size=(n, d)) + 4 * rng.normal(size=(2, d))[y]
    x[1] = x[2] = x[0]  # exact ties that only the utt_id breaks
    y[1] = y[2] = y[0]
    ids = np.array([f"utt{(n - i) * 7919 % 100003:06d}" for i in range(n)], dtype=object)
    attacks = np.where(y == 1, "-", np.array(["A01", "A02", "A03"])[np.arange(n) % 3]).astype(object)
    speakers = np.array([f"spk{i % n_speakers}" for i in range(n)], dtype=object)
    return x.astype(np.float32), y, ids, attacks, speakers


def dist_to_mean(x, rows, metric="euclidean"):
    xc = x[rows].astype(np.float64)
    mu = xc.mean(axis=0)
    if metric == "euclidean":
        return np.linalg.norm(xc - mu, axis=1)
    return 1 - xc @ mu / (np.linalg.norm(xc, axis=1) * np.linalg.norm(mu))


def best(rows, score, ids, k, far=False):
    """The k rows with the best (score, utt_id), lowest first or highest first."""
    sign = -1 if far else 1
    order = sorted(range(len(rows)), key=lambda j: (sign * score[j], ids[rows[j]]))
    return [int(rows[j]) for j in order[:k]]


def keep(rate, n):
    return max(1, round(rate * n))


def reference_nc(x, y, ids, rates, far=(False, False)):
    out = []
    for c in (0, 1):
        rows = np.flatnonzero(y == c)
        out += best(rows, dist_to_mean(x, rows), ids, keep(rates[c], rows.size), far=far[c])
    return sorted(out)


# ---------------------------------------------------------------------------------------------------
# registry and the one interface


def test_strategies_are_a_registry_with_full_reserved():
    assert isinstance(STRATEGIES, Registry)
    assert {"nc", "farthest", "random", "kcenter", "herding", "nc-kcenter"} <= set(STRATEGIES.names())
    with pytest.raises(ValueError, match="reserved"):
        STRATEGIES.add("full", STRATEGIES["nc"])
    with pytest.raises(ConfigError, match="unknown strategy 'ncc'; valid: farthest"):
        select("ncc", np.zeros((2, 2), dtype=np.float32), [0, 1], 0.5)


def test_select_by_name_equals_the_registered_callable():
    x, y, ids, att, _ = pool()
    for name in STRATEGIES:
        a = select(name, x, y, 0.2, utt_ids=ids, attacks=att, seed=4)
        b = STRATEGIES[name](x, y, 0.2, utt_ids=ids, attacks=att, seed=4)
        assert a.indices.tolist() == b.indices.tolist(), name


def test_options_a_strategy_does_not_take_are_errors():
    x, y, _, _, spk = pool(60)
    with pytest.raises(ConfigError, match="order 'far' applies to strategies nc, nc-kcenter only"):
        select("random", x, y, 0.2, order="far")
    with pytest.raises(ConfigError, match="real_mode 'speaker' applies to strategy nc only"):
        select("herding", x, y, 0.2, real_mode="speaker", speakers=spk)
    with pytest.raises(ConfigError, match=r"pool_factor 3\.0 applies to strategy nc-kcenter only"):
        select("nc", x, y, 0.2, pool_factor=3.0)
    with pytest.raises(ConfigError, match="cross-source views apply to strategies farthest, nc, nc-kcenter"):
        select("kcenter", x, y, 0.2, views=[x])
    with pytest.raises(ConfigError, match="needs the speaker of every row"):
        select("nc", x, y, 0.2, real_mode="speaker")
    with pytest.raises(ConfigError, match="order must be one of near, far, auto"):
        select("nc", x, y, 0.2, order="middle")
    with pytest.raises(ConfigError, match="min_margin needs the source model's score"):
        select("nc", x, y, 0.2, min_margin=1.0)


def test_check_options_without_data():
    from ncdetect.collapse.sampling import check_options

    check_options("nc", 0.25, order="auto", real_mode="speaker", cross_source=True)
    with pytest.raises(ConfigError, match="unknown strategy 'ncc'"):
        check_options("ncc")
    with pytest.raises(ConfigError, match="real_mode must be one of class, speaker, kmeans, spread"):
        check_options("nc", real_mode="attack")
    with pytest.raises(ConfigError, match="cross-source views apply to"):
        check_options("herding", cross_source=True)
    with pytest.raises(ConfigError, match="order_switch must be in"):
        check_options("nc", order="auto", order_switch=0)


def test_uses_seed():
    assert uses_seed("random") and uses_seed("kcenter")
    assert not uses_seed("nc") and not uses_seed("nc-kcenter") and not uses_seed("farthest")
    assert uses_seed("nc", fake_mode="kmeans") and uses_seed("nc", real_mode="kmeans")


# ---------------------------------------------------------------------------------------------------
# bonafide modes


def test_real_mode_speaker_keeps_the_nearest_fraction_of_every_speaker():
    x, y, ids, _, spk = pool(400, seed=1, n_speakers=5)
    lone = np.flatnonzero(y == 1)[-1]
    spk[lone] = "spk_lone"  # a speaker with one utterance still gets one
    sel = select("nc", x, y, 0.1, real_mode="speaker", speakers=spk, utt_ids=ids)
    bona = np.flatnonzero(y == 1)
    d = dict(zip(bona, dist_to_mean(x, bona), strict=True))  # distance to the *class* mean
    expected = []
    for s in sorted(set(spk[bona])):
        members = bona[spk[bona] == s]
        expected += best(members, [d[i] for i in members], ids, keep(0.1, members.size))
    assert sorted(sel.indices[y[sel.indices] == 1].tolist()) == sorted(expected)
    assert lone in sel.indices
    # the spoof side still follows Algorithm 2
    assert sel.indices[y[sel.indices] == 0].tolist() == [
        i for i in reference_nc(x, y, ids, {0: 0.1, 1: 0.1}) if y[i] == 0]


def test_real_mode_spread_takes_evenly_spaced_ranks():
    x, y, ids, _, _ = pool(300, seed=2)
    sel = select("nc", x, y, 0.1, real_mode="spread", utt_ids=ids)
    bona = np.flatnonzero(y == 1)
    order = best(bona, dist_to_mean(x, bona), ids, bona.size)
    k = keep(0.1, bona.size)
    expected = [order[int((j + 0.5) * bona.size / k)] for j in range(k)]
    assert sorted(sel.indices[y[sel.indices] == 1].tolist()) == sorted(expected)


def test_real_mode_kmeans_nearest_to_each_centroid_in_proportion():
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(3)
    centres = np.array([[0, 0], [40, 0], [0, 40]])
    group = np.repeat([0, 1, 2], [100, 60, 40])
    xb = (centres[group] + rng.normal(size=(200, 2))).astype(np.float32)
    xs = (rng.normal(size=(50, 2)) + 100).astype(np.float32)
    x, y = np.vstack([xs, xb]), np.r_[np.zeros(50, int), np.ones(200, int)]
    spk = np.r_[["-"] * 50, np.array(["s1", "s2", "s3"])[group]].astype(object)
    ids = np.array([f"u{i:04d}" for i in range(250)], dtype=object)
    sel = select("nc", x, y, 0.1, real_mode="kmeans", speakers=spk, utt_ids=ids, seed=5)
    picked = sel.indices[y[sel.indices] == 1] - 50
    assert np.bincount(group[picked], minlength=3).tolist() == [10, 6, 4]
    # brute force: the same clustering, then the nearest members of each centroid
    km = KMeans(n_clusters=3, n_init=3, random_state=5).fit(xb)
    expected = []
    for j in range(3):
        members = np.flatnonzero(km.labels_ == j)
        d = np.linalg.norm(xb[members].astype(np.float64) - km.cluster_centers_[j], axis=1)
        expected += best(members, d, ids[50:], members.size * 20 // 200)
    assert sorted(picked.tolist()) == sorted(expected)


# ---------------------------------------------------------------------------------------------------
# order


def test_order_far_is_the_farthest_and_equals_the_farthest_strategy():
    x, y, ids, _, _ = pool(400, seed=4)
    sel = select("nc", x, y, 0.15, order="far", utt_ids=ids)
    assert sel.indices.tolist() == reference_nc(x, y, ids, {0: 0.15, 1: 0.15}, far=(True, True))
    assert sel.indices.tolist() == select("farthest", x, y, 0.15, utt_ids=ids).indices.tolist()


@pytest.mark.parametrize("switch", [0.2, 0.3])
def test_order_auto_switches_by_each_class_rate(switch):
    x, y, ids, _, _ = pool(400, seed=5)
    # bonafide at 0.1 (< both switches: near); spoof at 0.3 (far when the switch is at or below it)
    sel = select("nc", x, y, 0.5, real_rate=0.1, fake_rate=0.3, order="auto", order_switch=switch,
                 utt_ids=ids)
    far_spoof = switch <= 0.3
    assert sel.indices.tolist() == reference_nc(x, y, ids, {0: 0.3, 1: 0.1}, far=(far_spoof, False))


def test_order_far_within_each_attack():
    x, y, ids, att, _ = pool(300, seed=6)
    sel = select("nc", x, y, 0.2, fake_mode="attack", order="far", attacks=att, utt_ids=ids)
    spoof = np.flatnonzero(y == 0)
    d = dict(zip(spoof, dist_to_mean(x, spoof), strict=True))
    expected = []
    for a in ("A01", "A02", "A03"):
        members = spoof[att[spoof] == a]
        expected += best(members, [d[i] for i in members], ids, keep(0.2, members.size), far=True)
    assert sorted(sel.indices[y[sel.indices] == 0].tolist()) == sorted(expected)


# ---------------------------------------------------------------------------------------------------
# cross-source scoring


def mean_rank(values):
    """Rank in [0, 1] (0 = smallest), ties sharing their mean rank, by counting."""
    n = len(values)
    out = []
    for v in values:
        below = sum(1 for w in values if w < v)
        equal = sum(1 for w in values if w == v)
        out.append((below + (equal - 1) / 2) / max(n - 1, 1))
    return np.array(out)


def reference_cross(spaces, y, ids, rate, combine):
    out = []
    for c in (0, 1):
        rows = np.flatnonzero(y == c)
        per_space = []
        for x in spaces:
            d = dist_to_mean(x, rows)
            per_space.append(mean_rank(list(d)) if combine == "rank" else (d - d.mean()) / d.std())
        score = np.mean(per_space, axis=0)
        out += best(rows, score, ids, keep(rate, rows.size))
    return sorted(out)


@pytest.mark.parametrize("combine", ["rank", "z"])
def test_cross_source_score_combines_every_space(combine):
    x1, y, ids, _, _ = pool(200, seed=7)
    rng = np.random.default_rng(8)
    x2 = (x1 @ rng.normal(size=(8, 5)) + rng.normal(size=(200, 5))).astype(np.float32)  # another model
    x3 = rng.normal(size=(200, 3)).astype(np.float32)
    sel = select("nc", x1, y, 0.2, views=[x2, x3], combine=combine, utt_ids=ids)
    assert sel.indices.tolist() == reference_cross([x1, x2, x3], y, ids, 0.2, combine)
    assert sel.indices.tolist() != select("nc", x1, y, 0.2, utt_ids=ids).indices.tolist()
    with pytest.raises(NcdetectError, match=r"views\[0\] has 199 rows for 200"):
        select("nc", x1, y, 0.2, views=[x2[:-1]])


def emb_folder(root: Path, x, y, ids, *, attacks=None, speakers=None, dataset="toy", source="src",
               scores=None, extra=None) -> Path:
    """An embedding folder as `ncdetect embed` writes it, with the columns these tests need."""
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "embeddings.npy", np.asarray(x, dtype=np.float32))
    label = np.where(np.asarray(y) == 1, "bonafide", "spoof")
    df = pd.DataFrame(dict(
        utt_id=list(ids), path=[f"wav/{u}.wav" for u in ids], label=label, dataset=dataset,
        attack=np.where(label == "bonafide", "-", "A01") if attacks is None else attacks,
        speaker="spk0" if speakers is None else speakers,
        score=0.0 if scores is None else scores, source=source, **(extra or {}),
    ))
    df.to_csv(root / "index.csv", index=False)
    return root


def test_sample_folders_cross_source_groups_views_of_one_pool(tmp_path):
    xa, ya, ida, atta, _ = pool(150, seed=9)
    xb, yb, idb, attb, _ = pool(120, seed=10)
    rng = np.random.default_rng(11)
    proj = rng.normal(size=(8, 6))
    # Source a's data in a's space and in b's space; source b's data likewise (order mixed on purpose).
    aa = emb_folder(tmp_path / "aa", xa, ya, ida, attacks=atta, dataset="A", source="model_a")
    bb = emb_folder(tmp_path / "bb", xb, yb, idb, attacks=attb, dataset="B", source="model_b")
    ab = emb_folder(tmp_path / "ab", xa @ proj, ya, ida, attacks=atta, dataset="A", source="model_b")
    ba = emb_folder(tmp_path / "ba", xb * 2 + 1, yb, idb, attacks=attb, dataset="B", source="model_a")
    df = sample_folders([aa, bb, ab, ba], strategy="nc", rate=0.2, cross_source=True, out=tmp_path / "s.csv")
    s = df.attrs["summary"]
    assert [p["source"] for p in s["per_source"]] == ["model_a", "model_b"]
    assert [v["emb_dir"] for v in s["per_source"][0]["views"]] == [str(aa), str(ab)]
    # pool A is scored in both spaces, its rows and metadata are those of the first folder
    ref_a = reference_cross([xa, (xa @ proj).astype(np.float32)], ya, ida, 0.2, "rank")
    got_a = df.loc[df["dataset"] == "A", "utt_id"].tolist()
    assert sorted(got_a) == sorted(ida[ref_a].tolist())
    assert set(df.loc[df["dataset"] == "A", "source"]) == {"model_a"}
    # without the option every folder is its own pool, as before
    plain = sample_folders([aa, bb, ab, ba], strategy="nc", rate=0.2)
    assert len(plain.attrs["summary"]["per_source"]) == 4
    with pytest.raises(ConfigError, match="cross-source views apply to"):
        sample_folders([aa, ab], strategy="random", rate=0.2, cross_source=True)


def test_cross_source_refuses_views_that_disagree_on_a_label(tmp_path):
    x, y, ids, _, _ = pool(40, seed=12)
    a = emb_folder(tmp_path / "a", x, y, ids)
    y2 = y.copy()
    y2[7] = 1 - y2[7]
    b = emb_folder(tmp_path / "b", x, y2, ids)
    with pytest.raises(ProtocolError, match=r"b/index\.csv:9: utt_id .* is labelled"):
        sample_folders([a, b], rate=0.5, cross_source=True)


# ---------------------------------------------------------------------------------------------------
# confidently classified


def test_min_margin_nearest_among_the_confident_with_fallback():
    x, y, ids, _, _ = pool(300, seed=13)
    rng = np.random.default_rng(14)
    scores = rng.normal(size=300) * 3 + np.where(y == 1, 1.0, -1.0)
    margin = 1.5
    sel = select("nc", x, y, 0.1, min_margin=margin, scores=scores, utt_ids=ids)
    expected = []
    for c in (0, 1):
        rows = np.flatnonzero(y == c)
        d = dict(zip(rows, dist_to_mean(x, rows), strict=True))  # the mean of the whole class
        ok = [i for i in rows if (scores[i] > margin if c == 1 else scores[i] < -margin)]
        k = keep(0.1, rows.size)
        assert len(ok) >= k  # this case needs no fallback
        expected += best(np.array(ok), [d[i] for i in ok], ids, k)
    assert sel.indices.tolist() == sorted(expected)
    assert sel.indices.tolist() != select("nc", x, y, 0.1, utt_ids=ids).indices.tolist()

    # Too few confident rows: all of them, then the nearest of the rest; the notice says so.
    few = np.where(y == 1, -5.0, 5.0)  # every row misclassified ...
    confident = np.flatnonzero(y == 1)[:3]
    few[confident] = 9.0  # ... but three bonafide rows
    sel = select("nc", x, y, 0.5, min_margin=margin, scores=few, utt_ids=ids)
    bona = np.flatnonzero(y == 1)
    d = dict(zip(bona, dist_to_mean(x, bona), strict=True))
    rest = np.array([i for i in bona if i not in confident])
    k = keep(0.5, bona.size)
    expected_b = sorted(confident.tolist() + best(rest, [d[i] for i in rest], ids, k - 3))
    assert sel.indices[y[sel.indices] == 1].tolist() == expected_b
    assert any("3 of" in n and f"{k - 3} chosen rows come from the others" in n for n in sel.notices)


def test_min_margin_reads_the_index_score(tmp_path):
    x, y, ids, _, _ = pool(100, seed=15)
    scores = np.where(y == 1, 3.0, -3.0)
    scores[:10] = 0.0  # not confident
    e = emb_folder(tmp_path / "e", x, y, ids, scores=scores)
    df = sample_folders([e], rate=0.3, min_margin=1.0)
    assert not set(df["utt_id"]) & set(ids[:10])
    assert df.attrs["summary"]["min_margin"] == 1.0
    bad = scores.astype(object)
    bad[4] = "n/a"
    e = emb_folder(tmp_path / "f", x, y, ids, scores=bad)
    with pytest.raises(ProtocolError, match=r"f/index\.csv:6: score 'n/a' is not a finite number"):
        sample_folders([e], rate=0.3, min_margin=1.0)


# ---------------------------------------------------------------------------------------------------
# representative and diverse


@pytest.mark.parametrize("factor", [1.0, 2.0, 3.5])
def test_nc_kcenter_is_kcenter_within_the_nc_pool(factor):
    rng = np.random.default_rng(16)
    centres = 6 * rng.normal(size=(5, 6))
    n = 400
    y = (rng.random(n) < 0.3).astype(np.int64)
    x = (rng.normal(size=(n, 6)) + centres[rng.integers(0, 5, n)]).astype(np.float32)
    ids = np.array([f"u{(i * 37) % 1009:04d}" for i in range(n)], dtype=object)
    sel = select("nc-kcenter", x, y, 0.1, pool_factor=factor, utt_ids=ids)
    expected = []
    for c in (0, 1):
        rows = np.flatnonzero(y == c)
        k = keep(0.1, rows.size)
        pool_rows = best(rows, dist_to_mean(x, rows), ids, min(rows.size, math.ceil(factor * k)))
        picks = naive_kcenter(x[pool_rows], k, 0)  # from the pool's nearest sample
        expected += [pool_rows[p] for p in picks]
    assert sel.indices.tolist() == sorted(expected)
    if factor == 1.0:
        assert sel.indices.tolist() == select("nc", x, y, 0.1, utt_ids=ids).indices.tolist()


def test_nc_kcenter_covers_its_pool_better_than_nc():
    x, y, ids, _, _ = pool(500, seed=17)
    spoof = np.flatnonzero(y == 0)
    k = keep(0.1, spoof.size)
    pool_rows = best(spoof, dist_to_mean(x, spoof), ids, 3 * k)

    def radius(sel):
        chosen = x[sel.indices[y[sel.indices] == 0]].astype(np.float64)
        return np.max(np.min(np.linalg.norm(x[pool_rows][:, None] - chosen[None], axis=2), axis=1))

    div = select("nc-kcenter", x, y, 0.1, pool_factor=3, utt_ids=ids)
    assert radius(div) < radius(select("nc", x, y, 0.1, utt_ids=ids))


# ---------------------------------------------------------------------------------------------------
# per-source streams and per-source class means


@pytest.mark.parametrize("name", ["random", "kcenter"])
def test_two_sources_of_equal_class_sizes_draw_independently(tmp_path, name):
    x, y, _, _, _ = pool(200, seed=18)
    a = emb_folder(tmp_path / "a", x, y, [f"a{i:04d}" for i in range(200)], dataset="A", source="src_a")
    b = emb_folder(tmp_path / "b", x, y, [f"b{i:04d}" for i in range(200)], dataset="B", source="src_b")
    df = sample_folders([a, b], strategy=name, rate=0.1, seed=3)
    rows_a = sorted(int(u[1:]) for u in df.loc[df["dataset"] == "A", "utt_id"])
    rows_b = sorted(int(u[1:]) for u in df.loc[df["dataset"] == "B", "utt_id"])
    assert len(rows_a) == len(rows_b) == keep(0.1, int((y == 0).sum())) + keep(0.1, int((y == 1).sum()))
    assert rows_a != rows_b
    # Each source's draw depends on its own name only: alone, or after another folder, it is the same.
    alone = sample_folders([b], strategy=name, rate=0.1, seed=3)
    assert sorted(alone["utt_id"]) == sorted(df.loc[df["dataset"] == "B", "utt_id"])
    # At the array level the stream is named; without one the draw is keyed by (seed, class) alone.
    s1 = select(name, x, y, 0.1, seed=3, stream="src_a")
    s2 = select(name, x, y, 0.1, seed=3, stream="src_b")
    assert s1.indices.tolist() != s2.indices.tolist()


def test_class_means_are_per_source_not_pooled(tmp_path):
    rng = np.random.default_rng(19)
    n = 120
    ya, yb = (rng.random(n) < 0.4).astype(int), (rng.random(n) < 0.4).astype(int)
    xa = (rng.normal(size=(n, 4)) + np.where(ya[:, None] == 1, 2.0, -2.0)).astype(np.float32)
    # Source b's classes sit far from a's: a pooled class mean lies between the two sources.
    xb = (rng.normal(size=(n, 4)) * 2 + np.where(yb[:, None] == 1, 9.0, -9.0) + 5).astype(np.float32)
    ida = np.array([f"a{i:04d}" for i in range(n)], dtype=object)
    idb = np.array([f"b{i:04d}" for i in range(n)], dtype=object)
    a = emb_folder(tmp_path / "a", xa, ya, ida, dataset="A", source="a")
    b = emb_folder(tmp_path / "b", xb, yb, idb, dataset="B", source="b")
    df = sample_folders([a, b], strategy="nc", rate=0.15)
    per_source = sorted(ida[reference_nc(xa, ya, ida, {0: 0.15, 1: 0.15})].tolist()
                        + idb[reference_nc(xb, yb, idb, {0: 0.15, 1: 0.15})].tolist())
    assert sorted(df["utt_id"]) == per_source

    # What pooling the class means across sources would pick (per source, k as above): it differs.
    x, y, ids = np.vstack([xa, xb]), np.r_[ya, yb], np.r_[ida, idb]
    pooled = []
    for part in (np.arange(n), np.arange(n, 2 * n)):
        for c in (0, 1):
            rows = part[y[part] == c]
            mu = x[y == c].astype(np.float64).mean(axis=0)
            pooled += best(rows, np.linalg.norm(x[rows] - mu, axis=1), ids, keep(0.15, rows.size))
    assert sorted(ids[pooled].tolist()) != per_source


# ---------------------------------------------------------------------------------------------------
# coverage


def test_space_coverage_against_brute_force():
    x, y, _, _, _ = pool(120, seed=20)
    kept = np.array([0, 3, 4, 10, 11, 50, 60, 61, 90, 119])
    cov = space_coverage(x, y, kept)
    for c, name in ((0, "spoof"), (1, "bonafide")):
        rows = np.flatnonzero(y == c)
        k = np.intersect1d(rows, kept)
        xk = x[k].astype(np.float64)
        dk = np.linalg.norm(xk[:, None] - xk[None], axis=2)
        np.fill_diagonal(dk, np.inf)
        e = cov["per_class"][name]
        assert e["kept"] == k.size and e["pool"] == rows.size
        assert e["kept_nn"] == pytest.approx(dk.min(axis=1).mean(), rel=1e-5)
        dp = np.linalg.norm(x[rows].astype(np.float64)[:, None] - xk[None], axis=2).min(axis=1)
        assert e["pool_to_kept"] == pytest.approx(dp.mean(), rel=1e-5, abs=1e-6)
    assert cov["nc1_kept"] == pytest.approx(nc_metrics(x[kept], y[kept])["nc1"])
    assert cov["nc1_pool"] == pytest.approx(nc_metrics(x, y)["nc1"])
    only_spoof = space_coverage(x, y, np.flatnonzero(y == 0)[:5])
    assert only_spoof["nc1_kept"] is None and only_spoof["per_class"]["bonafide"]["kept_nn"] is None


@pytest.mark.parametrize("d", [3, 64])
def test_coverage_nc1_equals_nc_metrics(d):
    from ncdetect.collapse.coverage import _nc1

    rng = np.random.default_rng(d)
    y = (rng.random(500) < 0.3).astype(np.int64)
    x = (rng.normal(size=(500, d)) * rng.random(d) * 3 + 2 * rng.normal(size=(2, d))[y]).astype(np.float32)
    rows = np.sort(rng.choice(500, 200, replace=False))
    assert _nc1(x, y, rows) == pytest.approx(nc_metrics(x[rows], y[rows])["nc1"], rel=1e-9)


def test_nearest_distance_excludes_only_the_own_row():
    ref = np.array([[0.0, 0], [1, 0], [1, 0], [5, 5]], dtype=np.float32)
    assert nearest_distance(ref, ref, exclude=np.arange(4)).tolist() == pytest.approx(
        [1.0, 0.0, 0.0, math.hypot(4, 5)])


def write_wavs(root: Path, ids, seconds):
    root.mkdir(parents=True, exist_ok=True)
    for u, s in zip(ids, seconds, strict=True):
        sf.write(root / f"{u}.wav", np.zeros(int(16000 * s), dtype=np.float32), 16000)


def test_sample_writes_coverage_by_attack_speaker_language_and_duration(tmp_path):
    x, y, ids, att, spk = pool(80, seed=21)
    secs = 0.1 + 0.05 * (np.arange(80) % 8)
    language = np.where(np.arange(80) % 2 == 0, "en", "es")
    e = emb_folder(tmp_path / "e", x, y, ids, attacks=att, speakers=spk, extra={"language": language})
    write_wavs(e / "wav", ids, secs)
    out = tmp_path / "sel.csv"
    df = sample_folders([e], strategy="random", rate=0.25, seed=1, out=out)
    cov = json.loads(summary_path(out).read_text())["coverage"]
    kept = np.isin(ids, df["utt_id"].to_numpy())
    for key, column in (("per_attack", att), ("per_speaker", spk), ("per_language", language)):
        for value, entry in cov[key].items():
            mask = column == value
            assert (entry["total"], entry["selected"]) == (mask.sum(), (mask & kept).sum()), (key, value)
    quart = cov["per_duration_quartile"]
    assert len(quart) == 4 and sum(v["total"] for v in quart.values()) == 80
    edges = np.quantile(secs, [0, 0.25, 0.5, 0.75, 1])
    first = next(iter(quart))
    assert first == f"Q1 {edges[0]:.2f}-{edges[1]:.2f} s"
    assert quart[first]["total"] == int(np.sum(secs <= edges[1] + 1e-9))
    (space,) = cov["spaces"]
    assert space["per_class"]["spoof"]["kept"] == int((kept & (y == 0)).sum())
    text = format_summary(df.attrs["summary"])
    assert "coverage of the pool:" in text and "language:" in text and "mean NN distance of kept" in text


def test_coverage_duration_column_and_unreadable_audio(tmp_path):
    x, y, ids, _, _ = pool(40, seed=22)
    e = emb_folder(tmp_path / "e", x, y, ids, extra={"duration": np.linspace(1, 4, 40)})
    cov = sample_folders([e], rate=0.5).attrs["summary"]["coverage"]
    assert "unknown" not in cov["per_duration_quartile"] and "per_language" not in cov
    e = emb_folder(tmp_path / "f", x, y, ids)  # paths to files that do not exist
    df = sample_folders([e], rate=0.5)
    assert df.attrs["summary"]["coverage"]["per_duration_quartile"]["unknown"]["total"] == 40
    assert any("duration of 40 of 40 pool rows unknown" in n for n in df.attrs["summary"]["notices"])
    assert "coverage" not in sample_folders([e], rate=0.5, coverage=False).attrs["summary"]


# ---------------------------------------------------------------------------------------------------
# the command line


def test_cli_sample_new_options(tmp_path):
    from typer.testing import CliRunner

    from ncdetect.cli import app

    x, y, ids, att, spk = pool(200, seed=23)
    scores = np.where(y == 1, 2.0, -2.0)
    e = emb_folder(tmp_path / "e", x, y, ids, attacks=att, speakers=spk, scores=scores)
    out = tmp_path / "picked.csv"
    runner = CliRunner()
    args = ["sample", str(e), "--strategy", "nc", "--rate", "0.3", "--real-mode", "speaker",
            "--order", "auto", "--order-switch", "0.25", "--min-margin", "1", "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    lib = sample_folders([e], strategy="nc", rate=0.3, real_mode="speaker", order="auto", order_switch=0.25,
                         min_margin=1.0)
    assert pd.read_csv(out)["utt_id"].tolist() == lib["utt_id"].tolist()
    assert "real mode speaker" in res.output and "order auto" in res.output and "coverage" in res.output
    res = runner.invoke(app, ["sample", str(e), "--strategy", "nc-kcenter", "--rate", "0.1", "--pool-factor",
                              "3", "--no-coverage", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "coverage" not in json.loads(summary_path(out).read_text())
    res = runner.invoke(app, ["sample", str(e), "--strategy", "nc", "--rate", "0.1", "--order", "middle",
                              "--out", str(out)])
    assert res.exit_code == 2
    res = runner.invoke(app, ["sample", "--help"])
    assert "nc-kcenter" in res.output and "--cross-source" in res.output


def brute_nn(x, query_rows, ref_rows, skip_self):
    """The nearest ref row of every query row, from all float64 distances (skip_self: not the row itself)."""
    q, r = x[query_rows].astype(np.float64), x[ref_rows].astype(np.float64)
    d = np.linalg.norm(q[:, None] - r[None], axis=2)
    if skip_self:
        d[np.arange(query_rows.size), np.searchsorted(ref_rows, query_rows)] = np.inf
    return d.min(axis=1)


def test_coverage_estimate_interval_holds_the_exact_value():
    # A pool small enough for both: 2,400 rows in 16-d, a quarter kept; the estimate draws 200 query rows
    # per mean and class (seed 0), the exact computation queries every row.
    x, y, _, _, _ = pool(2400, d=16, seed=30)
    kept = np.sort(np.random.default_rng(31).choice(2400, 600, replace=False))
    est, exact = space_coverage(x, y, kept), space_coverage(x, y, kept, mode="exact")
    for c, name in ((0, "spoof"), (1, "bonafide")):
        rows = np.flatnonzero(y == c)
        k, others = np.intersect1d(rows, kept), np.setdiff1d(rows, kept)
        truth = {"kept_nn": brute_nn(x, k, k, True).mean(),
                 "pool_to_kept": brute_nn(x, others, k, False).sum() / rows.size}
        e, t = est["per_class"][name], exact["per_class"][name]
        assert (t["kept_nn_points"], t["pool_to_kept_points"]) == (k.size, others.size)
        assert (e["kept_nn_points"], e["pool_to_kept_points"]) == (200, 200)
        for fig in ("kept_nn", "pool_to_kept"):
            assert t[fig] == pytest.approx(truth[fig], rel=1e-9)
            assert t[f"{fig}_ci95"] == [t[fig], t[fig]]
            low, high = e[f"{fig}_ci95"]
            assert low < truth[fig] < high, (name, fig, low, truth[fig], high)
            # The stated tolerance: the 95% interval is within 3% of the value either side here.
            assert high - low < 0.06 * truth[fig]
    assert exact["nc1_pool"] == pytest.approx(nc_metrics(x, y)["nc1"], rel=1e-9)
    assert exact["nc1_pool_rows"] == 2400
    small = space_coverage(x, y, kept, nc1_rows=1000)
    assert small["nc1_pool_rows"] == 1000 and small["nc1_kept"] == pytest.approx(exact["nc1_kept"])
    assert (small["nc1_kept_rows"], exact["nc1_kept_rows"]) == (600, 600)  # all 600 kept rows: exact
    assert exact["nc1_kept"] == pytest.approx(nc_metrics(x[kept], y[kept])["nc1"], rel=1e-9)
    # fewer rows than kept: NC1 of a seeded draw of the kept set, close to the whole set's
    few = space_coverage(x, y, kept, nc1_rows=300)
    assert few["nc1_kept_rows"] == 300 and few["nc1_kept"] != exact["nc1_kept"]
    assert few["nc1_kept"] == pytest.approx(exact["nc1_kept"], rel=0.15)


def test_coverage_modes_in_the_summary_and_checked_early(tmp_path):
    from ncdetect.collapse.sampling import check_options
    from ncdetect.errors import ConfigError

    x, y, ids, _, _ = pool(300, seed=32)
    e = emb_folder(tmp_path / "e", x, y, ids, extra={"duration": np.linspace(1, 4, 300)})
    est = sample_folders([e], rate=0.2).attrs["summary"]["coverage"]
    assert (est["mode"], est["points"], est["confidence"]) == ("estimate", 200, 0.95)
    exact = sample_folders([e], rate=0.2, coverage="exact").attrs["summary"]["coverage"]
    assert exact["mode"] == "exact" and "points" not in exact
    assert exact["spaces"][0]["per_class"]["spoof"]["kept_nn_points"] == round(0.2 * int((y == 0).sum()))
    assert sample_folders([e], rate=0.2, coverage=True).attrs["summary"]["coverage"]["mode"] == "estimate"
    assert "coverage" not in sample_folders([e], rate=0.2, coverage="off").attrs["summary"]
    with pytest.raises(ConfigError, match="coverage must be one of estimate, exact, off"):
        sample_folders([tmp_path / "missing"], rate=0.2, coverage="sometimes")
    with pytest.raises(ConfigError, match="coverage must be one of"):
        check_options("nc", 0.2, coverage="all")
    check_options("nc", 0.2, coverage="exact")


@pytest.mark.parametrize("seed", range(4))
def test_union_keys_match_pandas_on_string_pairs(seed):
    """Keys' integer codes give pandas' duplicated(keep="first") and isin on (dataset, utt_id) pairs,
    duplicates within and across pools and several datasets included."""
    from ncdetect.collapse.sampling import Keys

    rng = np.random.default_rng(seed)
    indexes = [pd.DataFrame({"dataset": rng.choice(["a", "b"], n),
                             "utt_id": [f"u{v}" for v in rng.integers(0, 40, n)]})
               for n in (30, 25, 1 + seed)]
    chosen = [np.sort(rng.choice(len(i), len(i) // 3, replace=False)) for i in indexes]
    keys = Keys(indexes)
    keys.choose(chosen)
    union = pd.concat(indexes, ignore_index=True)
    first = ~union.duplicated(["dataset", "utt_id"], keep="first")
    assert keys.population(indexes).equals(union.loc[first].reset_index(drop=True))
    picked = pd.concat([i.iloc[r] for i, r in zip(indexes, chosen, strict=True)], ignore_index=True)
    assert (keys.chosen_first == ~picked.duplicated(["dataset", "utt_id"], keep="first").to_numpy()).all()
    kept_keys = pd.MultiIndex.from_frame(picked)
    pop = union.loc[first]
    assert (keys.kept_in_population() == pd.MultiIndex.from_frame(pop).isin(kept_keys)).all()
    for p, index in enumerate(indexes):
        expect = np.flatnonzero(pd.MultiIndex.from_frame(index).isin(kept_keys))
        assert keys.kept_rows(p).tolist() == expect.tolist()


@pytest.mark.parametrize("dtype", ["object", "str"])
def test_factorize_matches_pandas(dtype):
    from ncdetect.collapse.sampling import _factorize

    rng = np.random.default_rng(5)
    values = pd.Series([f"u{v}" for v in rng.integers(0, 300, 2000)], dtype=dtype)
    chunked = pd.concat([values[:700], values[700:]], ignore_index=True)  # Arrow-backed: two chunks
    for column in (values, chunked):
        codes, n = _factorize(column)
        ref, uniques = pd.factorize(column)
        assert codes.tolist() == ref.tolist() and n == len(uniques)


def test_read_rows_equals_fancy_indexing(tmp_path):
    from ncdetect.collapse.embeddings import read_rows

    x = np.arange(1000 * 3, dtype=np.float32).reshape(1000, 3)
    np.save(tmp_path / "x.npy", x)
    m = np.load(tmp_path / "x.npy", mmap_mode="r")
    rng = np.random.default_rng(0)
    for rows in (np.sort(rng.choice(1000, 77, replace=False)), rng.choice(1000, 50), np.arange(0),
                 np.array([999]), np.arange(1000), np.array([3, 3, 64, 65, 999])):
        got = read_rows(m, rows, chunk_rows=64)
        assert type(got) is np.ndarray and got.shape == (rows.size, 3)
        assert np.array_equal(got, x[rows])


def test_sample_names_the_file_and_row_of_a_nan_in_any_view(tmp_path):
    from ncdetect.errors import NcdetectError

    x, y, ids, _, _ = pool(100, seed=40)
    a = emb_folder(tmp_path / "a", x, y, ids, source="a")
    bad = x.copy()
    bad[57, 3] = np.nan
    b = emb_folder(tmp_path / "b", bad, y, ids, source="b")
    for folders, cross in (([b], False), ([a, b], True)):
        with pytest.raises(NcdetectError, match=rf"b/embeddings.npy: row 57 \(utt_id {ids[57]}\) holds NaN"):
            sample_folders(folders, rate=0.2, cross_source=cross)
