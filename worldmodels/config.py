"""Typed, frozen configs built from YAML layers; only entry points use this module.

Resolution order (later layers win):

1. dataclass defaults;
2. ``configs/env/<protocol>.yaml`` into ``env`` (and ``--env GAME`` into ``env.game``);
3. ``configs/world/<world>.yaml`` into ``world``; ``configs/agent/<agent>.yaml`` into ``agent``;
   then the world class's ``schedule_defaults`` and ``agent_defaults[<agent>]`` (a world's own
   published schedule and agent settings, e.g. IRIS's);
4. ``configs/preset/<preset>.yaml``: its ``env``, ``schedule``, ``eval`` and ``run`` sections merge
   into those sections; its ``world`` and ``agent`` sections are keyed by component name and only the
   entry for the chosen component applies (a ``smoke`` preset shrinks every world in one file);
5. ``--set key.path=value`` overrides (values parsed as YAML: ``--set world.widths=[8,8]``).

The result is a tree of frozen dataclasses. An unknown key or a value of the wrong type is a
``UserError`` naming the valid keys; model code never sees this module, only its own dataclass.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import yaml

from worldmodels import contract
from worldmodels.checks import at_least, check_module_name, check_name, in_range
from worldmodels.envs.atari_config import AtariConfig
from worldmodels.errors import UserError, choices
from worldmodels.registry import AGENTS, WORLDS, loaded_plugins

CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # worldmodels.configs


# --------------------------------------------------------------------------------------------
# Sections that belong to the framework itself (components bring their own Config classes).


@dataclass(frozen=True)
class ScheduleConfig:
    """The online schedule (IRIS / DIAMOND): collect real steps, train each stage, train the agent;
    or the staged one (World Models): each phase to completion, one after another."""

    kind: Literal["auto", "online", "staged"] = "auto"
    """auto = the world's own schedule (vae: staged; diffusion, iris: online)."""
    staged_chunk: int = 100
    """Staged schedule: gradient steps (or env steps) between checkpoints inside a phase ..."""
    staged_agent_chunk: int = 5
    """... and agent updates (CMA-ES generations) between checkpoints in the agent phase."""
    epochs: int = 1000
    """Epochs after the initial collection; each collects, trains every stage, trains the agent."""
    initial_collect_steps: int = 5000
    """Real steps collected with the initial policy before the first epoch (DIAMOND: 5,000) ..."""
    initial_collect_min_rewards: int = 10
    """... continuing past that until this many non-zero rewards were seen (DIAMOND: 10) ..."""
    initial_collect_max_steps: int = 10_000
    """... but never beyond this many steps."""
    collect_steps_per_epoch: int = 100
    """Real agent steps per epoch (summed over the collection envs) ..."""
    env_steps_budget: int = 100_000
    """... until this many real steps were taken in all (Atari 100k); later epochs only train."""
    collect_epsilon: float = 0.01
    """Probability of a uniformly random action while collecting."""
    num_envs: int = 1
    """Parallel real games used for collection."""
    test_every: int = 10
    """Run real test episodes every this many epochs; 0 = only the final test after the last one."""
    test_episodes: int = 10
    """Episodes of each periodic test (the final score uses ``eval.episodes``)."""
    checkpoint_every: int = 1
    """Write a checkpoint every this many epochs (and after the last one)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep on disk."""
    video_every: int = 10
    """Log videos (imagined beside real rollouts, test episodes) every this many epochs; 0 = never."""
    video_horizon: int = 32
    """Imagined steps in those videos."""
    dream_spares: Literal["fresh", "shared"] = "fresh"
    """Where an imagined trajectory that ends early restarts: ``fresh``, from a real context of its
    own, started with the others (twice the start-up work per agent update; DIAMOND restarts from
    new contexts); ``shared``, from the context its trajectory started from (no extra work)."""
    max_nonfinite_in_a_row: int = 20
    """Stop the run (one line, exit 2) once this many consecutive training steps of one stage or
    of the agent had a non-finite loss or gradient norm. Each such step is skipped (no weight
    changes), so a few are harmless; this many in a row means the weights have diverged."""

    def __post_init__(self) -> None:
        at_least(self, 1, "staged_chunk", "staged_agent_chunk", "num_envs", "test_episodes")
        at_least(self, 1, "checkpoint_every", "keep_checkpoints", "video_horizon")
        at_least(self, 1, "max_nonfinite_in_a_row")
        at_least(self, 0, "epochs", "initial_collect_steps", "initial_collect_min_rewards")
        at_least(self, 0, "initial_collect_max_steps", "collect_steps_per_epoch")
        at_least(self, 0, "env_steps_budget", "test_every", "video_every")
        in_range(self, 0.0, 1.0, "collect_epsilon")


