"""Replay: episodes, the on-disk store (atomic writes, crash recovery, corruption) and the sampler."""

import io
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from worldmodels.errors import UserError
from worldmodels.interfaces import Batch
from worldmodels.replay import Episode, EpisodeBuilder, ReplayStore, SegmentSampler

FRAME = (3, 2, 2)  # (C, H, W): tiny frames keep the sampler tests fast


def coded_episode(e: int, T: int, *, end: bool = False, trunc: bool = False) -> Episode:
    """Pixels encode (episode e, row t) and a nonzero marker; act[t] = t + 1, rew[t] = t + 0.25."""
    obs = np.zeros((T + 1, *FRAME), dtype=np.uint8)
    obs[:, 0] = e
    obs[:, 1] = np.arange(T + 1)[:, None, None]
    obs[:, 2] = 1
    act = np.arange(1, T + 1, dtype=np.int64)
    rew = np.arange(T, dtype=np.float32) + 0.25
    return Episode(obs, act, rew, end=end, trunc=trunc, info={"e": e})


def random_episode(rng, T: int, **kw) -> Episode:
    return Episode(
        obs=rng.integers(0, 256, size=(T + 1, 3, 8, 8), dtype=np.uint8),
        act=rng.integers(0, 6, size=T).astype(np.int64),
        rew=rng.normal(size=T).astype(np.float32),
        end=kw.get("end", False),
        trunc=kw.get("trunc", False),
        info=kw.get("info", {}),
    )


def assert_same_episode(a: Episode, b: Episode) -> None:
    for name in ("obs", "act", "rew"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)
    assert (a.end, a.trunc, a.info) == (b.end, b.trunc, b.info)


# ---------------------------------------------------------------------------------------------
# Episode and EpisodeBuilder


def test_episode_len_and_return():
    ep = coded_episode(0, 4, end=True)
    assert len(ep) == 4 and ep.obs.shape[0] == 5
    assert ep.ret == pytest.approx(0.25 + 1.25 + 2.25 + 3.25)


def _bad_episode_kwargs():
    ok = {
        "obs": np.zeros((4, *FRAME), np.uint8),
        "act": np.zeros(3, np.int64),
        "rew": np.zeros(3, np.float32),
        "end": False,
        "trunc": False,
        "info": {},
    }
    cases = {
        "obs float": {"obs": np.zeros((4, *FRAME), np.float32)},
        "obs no time axis": {"obs": np.zeros(FRAME, np.uint8)},
        "obs torch": {"obs": torch.zeros((4, *FRAME), dtype=torch.uint8)},
        "act int32": {"act": np.zeros(3, np.int32)},
        "act 2d": {"act": np.zeros((3, 1), np.int64), "rew": np.zeros((3, 1), np.float32)},
        "rew float64": {"rew": np.zeros(3, np.float64)},
        "rew length": {"rew": np.zeros(2, np.float32)},
        "obs lacks final row": {"obs": np.zeros((3, *FRAME), np.uint8)},
        "no transition": {
            "obs": np.zeros((1, *FRAME), np.uint8),
            "act": np.zeros(0, np.int64),
            "rew": np.zeros(0, np.float32),
        },
        "end and trunc": {"end": True, "trunc": True},
        "end not bool": {"end": "yes"},
        "info not json": {"info": {"x": {1, 2}}},
        "info not dict": {"info": [1]},
    }
    return [pytest.param({**ok, **bad}, id=name) for name, bad in cases.items()]


@pytest.mark.parametrize("kwargs", _bad_episode_kwargs())
def test_episode_rejects_bad_fields(kwargs):
    with pytest.raises(ValueError):
        Episode(**kwargs)


