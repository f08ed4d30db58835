"""Loading and sharing trained runs: one call to load, one to export, one to push.

::

    from worldmodels.hub import load

    m = load("runs/<name>")               # a run directory made by train.py (its latest checkpoint)
    m = load("exports/<name>")            # or a folder made by export() / a Hugging Face snapshot
    dream = m.dream()                     # a DreamEnv of the world, on real contexts
    obs, info = dream.reset()
    actions, state = m.agent.act(obs, m.agent.initial_state(dream.num_envs, m.device),
                                 torch.ones(dream.num_envs, dtype=torch.bool))
    env = m.make_env("test", num_envs=1)  # the real game under the run's protocol

Loading is **read-only**: it writes nothing into the source (no lock, no new file; the replay
is read into memory by ``ReplayStore.read_only``). Only weights are loaded, from safetensors: the
optimizer state, the RNG states and the counters of a checkpoint's ``state.pt`` are ignored (never
unpickled), so a loaded agent samples its actions from a generator seeded as the run seeded it at
its start. Plugins a run's config names are imported only with ``trust_plugins=True`` (or after
the caller imported them with ``worldmodels.registry.load_plugins``): a run is data, and loading
data must not run code of its own.

``export(run_dir, out_dir)`` writes a self-contained folder in Hugging Face Hub layout (see
``docs/runs.md``): ``world.safetensors``, ``agent.safetensors`` (tensors of the modules'
state_dicts; their non-tensor extra state, optimizer and RNG states, is dropped),
``contexts.safetensors`` (a few real contexts from the run's replay, so the exported world can
be dreamed in without the game), ``config.yaml``, ``env_spec.json``, ``results.json`` (if the run
has one), ``export.json`` (what was exported from where, checksums, the commands that made the
run) and a ``README.md`` model card. ``push_to_hub`` uploads such a folder with the optional
``huggingface_hub`` package.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from worldmodels import config as C
from worldmodels import contract
from worldmodels.envs.dream import DreamEnv
from worldmodels.errors import UserError
from worldmodels.interfaces import Batch, EnvInfo
from worldmodels.replay import ReplayStore

EXPORT_FORMAT = 1
MANIFEST = "export.json"
WORLD_FILE, AGENT_FILE, CONTEXTS_FILE = (
    "world.safetensors",
    "agent.safetensors",
    "contexts.safetensors",
)
ENV_SPEC_FILE, CONFIG_FILE, RESULTS_FILE, CARD_FILE = (
    "env_spec.json", "config.yaml", "results.json", "README.md",
)  # fmt: skip
EXPORT_CONTEXTS = 8
"""Real contexts an export stores (``contexts.safetensors``): each ``context_len`` frames."""
_CONTEXT_FIELDS = ("obs", "act", "rew", "end", "trunc", "mask")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------- the result


@dataclasses.dataclass
class Loaded:
    """A trained world and agent, ready to use. Made by ``load``."""

    config: C.Config
    world: Any  # the world (a torch module in eval mode), or None for a run without one
    agent: Any  # the agent (a torch module in eval mode)
    env_info: EnvInfo
    env_spec: dict[str, Any]
    protocol: dict[str, Any]
    device: torch.device
    source: Path
    kind: str  # "run" (a run directory) or "export" (an exported folder)
    checkpoint: str | None  # the checkpoint the weights come from (its name)
    env_steps: int | None  # real env steps the run had taken at that checkpoint
    results: dict[str, Any] | None = None  # the run's results.json, if it has one
    _replay: Any = dataclasses.field(default=None, repr=False)  # ReplayStore, read on first use
    _pool: Batch | None = dataclasses.field(default=None, repr=False)  # an export's contexts

    # ---------------------------------------------------------------- real contexts and dreams

    def replay(self) -> Any:
        """The run's finished episodes, read into memory once (a ``ReplayStore`` with no
        directory: nothing is ever written to the run). An export has none (``UserError``)."""
        if self.kind != "run":
            raise UserError(
                f"{self.source} is an exported folder: it holds no replay, only "
                f"{EXPORT_CONTEXTS} real contexts (Loaded.contexts())"
            )
        if self._replay is None:
            from worldmodels.runs import RunDir

            self._replay = ReplayStore.read_only(RunDir(self.source).episodes)
        return self._replay

    def contexts(self, n: int | None = None, *, seed: int = 0) -> Batch:
        """``n`` real contexts of ``world.context_len`` rows each (a ``Batch`` on the CPU): drawn
        from the run's replay as ``DreamEnv`` draws them, or from an export's stored ones (all of
        them by default, ``n`` of them drawn at random otherwise)."""
        world = self._need_world()
        if n is not None and n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if self.kind == "export":
            assert self._pool is not None
            k = self._pool.obs.shape[0]
            if n is None:
                return self._pool
            idx = torch.randint(k, (n,), generator=torch.Generator().manual_seed(seed))
            return _rows(self._pool, idx)
        from worldmodels.replay import SegmentSampler

        store = self.replay()
        if len(store) == 0:
            raise UserError(f"{self.source} has no finished episode in its replay yet")
        sampler = SegmentSampler(
            store, world.context_len, pad_left=world.context_len - 1, end_before_final=True,
            seed=seed,
        )  # fmt: skip
        return sampler.sample(EXPORT_CONTEXTS if n is None else n)

    def dream(
        self,
        contexts: Batch | None = None,
        *,
        num_envs: int | None = None,
        horizon: int | None = None,
        seed: int = 0,
        amp: bool = False,
    ) -> Any:
        """A ``DreamEnv`` of the world, observed as the agent observes (frames or features).

        ``contexts`` (a ``Batch`` of ``B`` real contexts, ``obs (B, context_len, C, H, W)``
        uint8): ``B`` imagined trajectories, row ``i`` starting, and restarting when it ends, from
        context ``i``. Without: trajectories start from contexts drawn from the run's replay (an
        export: from its stored contexts), ``num_envs`` (default: the agent's, else 4) of them,
        each at most ``horizon`` steps (default: the agent's, else 32)."""
        world = self._need_world()
        training = contract.agent_training(self.agent)
        default_envs = self.agent.config.num_envs if training is not None else 4
        horizon = horizon or (self.agent.config.horizon if training is not None else 32)
        common: dict[str, Any] = {
            "horizon": horizon, "device": self.device, "amp": amp,
            "observes": contract.observes(self.agent),
        }  # fmt: skip
        if contexts is not None:
            contexts = self._check_contexts(contexts)
            b = contexts.obs.shape[0]
            if num_envs is not None and num_envs != b:
                raise ValueError(f"num_envs={num_envs} but {b} contexts were given: one row each")
            return _PoolDream(
                world, contexts, ordered=True, num_envs=b, seed=seed, spares="shared", **common
            )
        num_envs = num_envs or default_envs
        if self.kind == "export":
            assert self._pool is not None
            return _PoolDream(world, self._pool, ordered=False, num_envs=num_envs, seed=seed,
                              spares="fresh", **common)  # fmt: skip
        store = self.replay()
        if len(store) == 0:
            raise UserError(f"{self.source} has no finished episode in its replay yet")
        return DreamEnv(world, store, num_envs=num_envs, seed=seed, **common)

    def make_env(self, mode: str = "test", num_envs: int = 1) -> Any:
        """The real vector env (``envs.atari.AtariVecEnv``) under the run's protocol."""
        from worldmodels.build import env_factory

        return env_factory(self.config.env)(mode, num_envs)

    def _need_world(self) -> Any:
        if self.world is None:
            raise UserError(f"{self.source} has no world (agent {self.config.agent.name!r} alone)")
        return self.world

    def _check_contexts(self, ctx: Batch) -> Batch:
        world = self.world
        if not isinstance(ctx, Batch):
            raise ValueError(
                f"contexts must be a worldmodels.interfaces.Batch, got {type(ctx).__name__}"
            )
        want = (world.context_len, *world.obs_shape)
        if ctx.obs.dtype != torch.uint8 or ctx.obs.ndim != 5 or tuple(ctx.obs.shape[1:]) != want:
            raise ValueError(
                f"contexts.obs must be uint8 (B, {', '.join(map(str, want))}), got "
                f"{ctx.obs.dtype} {tuple(ctx.obs.shape)}"
            )
        b, t = ctx.obs.shape[:2]
        for name in ("act", "mask"):
            if tuple(getattr(ctx, name).shape) != (b, t):
                raise ValueError(
                    f"contexts.{name} must be ({b}, {t}), got {tuple(getattr(ctx, name).shape)}"
                )
        return ctx


def _rows(batch: Batch, idx: torch.Tensor) -> Batch:
    return Batch._make(None if x is None else x[idx.to(x.device)] for x in batch)


class _PoolDream(DreamEnv):
    """A ``DreamEnv`` whose ``reset()`` starts from a fixed pool of real contexts instead of
    replay: row ``i`` from pool row ``i`` (``ordered``), or rows drawn at random."""

    def __init__(self, world: Any, pool: Batch, *, ordered: bool, seed: int, **kw: Any) -> None:
        super().__init__(world, ReplayStore(None), seed=seed, **kw)
        self._pool = pool.to(self.device)
        self._ordered = ordered
        self._draw = torch.Generator().manual_seed(seed)

    def contexts(self, n: int | None = None) -> Batch:
        n = self.starts_per_reset if n is None else n
        k = self._pool.obs.shape[0]
        if self._ordered:  # row i from context i (its spare too: spares="shared")
            return _rows(self._pool, torch.arange(n) % k)
        idx = torch.randint(k, (n,), generator=self._draw)
        return _rows(self._pool, idx)


# --------------------------------------------------------------------------------- loading


def load(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    checkpoint: str | Path | None = None,
    trust_plugins: bool = False,
) -> Loaded:
    """Load a run directory (its latest checkpoint, or ``checkpoint``: a name such as
    ``epoch_000012`` or a path) or an exported folder, read-only. Bad input is a one-line
    ``UserError``."""
    from worldmodels.cli import resolve_device

    root = Path(path)
    if not root.exists():
        raise UserError(f"cannot load {root}: it does not exist")
    if not root.is_dir():
        raise UserError(
            f"cannot load {root}: not a directory (a run directory or an exported folder)"
        )
    dev = device if isinstance(device, torch.device) else resolve_device(str(device))
    if (root / MANIFEST).exists():
        if checkpoint is not None:
            raise UserError(
                f"{root} is an exported folder: it holds one set of weights (drop checkpoint)"
            )
        return _load_export(root, dev, trust_plugins)
    if (root / "config.yaml").exists():
        return _load_run(root, dev, checkpoint, trust_plugins)
    raise UserError(
        f"cannot load {root}: neither a run directory (no config.yaml) nor an exported folder "
        f"(no {MANIFEST})"
    )


def _config(path: Path, trust_plugins: bool) -> C.Config:
    """The Config of ``path`` (a config.yaml), importing its plugins only if trusted."""
    from worldmodels.registry import load_plugins, loaded_plugins

    tree = C.load_yaml(path)
    try:
        named = C.plugins_named(tree)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    missing = [p for p in named if p not in loaded_plugins()]
    if missing and not trust_plugins:
        names = ", ".join(repr(p) for p in missing)
        raise UserError(
            f"{path} names plugin {names}, not imported yet: plugins run code, so import it "
            f"first (worldmodels.registry.load_plugins([{names}])) or pass trust_plugins=True "
            "if you trust this folder"
        )
    load_plugins(named)
    return C.load_run_config(path)


def _build(cfg: C.Config, env_info: EnvInfo, device: torch.device) -> tuple[Any, Any, EnvInfo]:
    """The world (or None), the agent, and the ``EnvInfo`` the agent was built with (with the
    world's ``feature_dim`` where it has features)."""
    from worldmodels.build import build_world_and_agent

    try:
        world, agent = build_world_and_agent(
            cfg.world, cfg.agent, env_info, seed=cfg.run.seed, device=device
        )
    except ValueError as exc:  # a component refusing its settings or its env
        raise UserError(f"cannot build the world and agent: {exc}") from None
    dim = None if world is None else contract.feature_dim(world)
    if dim is not None:
        env_info = dataclasses.replace(env_info, feature_dim=dim)
    return world, agent, env_info


def _env_info(spec: Mapping[str, Any], where: Path) -> EnvInfo:
    try:
        return EnvInfo(
            num_actions=int(spec["num_actions"]),
            obs_shape=tuple(int(x) for x in spec["obs_shape"]),  # type: ignore[arg-type]
            action_meanings=tuple(str(a) for a in spec.get("action_meanings", ())),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{where}: the env spec lacks num_actions / obs_shape ({exc})") from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is corrupt: {exc}") from None


def _fill(module: Any, tensors: Mapping[str, torch.Tensor], what: str, where: Path) -> None:
    """Load ``tensors`` into ``module``: every parameter and buffer must be there with its shape;
    the module's non-tensor extra state (``_extra_state``) is left as built."""
    try:
        result = module.load_state_dict(dict(tensors), strict=False)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:400]
        raise UserError(
            f"{where} does not fit the {what} built from its config: {detail}"
        ) from None
    missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
    if missing or result.unexpected_keys:
        detail = "; ".join(
            f"{label} {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", result.unexpected_keys))
            if keys
        )
        raise UserError(f"{where} does not fit the {what} built from its config: {detail}")