@dataclass(frozen=True)
class EvalConfig:
    """Real test-mode episodes (the score that gets reported)."""

    episodes: int = 100
    """Test episodes for the final score (Atari 100k: 100)."""
    num_envs: int = 8
    """Games played in parallel; each plays a fixed share of the episodes (no bias to short ones)."""
    epsilon: float = 0.0
    """Probability of a uniformly random action during test episodes."""
    greedy: bool = False
    """Take the most likely action instead of sampling from the policy."""
    video: bool = True
    """Log one test episode as a TensorBoard video."""
    video_max_frames: int = 1000
    """Cap on the frames of that video (a full Atari episode can be 27k steps)."""

    def __post_init__(self) -> None:
        at_least(self, 1, "episodes", "num_envs", "video_max_frames")
        in_range(self, 0.0, 1.0, "epsilon")


MAX_SEED = 2**63 - 1  # torch.manual_seed takes a 64-bit integer
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass(frozen=True)
class RunConfig:
    """Process-wide settings, applied once in the entry point."""

    seed: int = 0
    """Seeds every RNG (torch, numpy, envs, samplers); a CPU run repeats exactly under a seed."""
    device: str = "auto"
    """``auto`` (cuda if available), ``cpu``, ``cuda`` or ``cuda:N``."""
    threads: int = 0
    """torch intra-op threads; 0 = half the cores (1 on 2 cores: see docs on thread contention)."""
    name: str = ""
    """Run directory name under ``runs_dir``; empty = derived from env, world, agent, seed, time."""
    runs_dir: str = "runs"
    """Where run directories are created."""
    tf32: bool = True
    """Allow TF32 matmuls on CUDA (set once in the entry point)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Autocast for the networks: auto = bf16 on CUDA and on CPUs where a start-up probe finds it
    faster (AMX or AVX512-BF16); fp32 on other CPUs. The choice is recorded in the run."""
    channels_last: bool = True
    """Keep convolution weights and activations channels-last (faster convs on CPU and GPU)."""
    compile: bool = False
    """``torch.compile`` the hot modules of the world and agent (worth it on CUDA)."""
    cuda_graphs: Literal["auto", "on", "off"] = "auto"
    """Capture the hot loops (imagination, the agent's update, each stage's train step) in CUDA
    graphs and replay them: auto = on for CUDA, off on CPU (where ``on`` is an error); under
    auto a loop whose capture fails says so in one line and runs eagerly, under on it stops."""
    progress: bool = True
    """Show a progress bar with ETA on long loops."""
    plugins: tuple[str, ...] = ()
    """Modules imported before anything is built (``--plugin``): they register components. A
    run's recorded plugins are imported again only when given on the command line (they run
    code: a shared run directory must not be able to run its own)."""

    def __post_init__(self) -> None:
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be in [0, 2**63 - 1], got {self.seed}")
        if not _DEVICE.fullmatch(self.device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.name:
            check_name(self.name, "name")
        if not self.runs_dir.strip():
            raise ValueError("runs_dir must name a directory, got an empty string")
        for module in self.plugins:
            check_module_name(module, "plugins")


@dataclass(frozen=True)
class Choice:
    """A registered component chosen by name, with its own config dataclass."""

    name: str
    config: Any


@dataclass(frozen=True)
class Config:
    """Everything a run needs, resolved. Written to ``runs/<name>/config.yaml``."""

    env: AtariConfig = field(default_factory=AtariConfig)
    world: Choice | None = None
    agent: Choice = field(default_factory=lambda: Choice("random", None))
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    preset: str = "atari100k"


SECTIONS = {"env": AtariConfig, "schedule": ScheduleConfig, "eval": EvalConfig, "run": RunConfig}


# --------------------------------------------------------------------------------------------
# Files and names


def available(kind: str) -> list[str]:
    """Names of the YAML files under ``configs/<kind>/`` (protocols, presets, ...)."""
    return sorted(p.stem for p in (CONFIG_DIR / kind).glob("*.yaml"))


def load_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"invalid YAML in {path}: {exc}".replace("\n", " ")) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of keys to values")
    return data


