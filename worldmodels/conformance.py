"""``check_world`` and ``check_agent``: the whole plug-in contract, run on a live object.

Import them from ``worldmodels.checks`` (that module keeps its imports light). They are what
``tests/test_conformance.py`` runs on every registered world and agent, and what a user runs on
their own: each failure is one ``worldmodels.contract.ContractError`` whose message is one line
naming the component and the problem, e.g. ``world 'my_world' (MyWorld): imagine_step returned obs
of dtype torch.float32, expected uint8 (B, C, H, W)``. Nothing here changes the object checked:
training steps run on copies.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from worldmodels import contract
from worldmodels.checkpoint import load_checkpoint, save_checkpoint
from worldmodels.contract import ContractError, describe
from worldmodels.envs.dream import DreamEnv, imagine_step, swap_rows_
from worldmodels.envs.testing import BanditWorld, LinearFeatureWorld, random_store
from worldmodels.interfaces import EnvInfo
from worldmodels.replay import ReplayStore, SegmentSampler
from worldmodels.seeding import global_rng_state, set_global_rng_state
from worldmodels.training import Stage, StageTrainer, Updater

BATCH = 3  # imagined rows in every check (a small odd number: no accidental broadcasting)


class _Fail:
    """Raises ``ContractError("<component>: <problem>")``."""

    def __init__(self, kind: str, component: Any) -> None:
        self.who = describe(kind, component)

    def __call__(self, problem: str) -> ContractError:
        return ContractError(f"{self.who}: {' '.join(problem.split())}")


def _device_of(module: Any) -> torch.device:
    if isinstance(module, nn.Module):
        for t in (*module.parameters(), *module.buffers()):
            return t.device
    return torch.device("cpu")


def _check_config_class(cls: type, fail: _Fail) -> None:
    config = contract.config_class(cls)
    if config is None:
        return  # an unregistered object (a test double): no Config to check
    if not dataclasses.is_dataclass(config) or not config.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise fail("its Config must be a frozen dataclass (@dataclass(frozen=True))")


def _tensor(
    fail: _Fail, what: str, x: Any, dtype: Any, shape: tuple, device: torch.device, layout: str
) -> None:
    """``x`` is a tensor of ``dtype`` (a dtype, or "float") and ``shape`` on ``device``; else
    ``<what> of dtype ..., expected ...``."""
    if dtype == "float":
        expected = f"a float dtype {layout}"
    else:
        expected = f"{str(dtype).replace('torch.', '')} {layout}"
    if not isinstance(x, Tensor):
        raise fail(f"{what} of type {type(x).__name__}, expected a tensor of {expected}")
    if (not x.is_floating_point()) if dtype == "float" else x.dtype != dtype:
        raise fail(f"{what} of dtype {str(x.dtype).replace('torch.', '')}, expected {expected}")
    if tuple(x.shape) != tuple(shape):
        raise fail(f"{what} of shape {tuple(x.shape)}, expected {tuple(shape)} {layout}")
    if x.device != device:
        raise fail(f"{what} on {x.device}, expected the component's device {device}")


def _plain(value: Any) -> bool:
    leaves, _ = tree_flatten(value)
    return all(isinstance(v, (Tensor, bool, int, float, str, type(None))) for v in leaves)


def _equal(a: Any, b: Any) -> bool:
    la, sa = tree_flatten(a)
    lb, sb = tree_flatten(b)
    if sa != sb or len(la) != len(lb):
        return False
    for x, y in zip(la, lb, strict=True):
        if isinstance(x, Tensor) != isinstance(y, Tensor):
            return False
        if isinstance(x, Tensor):
            if x.shape != y.shape or x.dtype != y.dtype or not torch.equal(x, y):
                return False
        elif x != y:
            return False
    return True


def _first_difference(a: list[tuple[str, Any]], b: list[tuple[str, Any]]) -> str | None:
    for (name, x), (_, y) in zip(a, b, strict=True):
        if not _equal(x, y):
            return name
    return None


class _eval_mode:
    """``module.eval()`` for the duration, then its previous mode."""

    def __init__(self, *modules: Any) -> None:
        self.modules = [m for m in modules if isinstance(m, nn.Module)]

    def __enter__(self) -> None:
        self.was = [m.training for m in self.modules]
        for m in self.modules:
            m.eval()

    def __exit__(self, *exc: Any) -> None:
        for m, was in zip(self.modules, self.was, strict=True):
            m.train(was)


class _phase:
    """Any exception inside (other than a ``ContractError``) becomes one ``ContractError`` line
    saying which call raised what."""

    def __init__(self, fail: _Fail, what: str) -> None:
        self.fail, self.what = fail, what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> Literal[False]:
        if exc is None or isinstance(exc, ContractError) or not isinstance(exc, Exception):
            return False
        raise self.fail(f"{self.what} raised {type(exc).__name__}: {exc}") from exc


def _seed(component: Any, seed: int) -> None:
    torch.manual_seed(seed)
    reseed = contract.reseed(component)
    if reseed is not None:
        reseed(seed)


def _snap(x: Any) -> Any:
    if isinstance(x, Tensor):
        return x.detach().clone()
    if isinstance(x, dict):
        return {k: _snap(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_snap(v) for v in x)
    return x


def _storages(module: nn.Module) -> set[int]:
    return {
        t.untyped_storage().data_ptr()
        for t in (*module.parameters(), *module.buffers())
        if t.numel() > 0
    }


def _obs_shape(env_info: EnvInfo) -> tuple[int, int, int]:
    """``env_info.obs_shape`` as a tuple (``(C, H, W)``; it may arrive as a list)."""
    return cast("tuple[int, int, int]", tuple(env_info.obs_shape))


def _frames(n: int, shape: tuple, device: torch.device, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g).to(device)


def _rebuild(component: Any, env_info: EnvInfo, init_seed: int, **kwargs: Any) -> Any | None:
    """A new instance of the component's class from its config (None if it has none)."""
    cls = type(component)
    config = contract.config_of(component)
    if config is None or contract.config_class(cls) is None:
        return None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed + 12345)  # other initial weights than the original's, if random
        fresh = cls(config, env_info, **kwargs)
    device = _device_of(component)
    channels_last = any(
        p.ndim == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
        for p in component.parameters()
    )
    fmt = torch.channels_last if channels_last else torch.preserve_format
    return fresh.to(device, memory_format=fmt)


