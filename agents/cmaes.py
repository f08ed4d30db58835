"""World Models' controller (Ha & Schmidhuber 2018): a deterministic linear map from the world's
features ``[z, h]`` to action scores, evolved by CMA-ES (Hansen 2016, "The CMA Evolution Strategy:
A Tutorial") with population 64 and 16 rollouts per candidate, inside the dream or in the real env.

The evolution strategy is the ``cma`` library's ``CMAEvolutionStrategy`` (cumulative step-size
adaptation, full covariance). Its state goes into checkpoints as plain arrays and counters
(``es_state``) and is rebuilt from them (``restore_es``), never pickled.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from worldmodels.interfaces import EnvInfo
from worldmodels.registry import AGENTS
from worldmodels.training import StageTraining

with warnings.catch_warnings():  # cma warns at import when matplotlib is missing (plots only)
    warnings.simplefilter("ignore")
    import cma
    from cma.sigma_adaptation import CMAAdaptSigmaCSA


# --------------------------------------------------------------------------------- controller


def num_params(feature_dim: int, num_actions: int, hidden: int) -> int:
    """Size of the flat parameter vector: ``A * (D + 1)`` for the linear controller (867 for
    CarRacing's 3 actions on 288 features), ``H * (D + 1) + A * (H + 1)`` with a hidden layer."""
    if hidden == 0:
        return num_actions * (feature_dim + 1)
    return hidden * (feature_dim + 1) + num_actions * (hidden + 1)


def controller_scores(x: Tensor, params: Tensor, num_actions: int, hidden: int) -> Tensor:
    """Action scores of ``N`` controllers, each on its own rows: features ``x (N, R, D)`` float,
    flat parameters ``params (N, P)`` -> ``(N, R, A)``, all in one batched matmul per layer.

    Layout of one parameter vector: ``W (A, D)`` row-major, then ``b (A,)`` (``scores = W x + b``);
    with a hidden layer ``W1 (H, D), b1 (H,), W2 (A, H), b2 (A,)`` and ``tanh`` in between."""
    n, _, d = x.shape
    a, h = num_actions, hidden
    if h == 0:
        w = params[:, : a * d].view(n, a, d)  # (N, A, D)
        b = params[:, a * d :].view(n, 1, a)  # (N, 1, A)
        return torch.baddbmm(b, x, w.transpose(1, 2))  # (N, R, A)
    w1 = params[:, : h * d].view(n, h, d)  # (N, H, D)
    b1 = params[:, h * d : h * (d + 1)].view(n, 1, h)  # (N, 1, H)
    rest = params[:, h * (d + 1) :]
    w2 = rest[:, : a * h].view(n, a, h)  # (N, A, H)
    b2 = rest[:, a * h :].view(n, 1, a)  # (N, 1, A)
    hid = torch.tanh(torch.baddbmm(b1, x, w1.transpose(1, 2)))  # (N, R, H)
    return torch.baddbmm(b2, hid, w2.transpose(1, 2))  # (N, R, A)


# --------------------------------------------------------------------------------- ES state


def _arr(x: Any) -> Tensor:
    return torch.from_numpy(np.array(x, dtype=np.float64, copy=True))


def _np(x: Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float64).numpy().copy()


def es_state(es: Any) -> dict[str, Any]:
    """The state of a ``cma.CMAEvolutionStrategy`` (full covariance, CSA, no bounds) between two
    generations, as float64 tensors and Python numbers: mean, step size, covariance and its
    eigen-decomposition (with the sampler's lazy-update counters), the evolution paths, the
    iteration/evaluation counters, the best solution so far and the fitness history that the
    step-size and stopping rules read. The random generator is the owner's (``randn`` option)."""
    sm, csa, fit, best = es.sm, es.adapt_sigma, es.fit, es.best
    if not isinstance(sm, cma.sampler.GaussFullSampler) or not isinstance(csa, CMAAdaptSigmaCSA):
        raise TypeError("es_state supports full-covariance CMA-ES with CSA step-size adaptation")
    return {
        "mean": _arr(es.mean),
        "mean_old": _arr(getattr(es, "mean_old", es.mean)),  # the mean before the last tell
        "sigma": float(es.sigma),
        "sigma_old": float(getattr(es, "_sigma_old", es.sigma)),
        "countiter": int(es.countiter),
        "countevals": int(es.countevals),
        "pc": _arr(es.pc),  # rank-one evolution path
        "pc2": _arr(es.pc2),
        "sigma_vec": _arr(es.sigma_vec.scaling),  # diagonal decoding (identity by default)
        "tolupsigma": float(es.opts["tolupsigma"]),  # cma rescales it with sigma
        "C": _arr(sm.C),
        "B": _arr(sm.B),
        "D": _arr(sm.D),
        "sm_counters": [int(sm.count_tell), int(sm.last_update), int(sm.count_eigen)],
        "corr_condition": [float(sm._corr_condition), int(sm._corr_condition_count_eigen)],
        "ps": _arr(csa.ps),  # step-size (conjugate) evolution path
        "csa": [float(csa.delta), int(csa._ps_updated_iteration)],
        "best": {
            "x": None if best.x is None else _arr(best.x),
            "f": float(best.f),
            "evals": None if best.evals is None else int(best.evals),
        },
        "fit": {
            "hist": [float(v) for v in fit.hist],
            "histbest": [float(v) for v in fit.histbest],
            "histmedian": [float(v) for v in fit.histmedian],
            "median": None if fit.median is None else float(fit.median),
            "median0": None if fit.median0 is None else float(fit.median0),
            "median_min": float(fit.median_min),
            "median_previous": float(fit.median_previous),
            "median_got_worse": int(fit.median_got_worse),
            "flatfit_iterations": int(fit.flatfit_iterations),
        },
    }


def restore_es(es: Any, state: dict[str, Any]) -> None:
    """Overwrite a freshly built ``es`` (same options, same ``sigma0``) with ``es_state(...)``."""
    if len(state["mean"]) != es.N:
        raise ValueError(f"saved ES has {len(state['mean'])} parameters, this one {es.N}")
    es.mean = _np(state["mean"])
    es.mean_after_tell = es.mean.copy()
    es.mean_old = _np(state["mean_old"])
    es.sigma, es._sigma_old = state["sigma"], state["sigma_old"]
    es.countiter, es.countevals = state["countiter"], state["countevals"]
    es.pc, es.pc2 = _np(state["pc"]), _np(state["pc2"])
    es.sigma_vec.scaling = _np(state["sigma_vec"])
    es.sigma_vec.is_identity = bool(np.all(es.sigma_vec.scaling == 1))
    es.opts["tolupsigma"] = state["tolupsigma"]
    sm = es.sm
    sm.C, sm.B, sm.D = _np(state["C"]), _np(state["B"]), _np(state["D"])
    sm.count_tell, sm.last_update, sm.count_eigen = state["sm_counters"]
    sm._corr_condition, sm._corr_condition_count_eigen = state["corr_condition"]
    sm._inverse_root_C = None  # a cache, recomputed from B and D on demand
    es._updateBDfromSM(sm)
    es.count_eigen = sm.count_eigen
    es.itereigenupdated = es.countiter
    csa = es.adapt_sigma
    csa.ps = _np(state["ps"])
    csa.delta, csa._ps_updated_iteration = state["csa"]
    best = state["best"]
    es.best.x = None if best["x"] is None else _np(best["x"])
    es.best.f, es.best.evals, es.best.evalsall = best["f"], best["evals"], best["evals"]
    fit = es.fit
    for key, value in state["fit"].items():
        setattr(fit, key, list(value) if isinstance(value, list) else value)
    if es.countiter > 0:
        es.timer = cma.utilities.utils.ElapsedWCTime()  # wall-clock bookkeeping; ask() tics it


# --------------------------------------------------------------------------------- the agent


def _training() -> StageTraining:
    # One generation per "step"; dreams start uniformly from the random-rollout dataset.
    return StageTraining(steps_per_epoch=1, recency_weights=None)


@AGENTS.register("cmaes")
class CMAESAgent(nn.Module):
    """A deterministic controller ``argmax(W [z, h] + b)`` whose parameters are the mean of a
    CMA-ES search distribution; one ``train_in_imagination`` call is one ES generation."""

    @dataclass(frozen=True)
    class Config:
        """Ha & Schmidhuber's controller and CMA-ES settings (CarRacing / DoomTakeCover)."""

        hidden: int = 0
        """0 = the paper's linear controller on [z, h]; > 0 = one tanh hidden layer this wide."""
        population: int = 64
        """Candidates per generation (CMA-ES lambda)."""
        rollouts_per_candidate: int = 16
        """Imagined episodes per candidate; its fitness is their mean return."""
        sigma0: float = 0.1
        """Initial step size of the search distribution (the mean starts at zero)."""
        horizon: int = 1000
        """Imagined steps per rollout (an episode also ends at a predicted end)."""
        weight_decay: float = 0.0
        """L2 penalty: fitness - weight_decay * mean(params**2) is what the ES ranks (0 = off)."""
        training: StageTraining = _training()
        """Only its schedule is used: steps_per_epoch (first_epoch_steps, start_epoch) count
        generations per epoch; the dream draws its start contexts with its recency_weights."""

        @property
        def num_envs(self) -> int:
            """Rows of the one batched dream a generation runs: population x rollouts."""
            return self.population * self.rollouts_per_candidate

    observes: ClassVar[Literal["pixels", "features"]] = "features"
    params: Tensor  # buffer (num_params,), the ES mean

    def __init__(self, config: Config, env_info: EnvInfo, *, seed: int = 0) -> None:
        super().__init__()
        if env_info.feature_dim is None:
            raise ValueError(
                "the cmaes agent observes world features: EnvInfo.feature_dim must be set "
                "(choose a world that exposes features, e.g. --world vae)"
            )
        if config.population < 2 or config.rollouts_per_candidate < 1 or config.hidden < 0:
            raise ValueError(
                f"cmaes needs population >= 2, rollouts_per_candidate >= 1 and hidden >= 0, got "
                f"{config.population}, {config.rollouts_per_candidate}, {config.hidden}"
            )
        self.config = config
        self.num_actions = env_info.num_actions
        self.feature_dim = env_info.feature_dim
        self.num_params = num_params(self.feature_dim, self.num_actions, config.hidden)
        # The policy: the ES mean (a buffer: it is searched, not trained by gradients).
        self.register_buffer("params", torch.zeros(self.num_params))
        # CMA-ES draws its samples from this generator, so checkpoints can hold its state.
        self.generator = torch.Generator().manual_seed(seed)
        self.es = self._new_es()

    def _randn(self, *shape: int) -> np.ndarray:
        return torch.randn(shape, generator=self.generator, dtype=torch.float64).numpy()

    def _new_es(self) -> Any:
        opts = {
            "popsize": self.config.population,
            "randn": self._randn,
            "seed": math.nan,  # the generator above is the ES's only randomness
            "AdaptSigma": CMAAdaptSigmaCSA,  # pycma picks TPA from 300 parameters; CSA is the
            # classic rule of the tutorial and keeps every candidate an i.i.d. sample
            "CMA_diagonal": False,  # full covariance, as in the paper
            "verbose": -9,
            "verb_disp": 0,
            "verb_log": 0,  # no output files
        }
        return cma.CMAEvolutionStrategy(np.zeros(self.num_params), self.config.sigma0, opts)

    # ----------------------------------------------------------------------------- acting

    def initial_state(self, batch_size: int, device: torch.device | str) -> None:
        return None  # the memory is the world's h inside the features

    @torch.no_grad()
    def act(
        self, obs: Tensor, state: Any, first: Tensor, *, greedy: bool = False
    ) -> tuple[Tensor, None]:
        """Features ``(B, D)`` float -> actions ``(B,) int64``: the argmax of the controller with
        the ES's current mean. The mean (pycma's ``xfavorite``, the same vector here: no bounds or
        transformations) is its best estimate of the optimum; the best sample ever seen is a
        single noisy evaluation, biased upwards by selection. Deterministic, so ``greedy`` and
        ``first`` change nothing."""
        if obs.ndim != 2 or obs.shape[1] != self.feature_dim:
            raise ValueError(
                f"cmaes acts on features (B, {self.feature_dim}), got {tuple(obs.shape)}"
            )
        x = obs.to(self.params.device, torch.float32)[None]  # (1, B, D)
        scores = self._scores(x, self.params[None])  # (1, B, A)
        return scores[0].argmax(dim=-1), None

    def _scores(self, x: Tensor, params: Tensor) -> Tensor:
        return controller_scores(x, params, self.num_actions, self.config.hidden)

    # ----------------------------------------------------------------------------- training

    def train_in_imagination(self, dream: Any) -> dict[str, float]:
        """One ES generation in ``dream`` (a ``DreamEnv`` with ``observes="features"``,
        ``num_envs = population * rollouts_per_candidate``, ``horizon = config.horizon``)."""
        return self.generation(lambda candidates: self.fitness_dream(candidates, dream))

    def generation(self, fitness_fn: Callable[[Tensor], Tensor]) -> dict[str, float]:
        """One CMA-ES generation: ask ``population`` candidates ``(N, P)`` float32, score them
        with ``fitness_fn`` (higher is better, ``(N,)``), tell the ES (which minimises
        ``-(fitness - weight_decay * mean(params**2))``) and adopt its new mean.

        ``fitness_fn`` may be ``fitness_dream`` or ``fitness_real`` (training in the real env, as
        the paper did for CarRacing). Logs the unpenalised fitness."""
        solutions = np.asarray(self.es.ask())  # (N, P) float64
        candidates = torch.from_numpy(solutions).float()
        fitness = torch.as_tensor(fitness_fn(candidates)).double().cpu().numpy()  # (N,)
        if fitness.shape != (len(solutions),):
            raise ValueError(
                f"fitness_fn returned shape {fitness.shape}, expected ({len(solutions)},)"
            )
        penalty = self.config.weight_decay * np.mean(solutions**2, axis=1)
        self.es.tell(list(solutions), list(-(fitness - penalty)))
        self.params.copy_(torch.from_numpy(self.es.mean))
        return {
            "fitness_mean": float(fitness.mean()),
            "fitness_best": float(fitness.max()),
            "fitness_std": float(fitness.std()),
            "sigma": float(self.es.sigma),
            "generation": float(self.es.countiter),
        }

    @torch.no_grad()
    def fitness_dream(self, candidates: Tensor, dream: Any) -> Tensor:
        """Mean first-episode return of each candidate ``(N, P)`` over ``rollouts_per_candidate``
        rows of one batched rollout of ``dream`` -> ``(N,)`` float32 on the CPU."""
        n, r = candidates.shape[0], self.config.rollouts_per_candidate
        return self.dream_returns(candidates, dream).view(n, r).mean(dim=1).cpu()

    @torch.no_grad()
    def dream_returns(self, candidates: Tensor, dream: Any) -> Tensor:
        """Return of each row's first episode ``(N * R,)``: ``dream.reset()`` then
        ``config.horizon`` steps (fewer if the dream's own horizon is shorter); row ``i`` plays
        candidate ``i // R``. Rewards after a row's first end or truncation are ignored (the dream
        restarts it at once). Nothing is read back to the host inside the loop."""
        n, r = candidates.shape[0], self.config.rollouts_per_candidate
        if dream.num_envs != n * r:
            raise ValueError(
                f"the dream has {dream.num_envs} rows, cmaes needs population x rollouts = {n * r}"
            )
        device = dream.device
        params = candidates.to(device, torch.float32)  # (N, P)
        obs, _ = dream.reset()  # (B, D)
        ret = torch.zeros(n * r, device=obs.device)
        alive = torch.ones(n * r, dtype=torch.bool, device=obs.device)
        for _ in range(min(self.config.horizon, dream.horizon)):
            x = obs.float().view(n, r, -1)  # (N, R, D)
            action = self._scores(x, params).argmax(dim=-1).flatten()  # (B,)
            obs, rew, end, trunc, _ = dream.step(action)
            ret += torch.where(alive, rew.float(), 0.0)
            alive &= ~(end | trunc)
        return ret

    @torch.no_grad()
    def fitness_real(
        self,
        candidates: Tensor | None,
        env: Any,
        observe: Any,
        episodes_per_candidate: int,
        *,
        seed: int | None = None,
    ) -> Tensor:
        """Mean return of each candidate ``(N, P)`` (``None``: the current mean, ``N = 1``) over
        ``episodes_per_candidate`` complete episodes of a real-env-like vector ``env`` -> ``(N,)``.

        ``env`` follows ``envs/atari.py``: ``num_envs``, ``reset(seed=) -> (obs, info)``,
        ``step(actions) -> (obs, reward, terminated, truncated, info)`` with same-step auto-reset.
        ``observe`` turns its observations into features: a ``worldmodels.agent_input.AgentInput(agent,
        world, device)`` or an object with the same three members, ``reset(num_envs)``,
        ``observe(obs, first) -> (B, D)`` and ``record(actions)``. The ``N * E`` episodes are dealt out to the
        env's rows in order: a row that finishes an episode starts the next unplayed one, and
        rows with nothing left to play run on, ignored, until every episode is done."""
        if candidates is None:
            candidates = self.params[None].float()
        if episodes_per_candidate < 1:
            raise ValueError(f"episodes_per_candidate must be >= 1, got {episodes_per_candidate}")
        n, e, m = candidates.shape[0], episodes_per_candidate, env.num_envs
        device = self.params.device
        params = candidates.to(device, torch.float32)  # (N, P)
        returns = np.zeros(n * e)  # per episode; episode j belongs to candidate j // E
        job = np.arange(m)  # episode each row plays (>= N * E: nothing left)
        next_job = m
        running = np.zeros(m)
        observe.reset(m)
        obs, _ = env.reset(seed=seed)
        first = torch.ones(m, dtype=torch.bool)
        while (job < n * e).any():
            x = observe(obs, first).to(device, torch.float32)  # (M, D)
            who = torch.from_numpy(np.minimum(job, n * e - 1) // e).to(device)  # (M,)
            actions = self._scores(x[:, None], params[who])[:, 0].argmax(dim=-1).cpu()  # (M,)
            observe.record(actions)
            obs, reward, terminated, truncated, _ = env.step(actions)
            running += np.asarray(reward, dtype=np.float64)
            done = torch.as_tensor(terminated | truncated).numpy()
            for i in np.flatnonzero(done):
                if job[i] < n * e:
                    returns[job[i]] = running[i]
                    job[i], next_job = next_job, next_job + 1
                running[i] = 0.0
            first = torch.from_numpy(done.copy())
        return torch.from_numpy(returns.reshape(n, e).mean(axis=1)).float()

    # ----------------------------------------------------------------------------- checkpoints

    def get_extra_state(self) -> dict:
        """The ES (``es_state``) and the generator it samples from: plain data and tensors."""
        return {"es": es_state(self.es), "generator": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"].cpu())  # a map_location may have moved it
        es = self._new_es()
        restore_es(es, state["es"])
        self.es = es
        self.params.copy_(torch.from_numpy(es.mean))
