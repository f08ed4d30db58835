"""Replay: finished episodes on disk and in memory, and a sampler of fixed-length segments.

* ``Episode`` is one finished episode: ``T + 1`` uint8 observations and ``T`` transitions.
* ``EpisodeBuilder`` grows one unfinished episode in memory while an env runs.
* ``ReplayStore`` holds every finished episode once, in memory, and (given a directory) writes
  each one atomically as ``ep_{index:06d}.npz`` before indexing it, so a run that crashed or was
  killed reopens with exactly the episodes that were finished.
* ``SegmentSampler`` draws ``Batch`` es of ``seq_len`` consecutive rows (the row convention is the
  ``Batch`` docstring in ``worldmodels.interfaces``), optionally favouring recent episodes.

The store is single-writer: one process adds episodes to a directory at a time.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldmodels.errors import UserError
from worldmodels.fileio import atomic_write_bytes
from worldmodels.interfaces import Batch

__all__ = ["Episode", "EpisodeBuilder", "ReplayStore", "SegmentSampler"]

_FORMAT_VERSION = 1
_EPISODE_FILE = re.compile(r"^ep_(\d{6,})\.npz$")
# Temp files of interrupted writes: ``worldmodels.fileio`` names them ``.{final name}.{random}.tmp``;
# the undotted form is accepted too so a change of prefix there does not leave litter here.
_TEMP_FILE = re.compile(r"^\.?ep_\d{6,}\.npz\..*\.tmp$")


def _episode_name(index: int) -> str:
    return f"ep_{index:06d}.npz"


@dataclass(frozen=True, eq=False)
class Episode:
    """One finished episode of ``T >= 1`` transitions.

    ``obs`` holds every observation including the final one, so it has one more row than ``act``
    and ``rew``. ``end`` says the last transition reached a terminal state (game over, or a life
    loss where that counts as terminal); ``trunc`` says the episode was cut (time limit). They are
    never both True; both False means an episode that stopped for another reason (end of a run).
    """

    obs: np.ndarray  # (T + 1, C, H, W) uint8
    act: np.ndarray  # (T,) int64, the action taken at obs[t]
    rew: np.ndarray  # (T,) float32, the raw reward that action earned
    end: bool
    trunc: bool
    info: dict[str, Any] = field(default_factory=dict)  # small, JSON-serialisable metadata

    def __post_init__(self) -> None:
        for name, dtype in (("obs", np.uint8), ("act", np.int64), ("rew", np.float32)):
            x = getattr(self, name)
            if not isinstance(x, np.ndarray):
                raise ValueError(f"Episode.{name} must be a numpy array, got {type(x).__name__}")
            if x.dtype != dtype:
                raise ValueError(f"Episode.{name} must be {np.dtype(dtype)}, got {x.dtype}")
        if self.obs.ndim != 4:
            raise ValueError(f"Episode.obs must be (T+1, C, H, W), got shape {self.obs.shape}")
        if self.act.ndim != 1 or self.rew.shape != self.act.shape:
            raise ValueError(
                f"Episode.act and Episode.rew must both be (T,), got {self.act.shape} and "
                f"{self.rew.shape}"
            )
        if self.obs.shape[0] != self.act.shape[0] + 1:
            raise ValueError(
                f"Episode.obs must have one more row than act (the final observation): "
                f"obs {self.obs.shape[0]} rows, act {self.act.shape[0]}"
            )
        if self.act.shape[0] == 0:
            raise ValueError("an Episode needs at least one transition")
        for name in ("end", "trunc"):
            v = getattr(self, name)
            if not isinstance(v, bool | np.bool_):
                raise ValueError(f"Episode.{name} must be a bool, got {type(v).__name__}")
            object.__setattr__(self, name, bool(v))
        if self.end and self.trunc:
            raise ValueError("an Episode cannot be both ended (end) and truncated (trunc)")
        if not isinstance(self.info, dict):
            raise ValueError(f"Episode.info must be a dict, got {type(self.info).__name__}")
        try:
            json.dumps(self.info)
        except (TypeError, ValueError) as e:
            raise ValueError(f"Episode.info must be JSON-serialisable: {e}") from None

    def __len__(self) -> int:
        """``T``, the number of transitions."""
        return int(self.act.shape[0])

    @property
    def ret(self) -> float:
        """The undiscounted return: the sum of the raw rewards."""
        return float(self.rew.sum(dtype=np.float64))


def _as_frame(x: np.ndarray | torch.Tensor, what: str) -> np.ndarray:
    """A private ``(C, H, W)`` uint8 copy (envs may reuse their observation buffers)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype != np.uint8 or x.ndim != 3:
        raise ValueError(f"{what} must be a (C, H, W) uint8 frame, got {x.dtype} {x.shape}")
    return x.copy()


