"""What an agent sees of the real game: pixels, pixels through the world's eyes, or world features.

An agent declares ``observes = "pixels"`` or ``"features"``. Pixel agents get the real frames,
passed through ``world.agent_view`` when the world defines one (IRIS's actor-critic sees the
tokenizer's reconstructions, as published). Feature agents get ``world.real_features(...)``: the same
features (``world.features``) the world gives them in imagination, computed from real frames (the
VAE world: ``[z_t, h_t]``, the encoded frame and the MDN-RNN state after the previous action).
An agent that declares ``uses_observations = False`` (the random agent) gets the raw frames: no
world runs for it (collecting with it costs no tokenizer pass per frame).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from worldmodels import contract
from worldmodels.errors import UserError


def check_observable(agent: Any, world: Any) -> None:
    """A one-line error if ``agent`` wants features that ``world`` does not expose."""
    if contract.observes(agent) != "features":
        return
    if world is None:
        name = contract.name_of(agent)
        raise UserError(f"agent {name!r} observes world features: choose a --world for it")
    why = contract.incompatibility(agent, world)
    if why is not None:
        raise UserError(why)


class AgentInput:
    """Turns real frames into the agent's input, keeping whatever state the world needs."""

    def __init__(self, agent: Any, world: Any, device: torch.device | str) -> None:
        check_observable(agent, world)
        used = contract.uses_observations(agent)
        self.features = used and contract.observes(agent) == "features"
        self.world = world
        self.view = contract.agent_view(world) if used else None
        self._observe = contract.real_features_fn(world) if self.features else None
        self.device = torch.device(device)
        self._state: Any = None
        self._prev_action: Tensor | None = None

    def reset(self, num_envs: int) -> None:
        self._state = None
        self._prev_action = torch.zeros(num_envs, dtype=torch.long, device=self.device)

    @torch.inference_mode()
    def __call__(self, obs: Tensor, first: Tensor) -> Tensor:
        """``obs (B, C, H, W)`` uint8 (any device), ``first (B,)`` bool -> the agent's input."""
        obs = obs.to(self.device, non_blocking=True)
        first = first.to(self.device)
        if self.features:
            if self._prev_action is None:
                self.reset(obs.shape[0])
            assert self._observe is not None
            self._state, feats = self._observe(self._state, obs, self._prev_action, first)
            return feats
        return obs if self.view is None else self.view(obs)

    def record(self, actions: Tensor) -> None:
        """The actions just taken (feature worlds update their recurrent state with them)."""
        self._prev_action = actions.to(self.device, torch.long)

    def state(self) -> tuple[Any, Tensor | None]:
        """What it keeps between steps (the world's observe state, the last actions), for a
        checkpoint of the collection."""
        return self._state, self._prev_action

    def set_state(self, state: tuple[Any, Tensor | None]) -> None:
        self._state, self._prev_action = state