def _safetensors(data: bytes, where: Path, device: torch.device) -> dict[str, torch.Tensor]:
    try:
        tensors = load_safetensors(data)
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise UserError(f"{where} is corrupt: {' '.join(str(exc).split())}") from None
    return {k: v.to(device) for k, v in tensors.items()}


def _checked(path: Path, expected: str | None) -> bytes:
    if not path.exists():
        raise UserError(f"{path} is missing")
    data = path.read_bytes()
    if expected is not None and _sha256(data) != expected:
        raise UserError(
            f"{path} is corrupt: its sha256 differs from the recorded one (flipped bytes or a "
            "partial copy)"
        )
    return data


def _find_checkpoint(run_root: Path, checkpoint: str | Path | None) -> Path:
    from worldmodels.checkpoint import complete_checkpoints, latest_checkpoint

    directory = run_root / "checkpoints"
    if checkpoint is None:
        found = latest_checkpoint(directory)
        if found is None:
            raise UserError(f"{run_root} has no checkpoint yet (nothing to load)")
        return found
    path = Path(checkpoint)
    if not path.is_dir() and (directory / str(checkpoint)).is_dir():
        path = directory / str(checkpoint)
    if not path.is_dir():
        kept = [p.name for p in complete_checkpoints(directory)] if directory.is_dir() else []
        raise UserError(
            f"no checkpoint {checkpoint} in {run_root} (found: {', '.join(kept) or 'none'})"
        )
    return path