def _round_trip(fail: _Fail, key: str, source: nn.Module, target: nn.Module) -> None:
    with tempfile.TemporaryDirectory() as tmp, _phase(fail, "a checkpoint round trip"):
        save_checkpoint(tmp, "c", modules={key: source}, state={}, meta={})
        load_checkpoint(Path(tmp) / "c", {key: target}, map_location=_device_of(target))


def _keeps_global_rng(check: Callable[..., None]) -> Callable[..., None]:
    """``check(component, ...)`` with torch's global RNG (CPU, and the component's device if
    CUDA) left as it was, whatever the checks seed."""

    @functools.wraps(check)
    def checked(component: Any, *args: Any, **kwargs: Any) -> None:
        device = _device_of(component)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            check(component, *args, **kwargs)

    return checked


# ---------------------------------------------------------------------------- worlds


@_keeps_global_rng
def check_world(
    world: Any,
    env_info: EnvInfo,
    *,
    seed: int = 0,
    steps: int = 4,
    train: bool = True,
    compile: bool = False,
    store: ReplayStore | None = None,
) -> None:
    """Run the world contract on ``world`` (built for ``env_info``); raises ``ContractError``.

    Checks the required members and declared capabilities, the stages (a finite 0-dim loss,
    scalar logs, an update that changes the weights: on a copy, with ``train``; where the world
    declares ``graph_capture = True``, its training steps through the audited CUDA-graph code
    path, ``graphs="simulate"``), imagination
    (``imagine_start``/``imagine_step`` with and without ``render``: shapes, dtypes, devices,
    batch-first states of the world's own tensors), features/``observe``/``agent_view``/
    ``reconstruct``/``hot_modules`` where present, that its own ``imagine_swap_rows_`` (if any)
    gives the trajectories of the row-wise swap, determinism under ``torch.manual_seed(seed)``
    (and ``reseed(seed)``), a checkpoint round trip into a freshly built world, ``DreamEnv`` for
    pixel and feature agents, and, where it declares ``graph_capture = True``, that its step
    returns the state in the dtypes it was given under bf16 autocast and that the CUDA-graph
    buffer semantics (``graphs="simulate"``, audited) change no trajectory; with ``compile``
    also that the step compiles to one graph (``torch.compile(fullgraph=True)``, slower).
    ``store``: the replay segments to use (default: random episodes of ``env_info``'s shape)."""
    fail = _Fail("world", world)
    torch.manual_seed(seed)  # the same draws whatever the caller's RNG (restored afterwards)
    contract.require_world(world)
    _check_config_class(type(world), fail)
    if world.num_actions != env_info.num_actions:
        raise fail(f"num_actions is {world.num_actions!r}, env_info has {env_info.num_actions}")
    if tuple(world.obs_shape) != tuple(env_info.obs_shape):
        raise fail(f"obs_shape is {tuple(world.obs_shape)}, env_info has {env_info.obs_shape}")
    if isinstance(world.context_len, bool) or not isinstance(world.context_len, int):
        raise fail(f"context_len must be an int >= 1, got {world.context_len!r}")
    if world.context_len < 1:
        raise fail(f"context_len must be an int >= 1, got {world.context_len!r}")
    device = _device_of(world)
    if store is None:
        length = max(24, 2 * world.context_len + 8)
        store = random_store(
            num_episodes=4, length=length, obs_shape=_obs_shape(env_info),
            num_actions=env_info.num_actions, seed=seed,
        )  # fmt: skip
    if train:
        _check_stages(fail, world, store, device, seed)
    with _eval_mode(world):
        _check_imagination(fail, world, env_info, store, device, seed, steps)
        _check_frames_and_features(fail, world, env_info, device, seed)
        _check_dream(fail, world, store, device, seed)
        if contract.capture_refusal(world) is None:
            _check_capture(fail, world, store, seed, compile)


