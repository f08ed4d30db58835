"""The Atari protocol as a frozen config (kept apart from ``atari.py`` so it imports nothing heavy)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from worldmodels.checks import at_least, in_range


@dataclass(frozen=True)
class AtariConfig:
    """Every value of the evaluation protocol. Defaults are the Atari 100k protocol (IRIS, DIAMOND).

    ``configs/env/<protocol>.yaml`` files set these; the resolved values are written into each
    run's config and results, and runs with different protocol values are never aggregated together.
    """

    game: str = "Breakout"
    """ALE game: CamelCase (``MsPacman``) or ROM id (``ms_pacman``); any of ale-py's bundled ROMs."""
    protocol: str = "atari100k"
    """Name of the protocol preset these values came from (informative; the values decide)."""
    frame_skip: int = 4
    """Emulator frames per agent step; the action repeats on each."""
    max_pool: bool = True
    """Max over the last two raw frames of each step (removes Atari sprite flicker)."""
    pool_order: Literal["max_then_resize", "resize_then_max"] = "max_then_resize"
    """DIAMOND max-pools the raw frames then resizes; IRIS resizes each frame then takes the max."""
    size: int = 64
    """Observations are ``size x size`` RGB uint8 (resized with ``cv2.INTER_AREA``)."""
    sticky_action_prob: float = 0.0
    """Probability the emulator repeats the previous action (Machado et al. 2018 use 0.25)."""
    full_action_space: bool = False
    """All 18 actions instead of the game's minimal set."""
    noop_max: int = 30
    """Each game starts with a uniform random number of no-op steps in ``[0, noop_max]``."""
    fire_reset: bool = False
    """Press FIRE after a reset in games that need it (not part of Atari 100k)."""
    life_loss_terminal: bool = True
    """Training mode only: a lost life ends the episode (the game goes on, DQN-style)."""
    max_episode_frames: int = 108_000
    """Episode cap in emulator frames (108k frames = 30 minutes of play), reported as truncation."""
    backend: Literal["auto", "vector", "python"] = "auto"
    """``vector``: ale-py's threaded C++ vector env; ``python``: per-game ALE in Python (needed for
    ``resize_then_max``); ``auto`` picks ``vector`` wherever it implements the protocol."""

    def __post_init__(self) -> None:
        at_least(self, 1, "frame_skip", "size", "max_episode_frames")
        at_least(self, 0, "noop_max")
        in_range(self, 0.0, 1.0, "sticky_action_prob")

    SCORE_KEYS = (
        "frame_skip", "sticky_action_prob", "full_action_space", "noop_max", "fire_reset",
        "max_episode_frames",
    )  # fmt: skip
    """Protocol values that change a real game's return: results that differ in them are never
    aggregated (``max_episode_frames`` may differ where no episode reached the lower cap)."""
    DYNAMICS_KEYS = (
        "frame_skip", "max_pool", "pool_order", "size", "sticky_action_prob",
        "full_action_space", "life_loss_terminal",
    )  # fmt: skip
    """Protocol values that change what a world must predict (the frames, the action set, the
    dynamics, what counts as an end): worlds that differ in them are never compared."""

    def protocol_values(self) -> dict:
        """The fields that define the protocol (not the game or the backend): runs may be compared
        or aggregated only when these are equal."""
        skip = {"game", "protocol", "backend"}
        return {k: v for k, v in self.__dict__.items() if k not in skip}
