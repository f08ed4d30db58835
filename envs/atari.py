"""Real Atari as a batched env: ``AtariVecEnv`` (uint8 ``(N, 3, S, S)`` torch tensors in and out).

Every protocol value comes from ``AtariConfig`` (``envs/atari_config.py``). Two backends run the
same protocol:

* ``vector``: ale-py's threaded C++ ``AtariVectorEnv`` (fast; the default wherever it fits).
* ``python``: one ``ale_py.ALEInterface`` per game, stepped in a Python loop (needed for IRIS's
  ``pool_order="resize_then_max"``). Its frame-level logic mirrors the C++ env step by step, and it
  draws its no-op starts from the same random stream, so with equal seeds and actions both backends
  return identical observations, rewards and flags (``tests/test_atari.py`` checks this).

Conventions shared by both backends (measured on ale-py 0.12.1, see ``tests/test_atari.py``):

* Same-step auto-reset: when an episode ends, ``step`` returns the first observation of the next
  episode in ``obs`` and the last one of the ended episode in ``info["final_obs"]``. No step ever
  ignores its action.
* No-op starts are counted in raw emulator frames (not agent steps), as in the DQN ``NoopResetEnv``
  that wraps the unskipped env: after a game reset, ``episode_frame`` equals the number of no-ops.
  Their count is uniform in ``[0, noop_max]``, drawn at every *game* reset (not after a life loss);
  with ``fire_reset`` the FIRE press after the reset counts as one of them (as in the C++ env).
* ``max_episode_frames`` counts the emulator frames played since the no-op start (the no-ops
  themselves are not counted); reaching it ends the episode with ``truncated=True``.
* Life loss is detected here, the same way for both backends: lives went down (and not to 0) on
  a step that did not end the game. In training mode with ``life_loss_terminal`` it ends the
  episode (``terminated=True``) while the game goes on (DQN's episodic life).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import operator
import os
import re
from typing import Literal, NamedTuple

import ale_py
import cv2
import gymnasium
import numpy as np
import torch
from ale_py import roms
from ale_py.vector_env import AtariVectorEnv as _AleVectorEnv

from worldmodels.envs.atari_config import AtariConfig
from worldmodels.errors import UserError, choices
from worldmodels.scores import reference_scores

Mode = Literal["train", "test"]
MODES = ("train", "test")
BACKENDS = ("auto", "vector", "python")
POOL_ORDERS = ("max_then_resize", "resize_then_max")
_MAX_SEED = 2**31 - 1  # ALE seeds are C ints; negative means "pick one at random"


ATARI100K_GAMES: tuple[str, ...] = tuple(reference_scores())
"""The 26 games of the Atari 100k benchmark, spelled as in ``reference/atari100k_scores.json``."""


# ----------------------------------------------------------------------------------------- names


def _squash(name: str) -> str:
    """The matching key of a game name: lowercase without ``_``, ``-`` or spaces."""
    return re.sub(r"[_\- ]", "", name).lower()


def _rom_to_camel(rom: str) -> str:
    # ale-py's own rule (``ms_pacman`` -> ``MsPacman``, ``tic_tac_toe_3d`` -> ``TicTacToe3D``).
    return rom.title().replace("_", "")


@functools.lru_cache(maxsize=1)
def _game_index() -> dict[str, tuple[str, str]]:
    """Squashed name -> (canonical CamelCase name, ALE ROM id), for every bundled ROM."""
    reference = {_squash(g): g for g in ATARI100K_GAMES}
    index = {}
    for rom in roms.get_all_rom_ids():
        key = _squash(rom)
        index[key] = (reference.get(key, _rom_to_camel(rom)), rom)
    return index


def all_games() -> list[str]:
    """CamelCase names of every ROM ale-py bundles (Atari-100k games in their reference spelling)."""
    return sorted(name for name, _ in _game_index().values())


def resolve_game(name: str) -> tuple[str, str]:
    """``'ms_pacman'``, ``'MsPacman'``, ``'ALE/MsPacman-v5'``, ``'MsPacmanNoFrameskip-v4'`` ->
    ``('MsPacman', 'ms_pacman')``: the canonical name and the ALE ROM id.

    Raises ``UserError`` (one line, listing the valid names) for an unknown game.
    """
    if not isinstance(name, str):
        raise UserError(f"Atari game must be a name, got {name!r}")
    bare = name.strip()
    bare = bare.removeprefix("ALE/")
    bare = re.sub(r"(NoFrameskip|Deterministic)?-v\d+$", "", bare)  # gymnasium env ids
    index = _game_index()
    found = index.get(_squash(bare))
    if found is not None:
        return found
    close = difflib.get_close_matches(_squash(bare), list(index), n=1, cutoff=0.75)
    hint = f"did you mean {index[close[0]][0]!r}? " if close else ""
    raise UserError(
        f"unknown Atari game {name!r} ({hint}valid: {', '.join(ATARI100K_GAMES)} "
        "or any ALE ROM, e.g. Pitfall, SpaceInvaders, MontezumaRevenge)"
    )


# -------------------------------------------------------------------------------------- backends


class _Step(NamedTuple):
    """One batched emulator step, before the life-loss logic (numpy, ``N`` envs)."""

    obs: np.ndarray  # (N, 3, S, S) uint8, first obs of the next episode where an episode ended
    reward: np.ndarray  # (N,) raw game reward
    game_over: np.ndarray  # (N,) bool, the game ended
    truncated: np.ndarray  # (N,) bool, the frame cap ended it (and the game was not over)
    final_obs: np.ndarray  # (N, 3, S, S) uint8, last obs where game_over | truncated, else obs
    lives: np.ndarray  # (N,) int32, lives in the (possibly new) game
    episode_frame: np.ndarray  # (N,) int64, frames since the (possibly new) game started


def _hwc_to_chw(frames: np.ndarray) -> np.ndarray:
    # (N, 1, S, S, 3) channel-last stack of one -> (N, 3, S, S), a fresh contiguous array
    return np.ascontiguousarray(frames[:, 0].transpose(0, 3, 1, 2))


class _VectorBackend:
    """ale-py's C++ ``AtariVectorEnv``.

    Its own ``episodic_life`` would restart the game on a life loss, and ``life_loss_info`` leaves
    ``final_obs`` stale on those rows and merges life loss with game over. So both stay off: its
    ``terminated`` is then exactly "game over", and life loss is detected by ``AtariVecEnv``.
    """

    name = "vector"
    _env: _AleVectorEnv | None  # None once closed

    def __init__(self, rom: str, config: AtariConfig, num_envs: int, num_threads: int):
        self.num_envs = num_envs
        self.num_threads = num_threads or min(num_envs, os.cpu_count() or 1)
        self._env = _AleVectorEnv(
            rom,
            num_envs,
            num_threads=self.num_threads,
            stack_num=1,
            grayscale=False,
            img_height=config.size,
            img_width=config.size,
            frameskip=config.frame_skip,
            maxpool=config.max_pool,
            # The C++ env draws its no-op count uniformly in [0, noop_max - 1] raw frames (measured:
            # noop_max=5 gives episode_frame 0..4 after reset); +1 gives the protocol's [0, noop_max].
            noop_max=config.noop_max + 1,
            repeat_action_probability=config.sticky_action_prob,
            full_action_space=config.full_action_space,
            reward_clipping=False,
            use_fire_reset=config.fire_reset,
            max_num_frames_per_episode=config.max_episode_frames,  # counted in emulator frames
            autoreset_mode="SameStep",
            episodic_life=False,
            life_loss_info=False,
        )
        self.action_set = tuple(self._env.ale.get_action_set())

    def reset(self, seed: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        assert self._env is not None  # AtariVecEnv steps open backends only
        obs, info = self._env.reset(seed=seed)
        return (
            _hwc_to_chw(obs),
            info["lives"].astype(np.int32),
            info["episode_frame_number"].astype(np.int64),
        )

    def step(self, actions: np.ndarray) -> _Step:
        assert self._env is not None  # AtariVecEnv steps open backends only
        obs, reward, game_over, truncated, info = self._env.step(actions)
        obs = _hwc_to_chw(obs)
        ended = game_over | truncated
        final_obs = obs.copy()
        if ended.any():  # "final_obs" is only valid (and only present) on rows that ended
            final_obs[ended] = _hwc_to_chw(info["final_obs"][ended])
        return _Step(
            obs,
            reward,
            game_over,
            truncated,
            final_obs,
            info["lives"].astype(np.int32),
            info["episode_frame_number"].astype(np.int64),
        )

    def close(self) -> None:
        self._env = None  # the C++ destructor joins the worker threads


def _lemire_draw(rng: np.random.RandomState, n: int) -> int:
    """Uniform int in ``[0, n)`` from 32-bit MT19937 draws, as libstdc++'s
    ``uniform_int_distribution`` computes it (Lemire 2019, "Fast random integer generation in an
    interval", Algorithm 5). With ``RandomState(seed)`` (MT19937 seeded by ``init_genrand``, as
    ``std::mt19937(seed)``) this reproduces the C++ vector env's no-op counts."""
    threshold = (2**32 - n) % n  # reject the few low words that would bias the result
    while True:
        product = int(rng.randint(0, 2**32, dtype=np.uint32)) * n
        if product & 0xFFFFFFFF >= threshold:
            return product >> 32