def _check_stages(
    fail: _Fail, world: Any, store: ReplayStore, device: torch.device, seed: int
) -> None:
    trial = copy.deepcopy(world)  # the caller's weights stay as they are
    with _phase(fail, "stages()"):
        stages = trial.stages()
    if not isinstance(stages, dict) or not stages:
        raise fail("stages() must return a non-empty dict {name: worldmodels.training.Stage}")
    submodules = {id(m) for m in trial.modules()} if isinstance(trial, nn.Module) else set()
    for name, stage in stages.items():
        if not isinstance(stage, Stage):
            raise fail(f"stages()[{name!r}] is a {type(stage).__name__}, expected a Stage")
        if stage.name != name:
            raise fail(f"stages()[{name!r}] is named {stage.name!r}: the key must be its name")
        if name in contract.RESERVED_STAGE_NAMES or not name.isidentifier():
            raise fail(
                f"stage name {name!r} is reserved or not an identifier (reserved: "
                f"{', '.join(contract.RESERVED_STAGE_NAMES)})"
            )
        if id(stage.module) not in submodules:
            raise fail(
                f"stage {name!r}: its module is not a submodule of the world (checkpoints would miss it)"
            )
        t = stage.training
        sampler = SegmentSampler(
            store, t.seq_len, pad_left=t.pad_left, pad_right=t.pad_right, seed=seed
        )
        batch = sampler.sample(2).to(device)
        with _phase(fail, f"stage {name!r}: its loss"):
            loss, logs = stage.loss_of(batch)
        if not isinstance(loss, Tensor) or loss.ndim != 0:
            raise fail(
                f"stage {name!r}: the loss must be a 0-dim tensor, got {type(loss).__name__} {tuple(_shape(loss))}"
            )
        if not bool(torch.isfinite(loss)):
            raise fail(
                f"stage {name!r}: the loss on random replay segments is not finite ({float(loss)})"
            )
        if not isinstance(logs, dict):
            raise fail(f"stage {name!r}: the loss must return (loss, logs) with logs a dict")
        for key, value in logs.items():
            if not (isinstance(value, float) or (isinstance(value, Tensor) and value.ndim == 0)):
                raise fail(
                    f"stage {name!r}: log {key!r} is a {type(value).__name__}, expected a float or a 0-dim tensor"
                )
        params = list(stage.module.parameters())
        if not params:
            raise fail(f"stage {name!r}: its module has no parameters to train")
        before = [p.detach().clone() for p in params]
        with _phase(fail, f"stage {name!r}: an update"):
            Updater(stage.module, t, device).update(stage.loss_of, batch)
        if all(torch.equal(a, p) for a, p in zip(before, params, strict=True)):
            raise fail(
                f"stage {name!r}: an update did not change the weights (does the loss depend on them?)"
            )
        if contract.capture_refusal(world) is None:  # its steps replay as CUDA graphs too
            small = dataclasses.replace(stage, training=dataclasses.replace(t, batch_size=2))
            graphed = StageTrainer(small, store, device, seed=seed, graphs="simulate")
            with _phase(fail, f"stage {name!r}: its training step under graphs='simulate'"):
                graphed.train(4)  # two eager warm-ups, the capture, one audited replay


def _shape(x: Any) -> tuple:
    return tuple(x.shape) if isinstance(x, Tensor) else ()


def _contexts(
    world: Any, store: ReplayStore, device: torch.device, seed: int, n: int = BATCH
) -> Any:
    c = world.context_len
    sampler = SegmentSampler(store, c, pad_left=c - 1, end_before_final=True, seed=seed)
    return sampler.sample(n).to(device)


def _actions(world: Any, steps: int, device: torch.device, seed: int) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(world.num_actions, (BATCH,), generator=g).to(device) for _ in range(steps)
    ]


def _check_state(fail: _Fail, world: Any, state: Any, where: str, device: torch.device,
                 owned: set[int], keys: set | None) -> None:  # fmt: skip
    if not isinstance(state, dict):
        raise fail(
            f"{where} returned a state of type {type(state).__name__}, expected a dict of batch-first tensors"
        )
    if keys is not None and set(state) != keys:
        raise fail(
            f"{where} returned a state with keys {sorted(state)}, imagine_start's had {sorted(keys)} (DreamEnv swaps rows key by key)"
        )
    for key, value in state.items():
        if isinstance(value, Tensor):
            if value.ndim >= 1 and value.shape[0] != BATCH:
                raise fail(
                    f"{where}: state[{key!r}] has shape {tuple(value.shape)}, expected the batch ({BATCH}) first (0-dim tensors are shared by all rows)"
                )
            if value.device != device:
                raise fail(
                    f"{where}: state[{key!r}] is on {value.device}, expected the world's device {device}"
                )
            if value.numel() > 0 and value.untyped_storage().data_ptr() in owned:
                raise fail(
                    f"{where}: state[{key!r}] is a parameter or buffer of the world: a state's tensors must be its own (DreamEnv overwrites them in place)"
                )
        elif not _plain(value):
            raise fail(
                f"{where}: state[{key!r}] is a {type(value).__name__}, expected a tensor or a plain Python value"
            )


