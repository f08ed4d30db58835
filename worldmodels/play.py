"""Playing inside a learned world: the session, its renderer, action scripts and recordings.

``python -m worldmodels play RUN`` (``worldmodels/commands/play.py``) opens a pygame window on a
``PlaySession``; everything else lives here and needs no pygame: the session steps one imagined
trajectory of a loaded world (``worldmodels.hub.load``) with one action per step, optionally the
real game (``side_by_side``) or a second world (``other``) beside it under the same actions;
``render`` draws what is shown (the panels with their labels, predicted reward and end, the key map
and a status line) into one RGB frame with Pillow, the same frame the window shows and a
recording (``Recorder``: GIF with Pillow, mp4 with OpenCV) writes; ``ActionLog`` writes the action
log (JSON lines: a header, then every reset, setting change, agent toggle and step), and
``read_actions`` reads it back (or a plain list of actions) as a script. Replaying a log under the
same seed gives the same frames: every reset draws its real context with ``seed + k`` (``k`` the
reset's number) and reseeds the worlds' randomness with it (``DreamEnv.reseed``), and the agent's
generator is seeded once from ``seed``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from worldmodels.errors import UserError
from worldmodels.interfaces import Batch

LOG_FORMAT = 1
HORIZON = 10**9  # a played trajectory is never cut: it ends when the world predicts an end
ACTION_FILE_FORMATS = (".jsonl", ".json", ".txt")
RECORD_FORMATS = (".gif", ".mp4")

# --------------------------------------------------------------------------------- the key map

KEY_HELP = (
    ("arrows, space", "move, fire (held)"),
    ("0-9", "action by number"),
    ("R", "reset from a fresh real context"),
    ("P", "pause / resume"),
    (".", "one step (while paused)"),
    ("[ ]", "denoising steps - / +"),
    ("- =", "temperature - / +"),
    ("A", "agent in control on / off"),
    ("Esc, Q", "quit"),
)
DIRECTION_KEYS = {"up": "UP", "down": "DOWN", "left": "LEFT", "right": "RIGHT"}
TEMPERATURE_STEP, TEMPERATURE_MIN = 0.1, 0.1


def action_from_held(meanings: Sequence[str], held: Iterable[str]) -> int:
    """The action of the held keys (``up``, ``down``, ``left``, ``right``, ``space``): the action
    set's name for the combination (``UPRIGHTFIRE``...), dropping fire, then the vertical, then
    the horizontal part while the game has no such action; NOOP (else action 0) when none."""
    held = set(held)
    vert = "UP" if "up" in held and "down" not in held else "DOWN" if "down" in held else ""
    if "up" in held and "down" in held:
        vert = ""
    horiz = "RIGHT" if "right" in held and "left" not in held else ""
    horiz = "LEFT" if "left" in held and "right" not in held else horiz
    fire = "FIRE" if "space" in held else ""
    index = {name.upper(): i for i, name in enumerate(meanings)}
    for v, h, f in ((vert, horiz, fire), (vert, horiz, ""), ("", horiz, fire), ("", horiz, ""),
                    (vert, "", fire), (vert, "", ""), ("", "", fire)):  # fmt: skip
        name = v + h + f
        if name and name in index:
            return index[name]
    return index.get("NOOP", 0)


def action_keys(meanings: Sequence[str]) -> list[tuple[str, str, str]]:
    """One row per action: its number (0-9, else blank), its name and the keys that give it."""
    arrows = {"UP": "Up", "DOWN": "Down", "LEFT": "Left", "RIGHT": "Right", "FIRE": "Space"}
    rows = []
    for i, name in enumerate(meanings):
        parts, rest = [], name.upper()
        for word in ("UP", "DOWN", "RIGHT", "LEFT", "FIRE"):
            if word in rest:
                parts.append(arrows[word])
                rest = rest.replace(word, "", 1)
        keys = "+".join(parts) if parts and not rest else ("none" if name == "NOOP" else "")
        rows.append((str(i) if i < 10 else "", name, keys))
    return rows


# --------------------------------------------------------------------------------- settings


@dataclasses.dataclass
class Knob:
    """A sampling setting of a world read at every step (changed without rebuilding it)."""

    name: str
    get: Any
    set: Any


def knobs(world: Any) -> dict[str, Knob]:
    """The world's play-time settings: ``denoising_steps`` (a diffusion world: its config and
    its cached noise schedule ``sigmas``) and ``temperature`` (its config's, or a submodule's
    config's such as the VAE world's MDN-RNN)."""
    out: dict[str, Knob] = {}
    cfg = getattr(world, "config", None)
    if dataclasses.is_dataclass(cfg) and hasattr(cfg, "denoising_steps"):

        def set_steps(n: int, w: Any = world) -> None:
            from worldmodels.dynamics.diffusion.sampler import sigma_levels

            c = dataclasses.replace(w.config, denoising_steps=int(n))
            w.config = c
            if hasattr(w, "sigmas"):  # the schedule is computed once at build: recompute it
                w.sigmas = sigma_levels(c.denoising_steps, c.sigma_min, c.sigma_max, c.rho)

        out["denoising_steps"] = Knob(
            "denoising_steps", lambda w=world: w.config.denoising_steps, set_steps
        )
    owners = [world] + [m for m in getattr(world, "children", lambda: [])()]
    for owner in owners:
        c = getattr(owner, "config", None)
        if dataclasses.is_dataclass(c) and hasattr(c, "temperature"):

            def set_temp(x: float, o: Any = owner) -> None:
                o.config = dataclasses.replace(o.config, temperature=float(x))

            out["temperature"] = Knob("temperature", lambda o=owner: o.config.temperature, set_temp)
            break
    return out


# --------------------------------------------------------------------------------- scripts


@dataclasses.dataclass(frozen=True)
class Item:
    """One entry of a script or a log: a step (``action``) or an event (``reset``, ``agent``
    with ``on``, ``set`` with ``settings``)."""

    kind: str  # "step", "reset", "agent", "set"
    action: int | None = None
    by: str = "script"
    on: bool | None = None
    settings: dict[str, float] | None = None


def _action(value: Any, meanings: Sequence[str], where: str) -> int:
    if isinstance(value, bool):
        raise UserError(f"{where}: an action must be a number or a name, got {value!r}")
    if isinstance(value, int):
        if not 0 <= value < len(meanings):
            raise UserError(f"{where}: action {value} out of range [0, {len(meanings)})")
        return value
    if isinstance(value, str):
        names = {m.upper(): i for i, m in enumerate(meanings)}
        if value.strip().isdigit():
            return _action(int(value.strip()), meanings, where)
        if value.strip().upper() in names:
            return names[value.strip().upper()]
        raise UserError(
            f"{where}: unknown action {value!r} (valid: {', '.join(meanings)} or 0-"
            f"{len(meanings) - 1})"
        )
    raise UserError(f"{where}: an action must be a number or a name, got {value!r}")


def _item(value: Any, meanings: Sequence[str], where: str) -> Item | None:
    """A script entry: an action, ``{"action": a}``, ``{"event": ...}``; None for a header."""
    if value is None:  # the agent's choice
        return Item("step", None, by="agent")
    if not isinstance(value, dict):
        return Item("step", _action(value, meanings, where))
    if "play" in value:
        return None
    if "action" in value and value["action"] is None:
        return Item("step", None, by="agent")
    if "action" in value:
        return Item(
            "step", _action(value["action"], meanings, where), by=str(value.get("by", "script"))
        )
    event = value.get("event")
    if event == "reset":
        return Item("reset")
    if event == "agent" and isinstance(value.get("on"), bool):
        return Item("agent", on=value["on"])
    if event == "set" and isinstance(value.get("settings"), dict):
        try:
            settings = {str(k): float(v) for k, v in value["settings"].items()}
        except (TypeError, ValueError):
            raise UserError(
                f"{where}: settings must be numbers, got {value['settings']!r}"
            ) from None
        return Item("set", settings=settings)
    raise UserError(
        f'{where}: unknown entry {json.dumps(value)[:80]} (an action, {{"action": a}}, or '
        '{"event": "reset" | "agent" with "on" | "set" with "settings"})'
    )


def read_actions(path: str | Path, meanings: Sequence[str]) -> tuple[list[Item], dict[str, Any]]:
    """A script of actions and events, and the header of a play log (``{}`` if none).

    ``.jsonl``: one JSON value a line (a play log as ``ActionLog`` writes it, or actions;
    ``null`` is the agent's choice, for steps while it is in control);
    ``.json``: a list of them, or ``{"actions": [...]}``; ``.txt``: one action a line (its number
    or its name, case-insensitive; blank lines and ``#`` comments skipped)."""
    p = Path(path)
    if p.suffix.lower() not in ACTION_FILE_FORMATS:
        raise UserError(
            f"unknown action file format {p.suffix or '(no suffix)'!r} for {p} (valid: "
            f"{', '.join(ACTION_FILE_FORMATS)})"
        )
    if not p.is_file():
        raise UserError(f"action file {p} does not exist")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read action file {p}: {exc}") from None
    header: dict[str, Any] = {}
    values: list[tuple[Any, str]] = []
    suffix = p.suffix.lower()
    if suffix == ".txt":
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if line:
                values.append((line, f"{p}:{n}"))
    elif suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                values.append((json.loads(line), f"{p}:{n}"))
            except json.JSONDecodeError as exc:
                raise UserError(f"{p}:{n} is not JSON: {exc}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{p} is not JSON: {exc}") from None
        if isinstance(data, dict) and isinstance(data.get("actions"), list):
            header = data.get("play", {}) if isinstance(data.get("play"), dict) else {}
            data = data["actions"]
        if not isinstance(data, list):
            raise UserError(f'{p}: expected a list of actions or {{"actions": [...]}}')
        values = [(v, f"{p}[{i}]") for i, v in enumerate(data)]
    items = []
    for value, where in values:
        if isinstance(value, dict) and isinstance(value.get("play"), dict):
            header = value["play"]
        item = _item(value, meanings, where)
        if item is not None:
            items.append(item)
    if not any(i.kind == "step" for i in items):
        raise UserError(f"action file {p} holds no action")
    return items, header


class ActionLog:
    """The action log of a session, JSON lines: ``{"play": header}``, then one line per event
    (``{"event": "reset"}``, ``{"event": "agent", "on": b}``, ``{"event": "set", "settings":
    {...}}``) and per step (``{"step": i, "action": a, "name": ..., "by": "keys" | "agent" |
    "script"}``). ``read_actions`` replays it."""

    def __init__(self, path: str | Path, header: dict[str, Any]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self.path.open("w")
        self.write({"play": {"format": LOG_FORMAT, **header}})

    def write(self, entry: dict[str, Any]) -> None:
        self._f.write(json.dumps(entry) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def log_path_for(record: str | Path) -> Path:
    """Where a recording's action log goes: ``out.gif`` -> ``out.actions.jsonl``."""
    p = Path(record)
    return p.with_name(p.stem + ".actions.jsonl")


# --------------------------------------------------------------------------------- the session


@dataclasses.dataclass
class Panel:
    """What one panel shows: a frame ``(H, W, 3)`` uint8 with its title and this step's reward
    and end (predicted by a world, or the real game's)."""

    title: str
    frame: np.ndarray
    reward: float | None = None
    end: bool = False


def _fit(ctx: Batch, n: int) -> Batch:
    """``ctx`` with ``n`` rows: its last ``n``, or left-padded (zeros, ``mask`` False)."""
    t = ctx.obs.shape[1]
    if t >= n:
        return Batch._make(None if x is None else x[:, t - n :] for x in ctx)
    pad = n - t

    def left(x: torch.Tensor, fill: Any) -> torch.Tensor:
        shape = (x.shape[0], pad, *x.shape[2:])
        return torch.cat((torch.full(shape, fill, dtype=x.dtype, device=x.device), x), dim=1)

    return Batch(
        obs=left(ctx.obs, 0), act=left(ctx.act, 0), rew=left(ctx.rew, 0), end=left(ctx.end, False),
        trunc=left(ctx.trunc, False), mask=left(ctx.mask, False),
        frame_ids=None if ctx.frame_ids is None else left(ctx.frame_ids, -1),
    )  # fmt: skip


def _hwc(frame: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(frame.detach().to("cpu").permute(1, 2, 0).numpy())


class PlaySession:
    """One imagined trajectory of ``loaded``'s world stepped one action at a time; the real game
    (``side_by_side``) or the world of ``other`` (a second ``Loaded``) beside it under the same
    actions. ``seed`` makes it repeat: the same seed and the same script give the same frames."""

    def __init__(
        self,
        loaded: Any,
        *,
        other: Any = None,
        side_by_side: bool = False,
        seed: int = 0,
        names: Sequence[str] | None = None,
    ) -> None:
        if loaded.world is None:
            raise UserError(f"{loaded.source} has no world to play in (agent alone)")
        self.loaded = loaded
        self.models = [loaded] + ([other] if other is not None else [])
        if other is not None:
            if other.world is None:
                raise UserError(f"{other.source} has no world to play in (agent alone)")
            a, b = loaded.env_info, other.env_info
            if a.num_actions != b.num_actions or tuple(a.obs_shape) != tuple(b.obs_shape):
                raise UserError(
                    f"{loaded.source} and {other.source} do not play the same game: "
                    f"{a.num_actions} vs {b.num_actions} actions, obs {a.obs_shape} vs {b.obs_shape}"
                )
        self.seed = int(seed)
        self.names = list(names) if names else [str(m.source) for m in self.models]
        self.env = loaded.make_env("test", 1) if side_by_side else None
        meanings = loaded.env_info.action_meanings
        if self.env is not None:
            meanings = self.env.action_meanings
        if not meanings:
            meanings = tuple(f"ACTION_{i}" for i in range(loaded.env_info.num_actions))
        self.action_meanings: tuple[str, ...] = tuple(meanings)
        self.num_actions = len(self.action_meanings)
        self.knobs: dict[str, list[Knob]] = {}
        for m in self.models:
            for name, k in knobs(m.world).items():
                self.knobs.setdefault(name, []).append(k)
        self._saved = {name: [k.get() for k in ks] for name, ks in self.knobs.items()}
        self.agent = loaded.agent
        gen = getattr(self.agent, "generator", None)
        if isinstance(gen, torch.Generator):
            gen.manual_seed(self.seed)
        self.agent_on = False
        self.resets = 0
        self.step_count = 0  # steps since the session started
        self.episode_step = 0  # steps since the last reset
        self.last_action: int | None = None
        self.last_by = ""
        self.panels: list[Panel] = []
        self.world_frames: list[list[np.ndarray]] = []  # per step: each world panel's frame
        self.reset()

    # ---------------------------------------------------------------- settings

    def settings(self) -> dict[str, float]:
        return {name: ks[0].get() for name, ks in self.knobs.items()}

    def change(self, name: str, delta: int) -> dict[str, float] | None:
        """Step a setting up (``delta`` 1) or down (-1); the new settings, or None if no world
        here has it."""
        if name not in self.knobs:
            return None
        value = self.knobs[name][0].get()
        if name == "denoising_steps":
            new: float = max(1, int(value) + delta)
        else:
            new = max(TEMPERATURE_MIN, round(value + delta * TEMPERATURE_STEP, 6))
        return self.apply({name: new})

    def apply(self, settings: dict[str, float]) -> dict[str, float]:
        for name, value in settings.items():
            if name not in self.knobs:
                raise UserError(
                    f"setting {name!r} is not one of this world's (valid: "
                    f"{', '.join(self.knobs) or 'none'})"
                )
            if name == "denoising_steps" and (value < 1 or value != int(value)):
                raise UserError(f"denoising_steps must be a whole number >= 1, got {value}")
            if name == "temperature" and not value > 0:
                raise UserError(f"temperature must be > 0, got {value}")
            for k in self.knobs[name]:
                k.set(int(value) if name == "denoising_steps" else float(value))
        return self.settings()

    def restore(self) -> None:
        """Put every world's settings back as they were loaded."""
        for name, ks in self.knobs.items():
            for k, v in zip(ks, self._saved[name], strict=True):
                k.set(v)

    # ---------------------------------------------------------------- reset and step

    def _context(self, seed: int) -> Batch:
        n = max(m.world.context_len for m in self.models)
        if self.env is not None:  # the real game's first frame, padded before as an episode start
            obs, _ = self.env.reset(seed=seed)
            ctx = Batch(
                obs=obs[:, None], act=torch.zeros(1, 1, dtype=torch.long),
                rew=torch.zeros(1, 1), end=torch.zeros(1, 1, dtype=torch.bool),
                trunc=torch.zeros(1, 1, dtype=torch.bool), mask=torch.ones(1, 1, dtype=torch.bool),
            )  # fmt: skip
            return _fit(ctx, n)
        return _fit(self.loaded.contexts(1, seed=seed), n)

    def reset(self) -> None:
        """Start again from a fresh real context (the real game's new first frame beside it)."""
        seed = self.seed + self.resets
        self.resets += 1
        ctx = self._context(seed)
        self.dreams = []
        self.obs = []
        for m in self.models:
            dream = m.dream(_fit(ctx, m.world.context_len), horizon=HORIZON, seed=seed)
            dream.keep_frames = True
            dream.reseed(seed)
            obs, _ = dream.reset()
            self.dreams.append(dream)
            self.obs.append(obs)
        self.agent_state = self.agent.initial_state(1, self.loaded.device)
        self.first = torch.ones(1, dtype=torch.bool, device=self.loaded.device)
        self.episode_step = 0
        self.last_action, self.last_by = None, ""
        frames = [_hwc(d.frames[0]) for d in self.dreams]
        self.panels = [Panel(self._title(i), f) for i, f in enumerate(frames)]
        if self.env is not None:
            self.panels.append(Panel(self._real_title(), _hwc(ctx.obs[0, -1])))
        self.world_frames.append(frames)

    def _title(self, i: int) -> str:
        w = self.models[i].config.world
        return f"dream: {w.name if w else '?'} ({Path(self.names[i]).name})"

    def _real_title(self) -> str:
        assert self.env is not None
        return f"real: {self.env.game}"

    def agent_action(self) -> int:
        """The agent's action on the first world's current observation (its state advances)."""
        obs = self.obs[0].to(self.loaded.device)
        actions, self.agent_state = self.agent.act(obs, self.agent_state, self.first)
        return int(actions[0])

    def set_agent(self, on: bool) -> None:
        self.agent_on = bool(on)
        if on:  # the agent starts from a fresh state
            self.first = torch.ones(1, dtype=torch.bool, device=self.loaded.device)

    def step(self, action: int | None, by: str = "keys") -> int:
        """One step of every panel under ``action`` (the agent's where it is in control and
        ``action`` is None, else ``action``, which wins: a log replays what was taken); the
        action taken."""
        if self.agent_on:
            chosen = self.agent_action()
            if action is None:
                action, by = chosen, "agent"
        if action is None:
            raise ValueError("step() needs an action while the agent is not in control")
        if not 0 <= action < self.num_actions:
            raise ValueError(f"action must be in [0, {self.num_actions}), got {action}")
        a = torch.tensor([action], dtype=torch.long)
        frames = []
        panels = []
        done_any = torch.zeros(1, dtype=torch.bool)
        for i, dream in enumerate(self.dreams):
            obs, reward, term, trunc, _ = dream.step(a.to(dream.device))
            self.obs[i] = obs
            frames.append(_hwc(dream.frames[0]))
            end = bool(term[0])
            if i == 0:
                done_any = (term | trunc).cpu()
            panels.append(Panel(self._title(i), frames[-1], float(reward[0]), end))
        if self.env is not None:
            obs, reward, term, trunc, info = self.env.step(np.array([action]))
            panels.append(
                Panel(self._real_title(), _hwc(info["final_obs"][0]), float(reward[0]),
                      bool(term[0] | trunc[0]))
            )  # fmt: skip
        self.first = done_any.to(self.loaded.device)
        self.panels = panels
        self.world_frames.append(frames)
        self.step_count += 1
        self.episode_step += 1
        self.last_action, self.last_by = action, by
        return action

    def close(self) -> None:
        self.restore()
        if self.env is not None:
            self.env.close()
            self.env = None


# --------------------------------------------------------------------------------- rendering


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the bitmap font
        return ImageFont.load_default()


@dataclasses.dataclass
class Status:
    """The status line: what the session is doing besides its panels."""

    paused: bool = False
    fps: str = ""
    note: str = ""


class Renderer:
    """Draws a session into one RGB frame ``(H, W, 3)`` uint8: the panels side by side (each
    ``scale`` times its size) with their titles and their reward / end line, the status line and
    the key map. The window shows this frame and a recording writes it."""

    PAD, TITLE_H, INFO_H, LINE_H = 8, 18, 18, 14
    KEYMAP_W = 300
    BG, FG, DIM, RED, GREEN = (
        (24, 24, 28),
        (230, 230, 230),
        (150, 150, 160),
        (240, 80, 70),
        (90, 210, 120),
    )

    def __init__(self, session: PlaySession, scale: int = 4) -> None:
        self.session = session
        self.scale = max(1, int(scale))
        h, w = session.panels[0].frame.shape[:2]
        self.cell = (w * self.scale, h * self.scale)
        self.font = _font(12)
        self.keymap = action_keys(session.action_meanings)
        n = len(session.panels)
        self.width = self.PAD + n * (self.cell[0] + self.PAD) + self.KEYMAP_W
        lines = len(self.keymap) + len(KEY_HELP) + 3
        panel_h = self.PAD + self.TITLE_H + self.cell[1] + self.INFO_H + self.LINE_H * 3 + self.PAD
        self.height = max(panel_h, self.PAD * 2 + self.LINE_H * lines)

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def render(self, status: Status) -> np.ndarray:
        s = self.session
        img = Image.new("RGB", self.size, self.BG)
        d = ImageDraw.Draw(img)
        x = self.PAD
        for p in s.panels:
            y = self.PAD
            d.text((x, y), p.title[:48], fill=self.FG, font=self.font)
            y += self.TITLE_H
            frame = Image.fromarray(p.frame).resize(self.cell, Image.Resampling.NEAREST)
            img.paste(frame, (x, y))
            if p.end:
                d.rectangle(
                    (x, y, x + self.cell[0] - 1, y + self.cell[1] - 1), outline=self.RED, width=3
                )
            y += self.cell[1] + 3
            kind = "real" if p.title.startswith("real") else "predicted"
            reward = "-" if p.reward is None else f"{p.reward:+.2f}"
            d.text((x, y), f"{kind} reward {reward}", fill=self.FG, font=self.font)
            end = "YES" if p.end else "no"
            d.text((x + self.cell[0] - 56, y), f"end: {end}", font=self.font,
                   fill=self.RED if p.end else self.DIM)  # fmt: skip
            x += self.cell[0] + self.PAD
        # the status lines, under the panels
        y = self.PAD + self.TITLE_H + self.cell[1] + self.INFO_H + 4
        name = "-" if s.last_action is None else s.action_meanings[s.last_action]
        who = f" ({s.last_by})" if s.last_by else ""
        line1 = (
            f"step {s.episode_step} (total {s.step_count}, reset {s.resets})   action {name}{who}"
        )
        parts = [f"{k.replace('_', ' ')} {v:g}" for k, v in s.settings().items()]
        parts.append("agent in control" if s.agent_on else "keys in control")
        if status.paused:
            parts.append("PAUSED")
        line2 = "   ".join(parts)
        line3 = "   ".join(t for t in (status.fps, status.note) if t)
        for i, text in enumerate((line1, line2, line3)):
            colour = self.GREEN if i == 1 and s.agent_on else self.FG
            d.text((self.PAD, y + i * self.LINE_H), text, fill=colour, font=self.font)
        # the key map, on the right
        x = self.width - self.KEYMAP_W + self.PAD
        y = self.PAD
        d.text((x, y), "actions (key)", fill=self.FG, font=self.font)
        y += self.LINE_H
        for digit, name, keys in self.keymap:
            d.text((x, y), digit, fill=self.DIM, font=self.font)
            d.text((x + 18, y), name, fill=self.DIM, font=self.font)
            d.text((x + 130, y), keys, fill=self.DIM, font=self.font)
            y += self.LINE_H
        y += self.LINE_H // 2
        d.text((x, y), "controls", fill=self.FG, font=self.font)
        y += self.LINE_H
        for keys, what in KEY_HELP:
            d.text((x, y), keys, fill=self.DIM, font=self.font)
            d.text((x + 90, y), what, fill=self.DIM, font=self.font)
            y += self.LINE_H
        return np.asarray(img)


# --------------------------------------------------------------------------------- recording


def check_record_path(path: str | Path) -> Path:
    """``path`` if it names a format we write (``.gif``, ``.mp4`` with an encoder): else a
    one-line ``UserError`` naming what is missing."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in RECORD_FORMATS:
        raise UserError(
            f"cannot record to {p}: unknown format {suffix or '(no suffix)'!r} (valid: "
            f"{', '.join(RECORD_FORMATS)})"
        )
    if suffix == ".mp4":
        try:
            import cv2  # noqa: F401
        except ImportError:
            raise UserError(
                f"cannot record {p}: mp4 needs OpenCV (pip install opencv-python), which is not "
                "installed; record a .gif instead"
            ) from None
    return p


class Recorder:
    """Writes the shown frames to a GIF (Pillow, at the end) or an mp4 (OpenCV, as they come)."""

    def __init__(self, path: str | Path, fps: float) -> None:
        self.path = check_record_path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = float(fps)
        self.frames: list[Image.Image] = []
        self._writer: Any = None
        self.count = 0

    def add(self, frame: np.ndarray) -> None:
        self.count += 1
        if self.path.suffix.lower() == ".gif":
            self.frames.append(
                Image.fromarray(frame).quantize(colors=255, method=Image.Quantize.MEDIANCUT)
            )
            return
        import cv2

        if self._writer is None:
            h, w = frame.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")  # type: ignore[attr-defined]
            self._writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, (w, h))
            if not self._writer.isOpened():
                self._writer = None
                raise UserError(
                    f"cannot record {self.path}: this OpenCV has no mp4 encoder (mp4v); record a "
                    ".gif instead"
                )
        self._writer.write(np.ascontiguousarray(frame[:, :, ::-1]))

    def close(self) -> None:
        if self.path.suffix.lower() == ".gif":
            if self.frames:
                duration = max(20, int(round(1000 / max(self.fps, 1e-6))))
                self.frames[0].save(
                    self.path, save_all=True, append_images=self.frames[1:], duration=duration,
                    loop=0, optimize=False,
                )  # fmt: skip
            self.frames = []
        elif self._writer is not None:
            self._writer.release()
            self._writer = None


def gif_frames(path: str | Path) -> list[np.ndarray]:
    """The frames of a GIF as RGB arrays (for tests and checks)."""
    out = []
    with Image.open(path) as im:
        for i in range(getattr(im, "n_frames", 1)):
            im.seek(i)
            out.append(np.asarray(im.convert("RGB")))
    return out


# --------------------------------------------------------------------------------- driving it


class Driver:
    """Runs a session from a script and keys alike, logging and recording what happens; the
    window (``worldmodels/commands/play.py``) and headless play share it."""

    def __init__(
        self,
        session: PlaySession,
        *,
        renderer: Renderer,
        recorder: Recorder | None = None,
        log: ActionLog | None = None,
        script: Sequence[Item] = (),
    ) -> None:
        self.session = session
        self.renderer = renderer
        self.recorder = recorder
        self.log = log
        self.script: Iterator[Item] = iter(list(script))
        self.script_left = bool(script)
        self.status = Status()
        self.shown: list[np.ndarray] = []  # every frame rendered for the recording (headless)
        self.keep_shown = False

    def event(self, item: Item) -> None:
        s = self.session
        if item.kind == "reset":
            s.reset()
            self._log({"event": "reset"})
        elif item.kind == "agent":
            assert item.on is not None
            s.set_agent(item.on)
            self._log({"event": "agent", "on": item.on})
        elif item.kind == "set":
            assert item.settings is not None
            s.apply(item.settings)
            self._log({"event": "set", "settings": s.settings()})
        else:
            raise ValueError(f"not an event: {item.kind}")

    def change(self, name: str, delta: int) -> bool:
        new = self.session.change(name, delta)
        if new is None:
            self.status.note = f"this world has no {name.replace('_', ' ')}"
            return False
        self.status.note = ""
        self._log({"event": "set", "settings": new})
        return True

    def step(self, action: int | None, by: str = "keys") -> None:
        s = self.session
        taken = s.step(action, by)
        self._log({"step": s.step_count, "action": taken, "name": s.action_meanings[taken],
                   "by": s.last_by})  # fmt: skip

    def next_scripted(self) -> bool:
        """Apply the script's events up to its next step and take that step; False when the
        script is done."""
        for item in self.script:
            if item.kind == "step" and item.action is None and not self.session.agent_on:
                raise UserError(
                    "the script leaves a step to the agent (null) while it is not in control "
                    '(add {"event": "agent", "on": true} before it)'
                )
            if item.kind == "step":
                self.step(item.action, item.by if item.by in ("keys", "agent") else "script")
                return True
            self.event(item)
        self.script_left = False
        return False

    def _log(self, entry: dict[str, Any]) -> None:
        if self.log is not None:
            self.log.write(entry)

    def frame(self) -> np.ndarray:
        """Render what is shown now, and record it."""
        out = self.renderer.render(self.status)
        if self.recorder is not None:
            self.recorder.add(out)
        if self.keep_shown:
            self.shown.append(out)
        return out

    def close(self) -> None:
        if self.recorder is not None:
            self.recorder.close()
        if self.log is not None:
            self.log.close()
        self.session.close()


def play_headless(driver: Driver, *, steps: int | None, fps: float) -> int:
    """Take the script's steps (at most ``steps``; with the agent in control and no script left,
    ``steps`` agent steps), rendering and recording each; the number of steps taken."""
    driver.status.fps = f"{fps:g} fps (headless)"
    driver.frame()
    taken = 0
    limit = math.inf if steps is None else steps
    while taken < limit:
        if driver.script_left and driver.next_scripted():
            pass
        elif driver.session.agent_on and steps is not None:
            driver.step(None)
        else:
            break
        taken += 1
        driver.frame()
    return taken