@functools.cache
def _action_set(rom: str, full_action_space: bool) -> tuple:
    ale = _new_ale()
    ale.loadROM(str(roms.get_rom_path(rom)))
    return tuple(ale.getLegalActionSet() if full_action_space else ale.getMinimalActionSet())


def _new_ale() -> ale_py.ALEInterface:
    # Without this every ALEInterface prints its banner. The C++ vector env sets the same
    # process-wide logger mode in each of its emulators.
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    return ale_py.ALEInterface()


class _Game:
    """One emulator with its own skip / max-pool / resize / no-op start / frame cap.

    Written to behave frame for frame like ale-py 0.12's C++ ``PreprocessedEnv``, quirks included,
    so the two backends agree: the frames of a step are read only while the episode goes on (when
    the game ends or hits the cap on frame ``k`` of a step, the pooled buffers keep what they held),
    max-pooling writes into the last-frame buffer, and a reset clears the second-to-last one.
    """

    def __init__(self, rom: str, config: AtariConfig, action_set: tuple):
        self.rom_path = str(roms.get_rom_path(rom))
        self.config = config
        self.action_set = action_set
        self.ale = _new_ale()
        self.loaded = False
        self.rng = np.random.RandomState(0)
        self.has_fire = ale_py.Action.FIRE in action_set
        self.raw = np.zeros((2, 210, 160, 3), np.uint8)  # [0]: last frame, [1]: the one before
        self.obs = np.zeros((3, config.size, config.size), np.uint8)
        self.elapsed = 0  # frames since the no-op start, for the cap
        self.game_over = False

    def _load(self, seed: int) -> None:
        # Like the C++ env: ALE's seed (sticky actions) and the no-op stream both come from `seed`.
        self.ale.setInt("random_seed", seed)
        self.ale.setFloat("repeat_action_probability", self.config.sticky_action_prob)
        self.ale.loadROM(self.rom_path)
        self.rng = np.random.RandomState(seed)
        self.loaded = True

    def reset(self, seed: int | None = None) -> None:
        """Start a new game (reseeding first if ``seed`` is given), then the no-op start."""
        if seed is not None:
            self._load(seed)
        elif not self.loaded:
            self._load(int(np.random.SeedSequence().generate_state(1)[0] % _MAX_SEED))
        ale = self.ale
        ale.reset_game()
        fire = self.config.fire_reset and self.has_fire
        if fire:
            ale.act(ale_py.Action.FIRE)
        # No-ops are raw emulator frames (see the module docstring), count uniform in [0, noop_max].
        noops = _lemire_draw(self.rng, self.config.noop_max + 1) - int(fire)
        for _ in range(noops):
            ale.act(ale_py.Action.NOOP)
            if ale.game_over():
                ale.reset_game()
        ale.getScreenRGB(self.raw[0])
        self.raw[1] = 0
        self._render()
        self.elapsed = 0
        self.game_over = False

    def step(self, action_index: int) -> tuple[int, bool, bool]:
        """One agent step: ``frame_skip`` frames of the action. Returns (reward, game over,
        truncated)."""
        ale, action, cap = self.ale, self.action_set[action_index], self.config.max_episode_frames
        reward = 0
        for k in range(self.config.frame_skip, 0, -1):  # k: frames left, including this one
            reward += ale.act(action)
            self.game_over = ale.game_over()
            self.elapsed += 1
            if self.game_over or self.elapsed >= cap:
                break
            if k <= 2:  # the last two frames, for the max-pool
                ale.getScreenRGB(self.raw[k - 1])
        self._render()
        return reward, self.game_over, self.elapsed >= cap and not self.game_over

    def _render(self) -> None:
        cfg, size = self.config, (self.config.size, self.config.size)
        if cfg.max_pool and cfg.pool_order == "resize_then_max":  # IRIS
            a = cv2.resize(self.raw[0], size, interpolation=cv2.INTER_AREA)
            b = cv2.resize(self.raw[1], size, interpolation=cv2.INTER_AREA)
            image = np.maximum(a, b)
        else:  # DIAMOND (max-pool the raw frames, then resize), or no pooling
            if cfg.max_pool:
                np.maximum(self.raw[0], self.raw[1], out=self.raw[0])
            image = cv2.resize(self.raw[0], size, interpolation=cv2.INTER_AREA)
        self.obs[...] = image.transpose(2, 0, 1)  # (S, S, 3) -> (3, S, S)