def _imagine(
    world: Any, ctx: Any, actions: list[Tensor], seed: int, render: bool = True
) -> list[tuple[str, Any]]:
    """Everything an imagined trajectory produces, named for messages."""
    _seed(world, seed)
    with torch.no_grad():
        state, obs = world.imagine_start(ctx.obs, ctx.act, ctx.mask)
        out = [("imagine_start's obs", _snap(obs)), ("imagine_start's state", _snap(state))]
        for t, action in enumerate(actions):
            state, obs, reward, end = imagine_step(world, state, action, t, render=render)
            out += [
                (f"obs at step {t}", _snap(obs)), (f"reward at step {t}", _snap(reward)),
                (f"end at step {t}", _snap(end)), (f"the state at step {t}", _snap(state)),
            ]  # fmt: skip
    return out


def _check_imagination(fail: _Fail, world: Any, env_info: EnvInfo, store: ReplayStore,
                       device: torch.device, seed: int, steps: int) -> None:  # fmt: skip
    frame = f"(B, C, H, W) = {(BATCH, *env_info.obs_shape)}"
    owned = _storages(world) if isinstance(world, nn.Module) else set()
    ctx = _contexts(world, store, device, seed)
    actions = _actions(world, steps, device, seed)
    _seed(world, seed)
    with torch.no_grad():
        with _phase(fail, "imagine_start"):
            out = world.imagine_start(ctx.obs, ctx.act, ctx.mask)
        if not isinstance(out, tuple) or len(out) != 2:
            raise fail("imagine_start must return (state, first obs)")
        state, obs = out
        _check_state(fail, world, state, "imagine_start", device, owned, None)
        _tensor(
            fail,
            "imagine_start returned obs",
            obs,
            torch.uint8,
            (BATCH, *env_info.obs_shape),
            device,
            frame,
        )
        keys = set(state)
        for render in (True, False):
            _seed(world, seed)
            state, _ = world.imagine_start(ctx.obs, ctx.act, ctx.mask)
            for t, action in enumerate(actions):
                where = f"imagine_step (render={render})"
                with _phase(fail, where):
                    out = imagine_step(world, state, action, t, render=render)
                if not isinstance(out, tuple) or len(out) != 4:
                    raise fail(f"{where} must return (state, obs, reward, end)")
                state, obs, reward, end = out
                _check_state(fail, world, state, where, device, owned, keys)
                if render or obs is not None:
                    _tensor(
                        fail,
                        f"{where} returned obs",
                        obs,
                        torch.uint8,
                        (BATCH, *env_info.obs_shape),
                        device,
                        frame,
                    )
                _tensor(
                    fail,
                    f"{where} returned a reward",
                    reward,
                    "float",
                    (BATCH,),
                    device,
                    "(B,)",
                )
                _tensor(fail, f"{where} returned an end", end, torch.bool, (BATCH,), device, "(B,)")
                if any(v is action for v in state.values() if isinstance(v, Tensor)):
                    raise fail(
                        f"{where} returned the action tensor it was given as a state entry (a state's tensors must be its own)"
                    )
    first = _imagine(world, ctx, actions, seed)
    second = _imagine(world, ctx, actions, seed)
    differs = _first_difference(first, second)
    if differs is not None:
        raise fail(
            f"imagination is not deterministic under a seed: two runs after torch.manual_seed({seed}) "
            f"differ in {differs} (draw from torch's global RNG, or from generators that reseed(seed) resets)"
        )
    fresh = _rebuild(world, env_info, seed)
    if fresh is not None:
        _round_trip(fail, "world", world, fresh)
        with _eval_mode(fresh):
            again = _imagine(fresh, ctx, actions, seed)
        differs = _first_difference(first, again)
        if differs is not None:
            raise fail(
                f"a checkpoint round trip into a new {type(world).__name__} changes its imagination "
                f"({differs} differs): state_dict() and get_extra_state() must hold all it depends on"
            )


def _check_frames_and_features(
    fail: _Fail, world: Any, env_info: EnvInfo, device: torch.device, seed: int
) -> None:
    frames = _frames(BATCH, tuple(env_info.obs_shape), device, seed)
    layout = f"(N, C, H, W) = {tuple(frames.shape)}"
    for name, fn in (
        ("agent_view", contract.agent_view(world)),
        ("reconstruct", contract.reconstruct(world)),
    ):
        if fn is None:
            continue
        with torch.no_grad(), _phase(fail, name):
            out = fn(frames)
        _tensor(
            fail,
            f"{name} returned frames",
            out,
            torch.uint8,
            tuple(frames.shape),
            device,
            layout,
        )
    submodules = {id(m) for m in world.modules()} if isinstance(world, nn.Module) else set()
    with _phase(fail, "hot_modules()"):
        hot = contract.hot_modules(world)
    for module in hot:
        if id(module) not in submodules:
            raise fail(
                f"hot_modules() returned a {type(module).__name__} that is not a submodule of the world"
            )
    probs = contract.reward_end_probs(world)
    if probs is not None:
        _check_reward_end_probs(fail, world, probs, env_info, device, seed)
    dim = contract.feature_dim(world)
    observe = contract.real_features_fn(world)
    if dim is None:
        if observe is not None:
            raise fail(
                "has real_features() but no features(state) and feature_dim: feature agents need both"
            )
        return
    layout = f"(B, D) = {(BATCH, dim)}"
    store = random_store(
        num_episodes=2,
        length=max(12, world.context_len + 4),
        obs_shape=_obs_shape(env_info),
        num_actions=env_info.num_actions,
    )
    ctx = _contexts(world, store, device, seed)
    with torch.no_grad(), _phase(fail, "features(state)"):
        state, _ = world.imagine_start(ctx.obs, ctx.act, ctx.mask)
        feats = world.features(state)
    _tensor(fail, "features(state) returned features", feats, "float", (BATCH, dim), device, layout)
    if observe is None:
        return
    state = None
    prev = torch.zeros(BATCH, dtype=torch.long, device=device)
    first = torch.ones(BATCH, dtype=torch.bool, device=device)
    for i in range(2):
        with torch.no_grad(), _phase(fail, "real_features(state, obs, prev_action, first)"):
            out = observe(
                state, _frames(BATCH, tuple(env_info.obs_shape), device, seed + i), prev, first
            )
        if not isinstance(out, tuple) or len(out) != 2:
            raise fail(
                "real_features(state, obs, prev_action, first) must return (state, features)"
            )
        state, feats = out
        _tensor(
            fail,
            "real_features(...) returned features",
            feats,
            "float",
            (BATCH, dim),
            device,
            layout,
        )
        prev = torch.ones_like(prev)
        first = torch.zeros_like(first)