def _load_run(
    root: Path, device: torch.device, checkpoint: str | Path | None, trust: bool
) -> Loaded:
    from worldmodels.checkpoint import FORMAT_VERSION, META, WEIGHTS

    cfg = _config(root / "config.yaml", trust)
    ckpt = _find_checkpoint(root, checkpoint)
    if not (ckpt / META).exists():
        raise UserError(f"checkpoint {ckpt} has no {META} (damaged or copied in part)")
    meta = _read_json(ckpt / META)
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        got = meta.get("format_version") if isinstance(meta, dict) else None
        raise UserError(
            f"checkpoint {ckpt} has format {got!r}, this version reads {FORMAT_VERSION}"
        )
    expected = ((meta.get("files") or {}).get(WEIGHTS) or {}).get("sha256")
    tensors = _safetensors(_checked(ckpt / WEIGHTS, expected), ckpt / WEIGHTS, device)
    results = _read_json(root / RESULTS_FILE) if (root / RESULTS_FILE).exists() else None
    spec = _run_env_spec(root, results)
    env_info = _env_info(spec, root) if spec else _real_env_info(cfg)
    world, agent, env_info = _build(cfg, env_info, device)
    modules = {"agent": agent} if world is None else {"agent": agent, "world": world}
    for name, module in modules.items():
        prefix = f"{name}."
        own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if name not in meta.get("modules", [name]):
            raise UserError(f"checkpoint {ckpt} holds no weights for the {name}")
        _fill(module, own, name, ckpt / WEIGHTS)
        module.eval()
    steps = (meta.get("counters") or {}).get("env_steps")
    return Loaded(
        config=cfg, world=world, agent=agent, env_info=env_info, env_spec=spec,
        protocol=cfg.env.protocol_values(), device=device, source=root, kind="run",
        checkpoint=ckpt.name, env_steps=None if steps is None else int(steps), results=results,
    )  # fmt: skip


