"""The results table: IQM and stratified bootstrap against hand-computed cases, the published IRIS and
DIAMOND aggregates as their papers report them, results.json loading, protocol refusal, the CLI."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from test_cli import run

from worldmodels.aggregate import (
    aggregate,
    bootstrap_ci,
    bootstrap_samples,
    build_table,
    format_table,
    group_by_protocol,
    iqm,
    load_results,
    published_hns,
)
from worldmodels.errors import UserError
from worldmodels.scores import human_normalized, reference_scores

PROTOCOL = {"frame_skip": 4, "sticky_action_prob": 0.0, "max_episode_frames": 108000}


def test_iqm_is_the_25_percent_trimmed_mean():
    assert iqm(np.array([3.0, 1, 100, 2, 4, 10, 1, 0])) == pytest.approx(2.5)  # mean(1, 2, 3, 4)
    # n = 5: int(0.25 * 5) = 1 cut from each end, as scipy.stats.trim_mean(x, 0.25)
    assert iqm(np.array([100.0, 2, 1, 4, 3])) == pytest.approx(3.0)
    # leading dims are independent rows
    np.testing.assert_allclose(iqm(np.array([[0.0, 1, 2, 3], [4, 4, 8, 100]])), [1.5, 6.0])


def test_weighted_iqm_trims_a_quarter_of_the_weight():
    # weights 1/4 x 4 and 1: the middle half [0.5, 1.5] of the weight holds the upper half of
    # 4 and of 6 and the first half of 10: (0.25 * 4 + 0.25 * 6 + 0.5 * 10) / 1 = 7.5
    x = np.array([0.0, 2, 4, 6, 10])
    assert iqm(x, np.array([0.25, 0.25, 0.25, 0.25, 1.0])) == pytest.approx(7.5)
    # equal weights and n divisible by 4: the unweighted IQM
    y = np.random.default_rng(0).normal(size=12)
    assert iqm(y, np.ones(12)) == pytest.approx(iqm(y))


def test_aggregates_of_a_small_hand_computed_case():
    scores = {"a": [0.0, 10], "b": [1.0, 1], "c": [2.0, 4], "d": [100.0, 3]}
    agg = aggregate(scores)
    assert agg["mean"] == pytest.approx((5 + 1 + 3 + 51.5) / 4)  # of the per-game means
    assert agg["median"] == pytest.approx((3 + 5) / 2)  # per-game means 1, 3, 5, 51.5
    assert agg["iqm"] == pytest.approx(2.5)  # game x seed scores: mean(1, 2, 3, 4)
    assert agg["games"] == 4 and agg["games_at_human"] == 4  # mean >= 1 counts, 1 included
    assert aggregate({"a": [0.5, 1.5], "b": [0.99], "c": [3.0]})["games_at_human"] == 2
    # unequal runs per game: games count equally in the IQM
    assert aggregate({"a": [0.0, 4], "b": [1.0]})["iqm"] == pytest.approx(1.0)


def test_bootstrap_is_stratified_over_games():
    # One run per game: nothing to resample, the interval is the point.
    one = {"a": [0.3], "b": [2.0], "c": [0.7]}
    point = aggregate(one)
    for stat, (lo, hi) in bootstrap_ci(one, reps=200).items():
        assert lo == pytest.approx(point[stat]) and hi == pytest.approx(point[stat])
    # Runs are only ever drawn from their own game: y's runs are equal, so every resampled mean
    # is (mean of x's resample + 5) / 2; a pooled bootstrap would give other values.
    s = bootstrap_samples({"x": [0.0, 1.0], "y": [5.0, 5.0]}, reps=4000, seed=1)["mean"]
    values, counts = np.unique(np.round(s, 9), return_counts=True)
    np.testing.assert_allclose(values, [2.5, 2.75, 3.0])
    np.testing.assert_allclose(counts / counts.sum(), [0.25, 0.5, 0.25], atol=0.03)


def test_bootstrap_distribution_matches_exact_enumeration():
    scores = {"a": [0.0, 1.0], "b": [2.0, 6.0]}
    # every resample: an ordered pair of indices per game, 4 x 4 = 16 equally likely
    exact = []
    for ia, ib in itertools.product(itertools.product(range(2), repeat=2), repeat=2):
        ra = np.array(scores["a"])[list(ia)]
        rb = np.array(scores["b"])[list(ib)]
        exact.append((np.mean([ra.mean(), rb.mean()]), iqm(np.concatenate([ra, rb]))))
    samples = bootstrap_samples(scores, reps=20000, seed=0)
    for k, name in enumerate(("mean", "iqm")):
        want = np.array([e[k] for e in exact])
        for v in np.unique(want):
            p_exact = np.mean(want == v)
            p_boot = np.mean(np.isclose(samples[name], v))
            assert p_boot == pytest.approx(p_exact, abs=0.015), (name, v)
    lo, hi = bootstrap_ci(scores, reps=20000, seed=0)["mean"]
    # the extreme resamples (1.0 and 3.5) have probability 1/16 each, more than 2.5%
    assert lo == pytest.approx(1.0) and hi == pytest.approx(3.5)
    assert bootstrap_ci(scores, reps=500, seed=3) == bootstrap_ci(scores, reps=500, seed=3)


@pytest.mark.parametrize(
    ("method", "mean", "median", "iqm_", "at_human"),
    [("IRIS", 1.046, 0.289, 0.501, 10), ("DIAMOND", 1.459, 0.373, 0.641, 11)],
)
def test_published_aggregates_over_the_26_games_are_the_papers(
    method, mean, median, iqm_, at_human
):
    scores = published_hns(method)
    assert len(scores) == 26 and all(len(v) == 5 for v in scores.values())
    agg = aggregate(scores)
    assert round(agg["mean"], 3) == mean
    assert round(agg["median"], 3) == median
    assert round(agg["iqm"], 3) == iqm_  # as reported in the DIAMOND paper (rliable IQM)
    assert agg["games_at_human"] == at_human
    ci = bootstrap_ci(scores, reps=300)
    assert all(lo <= agg[k] <= hi for k, (lo, hi) in ci.items())


def _write(d, game, seed, mean, protocol=PROTOCOL, world="diffusion", agent="actor_critic"):
    d.mkdir(parents=True)
    rec = {"game": game, "seed": seed, "mean": mean, "returns": [mean], "world": world,
           "agent": agent, "protocol": dict(protocol), "hns": human_normalized(game, mean)}  # fmt: skip
    (d / "results.json").write_text(json.dumps(rec))
    return d


def _four_runs(tmp_path):
    return [
        _write(tmp_path / "b0", "Breakout", 0, 10.0),
        _write(tmp_path / "b1", "Breakout", 1, 20.0),
        _write(tmp_path / "p0", "Pong", 0, -20.0),
        _write(tmp_path / "p1", "Pong", 1, 0.0),
    ]


def test_table_from_results_files(tmp_path):
    dirs = _four_runs(tmp_path)
    (tmp_path / "empty").mkdir()
    records, warnings = load_results([*dirs[:3], dirs[3] / "results.json", tmp_path / "empty"])
    assert len(records) == 4 and len(warnings) == 1 and "empty" in warnings[0]
    table = build_table(records, reps=200, seed=0)
    rows = table["methods"]["diffusion/actor_critic"]["games"]
    assert rows["Breakout"]["runs"] == 2 and rows["Breakout"]["mean_return"] == pytest.approx(15)
    assert rows["Breakout"]["hns"] == pytest.approx(human_normalized("Breakout", 15.0))
    hns = {g: [human_normalized(g, m) for m in ms] for g, ms in
           {"Breakout": [10.0, 20.0], "Pong": [-20.0, 0.0]}.items()}  # fmt: skip
    aggs = table["methods"]["diffusion/actor_critic"]["aggregates"]
    assert aggs["mean"]["value"] == pytest.approx(aggregate(hns)["mean"])
    assert aggs["iqm"]["value"] == pytest.approx(aggregate(hns)["iqm"])
    assert aggs["games_at_human"] == 0
    for name in ("IRIS", "DIAMOND"):  # the published numbers on the same two games only
        pub = table["published"][name]
        assert sorted(pub["games"]) == ["Breakout", "Pong"]
        want = aggregate(published_hns(name, ["Breakout", "Pong"]))
        assert pub["aggregates"]["median"]["value"] == pytest.approx(want["median"])
        mean_ret = np.mean(reference_scores()["Pong"][name])
        assert pub["games"]["Pong"]["mean_return"] == pytest.approx(mean_ret)
    text = format_table(table)
    for word in ("Breakout", "Pong", "IRIS", "DIAMOND", "IQM", "median", ">=human"):
        assert word in text
    json.dumps(table)  # table.json is plain data


def test_different_protocols_are_refused(tmp_path):
    dirs = _four_runs(tmp_path)
    other = {**PROTOCOL, "sticky_action_prob": 0.25}
    dirs.append(_write(tmp_path / "m", "Breakout", 2, 5.0, protocol=other))
    records, _ = load_results(dirs)
    with pytest.raises(UserError, match=r"differ in sticky_action_prob \(0\.0 vs 0\.25\)"):
        build_table(records)


def test_results_are_grouped_by_the_protocols_that_can_be_aggregated(tmp_path):
    sticky = {**PROTOCOL, "sticky_action_prob": 0.25}
    dirs = [_write(tmp_path / "a", "Breakout", 0, 1.0), _write(tmp_path / "b", "Pong", 0, 1.0,
            protocol=sticky), _write(tmp_path / "c", "Pong", 1, 2.0)]  # fmt: skip
    groups = group_by_protocol(load_results(dirs)[0])
    assert [[Path(r["_path"]).parent.name for r in g] for g in groups] == [["a", "c"], ["b"]]


def _with_lengths(d, lengths):
    rec = json.loads((d / "results.json").read_text())
    rec["lengths"] = lengths
    (d / "results.json").write_text(json.dumps(rec))
    return d


def test_an_episode_cap_that_ended_no_episode_is_named_not_refused(tmp_path):
    smoke = {**PROTOCOL, "max_episode_frames": 4000}  # a smoke run's cap beside a full run's
    a = _with_lengths(_write(tmp_path / "a", "Breakout", 0, 5.0), [300, 900])
    b = _with_lengths(_write(tmp_path / "b", "Breakout", 1, 4.0, protocol=smoke), [250, 999])
    table = build_table(load_results([a, b])[0], reps=50)
    assert len(table["protocol_notes"]) == 1
    assert (
        "max_episode_frames (108000 vs 4000): does not change the returns"
        in (table["protocol_notes"][0])
    )
    # ... but where an episode may have been cut by the lower cap (4 x 1000 = 4000 frames), or
    # the lengths are unknown, the returns may differ: refused in one line
    c = _with_lengths(_write(tmp_path / "c", "Breakout", 2, 4.0, protocol=smoke), [1000])
    with pytest.raises(UserError, match=r"max_episode_frames \(108000 vs 4000, and an episode"):
        build_table(load_results([a, c])[0])
    d = _write(tmp_path / "d", "Breakout", 3, 4.0, protocol=smoke)  # no lengths recorded
    with pytest.raises(UserError, match="max_episode_frames"):
        build_table(load_results([a, d])[0])
    # input-side protocol values (observation size, pooling) do not change a game's return
    e = _write(
        tmp_path / "e", "Breakout", 4, 4.0, protocol={**PROTOCOL, "pool_order": "resize_then_max"}
    )
    notes = build_table(load_results([a, e])[0], reps=50)["protocol_notes"]
    assert len(notes) == 1 and "pool_order" in notes[0]


@pytest.mark.slow
def test_evaluate_table_cli(tmp_path):
    dirs = _four_runs(tmp_path)
    (tmp_path / "runs").mkdir()
    res = run("evaluate.py", "--table", *dirs, tmp_path / "runs", "--bootstrap", "100",
              "--out", tmp_path / "t.json", cwd=tmp_path)  # fmt: skip
    assert "Breakout" in res.stdout and "IQM" in res.stdout
    assert "no results.json" in res.stderr  # runs/ itself: warned about, skipped
    table = json.loads((tmp_path / "t.json").read_text())
    assert table["bootstrap"]["reps"] == 100 and len(table["inputs"]) == 4
    # results of a protocol that changes the returns are never mixed in: tabled apart
    _write(tmp_path / "m", "Pong", 3, 1.0, protocol={**PROTOCOL, "frame_skip": 5})
    res = run("evaluate.py", "--table", *dirs, tmp_path / "m", "--out", tmp_path / "t2.json",
              cwd=tmp_path)  # fmt: skip
    assert "2 env protocols that cannot be aggregated together" in res.stdout
    assert "== table 2 of 2: 1 results" in res.stdout and "'frame_skip': 5" in res.stdout
    both = json.loads((tmp_path / "t2.json").read_text())["tables"]
    assert [len(t["inputs"]) for t in both] == [4, 1]
    assert both[1]["protocol"]["frame_skip"] == 5