def _check_reward_end_probs(
    fail: _Fail, world: Any, probs: Callable[..., Any], env_info: EnvInfo, device: torch.device,
    seed: int,
) -> None:  # fmt: skip
    t = world.context_len + 3
    store = random_store(
        num_episodes=2, length=max(12, t + 4), obs_shape=_obs_shape(env_info),
        num_actions=env_info.num_actions, seed=seed,
    )  # fmt: skip
    rows = SegmentSampler(store, t, seed=seed).sample(BATCH).to(device)
    with torch.no_grad(), _phase(fail, "reward_end_probs(obs, act, mask)"):
        out = probs(rows.obs, rows.act, rows.mask)
    if not isinstance(out, tuple) or len(out) != 2:
        raise fail("reward_end_probs must return (reward-sign probs or None, end probs or None)")
    rew, end = out
    if rew is not None:
        _tensor(fail, "reward_end_probs returned reward-sign probs", rew, "float",
                (BATCH, t - 1, 3), device, "(B, T - 1, 3)")  # fmt: skip
    if end is not None:
        _tensor(fail, "reward_end_probs returned end probs", end, "float", (BATCH, t - 1), device,
                "(B, T - 1)")  # fmt: skip


def _dream_run(world: Any, store: ReplayStore, device: torch.device, seed: int, *,
               observes: str = "pixels", graphs: str | None = None, capture: Any = None,
               read_done_on_host: bool | None = None,
               generic_swap: bool = False) -> list[Tensor]:  # fmt: skip
    _seed(world, seed)
    dream = DreamEnv(
        world, store, num_envs=BATCH, horizon=3, device=device, seed=seed, observes=observes,
        graphs=graphs, capture=capture,
    )  # fmt: skip
    if read_done_on_host is not None:
        dream.read_done_on_host = read_done_on_host
    if generic_swap:
        dream._swap_rows = swap_rows_
    g = torch.Generator().manual_seed(seed)
    out: list[Tensor] = []
    for _ in range(2):
        out.append(dream.reset()[0])
        for _ in range(5):
            action = torch.randint(world.num_actions, (BATCH,), generator=g).to(device)
            obs, rew, term, trunc, info = dream.step(action)
            out += [obs, rew, term, trunc, info["final_obs"]]
    return out


def _check_dream(
    fail: _Fail, world: Any, store: ReplayStore, device: torch.device, seed: int
) -> None:
    shape = (BATCH, *world.obs_shape)
    with _phase(fail, "DreamEnv"):
        dream = DreamEnv(world, store, num_envs=BATCH, horizon=2, device=device, seed=seed)
        obs, info = dream.reset()
    _tensor(fail, "DreamEnv.reset() gave obs", obs, torch.uint8, shape, device, "(B, C, H, W)")
    started = torch.zeros(BATCH, dtype=torch.long, device=device)
    for t in range(4):
        with _phase(fail, "DreamEnv.step"):
            obs, rew, term, trunc, info = dream.step(
                torch.arange(BATCH, device=device) % world.num_actions
            )
        _tensor(fail, "DreamEnv.step gave obs", obs, torch.uint8, shape, device, "(B, C, H, W)")
        _tensor(
            fail,
            "DreamEnv.step gave a final_obs",
            info["final_obs"],
            torch.uint8,
            shape,
            device,
            "(B, C, H, W)",
        )
        if bool((term & trunc).any()) or not torch.equal(trunc, ~term & (t + 1 - started == 2)):
            raise fail(
                "in a DreamEnv of horizon 2, rows were truncated at the wrong steps (does imagine_step keep a step count DreamEnv overwrites?)"
            )
        started = torch.where(term | trunc, t + 1, started)
    dim = contract.feature_dim(world)
    if dim is not None:
        with _phase(fail, "DreamEnv(observes='features')"):
            out = _dream_run(world, store, device, seed, observes="features")
        _tensor(
            fail,
            "DreamEnv(observes='features') gave features",
            out[0],
            "float",
            (BATCH, dim),
            device,
            "(B, D)",
        )
    plain = _dream_run(world, store, device, seed)  # on a CPU, it reads `done` on the host
    if contract.swap_rows(world) is not None:
        with _phase(fail, "imagine_swap_rows_"):
            generic = _dream_run(world, store, device, seed, generic_swap=True)
        if not _equal(plain, generic):
            raise fail(
                "imagine_swap_rows_ gives other trajectories than swapping every state entry row-wise (envs.dream.swap_rows_): a restarted row must imagine exactly as its spare would"
            )
    if device.type == "cpu":  # DreamEnv's CPU shortcut: no row swap where no row finished
        b = _dream_run(world, store, device, seed, read_done_on_host=False)
        if not _equal(plain, b):
            raise fail(
                "DreamEnv's trajectories change when finished rows are swapped in place on every step: imagine_step's state must not share tensors with its inputs or with another state's"
            )