class EpisodeBuilder:
    """One unfinished episode, in memory only; ``finish`` turns it into an ``Episode``.

    An episode that was never finished (the process died) is simply lost: only the store writes
    to disk, and only finished episodes.
    """

    def __init__(self, first_obs: np.ndarray | torch.Tensor, info: dict | None = None) -> None:
        self._frames = [_as_frame(first_obs, "first_obs")]
        self._act: list[int] = []
        self._rew: list[float] = []
        self._info = dict(info or {})
        self._finished = False

    def add(self, act: int, rew: float, next_obs: np.ndarray | torch.Tensor) -> None:
        """Record that ``act`` at the current observation earned ``rew`` and led to ``next_obs``."""
        if self._finished:
            raise RuntimeError("EpisodeBuilder.add after finish(); start a new builder")
        frame = _as_frame(next_obs, "next_obs")
        if frame.shape != self._frames[0].shape:
            raise ValueError(
                f"next_obs has shape {frame.shape}, the episode's frames are {self._frames[0].shape}"
            )
        self._act.append(int(act))
        self._rew.append(float(rew))
        self._frames.append(frame)

    def finish(self, *, end: bool, trunc: bool, info: dict | None = None) -> Episode:
        """The finished ``Episode``; ``info`` is merged over the one given at construction."""
        if self._finished:
            raise RuntimeError("EpisodeBuilder.finish called twice")
        episode = Episode(
            obs=np.stack(self._frames),  # (T+1, C, H, W)
            act=np.asarray(self._act, dtype=np.int64),
            rew=np.asarray(self._rew, dtype=np.float32),
            end=bool(end),  # numpy / torch scalars from a vector env are welcome here
            trunc=bool(trunc),
            info={**self._info, **(info or {})},
        )
        self._finished = True
        self._frames = []  # free the frames: the episode owns its own stacked copy
        return episode

    def __len__(self) -> int:
        """The number of transitions recorded so far."""
        return len(self._act)

    @property
    def actions(self) -> list[int]:
        """The actions recorded so far (a copy)."""
        return list(self._act)


def _encode_episode(episode: Episode) -> bytes:
    """The ``.npz`` bytes of an episode. Equal episodes encode to equal bytes (numpy gives every
    zip member the same fixed date), so a file's sha256 identifies its episode."""
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        version=np.int64(_FORMAT_VERSION),
        obs=episode.obs,
        act=episode.act,
        rew=episode.rew,
        end=np.bool_(episode.end),
        trunc=np.bool_(episode.trunc),
        info=np.array(json.dumps(episode.info)),  # a unicode scalar: loads without pickle
    )
    return buf.getvalue()


def same_episode(a: Episode, b: Episode) -> bool:
    """Equal frames, actions, rewards, flags and info."""
    return (
        a.end == b.end
        and a.trunc == b.trunc
        and a.info == b.info
        and np.array_equal(a.act, b.act)
        and np.array_equal(a.rew, b.rew)
        and a.obs.shape == b.obs.shape
        and np.array_equal(a.obs, b.obs)
    )


def _read_episode(path: Path) -> tuple[Episode, str]:
    """Load one episode file and the sha256 of its bytes; any defect becomes a ``UserError``
    that names the file."""
    try:
        data = path.read_bytes()
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            version = int(z["version"])
            if version != _FORMAT_VERSION:
                raise ValueError(f"format version {version}, this code reads {_FORMAT_VERSION}")
            # Reading a member in full checks its CRC, so flipped bytes are caught here too.
            episode = Episode(
                obs=z["obs"],
                act=z["act"],
                rew=z["rew"],
                end=bool(z["end"]),
                trunc=bool(z["trunc"]),
                info=json.loads(str(z["info"])),
            )
    except Exception as e:  # zipfile, zlib, numpy, json and Episode validation errors alike
        raise UserError(
            f"corrupt replay episode file {path}: {type(e).__name__}: {e} "
            "(move it and every later episode file out of the directory to continue without them)"
        ) from e
    return episode, hashlib.sha256(data).hexdigest()