class _PythonBackend:
    """One ``_Game`` per env, stepped in a loop."""

    name = "python"

    def __init__(self, rom: str, config: AtariConfig, num_envs: int):
        self.num_envs = num_envs
        self.num_threads = 1
        self.action_set = _action_set(rom, config.full_action_space)
        self._games = [_Game(rom, config, self.action_set) for _ in range(num_envs)]
        self._size = config.size

    def _batch(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        obs = np.stack([g.obs for g in self._games])
        lives = np.array([g.ale.lives() for g in self._games], np.int32)
        frames = np.array([g.ale.getEpisodeFrameNumber() for g in self._games], np.int64)
        return obs, lives, frames

    def reset(self, seed: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        for i, game in enumerate(self._games):
            game.reset(None if seed is None else seed + i)
        return self._batch()

    def step(self, actions: np.ndarray) -> _Step:
        n = self.num_envs
        reward = np.zeros(n, np.int32)
        game_over = np.zeros(n, bool)
        truncated = np.zeros(n, bool)
        final_obs = np.empty((n, 3, self._size, self._size), np.uint8)
        for i, game in enumerate(self._games):
            reward[i], game_over[i], truncated[i] = game.step(int(actions[i]))
            final_obs[i] = game.obs
            if game_over[i] or truncated[i]:
                game.reset()
        obs, lives, frames = self._batch()
        ended = game_over | truncated
        final_obs[~ended] = obs[~ended]
        return _Step(obs, reward, game_over, truncated, final_obs, lives, frames)

    def close(self) -> None:
        self._games = []


# ---------------------------------------------------------------------------------- public env


def _check_config(config: AtariConfig) -> None:
    def bad(field: str, value, expected: str) -> UserError:
        return UserError(f"invalid Atari setting {field}={value!r} (expected {expected})")

    if config.frame_skip < 1:
        raise bad("frame_skip", config.frame_skip, "an integer >= 1")
    if config.size < 1:
        raise bad("size", config.size, "an integer >= 1")
    if not 0.0 <= config.sticky_action_prob <= 1.0:
        raise bad("sticky_action_prob", config.sticky_action_prob, "a probability in [0, 1]")
    if config.noop_max < 0:
        raise bad("noop_max", config.noop_max, "an integer >= 0")
    if config.max_episode_frames < 1:
        raise bad("max_episode_frames", config.max_episode_frames, "an integer >= 1")
    if config.pool_order not in POOL_ORDERS:
        raise bad("pool_order", config.pool_order, f"one of {choices(POOL_ORDERS)}")
    if config.backend not in BACKENDS:
        raise bad("backend", config.backend, f"one of {choices(BACKENDS)}")


def _pick_backend(config: AtariConfig, num_envs: int) -> str:
    # The C++ env max-pools the raw frames before resizing; IRIS's order needs the Python loop.
    vector_fits = not (config.max_pool and config.pool_order == "resize_then_max")
    if config.backend == "auto":
        # With one game the C++ env's thread hand-off costs more than it saves (bench/
        # env_throughput.py on 2 cores: ~740 vs ~1,000 steps/s); both backends give equal frames.
        return "vector" if vector_fits and num_envs > 1 else "python"
    if config.backend == "vector" and not vector_fits:
        raise UserError(
            "backend=vector cannot do pool_order=resize_then_max (ale-py's C++ env max-pools the "
            "raw frames before resizing); use backend=python or backend=auto"
        )
    return config.backend


class AtariVecEnv:
    """``num_envs`` Atari games stepped together; uint8 ``(N, 3, S, S)`` observations.

    ``mode="train"`` ends an episode on each life loss if ``config.life_loss_terminal`` (the game
    goes on); ``mode="test"`` plays whole games. Build it with ``make_atari_env``.
    """

    _impl: _VectorBackend | _PythonBackend | None  # None once closed

    def __init__(
        self, config: AtariConfig, num_envs: int, mode: Mode = "train", *, num_threads: int = 0
    ):
        _check_config(config)
        if mode not in MODES:
            raise UserError(f"unknown env mode {mode!r} (valid: {choices(MODES)})")
        if operator.index(num_envs) < 1:
            raise UserError(f"num_envs must be >= 1, got {num_envs}")
        self.config = config
        self.mode: Mode = mode
        self.num_envs = int(num_envs)
        self.game, self.rom = resolve_game(config.game)
        self.backend = _pick_backend(config, self.num_envs)
        if self.backend == "vector":
            self._impl = _VectorBackend(self.rom, config, self.num_envs, num_threads)
        else:
            self._impl = _PythonBackend(self.rom, config, self.num_envs)
        self.num_threads = self._impl.num_threads
        self.action_meanings: tuple[str, ...] = tuple(a.name for a in self._impl.action_set)
        self.num_actions = len(self.action_meanings)
        self.obs_shape = (3, config.size, config.size)
        self.life_loss_terminal = mode == "train" and config.life_loss_terminal
        """Whether a lost life ends the episode here (training mode with ``life_loss_terminal``)."""
        self._lives: np.ndarray | None = None  # per env, to detect life loss

    # -- gym-like API

    def reset(self, seed: int | None = None) -> tuple[torch.Tensor, dict]:
        """Start a new game in every env. Env ``i`` is seeded with ``seed + i``; every later
        auto-reset continues from that seed, so equal seeds and actions give equal trajectories.
        ``seed=None`` keeps each env's random stream going (fresh entropy the first time).

        Returns ``obs`` ``(N, 3, S, S) uint8`` and ``info`` with ``lives`` ``(N,) int32`` and
        ``episode_frame`` ``(N,) int64``.
        """
        impl = self._require_open()
        if seed is not None:
            seed = operator.index(seed)
            if not 0 <= seed <= _MAX_SEED - self.num_envs + 1:
                raise UserError(
                    f"env seed must be in [0, {_MAX_SEED - self.num_envs + 1}], got {seed}"
                )
        obs, lives, frames = impl.reset(seed)
        self._lives = lives
        info = {"lives": torch.from_numpy(lives), "episode_frame": torch.from_numpy(frames)}
        return torch.from_numpy(obs), info

    def step(self, actions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """Take one agent step (``frame_skip`` frames) in every env.

        ``actions``: ``(N,)`` integers in ``[0, num_actions)`` (torch tensor or numpy array).
        Returns ``obs`` ``(N, 3, S, S) uint8``, ``reward`` ``(N,) float32`` (raw game reward),
        ``terminated`` ``(N,) bool``, ``truncated`` ``(N,) bool`` and ``info``:

        * ``final_obs`` ``(N, 3, S, S) uint8``: where ``terminated | truncated``, the last
          observation of the episode that ended (``obs`` then starts the next one); else ``obs``.
        * ``life_loss`` ``(N,) bool``: a life was lost and the game goes on (in every mode; it
          ends the episode only where ``life_loss_terminal``). Then ``final_obs`` equals ``obs``.
        * ``game_over`` ``(N,) bool``: the game ended (``terminated`` is then True).
        * ``lives`` ``(N,) int32``, ``episode_frame`` ``(N,) int64``: of the current game, counted
          in emulator frames from its reset (no-op start included).
        """
        impl = self._require_open()
        if self._lives is None:
            raise RuntimeError("AtariVecEnv.step() called before reset()")
        s = impl.step(self._actions(actions))
        ended = s.game_over | s.truncated
        life_loss = (s.lives < self._lives) & (s.lives > 0) & ~ended
        self._lives = s.lives
        terminated = (s.game_over | life_loss) if self.life_loss_terminal else s.game_over.copy()
        info = {
            "final_obs": torch.from_numpy(s.final_obs),
            "life_loss": torch.from_numpy(life_loss),
            "game_over": torch.from_numpy(s.game_over),
            "lives": torch.from_numpy(s.lives),
            "episode_frame": torch.from_numpy(s.episode_frame),
        }
        reward = torch.from_numpy(s.reward.astype(np.float32))
        return (
            torch.from_numpy(s.obs),
            reward,
            torch.from_numpy(terminated),
            torch.from_numpy(s.truncated),
            info,
        )

    def _actions(self, actions) -> np.ndarray:
        if isinstance(actions, torch.Tensor):
            actions = actions.detach().cpu().numpy()
        a = np.asarray(actions)
        if a.shape != (self.num_envs,) or a.dtype.kind not in "iu":
            raise ValueError(
                f"actions must be {self.num_envs} integers of shape ({self.num_envs},), "
                f"got dtype {a.dtype} shape {a.shape}"
            )
        a = a.astype(np.int64, copy=False)
        if a.min() < 0 or a.max() >= self.num_actions:
            raise ValueError(f"actions must be in [0, {self.num_actions}), got {a.tolist()}")
        return a

    def _require_open(self) -> _VectorBackend | _PythonBackend:
        if self._impl is None:
            raise RuntimeError("AtariVecEnv is closed")
        return self._impl

    # -- records and lifetime

    def spec(self) -> dict:
        """Everything that defines this env, JSON-serialisable: every ``AtariConfig`` field (with
        ``game`` and ``backend`` resolved), the action set, the conventions and the versions."""
        return {
            **dataclasses.asdict(self.config),
            "game": self.game,
            "rom": self.rom,
            "game_requested": self.config.game,
            "backend": self.backend,
            "backend_requested": self.config.backend,
            "mode": self.mode,
            "num_envs": self.num_envs,
            "num_threads": self.num_threads,
            "num_actions": self.num_actions,
            "action_meanings": list(self.action_meanings),
            "obs_shape": list(self.obs_shape),
            "life_loss_terminal_effective": self.life_loss_terminal,
            "autoreset": "same-step",
            "noop_unit": "raw emulator frames, uniform in [0, noop_max], at each game reset",
            "max_episode_frames_unit": "emulator frames after the no-op start",
            "reward": "raw (unclipped)",
            "versions": {
                "ale_py": ale_py.__version__,
                "gymnasium": gymnasium.__version__,
                "opencv": cv2.__version__,
                "numpy": np.__version__,
                "torch": torch.__version__,
            },
        }

    def close(self) -> None:
        impl = getattr(self, "_impl", None)  # None once closed; absent if __init__ raised
        if impl is not None:
            impl.close()
            self._impl = None

    def __enter__(self) -> AtariVecEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"AtariVecEnv(game={self.game!r}, num_envs={self.num_envs}, mode={self.mode!r}, "
            f"backend={self.backend!r}, protocol={self.config.protocol!r})"
        )


def make_atari_env(
    config: AtariConfig, num_envs: int, mode: Mode, *, num_threads: int = 0
) -> AtariVecEnv:
    """The real Atari env for ``config``. ``num_threads`` (vector backend only): emulator worker
    threads, 0 = one per env up to the CPU count."""
    return AtariVecEnv(config, num_envs, mode, num_threads=num_threads)