class _CountingBackend:
    """``aot_eager`` that counts the graphs compiled per function (one unless it recompiles)."""

    def __init__(self) -> None:
        self.graphs: dict[str, int] = {}

    def wrap(self, fn: Callable[..., Any], name: str) -> Callable[..., Any]:
        import torch._dynamo

        def backend(gm: Any, example_inputs: Any) -> Any:
            self.graphs[name] = self.graphs.get(name, 0) + 1
            return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

        return torch.compile(fn, fullgraph=True, dynamic=False, backend=backend)


def _check_bf16_dtypes(fail: _Fail, world: Any, store: ReplayStore, seed: int) -> None:
    """Under bf16 autocast (the default precision on CUDA), ``imagine_step`` returns each state
    entry in the dtype it was given: else the step after the first is another graph to capture
    (and a compiled step recompiles)."""
    device = _device_of(world)
    ctx = _contexts(world, store, device, seed)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        with _phase(fail, "imagine_start under bf16 autocast"):
            state, _ = world.imagine_start(ctx.obs, ctx.act, ctx.mask)
        for step, action in enumerate(_actions(world, 2, device, seed), start=1):
            with _phase(fail, "imagine_step under bf16 autocast"):
                new, _, _, _ = world.imagine_step(state, action, render=False)
            for key, value in new.items():
                given = state.get(key)
                tensors = isinstance(value, Tensor) and isinstance(given, Tensor)
                if tensors and value.dtype != given.dtype:
                    raise fail(
                        f"under bf16 autocast, imagine_step {step} returns state[{key!r}] as "
                        f"{value.dtype}, given {given.dtype}: return the state in the dtypes it "
                        "came in (cast back), or each step needs another graph"
                    )
            state = new


def _check_capture(fail: _Fail, world: Any, store: ReplayStore, seed: int, compile: bool) -> None:
    device = _device_of(world)
    _check_bf16_dtypes(fail, world, store, seed)
    eager = _dream_run(world, store, device, seed)
    with _phase(fail, "imagination under graphs='simulate'"):
        simulated = _dream_run(world, store, device, seed, graphs="simulate")
    if not _equal(eager, simulated):
        raise fail(
            "declares graph_capture = True, but its trajectories change under CUDA-graph buffer "
            "semantics (graphs='simulate'): keep no Python state that changes per step and return "
            "state tensors of its own"
        )
    if not compile:
        return
    import torch._dynamo

    counting = _CountingBackend()
    torch._dynamo.reset()
    try:
        with (
            torch._dynamo.config.patch(allow_rnn=True),
            _phase(fail, "torch.compile(fullgraph=True) of imagine_step"),
        ):
            compiled = _dream_run(world, store, device, seed, capture=counting.wrap)
    finally:
        torch._dynamo.reset()
    if "imagine_step" not in counting.graphs:
        raise fail("torch.compile never compiled its step (is DreamEnv's capture bypassed?)")
    recompiled = {k: v for k, v in counting.graphs.items() if v != 1}
    if recompiled:
        raise fail(
            f"declares graph_capture = True, but its step recompiles ({recompiled} graphs): shapes, strides or Python values change from step to step"
        )
    if not _equal(eager, compiled):
        raise fail(
            "declares graph_capture = True, but its compiled step gives other trajectories than the eager one"
        )


# ---------------------------------------------------------------------------- agents


def _agent_obs(
    observes: str, env_info: EnvInfo, dim: int | None, n: int, device: torch.device, seed: int
) -> Tensor:
    if observes == "features":
        assert dim is not None  # check_agent refuses features without a dim
        g = torch.Generator().manual_seed(seed)
        return torch.randn(n, dim, generator=g).to(device)
    return _frames(n, tuple(env_info.obs_shape), device, seed)


def _acts(agent: Any, obs: Tensor, steps: int) -> Iterator[tuple[Tensor, Any]]:
    n = obs.shape[0]
    state = agent.initial_state(n, obs.device)
    first = torch.ones(n, dtype=torch.bool, device=obs.device)
    for _ in range(steps):
        with torch.inference_mode():
            actions, state = agent.act(obs, state, first)
        yield actions, state
        first = torch.zeros_like(first)