def _run_env_spec(root: Path, results: dict[str, Any] | None) -> dict[str, Any]:
    """The env spec a run recorded: its results' (test mode), else its newest session's."""
    if isinstance(results, dict) and isinstance(results.get("env_spec"), dict):
        return dict(results["env_spec"])
    for session in reversed(_sessions(root)):
        if isinstance(session.get("env_spec"), dict):
            return dict(session["env_spec"])
    return {}


def _real_env_info(cfg: C.Config) -> EnvInfo:
    from worldmodels.build import env_factory, env_info_of

    env = env_factory(cfg.env)("test", 1)
    try:
        return env_info_of(env)
    finally:
        close = getattr(env, "close", None)
        if close is not None:
            close()


def _sessions(root: Path) -> list[dict[str, Any]]:
    path = root / "provenance.json"
    if not path.exists():
        return []
    try:
        sessions = json.loads(path.read_text()).get("sessions", [])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return []
    return [s for s in sessions if isinstance(s, dict)]


def _load_export(root: Path, device: torch.device, trust: bool) -> Loaded:
    manifest = _read_json(root / MANIFEST)
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise UserError(f"{root / MANIFEST} has format {got!r}, this version reads {EXPORT_FORMAT}")
    files = manifest.get("files") or {}
    for needed in (CONFIG_FILE, ENV_SPEC_FILE, AGENT_FILE):
        if not (root / needed).exists():
            raise UserError(f"exported folder {root} is incomplete: {needed} is missing")
    cfg = _config(root / CONFIG_FILE, trust)
    spec = _read_json(root / ENV_SPEC_FILE)
    if not isinstance(spec, dict):
        raise UserError(f"{root / ENV_SPEC_FILE} is corrupt: not a JSON object")
    env_info = _env_info(spec, root / ENV_SPEC_FILE)
    world, agent, env_info = _build(cfg, env_info, device)
    modules = {"agent": (agent, AGENT_FILE)}
    if world is not None:
        modules["world"] = (world, WORLD_FILE)
    for name, (module, fname) in modules.items():
        data = _checked(root / fname, files.get(fname))
        _fill(module, _safetensors(data, root / fname, device), name, root / fname)
        module.eval()
    pool = None
    if world is not None and (root / CONTEXTS_FILE).exists():
        raw = _safetensors(_checked(root / CONTEXTS_FILE, files.get(CONTEXTS_FILE)),
                           root / CONTEXTS_FILE, torch.device("cpu"))  # fmt: skip
        try:
            pool = Batch(**{k: raw[k] for k in _CONTEXT_FIELDS})
        except KeyError as exc:
            raise UserError(f"{root / CONTEXTS_FILE} is corrupt: no {exc} tensor") from None
    results = _read_json(root / RESULTS_FILE) if (root / RESULTS_FILE).exists() else None
    steps = manifest.get("env_steps")
    return Loaded(
        config=cfg, world=world, agent=agent, env_info=env_info, env_spec=spec,
        protocol=cfg.env.protocol_values(), device=device, source=root, kind="export",
        checkpoint=manifest.get("checkpoint"), env_steps=None if steps is None else int(steps),
        results=results, _pool=pool,
    )  # fmt: skip