class ReplayStore:
    """Every finished episode, held once in memory and, given a directory, on disk.

    With a ``directory`` the constructor creates it if needed and loads every episode already
    there (``ep_000000.npz, ep_000001.npz, ...`` in index order), deletes the temp files of writes
    a crash interrupted, and raises ``UserError`` naming the file if an episode file is corrupt or
    the indices have a gap. ``directory=None`` keeps everything in memory (tests, dreams).

    The store keeps each episode's arrays as they are (no copy, no float conversion) and marks
    them read-only, since sampled batches are assembled straight from them.

    ``hold_back(n)`` hides the episodes after the first ``n``: a resumed run plays the steps after
    its checkpoint again, and ``add`` then checks each episode it finishes against the hidden one
    at that index and reuses that file (no second copy, nothing counted twice). If they differ
    (a device that is not bitwise deterministic), the hidden files are moved, never deleted, to
    ``superseded-<k>/`` and the new episode is written in their place.
    """

    def __init__(
        self, directory: str | Path | None, *, log: Callable[[str], None] | None = None
    ) -> None:
        self.directory = None if directory is None else Path(directory)
        self.log = log or (lambda line: print(line, file=sys.stderr))
        self._episodes: list[Episode] = []
        self._digests: list[str | None] = []
        self._lengths: list[int] = []
        self._ends: list[bool] = []
        self._truncs: list[bool] = []
        self._held: list[tuple[Episode, str | None]] = []
        self._cache: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._frame_shape: tuple[int, ...] | None = None
        self.num_steps = 0
        self.num_frames = 0
        self.nbytes = 0
        self._source: Path | None = None  # the directory a follower() reads
        if self.directory is not None:
            self._open(self.directory)

    @classmethod
    def read_only(cls, directory: str | Path) -> ReplayStore:
        """A memory-only store holding the episodes of ``directory``, read without writing
        anything there (no directory made, temp files of interrupted writes left alone): for
        looking into a run another process may own. A missing directory gives an empty store."""
        store = cls(None)
        directory = Path(directory)
        if directory.exists():
            store._read(directory)
        return store

    @classmethod
    def follower(cls, directory: str | Path) -> ReplayStore:
        """A memory-only store that follows the episode files another process (rank 0 of a
        ``torchrun``) writes to ``directory``: ``follow(count)`` reads those up to ``count``. It
        writes nothing there."""
        store = cls(None)
        store._source = Path(directory)
        return store

    def follow(self, count: int) -> None:
        """Index the episode files ``len(self) .. count - 1`` of the directory this store
        follows (``follower``), as their writer's store holds them."""
        if self._source is None:
            raise ValueError("follow() is for a store made by ReplayStore.follower()")
        for index in range(len(self._episodes), count):
            path = self._source / _episode_name(index)
            if not path.exists():
                raise UserError(
                    f"replay episode file {path} is missing: the rank that collects wrote it; "
                    "every rank of a torchrun needs the run directory on a filesystem it sees"
                )
            episode, digest = _read_episode(path)
            self._index(episode, digest)

    def _open(self, directory: Path) -> None:
        if directory.exists() and not directory.is_dir():
            raise UserError(f"replay directory {directory} exists and is not a directory")
        directory.mkdir(parents=True, exist_ok=True)
        for p in directory.iterdir():
            if _TEMP_FILE.match(p.name):
                p.unlink(missing_ok=True)  # a write that never reached os.replace
        self._read(directory)

    def _read(self, directory: Path) -> None:
        """Index every episode file of ``directory`` in order (reads only)."""
        if not directory.is_dir():
            raise UserError(f"replay directory {directory} exists and is not a directory")
        indices = []
        for p in directory.iterdir():
            m = _EPISODE_FILE.match(p.name)
            if m and p.name == _episode_name(int(m.group(1))):
                indices.append(int(m.group(1)))
        indices.sort()
        for expected, index in enumerate(indices):
            if index != expected:
                raise UserError(
                    f"replay directory {directory} has a gap: {_episode_name(expected)} is missing "
                    f"but episode files up to {_episode_name(indices[-1])} exist"
                )
        for index in indices:
            path = directory / _episode_name(index)
            episode, digest = _read_episode(path)
            if self._frame_shape is not None and episode.obs.shape[1:] != self._frame_shape:
                raise UserError(
                    f"replay episode file {path} has frames of shape {episode.obs.shape[1:]}, "
                    f"the earlier episodes have {self._frame_shape}"
                )
            self._index(episode, digest)

    def path_of(self, index: int) -> Path | None:
        """The file of episode ``index`` (None for a memory-only store)."""
        return None if self.directory is None else self.directory / _episode_name(index)

    def digests(self) -> list[str | None]:
        """The sha256 of each episode's file, in index order (None in a memory-only store)."""
        return list(self._digests)

    def add(self, episode: Episode) -> int:
        """Store a finished episode and return its index.

        With a directory the episode is first written compressed to a temp file in the same
        directory, fsynced and renamed to ``ep_{index:06d}.npz`` (``worldmodels.fileio``), and only
        then indexed in memory: a crash at any moment leaves the whole file or none. An episode
        equal to the held-back one at its index (``hold_back``) reuses that file instead.
        """
        if not isinstance(episode, Episode):
            raise TypeError(f"ReplayStore.add takes an Episode, got {type(episode).__name__}")
        if self._frame_shape is not None and episode.obs.shape[1:] != self._frame_shape:
            raise ValueError(
                f"episode frames have shape {episode.obs.shape[1:]}, the store holds "
                f"{self._frame_shape}"
            )
        index = len(self._episodes)
        if self._held:
            held, digest = self._held[0]
            if same_episode(held, episode):
                self._held.pop(0)
                self._index(held, digest)  # the file on disk is this very episode
                return index
            self._supersede(index)
        digest = None
        if self.directory is not None:
            path = self.directory / _episode_name(index)
            if path.exists():
                raise UserError(
                    f"{path} appeared after the store was opened; is another process writing "
                    "episodes to the same directory?"
                )
            data = _encode_episode(episode)
            atomic_write_bytes(path, data)
            digest = hashlib.sha256(data).hexdigest()
        self._index(episode, digest)
        return index

    def hold_back(self, count: int) -> int:
        """Hide every episode after the first ``count`` until ``add`` meets it again (see the
        class docstring) or ``release_held`` shows it again; returns how many were hidden."""
        if not 0 <= count <= len(self._episodes):
            raise ValueError(f"hold_back({count}) on a store of {len(self._episodes)} episodes")
        held = list(zip(self._episodes[count:], self._digests[count:], strict=True))
        kept = list(zip(self._episodes[:count], self._digests[:count], strict=True))
        self._clear()
        for episode, digest in kept:
            self._index(episode, digest)
        self._held = held + self._held
        return len(held)

    @property
    def num_held(self) -> int:
        """How many episodes ``hold_back`` hid and ``add`` has not met again yet."""
        return len(self._held)

    def release_held(self) -> list[Episode]:
        """Show the held-back episodes again, in order (their files stay as they are)."""
        held, self._held = self._held, []
        for episode, digest in held:
            self._index(episode, digest)
        return [episode for episode, _ in held]

    def _supersede(self, index: int) -> None:
        """Move the held-back files out of the way of a differing episode ``index``."""
        held, self._held = self._held, []
        if self.directory is None:
            return
        k = 1
        while (self.directory / f"superseded-{k}").exists():
            k += 1
        target = self.directory / f"superseded-{k}"
        target.mkdir()
        for i in range(index, index + len(held)):
            os.replace(self.directory / _episode_name(i), target / _episode_name(i))
        self.log(
            f"warning: {_episode_name(index)} came out differently when played again after the "
            f"resume (is the device bitwise deterministic?); the {len(held)} episode files the "
            f"interrupted run wrote after its checkpoint are kept in {target}, outside replay"
        )

    def _clear(self) -> None:
        self._episodes, self._digests = [], []
        self._lengths, self._ends, self._truncs = [], [], []
        self._cache = None
        self.num_steps = self.num_frames = self.nbytes = 0

    def _index(self, episode: Episode, digest: str | None = None) -> None:
        for x in (episode.obs, episode.act, episode.rew):
            x.flags.writeable = False
        self._frame_shape = episode.obs.shape[1:]
        self._episodes.append(episode)
        self._digests.append(digest)
        self._lengths.append(len(episode))
        self._ends.append(episode.end)
        self._truncs.append(episode.trunc)
        self._cache = None
        self.num_steps += len(episode)
        self.num_frames += episode.obs.shape[0]
        self.nbytes += episode.obs.nbytes

    def _tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(lengths int64, end bool, trunc bool)``, each ``(num_episodes,)``; cached, no copy."""
        if self._cache is None:
            self._cache = (
                np.asarray(self._lengths, dtype=np.int64),
                np.asarray(self._ends, dtype=bool),
                np.asarray(self._truncs, dtype=bool),
            )
        return self._cache

    def __len__(self) -> int:
        """The number of episodes."""
        return len(self._episodes)

    def __getitem__(self, i: int) -> Episode:
        return self._episodes[i]

    def frame_offsets(self) -> np.ndarray:
        """``(num_episodes,)`` int64: the global id of each episode's first frame. Frames are
        numbered consecutively across episodes in store order (episode ``e`` row ``t`` is frame
        ``offsets[e] + t``), so ids never change as the store grows."""
        lengths = self._tables()[0]
        return np.concatenate(([0], np.cumsum(lengths + 1)[:-1])).astype(np.int64)

    def lengths(self) -> np.ndarray:
        """``(num_episodes,)`` int64: the number of transitions of each episode."""
        return self._tables()[0].copy()

    @property
    def frame_shape(self) -> tuple[int, ...] | None:
        """``(C, H, W)`` of the stored frames, ``None`` while the store is empty."""
        return self._frame_shape

    def __repr__(self) -> str:
        where = "memory" if self.directory is None else str(self.directory)
        return (
            f"ReplayStore({where!r}, episodes={len(self)}, steps={self.num_steps}, "
            f"obs={self.nbytes / 2**20:.1f} MiB)"
        )


class SegmentSampler:
    """Draws ``Batch`` es of ``seq_len`` consecutive rows from the episodes of a ``ReplayStore``.

    An episode of ``T`` transitions has ``T + 1`` rows (the ``Batch`` docstring): row ``t < T`` is
    ``(obs[t], act[t], rew[t])`` with ``end``/``trunc`` set on ``t == T - 1`` only, and row ``T`` is
    the final observation with ``act = 0, rew = 0``. A segment starts at ``s``, drawn uniformly in
    ``[-pad_left, (T + 1) - seq_len + pad_right]``; its rows outside ``[0, T]`` are padding (zeros,
    ``mask`` False). So ``pad_left`` lets a model see an episode's first rows with up to that many
    missing context rows, and ``pad_right`` its last rows with up to that many rows after the end.

    An episode too short for that range (``T + 1 + pad_left + pad_right < seq_len``) gets its start
    drawn uniformly in ``[(T + 1) - seq_len + pad_right, -pad_left]`` instead: every such segment
    holds the whole episode, with at least ``pad_left`` padding rows before it and at least
    ``pad_right`` after (more on one side or the other, as the episode cannot fill the rest).

    Episodes are drawn uniformly, or with ``recency_weights`` ``(w_0, ..., w_{k-1})`` from the oldest
    to the newest: episode indices ``0 .. n-1`` are split into ``k`` contiguous buckets of nearly
    equal size (``edges = (arange(k + 1) * n) // k``), a bucket is drawn by weight and an episode
    uniformly inside it. Buckets left empty (``n < k``) are dropped and the remaining weights
    renormalised; if all of those are zero, episodes are drawn uniformly. The store may grow
    between calls; every ``sample`` sees its current episodes.

    ``end_before_final`` (with ``pad_right = 0``) keeps the final observation out of the last row:
    segments used as imagination contexts end on a frame where the episode goes on.
    """

    def __init__(
        self,
        store: ReplayStore,
        seq_len: int,
        *,
        pad_left: int = 0,
        pad_right: int = 0,
        recency_weights: Sequence[float] | None = None,
        end_before_final: bool = False,
        seed: int = 0,
    ) -> None:
        if end_before_final and pad_right:
            raise ValueError("end_before_final needs pad_right = 0")
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        for name, pad in (("pad_left", pad_left), ("pad_right", pad_right)):
            # More padding than seq_len - 1 would allow segments with no real row at all.
            if not 0 <= pad <= seq_len - 1:
                raise ValueError(f"{name} must be in [0, seq_len - 1 = {seq_len - 1}], got {pad}")
        self.store = store
        self.seq_len = int(seq_len)
        self.pad_left = int(pad_left)
        self.pad_right = int(pad_right)
        # Imagination starts from the last row of a context: never let it be a final (terminal)
        # observation, from which there is nothing to imagine.
        self.end_before_final = bool(end_before_final)
        self.recency_weights: np.ndarray | None = None
        if recency_weights is not None:
            w = np.asarray(recency_weights, dtype=np.float64)
            if w.ndim != 1 or len(w) == 0 or not np.all(np.isfinite(w)) or np.any(w < 0):
                raise ValueError(
                    f"recency_weights must be a non-empty sequence of finite weights >= 0, "
                    f"got {recency_weights!r}"
                )
            if w.sum() <= 0:
                raise ValueError(f"recency_weights must not all be zero, got {recency_weights!r}")
            self.recency_weights = w
        self._rng = np.random.Generator(np.random.PCG64(seed))

    def _episode_indices(self, n: int, batch_size: int) -> np.ndarray:
        """``(B,)`` int64 episode indices in ``[0, n)``."""
        if self.recency_weights is None:
            return self._rng.integers(0, n, size=batch_size)
        k = len(self.recency_weights)
        edges = (np.arange(k + 1) * n) // k  # bucket j holds episodes [edges[j], edges[j+1])
        sizes = np.diff(edges)
        p = np.where(sizes > 0, self.recency_weights, 0.0)
        if p.sum() <= 0:  # only empty buckets had weight: nothing to prefer
            return self._rng.integers(0, n, size=batch_size)
        buckets = self._rng.choice(k, size=batch_size, p=p / p.sum())
        return self._rng.integers(edges[buckets], edges[buckets + 1])

    def sample(self, batch_size: int) -> Batch:
        """A ``Batch`` of ``batch_size`` segments, as CPU tensors.

        obs ``(B, T, C, H, W)`` uint8, act ``(B, T)`` int64, rew ``(B, T)`` float32, end, trunc and
        mask ``(B, T)`` bool, with ``T = seq_len``.
        """
        store = self.store
        n = len(store)
        if n == 0:
            raise ValueError("cannot sample from an empty ReplayStore: add an episode first")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        B, T = batch_size, self.seq_len
        all_lengths, all_ends, all_truncs = store._tables()

        eps = self._episode_indices(n, B)  # (B,)
        lengths = all_lengths[eps]  # (B,) transitions; rows 0..length are real
        lo = np.full(B, -self.pad_left)
        hi = lengths + 1 - T + self.pad_right - int(self.end_before_final)
        short = hi < lo  # too short to fill a segment: keep the whole episode inside it
        starts = self._rng.integers(np.where(short, hi, lo), np.where(short, lo, hi) + 1)  # (B,)

        rows = starts[:, None] + np.arange(T)  # (B, T) episode row of each segment row
        mask = (rows >= 0) & (rows <= lengths[:, None])
        last = rows == lengths[:, None] - 1  # the last transition (never a padding row)
        end = last & all_ends[eps][:, None]
        trunc = last & all_truncs[eps][:, None]

        assert store.frame_shape is not None  # set by the first episode (the store has one)
        obs = np.empty((B, T, *store.frame_shape), dtype=np.uint8)
        act = np.zeros((B, T), dtype=np.int64)
        rew = np.zeros((B, T), dtype=np.float32)
        # One slice copy per segment: frames of an episode are contiguous, so this is a memcpy.
        for b, (e, s, length) in enumerate(
            zip(eps.tolist(), starts.tolist(), lengths.tolist(), strict=True)
        ):
            episode = store._episodes[e]
            first, stop = max(s, 0), min(s + T, length + 1)  # real rows [first, stop)
            i, j = first - s, stop - s  # where they land in the segment
            if i > 0:
                obs[b, :i] = 0
            obs[b, i:j] = episode.obs[first:stop]
            if j < T:
                obs[b, j:] = 0
            k = i + min(stop, length) - first  # act/rew exist for rows < length; the final row is 0
            act[b, i:k] = episode.act[first : first + k - i]
            rew[b, i:k] = episode.rew[first : first + k - i]

        frame_ids = np.where(mask, store.frame_offsets()[eps][:, None] + rows, -1)  # (B, T)
        return Batch(
            obs=torch.from_numpy(obs),
            act=torch.from_numpy(act),
            rew=torch.from_numpy(rew),
            end=torch.from_numpy(end),
            trunc=torch.from_numpy(trunc),
            mask=torch.from_numpy(mask),
            frame_ids=torch.from_numpy(frame_ids),
        )

    def state_dict(self) -> dict:
        """The RNG state as plain Python data (survives ``torch.load(weights_only=True)``)."""
        return {"rng": copy.deepcopy(self._rng.bit_generator.state)}

    def load_state_dict(self, d: dict) -> None:
        """Continue the stream of batches from a ``state_dict``."""
        state = d["rng"]
        if state.get("bit_generator") != "PCG64":
            raise ValueError(f"expected a PCG64 RNG state, got {state.get('bit_generator')!r}")
        self._rng.bit_generator.state = copy.deepcopy(state)