@_keeps_global_rng
def check_agent(
    agent: Any,
    env_info: EnvInfo,
    *,
    world: Any = None,
    seed: int = 0,
    steps: int = 3,
    train: bool = True,
    capture: bool = True,
) -> None:
    """Run the agent contract on ``agent`` (built for ``env_info``); raises ``ContractError``.

    Checks the required members and declared capabilities, ``act`` (``(B,) int64`` actions in
    range on the observation's device, a plain-data recurrent state, ``greedy=True``), that two
    agents built with the same seed act alike and that a checkpoint round trip into a third,
    built with another seed, continues alike; and, with ``train``, one ``train_in_imagination``
    in a ``DreamEnv`` of ``world`` (default: a small test world of ``env_info``'s shape that
    exposes features for feature agents) that returns float logs and, if the agent trains
    (``config.training``), changes its weights (on a new agent, where it can be rebuilt); with
    ``capture``, where ``world`` declares ``graph_capture = True`` (its dream steps replay as
    CUDA graphs on a GPU), the same training again in a dream with the CUDA-graph buffer
    semantics, audited (``graphs="simulate"``; an update the agent builds with
    ``graphs=dream.graphs`` included), must give the same weights."""
    fail = _Fail("agent", agent)
    contract.require_agent(agent)
    if not isinstance(agent, nn.Module):
        raise fail(
            f"must be a torch.nn.Module (its weights go into checkpoints), got a {type(agent).__name__}"
        )
    _check_config_class(type(agent), fail)
    observes = contract.observes(agent)
    if contract.uses_context(agent) and observes == "features":
        raise fail(
            "declares uses_context = True but observes features: the context it would burn in on is frames"
        )
    if world is not None:
        why = contract.incompatibility(agent, world)
        if why is not None:
            raise ContractError(why)
    dim = env_info.feature_dim
    if observes == "features":
        world_dim = contract.feature_dim(world) if world is not None else None
        if world_dim is not None and dim is not None and world_dim != dim:
            raise fail(f"env_info.feature_dim is {dim}, but the world's features have {world_dim}")
        dim = dim or world_dim
        if dim is None:
            raise fail(
                "observes features: check it with an env_info that has feature_dim (or a world with features)"
            )
    device = _device_of(agent)
    agent = copy.deepcopy(agent)  # acting draws from its generators: the caller's stay as they are
    obs = _agent_obs(observes, env_info, dim, 5, device, seed)
    with _phase(fail, "initial_state(5, device)"):
        state = agent.initial_state(5, device)
    if not _plain(state):
        raise fail(
            "initial_state returned a state that is not plain data (tensors, tuples, lists, dicts, numbers): checkpoints record it"
        )
    with _phase(fail, "act"):
        for actions, state in _acts(agent, obs, steps):
            _tensor(fail, "act returned actions", actions, torch.int64, (5,), device, "(B,)")
            if int(actions.min()) < 0 or int(actions.max()) >= env_info.num_actions:
                raise fail(f"act returned actions outside [0, {env_info.num_actions})")
            if not _plain(state):
                raise fail(
                    "act returned a state that is not plain data (tensors, tuples, lists, dicts, numbers): checkpoints record it"
                )
        with torch.inference_mode():
            greedy, _ = agent.act(
                obs,
                agent.initial_state(5, device),
                torch.ones(5, dtype=torch.bool, device=device),
                greedy=True,
            )
    _tensor(fail, "act(greedy=True) returned actions", greedy, torch.int64, (5,), device, "(B,)")

    def build(s: int) -> Any:
        with _phase(fail, f"{type(agent).__name__}(config, env_info, seed={s})"):
            return _rebuild(agent, env_info, s, seed=s)

    def rollout(a: Any) -> list[Tensor]:
        return [x.clone() for x, _ in _acts(a, obs, 4)]

    a = build(seed)
    if a is not None:
        b = build(seed)
        if not all(torch.equal(x, y) for x, y in zip(rollout(a), rollout(b), strict=True)):
            raise fail(
                f"two agents built with seed={seed} act differently: draw from generators seeded from `seed`"
            )
        c = build(seed + 99)
        _round_trip(fail, "agent", a, c)  # a's weights and generators, mid-run, into c
        if not all(torch.equal(x, y) for x, y in zip(rollout(a), rollout(c), strict=True)):
            raise fail(
                "a checkpoint round trip into an agent built with another seed acts differently: put the generators' state in get_extra_state/set_extra_state"
            )
    if train:
        _check_training(
            fail, a if a is not None else agent, env_info, world, observes, dim, device, seed,
            capture,
        )  # fmt: skip


class _PaidBandit(BanditWorld):
    """``BanditWorld`` with 0.5 more reward on every step: a critic always has a target to
    learn, so one update of any learning agent changes its weights."""

    def imagine_step(self, state: dict, action: Tensor, *, render: bool = True) -> tuple:
        state, obs, reward, end = super().imagine_step(state, action, render=render)
        return state, obs, reward + 0.5, end


class _PaidFeatures(LinearFeatureWorld):
    """``LinearFeatureWorld`` with 0.5 more reward on every step (see ``_PaidBandit``)."""

    def imagine_step(self, state: dict, action: Tensor, *, render: bool = True) -> tuple:
        state, obs, reward, end = super().imagine_step(state, action, render=render)
        return state, obs, reward + 0.5, end