def _named_yaml(kind: str, name: str, what: str) -> dict:
    path = CONFIG_DIR / kind / f"{name}.yaml"
    if not path.exists():
        raise UserError(f"unknown {what} {name!r} (valid: {choices(available(kind))})")
    return load_yaml(path)


def deep_merge(base: Mapping, over: Mapping) -> dict:
    """Recursive dict merge; ``over`` wins, mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------------------------
# dict <-> dataclass, strictly typed


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(
    value: Any, tp: Any, where: str, *, signed: bool = False, allow_inf: bool = False
) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert the safe cases (int -> float,
    list -> tuple, numeric strings from ``--set``).

    Two checks hold for every config field: a float must be finite (NaN never is a setting; inf
    only where its field says ``metadata={"allow_inf": True}``), and an int must be >= 0 unless
    its field says ``metadata={"signed": True}``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where, signed=signed, allow_inf=allow_inf)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[0] if errors else f"{where}: value must not be None")
    if origin is Literal:
        if isinstance(value, bool) and not any(isinstance(a, bool) for a in args):
            # YAML reads on/off (and yes/no) as booleans: a choice named so means the word
            word = {True: ("on", "yes", "true"), False: ("off", "no", "false")}[value]
            value = next((a for a in args if a in word), value)
        if value in args:
            return value
        raise UserError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(cast(type, tp), value, where)  # an annotation: a dataclass type
    if origin in (tuple, list, Sequence) or tp in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise UserError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise UserError(f"{where}: expected {len(args)} values, got {len(value)}")
            items = [
                _coerce(v, a, f"{where}[{i}]", signed=signed)
                for i, (v, a) in enumerate(zip(value, args, strict=True))
            ]
        else:
            item_tp = args[0] if args else Any
            items = [
                _coerce(v, item_tp, f"{where}[{i}]", signed=signed) for i, v in enumerate(value)
            ]
        return list(items) if origin is list or tp is list else tuple(items)
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        number = _as_int(value)
        if number is None:
            raise UserError(f"{where}: expected an integer, got {value!r}")
        if number < 0 and not signed:
            raise UserError(f"{where} must be >= 0, got {number}")
        return number
    if tp is float:
        real = _as_float(value)
        if real is None:
            raise UserError(f"{where}: expected a number, got {value!r}")
        if math.isnan(real) or (math.isinf(real) and not allow_inf):
            raise UserError(f"{where} must be a finite number, got {value!r}")
        return real
    if tp is str:
        if isinstance(value, str):
            return value
        raise UserError(f"{where}: expected a string, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise UserError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def _as_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.replace("_", ""))
        except ValueError:
            return None
    return None


def _as_float(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # an int beyond the float range
            return math.inf
    if isinstance(value, str):  # YAML 1.1 reads '1e-4' as a string
        try:
            return float(value)
        except ValueError:
            return None
    return None


def from_dict(cls: type, data: Mapping, where: str = "") -> Any:
    """Build the frozen dataclass ``cls`` from ``data``; unknown keys and bad types are UserErrors."""
    if not isinstance(data, Mapping):
        raise UserError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise UserError(f"unknown config key {key!r} (valid: {choices(fields)})")
    kwargs = {}
    for name, value in data.items():
        default = _field_default(fields[name])
        if isinstance(value, Mapping) and dataclasses.is_dataclass(default):
            # A partial nested section overrides the field's own default, not the nested class's
            # (e.g. a world's denoiser_training keeps seq_len 6 when a preset sets batch_size).
            value = deep_merge(to_dict(default), value)
        elif isinstance(value, Mapping) and isinstance(default, dict):
            value = deep_merge(default, value)  # dict-valued fields merge key by key too
        meta = fields[name].metadata
        key = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(
            value, hints[name], key, signed=bool(meta.get("signed")),
            allow_inf=bool(meta.get("allow_inf")),
        )  # fmt: skip
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        # A __post_init__ message starts with the field it is about: give its full key path.
        msg = str(exc)
        if where and msg.split(" ", 1)[0] in fields:
            raise UserError(f"{where}.{msg}") from None
        raise UserError(f"{where or cls.__name__}: {msg}") from None


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def to_dict(obj: Any) -> Any:
    """Dataclass tree -> plain YAML-able data (tuples become lists; a Choice flattens to its name
    plus its config's fields)."""
    if isinstance(obj, Choice):
        return {"name": obj.name, **(to_dict(obj.config) if obj.config is not None else {})}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


# --------------------------------------------------------------------------------------------
# Overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'world.lr=3e-4'`` -> (``['world', 'lr']``, ``'3e-4'`` parsed as YAML)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"--set expects key.path=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_override(tree: dict, path: list[str], value: Any) -> None:
    top = path[0]
    if top not in tree:
        raise UserError(f"unknown config section {top!r} in --set (valid: {choices(tree)})")
    if len(path) == 1:
        raise UserError(f"--set {top}=... must name a key inside {top!r}, e.g. {top}.<key>=value")
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if child is None and node is tree:
            raise UserError(f"--set {'.'.join(path)}: no {part!r} is chosen for this run")
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


# --------------------------------------------------------------------------------------------
# Resolution


def _component(registry, name: str, tree: Mapping, where: str) -> Choice:
    cls = registry.get(name)
    params = {k: v for k, v in tree.items() if k != "name"}
    return Choice(name, from_dict(cls.Config, params, where))


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def plugins_named(tree: Any) -> list[str]:
    """The plugin modules a config tree names in ``run.plugins`` (checked to be module names)."""
    run = tree.get("run") if isinstance(tree, Mapping) else None
    plugins = run.get("plugins") if isinstance(run, Mapping) else None
    if plugins is None:
        return []
    if isinstance(plugins, str) or not isinstance(plugins, Sequence):
        raise UserError(f"run.plugins: expected a list of module names, got {_short(plugins)}")
    for module in plugins:
        try:
            check_module_name(module, "run.plugins")
        except ValueError as exc:
            raise UserError(str(exc)) from None
    return list(plugins)


def _choice_tree(tree: Mapping, key: str) -> Mapping | None:
    node = tree.get(key)
    if node is None:
        return None
    if not isinstance(node, Mapping) or not isinstance(node.get("name"), str):
        raise UserError(
            f"{key}: expected a mapping with a 'name' key (e.g. {key}: {{name: ...}}) or null, "
            f"got {_short(node)}"
        )
    return node


def build(tree: Mapping) -> Config:
    """Resolved tree (as written to config.yaml) -> Config. Used for fresh runs and ``--resume``.

    Imports nothing: the plugins the tree names must have been loaded by the entry point
    (``--plugin``), so that a config file can never make the framework run code of its own."""
    if not isinstance(tree, Mapping):
        raise UserError(f"a config must be a mapping of sections, got {_short(tree)}")
    tree = dict(tree)
    valid = {f.name for f in dataclasses.fields(Config)}
    unknown = [k for k in tree if k not in valid]
    if unknown:
        raise UserError(f"unknown config section {unknown[0]!r} (valid: {choices(valid)})")
    missing = [p for p in plugins_named(tree) if p not in loaded_plugins()]
    if missing:
        raise UserError(
            f"the config names plugin {', '.join(missing)}, which was not loaded: plugins run "
            f"code, so give {' '.join('--plugin ' + p for p in missing)} if you trust it"
        )
    kwargs: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        section = tree.get(name)
        kwargs[name] = from_dict(cls, {} if section is None else section, name)
    world = _choice_tree(tree, "world")
    kwargs["world"] = None if world is None else _component(WORLDS, world["name"], world, "world")
    agent = _choice_tree(tree, "agent") or {
        "name": _default_agent(None if world is None else world["name"]) or "random"
    }
    kwargs["agent"] = _component(AGENTS, agent["name"], agent, "agent")
    preset = tree.get("preset", "atari100k")
    if not isinstance(preset, str):
        raise UserError(f"preset: expected a name, got {_short(preset)}")
    kwargs["preset"] = preset
    return Config(**kwargs)


def resolve(
    *,
    env: str | None = None,
    protocol: str = "atari100k",
    world: str | None = None,
    agent: str | None = None,
    preset: str = "atari100k",
    overrides: Sequence[str] = (),
    plugins: Sequence[str] = (),
    default_agent: str = "random",
) -> Config:
    """Compose the YAML layers and the CLI choices into a Config (see module docstring).

    ``plugins``: the modules the entry point loaded (``--plugin``), recorded in ``run.plugins``.
    """
    tree: dict[str, Any] = {name: {} for name in SECTIONS}
    tree["env"] = _named_yaml("env", protocol, "env protocol")
    if env is not None:
        tree["env"]["game"] = env
    if world is not None:
        WORLDS.get(world)  # unknown name -> one-line error listing the registered worlds
        tree["world"] = {"name": world, **_yaml_if_exists("world", world)}
    else:
        tree["world"] = None
    agent = agent or _default_agent(world) or default_agent
    AGENTS.get(agent)
    tree["agent"] = {"name": agent, **_yaml_if_exists("agent", agent)}
    if world is not None:
        # A world's own published settings (IRIS's schedule and actor-critic), under the presets.
        world_cls = WORLDS.get(world)
        tree["schedule"] = deep_merge(tree["schedule"], contract.schedule_defaults(world_cls))
        own = contract.agent_defaults(world_cls, agent)
        tree["agent"] = deep_merge(tree["agent"], own)

    preset_tree = _named_yaml("preset", preset, "preset")
    for key, value in preset_tree.items():
        if key == "description":
            continue
        if key in SECTIONS:
            tree[key] = deep_merge(tree[key], value or {})
        elif key in ("world", "agent"):
            chosen = tree[key]
            if chosen is not None and isinstance(value, Mapping) and chosen["name"] in value:
                tree[key] = deep_merge(chosen, value[chosen["name"]] or {})
        else:
            raise UserError(
                f"unknown section {key!r} in preset {preset!r} "
                f"(valid: {choices([*SECTIONS, 'world', 'agent', 'description'])})"
            )
    tree["preset"] = preset
    for text in overrides:
        path, value = parse_override(text)
        if path[0] in ("world", "agent") and len(path) == 2 and path[1] == "name":
            raise UserError(f"choose the {path[0]} with --{path[0]}, not --set")
        if path[:2] == ["run", "plugins"]:
            raise UserError("load plugins with --plugin MODULE (repeatable), not --set")
        apply_override(tree, path, value)
    if plugins:
        tree["run"] = {**(tree.get("run") or {}), "plugins": list(plugins)}
    from worldmodels.envs.atari import (
        resolve_game,  # lazy: ale-py is only needed once a game is named
    )

    tree["env"]["game"] = resolve_game(str(tree["env"].get("game", AtariConfig.game)))[0]
    return build(tree)


def _default_agent(world: str | None) -> str | None:
    """The agent a world trains when none is named (``default_agent`` on the world class)."""
    if world is None:
        return None
    return contract.default_agent(WORLDS.get(world))


def _yaml_if_exists(kind: str, name: str) -> dict:
    path = CONFIG_DIR / kind / f"{name}.yaml"
    return load_yaml(path) if path.exists() else {}


def dump(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def load_run_config(path: Path) -> Config:
    """Rebuild the Config of a run from its ``config.yaml`` (errors name the file)."""
    tree = load_yaml(path)
    try:
        return build(tree)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