def test_builder_makes_episode_from_numpy_and_torch():
    frames = [np.full(FRAME, t, np.uint8) for t in range(4)]
    b = EpisodeBuilder(torch.from_numpy(frames[0]), info={"env": 1, "mode": "train"})
    for t in range(1, 4):
        # torch frames and numpy action/reward scalars are accepted
        b.add(np.int64(t), np.float32(t / 2), frames[t] if t % 2 else torch.from_numpy(frames[t]))
        frames[t][:] = 99  # an env reusing its buffer must not change what was recorded
    assert len(b) == 3
    ep = b.finish(end=False, trunc=True, info={"life_loss": False, "mode": "eval"})
    assert ep.obs.shape == (4, *FRAME) and ep.obs.dtype == np.uint8
    np.testing.assert_array_equal(ep.obs[:, 0, 0, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(ep.act, [1, 2, 3])
    assert ep.act.dtype == np.int64 and ep.rew.dtype == np.float32
    np.testing.assert_array_equal(ep.rew, [0.5, 1.0, 1.5])
    assert (ep.end, ep.trunc) == (False, True)
    assert ep.info == {"env": 1, "mode": "eval", "life_loss": False}
    with pytest.raises(RuntimeError):
        b.add(0, 0.0, frames[0])


def test_builder_rejects_inconsistent_frames():
    b = EpisodeBuilder(np.zeros(FRAME, np.uint8))
    with pytest.raises(ValueError, match="shape"):
        b.add(0, 0.0, np.zeros((3, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        b.add(0, 0.0, np.zeros(FRAME, np.float32))
    with pytest.raises(ValueError):
        b.finish(end=True, trunc=False)  # no transition yet
    with pytest.raises(ValueError):
        EpisodeBuilder(np.zeros((1, *FRAME), np.uint8))


# ---------------------------------------------------------------------------------------------
# ReplayStore: memory, disk, crashes, corruption


def test_memory_store_counts_and_keeps_arrays_without_copy():
    store = ReplayStore(None)
    eps = [coded_episode(i, T) for i, T in enumerate((3, 1, 7))]
    assert [store.add(ep) for ep in eps] == [0, 1, 2]
    assert len(store) == 3 and store.num_steps == 11 and store.num_frames == 14
    assert store.nbytes == 14 * int(np.prod(FRAME))
    np.testing.assert_array_equal(store.lengths(), [3, 1, 7])
    assert store[1] is eps[1] and store[-1] is eps[2]
    assert store[0].obs is eps[0].obs  # stored once, not copied
    with pytest.raises(ValueError):  # the sampler reads these arrays: nobody may write them
        eps[0].obs[0] = 1
    with pytest.raises(ValueError, match="shape"):
        other = coded_episode(3, 1)
        store.add(Episode(np.zeros((2, 1, 2, 2), np.uint8), other.act, other.rew, False, False))


def test_disk_round_trip(tmp_path, rng):
    d = tmp_path / "episodes"
    store = ReplayStore(d)  # creates the directory
    eps = [
        random_episode(rng, 5, end=True, info={"env": 0, "life_loss": True, "mode": "train"}),
        random_episode(rng, 1, trunc=True, info={"nested": {"a": [1, 2.5, None]}, "s": "é"}),
        random_episode(rng, 12),
    ]
    for i, ep in enumerate(eps):
        assert store.add(ep) == i
    assert sorted(p.name for p in d.iterdir()) == [
        "ep_000000.npz",
        "ep_000001.npz",
        "ep_000002.npz",
    ]

    again = ReplayStore(d)
    assert len(again) == 3 and again.num_steps == store.num_steps
    assert again.nbytes == store.nbytes and again.num_frames == store.num_frames
    np.testing.assert_array_equal(again.lengths(), [5, 1, 12])
    for a, b in zip(eps, (again[i] for i in range(3)), strict=True):
        assert_same_episode(a, b)
    assert again.add(random_episode(rng, 2)) == 3  # continues the numbering
    assert (d / "ep_000003.npz").exists() and len(ReplayStore(d)) == 4


def test_write_order_temp_fsync_replace_then_index(tmp_path, monkeypatch):
    store = ReplayStore(tmp_path)
    store.add(coded_episode(0, 2))
    final = tmp_path / "ep_000001.npz"
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        real_fsync(fd)

    def replace(src, dst):
        # At the rename the data is durable in the temp file, the final name does not exist yet,
        # and the episode is not yet visible in memory.
        events.append(("replace", os.path.basename(src), os.path.basename(dst)))
        assert not final.exists() and len(store) == 1
        assert ("fsync", os.path.basename(src)) in events
        real_replace(src, dst)

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc to name file descriptors")
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    assert store.add(coded_episode(1, 3)) == 1
    kinds = [e[0] for e in events]
    assert "replace" in kinds and kinds.index("fsync") < kinds.index("replace")
    (_, src, dst) = next(e for e in events if e[0] == "replace")
    assert dst == "ep_000001.npz" and src != dst
    assert len(store) == 2 and final.exists()


def test_failed_write_leaves_no_file_and_no_episode(tmp_path, monkeypatch):
    store = ReplayStore(tmp_path)
    store.add(coded_episode(0, 2))

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        store.add(coded_episode(1, 3))
    monkeypatch.undo()
    assert len(store) == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["ep_000000.npz"]
    assert store.add(coded_episode(1, 3)) == 1


CRASHING_WRITER = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from worldmodels.replay import EpisodeBuilder, ReplayStore

    store = ReplayStore(sys.argv[1])
    for e in range(3):
        b = EpisodeBuilder(np.full((3, 2, 2), e, np.uint8), info={"e": e})
        for t in range(e + 2):
            b.add(t, float(t), np.full((3, 2, 2), t, np.uint8))
        store.add(b.finish(end=e == 0, trunc=e == 1))
    unfinished = EpisodeBuilder(np.zeros((3, 2, 2), np.uint8))  # in memory only: lost on a crash
    unfinished.add(1, 1.0, np.ones((3, 2, 2), np.uint8))
    last = EpisodeBuilder(np.zeros((3, 2, 2), np.uint8))
    last.add(2, 2.0, np.ones((3, 2, 2), np.uint8))
    # Killed the moment the temp file is complete but before its rename: no cleanup runs.
    os.replace = lambda src, dst: os._exit(9)
    store.add(last.finish(end=True, trunc=False))
    """
)


def test_crash_recovery_finds_exactly_the_finished_episodes(tmp_path):
    d = tmp_path / "episodes"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, str(d)], env=env, capture_output=True, timeout=120
    )
    assert proc.returncode == 9, proc.stderr.decode()
    names = sorted(p.name for p in d.iterdir())
    temps = [n for n in names if n.endswith(".tmp")]
    assert len(temps) == 1, names  # what a killed write leaves behind
    assert [n for n in names if n not in temps] == [f"ep_00000{i}.npz" for i in range(3)]

    store = ReplayStore(d)
    assert len(store) == 3
    np.testing.assert_array_equal(store.lengths(), [2, 3, 4])
    assert [(store[i].end, store[i].trunc, store[i].info) for i in range(3)] == [
        (True, False, {"e": 0}),
        (False, True, {"e": 1}),
        (False, False, {"e": 2}),
    ]
    np.testing.assert_array_equal(store[2].act, [0, 1, 2, 3])
    assert sorted(p.name for p in d.iterdir()) == [f"ep_00000{i}.npz" for i in range(3)]
    assert store.add(coded_episode(3, 1)) == 3


def test_stale_temp_files_are_removed_and_other_files_kept(tmp_path):
    store = ReplayStore(tmp_path)
    store.add(coded_episode(0, 2))
    (tmp_path / ".ep_000001.npz.x1y2z3.tmp").write_bytes(b"PK\x03\x04half")
    (tmp_path / "notes.txt").write_text("mine")
    assert len(ReplayStore(tmp_path)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ep_000000.npz", "notes.txt"]


def _corrupt(kind: str, path) -> None:
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        path.write_bytes(b"not an npz file at all")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "flipped byte":
        i = len(data) // 3  # inside the compressed obs member (the bulk of the file)
        path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :])
    elif kind == "missing array":
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files if k != "rew"}
        with open(path, "wb") as f:
            np.savez_compressed(f, **arrays)
    elif kind == "bad shapes":
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["act"] = arrays["act"][:-1]
        with open(path, "wb") as f:
            np.savez_compressed(f, **arrays)


@pytest.mark.parametrize(
    "kind", ["truncated", "garbage", "empty", "flipped byte", "missing array", "bad shapes"]
)
def test_corrupt_episode_file_is_a_user_error_naming_it(tmp_path, rng, kind):
    store = ReplayStore(tmp_path)
    for T in (3, 40, 2):
        store.add(random_episode(rng, T))
    _corrupt(kind, tmp_path / "ep_000001.npz")
    with pytest.raises(UserError, match="ep_000001.npz"):
        ReplayStore(tmp_path)


def test_gap_in_indices_is_a_user_error_naming_the_missing_file(tmp_path):
    store = ReplayStore(tmp_path)
    for e in range(4):
        store.add(coded_episode(e, 1))
    (tmp_path / "ep_000002.npz").unlink()
    with pytest.raises(UserError, match="ep_000002.npz"):
        ReplayStore(tmp_path)


# ---------------------------------------------------------------------------------------------
# SegmentSampler: the row convention at episode borders


def check_segments(batch: Batch, episodes, seq_len, pad_left, pad_right):
    """Check every row of every segment against the convention; return (episode, start) pairs."""
    B = batch.obs.shape[0]
    assert batch.obs.shape == (B, seq_len, *FRAME) and batch.obs.dtype == torch.uint8
    for x, dtype in zip(
        batch[1:],
        (torch.int64, torch.float32, torch.bool, torch.bool, torch.bool, torch.int64),
        strict=True,
    ):
        assert x.shape == (B, seq_len) and x.dtype == dtype
    obs, act, rew, end, trunc, mask = (x.numpy() for x in batch[:6])
    drawn = []
    for b in range(B):
        real = np.flatnonzero(obs[b, :, 2, 0, 0])  # the marker is 1 on every real row
        assert len(real) > 0, "a segment without a single real row"
        i = real[0]
        e, r0 = int(obs[b, i, 0, 0, 0]), int(obs[b, i, 1, 0, 0])
        ep = episodes[e]
        T, s = len(ep), r0 - i
        for k in range(seq_len):
            r = s + k
            if 0 <= r <= T:
                assert mask[b, k]
                np.testing.assert_array_equal(obs[b, k], ep.obs[r])
                assert act[b, k] == (r + 1 if r < T else 0)
                assert rew[b, k] == (r + 0.25 if r < T else 0.0)
                assert end[b, k] == (r == T - 1 and ep.end)
                assert trunc[b, k] == (r == T - 1 and ep.trunc)
            else:  # padding: zeros everywhere, masked out
                assert not mask[b, k] and not end[b, k] and not trunc[b, k]
                assert act[b, k] == 0 and rew[b, k] == 0 and not obs[b, k].any()
        lo, hi = -pad_left, T + 1 - seq_len + pad_right
        if hi >= lo:
            assert lo <= s <= hi, (T, s, lo, hi)
        else:  # too short: the whole episode is inside the segment
            assert hi <= s <= lo and s <= 0 and s + seq_len >= T + 1
        drawn.append((e, s))
    return drawn


EPISODE_SPECS = [  # (T, end, trunc)
    (1, True, False),
    (2, False, True),
    (3, False, False),
    (4, True, False),
    (7, False, True),
    (12, True, False),
    (25, False, False),
]


@pytest.mark.parametrize(
    "seq_len,pad_left,pad_right", [(5, 0, 0), (5, 3, 2), (1, 0, 0), (6, 2, 5), (20, 3, 0)]
)
def test_segments_follow_the_row_convention_and_reach_every_start(seq_len, pad_left, pad_right):
    episodes = [coded_episode(e, T, end=d, trunc=c) for e, (T, d, c) in enumerate(EPISODE_SPECS)]
    store = ReplayStore(None)
    for ep in episodes:
        store.add(ep)
    sampler = SegmentSampler(store, seq_len, pad_left=pad_left, pad_right=pad_right, seed=1)
    drawn = []
    for _ in range(8):
        drawn += check_segments(sampler.sample(256), episodes, seq_len, pad_left, pad_right)
    for e, ep in enumerate(episodes):
        lo, hi = -pad_left, len(ep) + 1 - seq_len + pad_right
        lo, hi = min(lo, hi), max(lo, hi)
        assert {s for f, s in drawn if f == e} == set(range(lo, hi + 1)), (e, len(ep))


def test_pad_zero_reaches_first_and_final_rows_exactly():
    ep = coded_episode(0, 9, end=True)
    store = ReplayStore(None)
    store.add(ep)
    batch = SegmentSampler(store, 4, seed=0).sample(2000)
    assert batch.mask.all()  # no padding without pad_left/pad_right
    starts = batch.obs[:, 0, 1, 0, 0].numpy()
    assert starts.min() == 0 and starts.max() == 10 - 4  # the final observation row is reachable
    # end exactly once in the segments that hold row T-1 = 8 (starts 5 and 6), nowhere else
    np.testing.assert_array_equal(batch.end.sum(dim=1).numpy(), starts >= 5)
    assert not batch.trunc.any()


def test_sampler_sees_episodes_added_after_it_was_built():
    store = ReplayStore(None)
    sampler = SegmentSampler(store, 2)
    with pytest.raises(ValueError, match="empty"):
        sampler.sample(4)
    store.add(coded_episode(0, 3))
    assert set(sampler.sample(64).obs[:, 0, 0, 0, 0].tolist()) == {0}
    store.add(coded_episode(1, 3))
    assert set(sampler.sample(64).obs[:, 0, 0, 0, 0].tolist()) == {0, 1}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"seq_len": 0},
        {"seq_len": 4, "pad_left": 4},
        {"seq_len": 4, "pad_right": -1},
        {"seq_len": 4, "recency_weights": []},
        {"seq_len": 4, "recency_weights": [0.5, -0.1]},
        {"seq_len": 4, "recency_weights": [0.0, 0.0]},
        {"seq_len": 4, "recency_weights": [float("nan"), 1.0]},
    ],
)
def test_sampler_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        SegmentSampler(ReplayStore(None), **kwargs)


# ---------------------------------------------------------------------------------------------
# SegmentSampler: episode choice


def episode_frequencies(n: int, weights, draws: int = 40_000) -> np.ndarray:
    store = ReplayStore(None)
    for e in range(n):
        store.add(coded_episode(e, 1))
    sampler = SegmentSampler(store, 1, recency_weights=weights, seed=3)
    drawn = sampler.sample(draws).obs[:, 0, 0, 0, 0].numpy()
    return np.bincount(drawn, minlength=n) / draws


def test_recency_weights_match_bucket_frequencies():
    freq = episode_frequencies(40, (0.1, 0.1, 0.1, 0.7))
    buckets = freq.reshape(4, 10).sum(axis=1)  # oldest to newest
    np.testing.assert_allclose(buckets, [0.1, 0.1, 0.1, 0.7], atol=0.01)
    np.testing.assert_allclose(freq[30:], 0.07, atol=0.006)  # uniform inside the newest bucket


def test_recency_buckets_of_unequal_size():
    # 10 episodes in 4 buckets: edges (0, 2, 5, 7, 10), sizes 2, 3, 2, 3
    freq = episode_frequencies(10, (0.1, 0.1, 0.1, 0.7))
    expected = np.repeat([0.1 / 2, 0.1 / 3, 0.1 / 2, 0.7 / 3], [2, 3, 2, 3])
    np.testing.assert_allclose(freq, expected, atol=0.01)


def test_recency_with_fewer_episodes_than_buckets_drops_empty_buckets():
    # 2 episodes in 4 buckets: episode 0 is bucket 1 (0.1), episode 1 bucket 3 (0.7)
    np.testing.assert_allclose(
        episode_frequencies(2, (0.1, 0.1, 0.1, 0.7)), [0.125, 0.875], atol=0.01
    )
    # only empty buckets carry weight: fall back to uniform
    np.testing.assert_allclose(episode_frequencies(1, (1.0, 0.0, 0.0, 0.0)), [1.0])
    np.testing.assert_allclose(episode_frequencies(2, (1.0, 0, 0, 0)), [0.5, 0.5], atol=0.015)


def test_no_recency_weights_is_uniform():
    np.testing.assert_allclose(episode_frequencies(8, None), np.full(8, 1 / 8), atol=0.01)


# ---------------------------------------------------------------------------------------------
# SegmentSampler: determinism and resumption


def _store_for_streams():
    rng = np.random.default_rng(5)
    store = ReplayStore(None)
    for e, T in enumerate(rng.integers(1, 30, size=12)):
        store.add(coded_episode(e, int(T), end=bool(e % 2)))
    return store


def _assert_batches_equal(a: Batch, b: Batch) -> None:
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


def _plain(x) -> bool:
    if isinstance(x, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in x.items())
    if isinstance(x, list | tuple):
        return all(_plain(v) for v in x)
    return type(x) in (int, float, str, bool) or x is None


def test_seeded_sampler_repeats_and_state_dict_continues_the_stream():
    store = _store_for_streams()
    kw = {"pad_left": 2, "pad_right": 1, "recency_weights": (0.2, 0.8)}
    a, b = SegmentSampler(store, 6, seed=7, **kw), SegmentSampler(store, 6, seed=7, **kw)
    for _ in range(3):
        _assert_batches_equal(a.sample(16), b.sample(16))
    other = SegmentSampler(store, 6, seed=8, **kw).sample(16)
    assert not torch.equal(other.obs, SegmentSampler(store, 6, seed=7, **kw).sample(16).obs)

    state = a.state_dict()
    assert _plain(state)
    buf = io.BytesIO()
    torch.save({"sampler": state}, buf)
    buf.seek(0)
    restored = torch.load(buf, weights_only=True)["sampler"]
    expected = [a.sample(16) for _ in range(3)]

    resumed = SegmentSampler(store, 6, seed=123, **kw)
    resumed.load_state_dict(restored)
    for want in expected:
        _assert_batches_equal(resumed.sample(16), want)


def test_end_before_final_never_ends_a_segment_on_the_final_observation():
    store = ReplayStore(None)
    for e, length in enumerate((1, 2, 5, 9)):
        obs = np.zeros((length + 1, 1, 2, 2), np.uint8)
        obs[:, 0, 0, 0] = np.arange(length + 1)  # row index
        obs[:, 0, 0, 1] = e  # episode index
        store.add(
            Episode(obs, np.zeros(length, np.int64), np.zeros(length, np.float32), True, False)
        )
    sampler = SegmentSampler(store, 4, pad_left=3, end_before_final=True, seed=1)
    lengths = store.lengths()
    last_rows = {e: set() for e in range(len(store))}
    for _ in range(100):
        batch = sampler.sample(16)
        assert batch.mask[:, -1].all()  # the start frame is always real
        for row, e in batch.obs[:, -1, 0, 0, :2].tolist():
            last_rows[e].add(row)
    for e, rows in last_rows.items():  # every transition row is reachable, the final one never
        assert rows == set(range(lengths[e])), (e, rows)
    with pytest.raises(ValueError, match="pad_right"):
        SegmentSampler(store, 4, pad_right=1, end_before_final=True)


def test_frame_ids_name_each_real_frame_uniquely():
    store = ReplayStore(None)
    for e, length in enumerate((3, 1, 6)):
        obs = np.zeros((length + 1, 1, 2, 2), np.uint8)
        obs[:, 0, 0, 0] = np.arange(length + 1)
        obs[:, 0, 0, 1] = e
        store.add(
            Episode(obs, np.zeros(length, np.int64), np.zeros(length, np.float32), True, False)
        )
    offsets = store.frame_offsets()
    assert offsets.tolist() == [0, 4, 6]
    batch = SegmentSampler(store, 5, pad_left=2, pad_right=2, seed=3).sample(64)
    ids = batch.frame_ids
    assert ((ids == -1) == ~batch.mask).all()
    real = batch.mask
    row, ep = batch.obs[..., 0, 0, 0].long(), batch.obs[..., 0, 0, 1].long()
    assert torch.equal(ids[real], torch.as_tensor(offsets)[ep[real]] + row[real])
    assert int(ids.max()) < store.num_frames
