"""The results table: ``results.json`` files aggregated over games and seeds, beside IRIS and DIAMOND.

Per game, each run's score is the mean return of its test episodes; the game's score is the mean
over its runs (seeds), and its human-normalized score (HNS) that of the mean. Across games the
aggregates follow rliable (Agarwal et al. 2021, "Deep RL at the Edge of the Statistical Precipice"):

* **mean**: the mean over games of the per-game mean HNS;
* **median**: the median over games of the per-game mean HNS;
* **IQM**: the interquartile mean of the game x run HNS scores, i.e. ``scipy.stats.trim_mean(x,
  0.25)`` over all of them (``int(0.25 * n)`` scores cut from each end). With unequal numbers of
  runs per game, each score weighs ``1 / runs of its game`` (games count equally) and 25% of the
  weight is trimmed from each end (fractionally);
* **games >= human**: games whose mean HNS is at least 1;
* 95% **percentile bootstrap** confidence intervals, stratified: each resample draws, for every
  game, as many runs as it has with replacement from that game's runs (a game with a single run
  adds no spread).

The published IRIS and DIAMOND per-run scores (``worldmodels/reference/atari100k_scores.json``)
go through the same pipeline on the same games, so the table compares like with like. Over all
26 games this gives IRIS mean 1.046, median 0.289, IQM 0.501, 10 games >= human, and DIAMOND mean
1.459, median 0.373, IQM 0.641, 11 games >= human, the figures those papers report.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from worldmodels.envs.atari_config import AtariConfig
from worldmodels.errors import UserError
from worldmodels.scores import human_normalized, reference_scores

__all__ = [
    "PUBLISHED",
    "STATS",
    "aggregate",
    "bootstrap_ci",
    "bootstrap_samples",
    "build_table",
    "check_protocols",
    "difference_ci",
    "mean_ci",
    "format_table",
    "group_by_protocol",
    "iqm",
    "load_results",
    "published_hns",
]

PUBLISHED = ("IRIS", "DIAMOND")
STATS = ("mean", "median", "iqm")


# --------------------------------------------------------------------------------------------
# The statistics (pure functions of per-game score arrays)


def iqm(x: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Interquartile mean along the last axis of ``x (..., n)``.

    Unweighted: ``scipy.stats.trim_mean(x, 0.25, axis=-1)``, the mean of the sorted scores with
    ``int(0.25 * n)`` cut from each end (rliable's IQM). With ``weights (n,)`` (> 0): the mean of
    the middle half of the weight, where a score straddling a quartile counts by the fraction of
    its weight inside it.
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[-1]
    if n == 0:
        raise ValueError("iqm of no scores")
    if weights is None:
        cut = int(0.25 * n)
        return np.sort(x, axis=-1)[..., cut : n - cut].mean(axis=-1)
    w = np.broadcast_to(np.asarray(weights, dtype=np.float64), x.shape)
    order = np.argsort(x, axis=-1)
    xs = np.take_along_axis(x, order, axis=-1)
    ws = np.take_along_axis(w, order, axis=-1)
    hi = np.cumsum(ws, axis=-1)  # each score occupies [hi - w, hi) of the total weight
    lo = hi - ws
    total = hi[..., -1:]
    a, b = 0.25 * total, 0.75 * total
    inside = np.clip(np.minimum(hi, b) - np.maximum(lo, a), 0.0, None)
    return (xs * inside).sum(axis=-1) / (b - a)[..., 0]


def _stats(per_game: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Aggregates of per-game scores ``per_game[g] (..., n_g)``; leading dims are resamples."""
    means = np.stack([s.mean(axis=-1) for s in per_game], axis=-1)  # (..., G)
    flat = np.concatenate(per_game, axis=-1)  # (..., sum n_g)
    counts = [s.shape[-1] for s in per_game]
    weights = None
    if len(set(counts)) > 1:  # games count equally whatever their number of runs
        weights = np.concatenate([np.full(n, 1.0 / n) for n in counts])
    return {
        "mean": means.mean(axis=-1),
        "median": np.median(means, axis=-1),
        "iqm": iqm(flat, weights),
    }


def _as_arrays(scores: Mapping[str, Sequence[float]]) -> list[np.ndarray]:
    if not scores:
        raise ValueError("no games to aggregate")
    out = []
    for game, s in scores.items():
        a = np.asarray(s, dtype=np.float64)
        if a.ndim != 1 or a.size == 0:
            raise ValueError(f"game {game!r} needs a non-empty list of run scores, got {s!r}")
        out.append(a)
    return out