def _test_world(observes: str, env_info: EnvInfo, dim: int | None, device: torch.device) -> Any:
    """A small world of ``env_info``'s shape that varies its trajectories' lengths (ends with
    probability 0.2) and pays every step, with features for feature agents."""
    shape = _obs_shape(env_info)
    if observes == "features":
        assert dim is not None
        return _PaidFeatures(env_info.num_actions, dim, shape, end_prob=0.2).to(device)
    return _PaidBandit(env_info.num_actions, shape, end_prob=0.2).to(device)


def _graphed_updaters(agent: Any) -> bool:
    """Whether ``agent`` holds an ``Updater`` that captures its steps (``graphs`` set)."""
    return any(isinstance(v, Updater) and v.graphs for v in vars(agent).values())


def _check_captured_training(
    fail: _Fail, agent: Any, twin: Any, dreams: tuple[DreamEnv, DreamEnv], updates: int
) -> None:
    """``twin`` (``agent`` before its ``updates`` updates in the eager ``dreams[0]``) trains as
    many times in ``dreams[1]``, the same dream with CUDA-graph buffer semantics and audited, and
    must end with ``agent``'s weights. Where the twin's update is itself captured (an
    ``Updater`` built with ``graphs=dream.graphs``), both train up to 4 updates: two warm-ups,
    the capture and one audited replay. Starts from the global RNGs' state of ``agent``'s
    first update (which the caller sets)."""
    eager, simulated = dreams
    with _phase(fail, "train_in_imagination in a dream with graphs='simulate'"):
        for _ in range(updates):
            twin.train_in_imagination(simulated)
        more = max(0, 4 - updates) if _graphed_updaters(twin) else 0
        if more:
            resume = global_rng_state()
            for _ in range(more):
                twin.train_in_imagination(simulated)
    if more:
        set_global_rng_state(resume)
        for _ in range(more):
            agent.train_in_imagination(eager)
    ours, theirs = agent.state_dict(), twin.state_dict()
    for key, value in ours.items():
        other = theirs[key]
        floats = isinstance(value, Tensor) and value.is_floating_point()
        if floats and not torch.allclose(value, other, rtol=1e-4, atol=1e-6):
            raise fail(
                f"trains differently (weight {key!r}) when the dream's steps, and an update "
                "built with graphs=dream.graphs, replay as CUDA graphs (graphs='simulate'): a "
                "captured function's next call overwrites its outputs (clone what you keep), "
                "and a replay does not see Python state that changes between calls"
            )


def _check_training(fail: _Fail, agent: Any, env_info: EnvInfo, world: Any, observes: str,
                    dim: int | None, device: torch.device, seed: int,
                    capture: bool) -> None:  # fmt: skip
    torch.manual_seed(seed)  # the same draws whatever the caller's RNG (restored afterwards)
    training = contract.agent_training(agent)
    num_envs, horizon = contract.dream_size(agent) if training is not None else (2, 2)
    world = world if world is not None else _test_world(observes, env_info, dim, device)
    store = random_store(
        num_episodes=4, length=max(24, 2 * world.context_len + 8), obs_shape=_obs_shape(env_info),
        num_actions=env_info.num_actions, seed=seed,
    )  # fmt: skip
    weights = training.recency_weights if training is not None else None

    def dream_of(graphs: str | None) -> DreamEnv:
        dream = DreamEnv(world, store, num_envs=num_envs, horizon=horizon, device=device,
                         seed=seed, observes=observes, recency_weights=weights,
                         graphs=graphs)  # fmt: skip
        dream.reseed(seed)  # the same contexts and draws for both dreams
        return dream

    # Where the world's steps replay as CUDA graphs, so do the dream's this agent trains in.
    twin = copy.deepcopy(agent) if capture and contract.capture_refusal(world) is None else None
    dream = dream_of(None)
    # SB3 draws from NumPy's and Python's global RNGs too: the twin starts from the same ones
    rngs = global_rng_state() if twin is not None else None
    before = {k: v.clone() for k, v in agent.state_dict().items() if isinstance(v, Tensor)}
    # Up to 3 updates: in a world of sparse rewards one round may see none, and learn nothing.
    updates = 0
    for _ in range(3 if training is not None else 1):
        updates += 1
        with _phase(fail, "train_in_imagination"):
            logs = agent.train_in_imagination(dream)
        if not isinstance(logs, dict) or not all(
            isinstance(k, str) and isinstance(v, float) for k, v in logs.items()
        ):
            raise fail("train_in_imagination must return a dict of Python floats (scalars to log)")
        after = agent.state_dict()
        if training is None or any(not torch.equal(v, after[k]) for k, v in before.items()):
            break
    else:
        raise fail("has config.training, but 3 calls of train_in_imagination changed no weight")
    if twin is not None and rngs is not None:
        after = global_rng_state()
        simulated = dream_of("simulate")
        set_global_rng_state(rngs)
        _check_captured_training(fail, agent, twin, (dream, simulated), updates)
        set_global_rng_state(after)  # what follows draws as if the twin had not trained
    obs, _ = dream.reset()
    with torch.inference_mode(), _phase(fail, "act on the dream's observations"):
        actions, _ = agent.act(
            obs,
            agent.initial_state(num_envs, device),
            torch.ones(num_envs, dtype=torch.bool, device=device),
        )
    _tensor(
        fail,
        "act on the dream's observations returned actions",
        actions,
        torch.int64,
        (num_envs,),
        device,
        "(B,)",
    )