# --------------------------------------------------------------------------------- exporting


def _tensors_of(module: Any) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The tensors of ``module.state_dict()`` (cloned to the CPU: safetensors refuses shared
    storage) and the keys of the non-tensor entries left out."""
    tensors, dropped = {}, []
    for key, value in module.state_dict().items():
        if isinstance(value, torch.Tensor):
            tensors[key] = value.detach().to("cpu").clone().contiguous()
        else:
            dropped.append(key)
    return tensors, dropped


def export(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    trust_plugins: bool = False,
    contexts: int = EXPORT_CONTEXTS,
) -> Path:
    """Write the run's weights (latest checkpoint, or ``checkpoint``), config, env spec,
    results, a few real contexts and a model card to the new folder ``out_dir``; returns it.

    The run is only read. ``out_dir`` must not exist or be empty, and must lie outside the run;
    the folder appears whole (written beside it, then renamed into place)."""
    from worldmodels.runs import versions

    run_root, out = Path(run_dir), Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"cannot export to {out}: it exists and is not an empty directory")
    if (
        run_root.is_dir()
        and not (run_root / "config.yaml").exists()
        and (run_root / MANIFEST).exists()
    ):
        raise UserError(f"{run_root} is an exported folder already: export a run directory")
    if not (run_root / "config.yaml").exists():
        what = "does not exist" if not run_root.exists() else "has no config.yaml"
        raise UserError(f"{run_root} is not a run directory: it {what}")
    if out.resolve().is_relative_to(run_root.resolve()):
        raise UserError(f"cannot export to {out}: it lies inside the run directory {run_root}")
    if contexts < 0:
        raise UserError(f"contexts must be >= 0, got {contexts}")
    m = load(run_root, checkpoint=checkpoint, trust_plugins=trust_plugins)

    files: dict[str, bytes] = {}
    dropped: dict[str, list[str]] = {}
    for name, module, fname in (("world", m.world, WORLD_FILE), ("agent", m.agent, AGENT_FILE)):
        if module is None:
            continue
        tensors, left_out = _tensors_of(module)
        info = {"registry_name": contract.name_of(module), "module": name, "format": "pt"}
        files[fname] = save_safetensors(tensors, metadata=info)
        if left_out:
            dropped[name] = left_out
    if m.world is not None and contexts > 0 and len(m.replay()) > 0:
        ctx = m.contexts(contexts)
        files[CONTEXTS_FILE] = save_safetensors(
            {k: getattr(ctx, k).contiguous() for k in _CONTEXT_FIELDS},
            metadata={"what": "real contexts from the run's replay", "context_len": str(m.world.context_len)},
        )  # fmt: skip
    files[CONFIG_FILE] = (run_root / "config.yaml").read_bytes()
    files[ENV_SPEC_FILE] = (json.dumps(m.env_spec, indent=2) + "\n").encode()
    if (run_root / RESULTS_FILE).exists():
        files[RESULTS_FILE] = (run_root / RESULTS_FILE).read_bytes()
    sessions = [_session_summary(s) for s in _sessions(run_root)]
    manifest = {
        "format": EXPORT_FORMAT,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run": run_root.resolve().name,
        "checkpoint": m.checkpoint,
        "env_steps": m.env_steps,
        "world": None if m.config.world is None else m.config.world.name,
        "agent": m.config.agent.name,
        "dropped_extra_state": dropped,
        "sessions": sessions,
        "exported_with": versions(),
        "files": {
            f: _sha256(data) for f, data in sorted(files.items()) if f.endswith(".safetensors")
        },
    }
    files[MANIFEST] = (json.dumps(manifest, indent=2) + "\n").encode()
    files[CARD_FILE] = model_card(m, manifest).encode()
    _publish(out, files)
    return out


def _publish(out: Path, files: Mapping[str, bytes]) -> None:
    """Write ``files`` into a temp folder beside ``out`` and rename it into place."""
    from worldmodels.fileio import fsync_dir, write_synced

    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot export to {out}: {exc.strerror or exc}") from None
    tmp = parent / f".{out.name}.export-{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        for name, data in files.items():
            write_synced(tmp / name, data)
        if out.exists():
            out.rmdir()  # empty (checked above): rename onto it
        os.replace(tmp, out)
        fsync_dir(parent)
    except OSError as exc:
        raise UserError(f"cannot export to {out}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _session_summary(session: Mapping[str, Any]) -> dict[str, Any]:
    argv = session.get("argv")
    command = None
    if isinstance(argv, list) and argv:
        command = " ".join(["python", Path(str(argv[0])).name, *map(_quote, argv[1:])])
    return {
        "started": session.get("started"),
        "command": command,
        "device": session.get("device"),
        "versions": session.get("versions"),
    }


def _quote(arg: Any) -> str:
    import shlex

    return shlex.quote(str(arg))


# --------------------------------------------------------------------------------- model card


def model_card(m: Loaded, manifest: Mapping[str, Any]) -> str:
    """The ``README.md`` of an export: YAML front matter for the Hub, then the protocol, the
    scores (95% bootstrap CIs, human-normalised score), the versions and the commands."""
    from worldmodels.aggregate import mean_ci
    from worldmodels.scores import human_normalized

    cfg = m.config
    game = cfg.env.game
    world = None if cfg.world is None else cfg.world.name
    agent = cfg.agent.name
    title = f"{world or 'no'} world, {agent} agent, {game} ({cfg.env.protocol})"
    tags = ["reinforcement-learning", "world-models", "atari", game, agent]
    if world:
        tags.insert(3, world)
    front: dict[str, Any] = {"library_name": "worldmodels", "tags": tags}
    r = m.results if isinstance(m.results, dict) else None
    returns = [float(x) for x in (r or {}).get("returns") or []]
    lines = [f"# {title}", ""]
    lines += [
        f"Trained with `worldmodels` for {m.env_steps if m.env_steps is not None else '?'} real env "
        f"steps (checkpoint `{m.checkpoint}` of run `{manifest.get('run')}`, preset "
        f"`{cfg.preset}`, seed {cfg.run.seed}).",
        "",
        "## Scores",
        "",
    ]
    if returns:
        mean = sum(returns) / len(returns)
        lo, hi = mean_ci(returns)
        hns = human_normalized(game, mean)
        hns_lo, hns_hi = human_normalized(game, lo), human_normalized(game, hi)
        lines += [
            f"Real test-mode episodes: {len(returns)}.",
            "",
            "| metric | value | 95% bootstrap CI |",
            "|---|---|---|",
            f"| mean return | {mean:.2f} | [{lo:.2f}, {hi:.2f}] |",
        ]
        if hns is not None and hns_lo is not None and hns_hi is not None:
            lines.append(f"| human-normalised score | {hns:.3f} | [{hns_lo:.3f}, {hns_hi:.3f}] |")
        ref = (r or {}).get("reference")
        if isinstance(ref, dict):
            lines += [
                "",
                f"Reference scores: random {ref.get('random')}, human {ref.get('human')}.",
            ]
        front["model-index"] = [
            {
                "name": f"{world or 'noworld'}-{agent}-{game}",
                "results": [
                    {
                        "task": {
                            "type": "reinforcement-learning",
                            "name": "reinforcement-learning",
                        },
                        "dataset": {"name": game, "type": game},
                        "metrics": [
                            {
                                "type": "mean_reward",
                                "name": "mean_reward",
                                "value": f"{mean:.2f} [{lo:.2f}, {hi:.2f}]",
                            },
                        ],  # fmt: skip
                    }
                ],
            }
        ]
    else:
        lines.append("The run has no results.json (no real test episodes were scored).")
    lines += ["", "## Protocol", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in {"game": game, "protocol": cfg.env.protocol,
                                               **m.protocol}.items()]  # fmt: skip
    sessions = manifest.get("sessions") or []
    lines += ["", "## How it was made", ""]
    commands = [s for s in sessions if s.get("command")]
    if commands:
        lines += ["```"] + [s["command"] for s in commands] + ["```"]
    else:
        lines.append("The run recorded no command line.")
    ver = (r or {}).get("versions") or (sessions[-1].get("versions") if sessions else None) or {}
    if ver:
        lines += ["", "Versions:", ""]
        lines += [f"- {k}: {v}" for k, v in ver.items() if v is not None]
    dropped = manifest.get("dropped_extra_state") or {}
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "import torch",
        "from worldmodels.hub import load",
        "",
        'm = load("path/to/this/folder")  # or a run directory; device="cuda" to run on a GPU',
        "dream = m.dream()  # the world as an env, started on the stored real contexts",
        "obs, info = dream.reset()",
        "state = m.agent.initial_state(dream.num_envs, m.device)",
        "first = torch.ones(dream.num_envs, dtype=torch.bool)",
        "actions, state = m.agent.act(obs, state, first)",
        "obs, reward, terminated, truncated, info = dream.step(actions)",
        "```",
        "",
        "## Files",
        "",
        f"- `{CONFIG_FILE}`: the resolved config; `{ENV_SPEC_FILE}`: the env spec (action set, "
        "frame shape, versions)",
        f"- `{AGENT_FILE}`" + (f", `{WORLD_FILE}`" if world else "")
        + ": weights only (tensors of the modules' state dicts)"
        + (f"; left out: extra state of {', '.join(sorted(dropped))} (optimizer and RNG states)"
           if dropped else ""),
    ]  # fmt: skip
    if (manifest.get("files") or {}).get(CONTEXTS_FILE):
        lines.append(f"- `{CONTEXTS_FILE}`: real contexts from the run's replay, for `dream()`")
    if r is not None:
        lines.append(f"- `{RESULTS_FILE}`: the real test episodes' returns, seed and env spec")
    lines.append(f"- `{MANIFEST}`: source run, checkpoint, checksums, commands, versions")
    head = yaml.safe_dump(front, sort_keys=False).strip()
    return f"---\n{head}\n---\n\n" + "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------- sharing


def push_to_hub(folder: str | Path, repo_id: str, token: str | None = None) -> str:
    """Upload an exported folder to the Hugging Face Hub (model repo ``repo_id``, created if
    needed); returns the repo's URL. Needs ``pip install 'worldmodels[hub]'``."""
    folder = Path(folder)
    if not (folder / MANIFEST).exists():
        raise UserError(f"{folder} is not an exported folder (no {MANIFEST}): export a run first")
    try:  # an optional extra: imported by name, so that type checks pass without it
        hf = importlib.import_module("huggingface_hub")
    except ImportError:
        raise UserError(
            "push_to_hub needs the huggingface_hub package: pip install 'worldmodels[hub]'"
        ) from None
    api = hf.HfApi(token=token)
    url = api.create_repo(repo_id, repo_type="model", exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model")
    return str(url)


# --------------------------------------------------------------------------------- the command


def export_main(argv: Sequence[str] | None = None) -> int:
    """``export RUN_DIR OUT_DIR [--checkpoint C] [--trust-plugins]``: the exit status (one-line
    errors, status 2)."""
    from worldmodels.cli import Parser, run_main

    def main(args_: Sequence[str] | None) -> int:
        p = Parser(
            prog="worldmodels export",
            description="Write a trained run as a self-contained folder in Hugging Face Hub "
            "layout (safetensors weights, config, env spec, results, model card).",
        )
        p.add_argument("run", metavar="RUN_DIR", help="a run directory made by train.py")
        p.add_argument(
            "out", metavar="OUT_DIR", help="the new folder (must not exist, or be empty)"
        )
        p.add_argument("--checkpoint", help="checkpoint name or path (default: the run's latest)")
        p.add_argument(
            "--trust-plugins", action="store_true",
            help="import the plugins the run's config.yaml names (they run code)",
        )  # fmt: skip
        args = p.parse_args(args_)
        out = export(
            args.run, args.out, checkpoint=args.checkpoint, trust_plugins=args.trust_plugins
        )
        names = sorted(p.name for p in out.iterdir())
        print(f"exported {args.run} to {out}: {', '.join(names)}")
        return 0

    return run_main(main, list(sys.argv[1:] if argv is None else argv))