def aggregate(scores: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Point estimates from ``{game: [score of each run]}`` (HNS): mean, median, IQM, the number
    of games and of games whose mean score is >= 1 (human level)."""
    arrays = _as_arrays(scores)
    out = {k: float(v) for k, v in _stats(arrays).items()}
    out["games"] = len(arrays)
    out["games_at_human"] = int(sum(a.mean() >= 1.0 for a in arrays))
    return out


def bootstrap_samples(
    scores: Mapping[str, Sequence[float]], reps: int = 2000, seed: int = 0
) -> dict[str, np.ndarray]:
    """``{stat: (reps,)}``: each aggregate over ``reps`` stratified bootstrap resamples (each
    game's runs drawn with replacement, as many as it has)."""
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    rng = np.random.default_rng(seed)
    resampled = []
    for a in _as_arrays(scores):
        idx = rng.integers(0, a.size, size=(reps, a.size))  # (R, n_g)
        resampled.append(a[idx])
    return _stats(resampled)


def bootstrap_ci(
    scores: Mapping[str, Sequence[float]], reps: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Percentile confidence intervals ``{stat: (low, high)}`` of mean, median and IQM."""
    tail = 100 * (1 - level) / 2
    samples = bootstrap_samples(scores, reps, seed)
    return {
        k: (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail)))
        for k, v in samples.items()
    }


def mean_ci(
    x: Sequence[float], reps: int = 10_000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``x`` (e.g. test-episode returns)."""
    a = np.asarray(x, dtype=np.float64)
    means = a[np.random.default_rng(seed).integers(0, a.size, size=(reps, a.size))].mean(1)
    tail = 100 * (1 - level) / 2
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def difference_ci(
    a: Sequence[float], b: Sequence[float], reps: int = 10_000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``mean(a) - mean(b)`` for independent samples (each resampled
    on its own): a CI above 0 says ``a`` scores higher than ``b`` at that level."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    d = x[rng.integers(0, x.size, size=(reps, x.size))].mean(1) - y[
        rng.integers(0, y.size, size=(reps, y.size))
    ].mean(1)
    tail = 100 * (1 - level) / 2
    return float(np.percentile(d, tail)), float(np.percentile(d, 100 - tail))


def published_hns(method: str, games: Iterable[str] | None = None) -> dict[str, list[float]]:
    """``{game: [HNS of each published run]}`` of ``method`` (IRIS or DIAMOND) on ``games``
    (default: every game it has scores for; games it lacks are left out)."""
    ref = reference_scores()
    names = ref if games is None else [g for g in games if g in ref]
    out: dict[str, list[float]] = {}
    for game in names:
        if method in ref[game]:
            # not None: a game in the reference table has its human and random scores
            out[game] = [cast(float, human_normalized(game, s)) for s in ref[game][method]]
    return out


# --------------------------------------------------------------------------------------------
# Reading results.json files


def load_results(paths: Iterable[str | Path]) -> tuple[list[dict[str, Any]], list[str]]:
    """The results records found at ``paths`` (run directories or ``results.json`` files), each
    with ``_path`` added, and one warning per path that holds none."""
    records, warnings = [], []
    for p in map(Path, paths):
        f = p / "results.json" if p.is_dir() else p
        if not f.exists():
            warnings.append(f"skipping {p}: no results.json (not evaluated yet?)")
            continue
        try:
            rec = json.loads(f.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            warnings.append(f"skipping {f}: not readable JSON ({exc})")
            continue
        if not isinstance(rec, dict) or not {"game", "mean", "returns"} <= rec.keys():
            warnings.append(f"skipping {f}: not a results.json (no game / mean / returns)")
            continue
        if not isinstance(rec.get("protocol"), dict):
            warnings.append(f"skipping {f}: no env protocol recorded")
            continue
        rec["_path"] = str(f)
        records.append(rec)
    return records, warnings


def protocol_differences(
    a: Mapping[str, Any], b: Mapping[str, Any], refuse: Iterable[str]
) -> tuple[list[str], list[str]]:
    """The keys in which two env protocols differ, split into those in ``refuse`` (or unknown to
    both protocol lists: a difference nobody has judged harmless) and the others, each as
    ``"key (a vs b)"``."""
    judged = set(AtariConfig().protocol_values())
    refuse = set(refuse)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    text = {k: f"{k} ({a.get(k)!r} vs {b.get(k)!r})" for k in keys}
    bad = [text[k] for k in keys if k in refuse or k not in judged]
    return bad, [text[k] for k in keys if not (k in refuse or k not in judged)]


def _longest_episode_frames(rec: Mapping[str, Any]) -> int | None:
    lengths, skip = rec.get("lengths"), rec["protocol"].get("frame_skip")
    if not lengths or not isinstance(skip, int):
        return None
    return max(int(n) for n in lengths) * skip


def check_protocols(records: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """The env protocol of ``records`` and notes on harmless differences; a one-line
    ``UserError`` naming the keys (and two files) where they differ in a way that changes the
    returns (``AtariConfig.SCORE_KEYS``). ``max_episode_frames`` may differ where no test episode
    of either record reached the lower cap (a smoke run's cap beside a full run's): the cap then
    ended no episode, and the difference is named in the notes."""
    first = records[0]
    base = first["protocol"]
    notes: list[str] = []
    for rec in records[1:]:
        other = rec["protocol"]
        refuse = set(AtariConfig.SCORE_KEYS) - {"max_episode_frames"}
        bad, allowed = protocol_differences(base, other, refuse)
        cap_a, cap_b = base.get("max_episode_frames"), other.get("max_episode_frames")
        if cap_a != cap_b:
            ints = isinstance(cap_a, int) and isinstance(cap_b, int)
            low = min(cap_a, cap_b) if ints else None
            longest = [_longest_episode_frames(r) for r in (first, rec)]
            if low is None or any(n is None or n >= low for n in longest):
                allowed = [x for x in allowed if not x.startswith("max_episode_frames ")]
                bad.append(
                    f"max_episode_frames ({cap_a!r} vs {cap_b!r}, and an episode may have "
                    f"reached the lower cap)"
                )
        if bad:
            raise UserError(
                f"results of different env protocols cannot be aggregated: {first['_path']} and "
                f"{rec['_path']} differ in {', '.join(bad)}"
            )
        for x in allowed:
            note = f"{first['_path']} and {rec['_path']} differ in {x}: does not change the returns"
            notes.append(note)
    return dict(base), notes


def group_by_protocol(records: Sequence[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """``records`` split into groups that ``check_protocols`` accepts, in first-seen order: each
    record joins the first group it can be aggregated with, else starts one."""
    groups: list[list[Mapping[str, Any]]] = []
    for rec in records:
        for group in groups:
            try:
                check_protocols([*group, rec])
            except UserError:
                continue
            group.append(rec)
            break
        else:
            groups.append([rec])
    return groups


def _method(rec: Mapping[str, Any]) -> str:
    return f"{rec.get('world') or 'noworld'}/{rec.get('agent') or '?'}"


def _summary(scores: Mapping[str, Sequence[float]], reps: int, seed: int) -> dict[str, Any]:
    point = aggregate(scores)
    ci = bootstrap_ci(scores, reps, seed)
    out: dict[str, Any] = {k: {"value": point[k], "ci95": list(ci[k])} for k in STATS}
    out["games"] = point["games"]
    out["games_at_human"] = point["games_at_human"]
    return out


def build_table(
    records: Sequence[Mapping[str, Any]], *, reps: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """The table as data: per method (``world/agent``) and game the runs, mean return and HNS;
    the aggregates with bootstrap CIs; and the published IRIS and DIAMOND aggregates on the same
    games. Refuses records of different env protocols."""
    if not records:
        raise UserError("no results to aggregate: give run directories or results.json files")
    protocol, protocol_notes = check_protocols(records)
    by_method: dict[str, dict[str, list[Mapping[str, Any]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for rec in records:
        by_method[_method(rec)][rec["game"]].append(rec)

    warnings = []
    methods: dict[str, Any] = {}
    all_games: set[str] = set()
    for method, games in sorted(by_method.items()):
        rows, hns = {}, {}
        for game, recs in sorted(games.items()):
            seeds = [r.get("seed") for r in recs]
            if len(set(seeds)) < len(seeds):
                warnings.append(f"{method} {game}: seed repeated among {len(recs)} runs {seeds}")
            means = [float(r["mean"]) for r in recs]
            run_hns = [human_normalized(game, m) for m in means]
            # one game: all None (no reference scores) or none
            known = None if run_hns[0] is None else cast("list[float]", run_hns)
            rows[game] = {
                "runs": len(recs),
                "seeds": seeds,
                "mean_return": float(np.mean(means)),
                "run_means": means,
                "hns": None if known is None else float(np.mean(known)),
                "run_hns": run_hns,
                "files": [r["_path"] for r in recs],
            }
            if known is None:
                warnings.append(f"{game}: no reference scores, left out of the HNS aggregates")
            else:
                hns[game] = known
        all_games |= hns.keys()
        methods[method] = {
            "games": rows,
            "aggregates": _summary(hns, reps, seed) if hns else None,
        }
    published = {}
    for name in PUBLISHED:
        scores = published_hns(name, sorted(all_games))
        published[name] = {
            "games": {g: {"mean_return": float(np.mean(reference_scores()[g][name])),
                          "hns": float(np.mean(s))} for g, s in scores.items()},
            "aggregates": _summary(scores, reps, seed) if scores else None,
        }  # fmt: skip
    for method, m in methods.items():
        own = {g for g, r in m["games"].items() if r["hns"] is not None}
        if own and own != all_games:  # like with like: the published numbers on its games only
            warnings.append(
                f"{method} covers {len(own)} of the {len(all_games)} games: its aggregates and "
                "the IRIS / DIAMOND columns are over different games"
            )
            m["published_on_its_games"] = {
                name: _summary(published_hns(name, sorted(own)), reps, seed) for name in PUBLISHED
            }
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "protocol": protocol,
        "bootstrap": {"reps": reps, "seed": seed, "level": 0.95, "kind": "stratified percentile"},
        "methods": methods,
        "published": published,
        "warnings": warnings,
        "protocol_notes": protocol_notes,
    }


# --------------------------------------------------------------------------------------------
# Printing


def _num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ret(x: float) -> str:
    return f"{x:.1f}" if abs(x) < 1e5 else f"{x:.3g}"


def format_table(table: Mapping[str, Any]) -> str:
    """A readable text table: one row per game, then the aggregate rows with their 95% CIs."""
    methods = table["methods"]
    published = table["published"]
    games = sorted({g for m in methods.values() for g in m["games"]})
    names = list(methods)
    gw = max([8, *map(len, games)])
    mw = max([22, *(len(n) + 2 for n in names)])
    lines = []
    head1 = f"{'':{gw}}  " + "".join(f"{n:^{mw}}" for n in names)
    head1 += "".join(f"{p:>12}" for p in PUBLISHED)
    head2 = f"{'game':{gw}}  " + "".join(
        f"{'runs':>5}{'return':>10}{'HNS':>{mw - 15}}" for _ in names
    )
    head2 += "".join(f"{'HNS':>12}" for _ in PUBLISHED)
    lines += [head1.rstrip(), head2, "-" * len(head2)]
    for g in games:
        row = f"{g:{gw}}  "
        for n in names:
            r = methods[n]["games"].get(g)
            if r is None:
                row += f"{'':{mw}}"
            else:
                row += f"{r['runs']:>5}{_ret(r['mean_return']):>10}{_num(r['hns']):>{mw - 15}}"
        for p in PUBLISHED:
            row += f"{_num(published[p]['games'].get(g, {}).get('hns')):>12}"
        lines.append(row)
    lines.append("-" * len(head2))
    b = table["bootstrap"]
    lines.append(
        f"HNS aggregates, 95% CI from {b['reps']} stratified bootstrap resamples (seed {b['seed']})"
    )
    cols = [*names, *PUBLISHED]
    aggs = [methods[n]["aggregates"] for n in names] + [
        published[p]["aggregates"] for p in PUBLISHED
    ]
    cw = max(24, *(len(c) + 2 for c in cols))
    lines.append(f"{'':{gw}}  " + "".join(f"{c:>{cw}}" for c in cols))
    for stat, label in (("mean", "mean"), ("median", "median"), ("iqm", "IQM")):
        row = f"{label:{gw}}  "
        for a in aggs:
            cell = "-" if a is None else (
                f"{a[stat]['value']:.3f} [{a[stat]['ci95'][0]:.3f}, {a[stat]['ci95'][1]:.3f}]"
            )  # fmt: skip
            row += f"{cell:>{cw}}"
        lines.append(row)
    row = f"{'>=human':{gw}}  "
    for a in aggs:
        cell = "-" if a is None else f"{a['games_at_human']} of {a['games']}"
        row += f"{cell:>{cw}}"
    lines.append(row)
    for n in names:
        own = methods[n].get("published_on_its_games")
        if own:
            parts = [
                f"{p} mean {a['mean']['value']:.3f}, median {a['median']['value']:.3f}, "
                f"IQM {a['iqm']['value']:.3f}"
                for p, a in own.items()
            ]
            lines.append(f"on the {own[PUBLISHED[0]]['games']} games of {n}: " + "; ".join(parts))
    return "\n".join(lines)
