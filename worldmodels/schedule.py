"""A run's steps and the online schedule that sequences them.

``RunSteps`` holds what every schedule does, each a method on the parts ``build.build_parts``
made: collect real experience, train each world stage, train the agent in imagination, test in
the real game, checkpoint, restore, the final test. ``OnlineSchedule`` (IRIS / DIAMOND) is the
initial collection, then epochs of collect -> train each stage -> train the agent in
imagination, with real test episodes and a checkpoint along the way; it only sequences the steps
(``worldmodels.staged`` holds the staged schedule and ``make_schedule``).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldmodels import contract, distributed
from worldmodels.agent_input import AgentInput
from worldmodels.build import RunParts
from worldmodels.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from worldmodels.collect import CollectStats, TestResult, play_test_episodes
from worldmodels.compare import clip_scores
from worldmodels.config import Config, to_dict
from worldmodels.envs.dream import imagine_step
from worldmodels.errors import UserError
from worldmodels.replay import ReplayStore
from worldmodels.results import keep_previous, results_record, summary_line, write_results
from worldmodels.runs import RunDir
from worldmodels.scores import human_normalized
from worldmodels.seeding import derive_seed, global_rng_state, set_global_rng_state
from worldmodels.tb import Rate, TBLogger, progress
from worldmodels.training import StageTrainer, autocast, check_nonfinite


def _seconds(fn: Callable[[Any], Any], arg: Any) -> float:
    t0 = time.perf_counter()
    fn(arg)
    return time.perf_counter() - t0


def _duration(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 60:.1f} min"


@dataclass
class Counters:
    """Where the run stands; saved in every checkpoint and restored by ``--resume``."""

    epoch: int = 0  # completed epochs
    env_steps: int = 0  # real agent steps taken, summed over the collection envs
    initial_collect_done: bool = False
    replay_episodes: int = 0  # finished episodes in replay when the checkpoint was written
    resumes: int = 0
    phase: int = 0  # staged schedule: index of the phase in progress
    phase_step: int = 0  # staged schedule: steps done inside that phase
    updates: int = 0  # staged schedule: gradient steps / generations so far (TensorBoard x-axis)
    agent_skipped: int = 0  # agent updates skipped for a non-finite loss or gradient norm ...
    agent_skipped_in_a_row: int = 0  # ... and how many of the last ones in a row
    agent_updates: int = 0  # updates in imagination so far (update-to-data ratio)


class RunSteps:
    """The steps a run is made of, each a method (collect, train the world, train the agent in
    imagination, test, checkpoint, restore, final test), on the parts ``build.build_parts``
    made. It owns the counters and the checkpoints; a schedule (``OnlineSchedule``,
    ``worldmodels.staged.StagedSchedule``) only sequences the steps.

    Under ``torchrun`` every rank runs the same steps (``worldmodels.distributed``): rank 0
    collects, tests, logs and writes the checkpoints; after each collection the others take its
    step count and read the episode files it wrote; world stages and agent updates train on
    every rank, data-parallel."""

    def __init__(
        self,
        cfg: Config,
        run: RunDir,
        parts: RunParts,
        *,
        agent: Any,  # an interfaces.Agent (an nn.Module with its .config)
        world: Any,  # an interfaces.World (an nn.Module with its .config), or None
        store: ReplayStore,
        logger: TBLogger,
        device: torch.device,
        versions: dict[str, Any],
        amp: bool = False,
        log: Callable[[str], None] = print,
    ) -> None:
        self.cfg = cfg
        self.run_dir = run
        self.parts = parts
        self.agent = agent
        self.world = world
        self.store = store
        self.logger = logger
        self.device = device
        self.versions = versions
        self.amp = amp
        self.log = log
        self.counters = Counters()
        self.make_env = parts.make_env
        self.train_env = parts.train_env
        self.env_spec = self.train_env.spec() if self.train_env is not None else {}
        self.test_env_spec: dict[str, Any] = {}
        self._real_rates: dict[str, float] | None = None  # of the last real collection
        self.collector = parts.collector
        self.stage_trainers = parts.stage_trainers
        self.dream = parts.dream
        self.video_sampler = parts.video_sampler
        self.graphs = parts.graphs

    # ---------------------------------------------------------------- building blocks

    def collect_agent(self) -> torch.nn.Module:
        """The policy that collects real experience (the agent being trained, unless the
        schedule collects with another: the staged schedule's random policy)."""
        return self.parts.collect_agent

    def _modules(self) -> dict[str, torch.nn.Module]:
        modules = {"agent": self.agent}
        if self.world is not None:
            modules["world"] = self.world
        return modules

    def _log_collect(self, stats: CollectStats, prefix: str = "collect") -> None:
        step = self.counters.env_steps
        fps = stats.steps_per_s
        self.logger.scalars(
            {
                "steps_per_s": fps,
                "frames_per_s": fps * self.cfg.env.frame_skip,
                "episodes": stats.episodes,
                "nonzero_rewards": stats.nonzero_rewards,
            },
            step,
            prefix=f"{prefix}/",
        )
        if stats.steps:  # the real side of the imagined-vs-real curves (train_agent)
            self._real_rates = {
                "reward_per_step": stats.reward_sum / stats.steps, "end_rate": stats.ends / stats.steps
            }  # fmt: skip
        if stats.episode_returns:
            self.logger.scalar(f"{prefix}/episode_return", np.mean(stats.episode_returns), step)
            self.logger.scalar(f"{prefix}/episode_length", np.mean(stats.episode_lengths), step)
        if stats.game_returns:
            self.logger.scalar(f"{prefix}/game_return", np.mean(stats.game_returns), step)
        self.logger.scalars(
            {"episodes": len(self.store), "steps": self.store.num_steps}, step, prefix="replay/"
        )

    def ensure_an_episode(self) -> None:
        """The world's stages and the dream sample from replay, which holds finished episodes
        only: after the initial collection, go on until one has finished (the frame cap,
        ``env.max_episode_frames``, ends every episode at last)."""
        if self.world is None or len(self.store) > 0:
            return
        self.log(
            f"no episode of {self.cfg.env.game} finished in the {self.counters.env_steps} steps "
            "collected so far: collecting on until one does, so that the world has data"
        )
        while len(self.store) == 0:
            self.collect(max(self.cfg.schedule.num_envs, 100))

    def collect(self, steps: int, *, initial: bool = False) -> CollectStats | None:
        """Real steps with the collection policy (rank 0); every rank then holds its episodes."""
        s = self.cfg.schedule
        if self.collector is None:  # a rank other than 0: its episodes come from rank 0
            self._sync_replay()
            return None
        if initial:
            stats = self.collector.collect(
                self.collect_agent(),
                steps,
                min_nonzero_rewards=s.initial_collect_min_rewards,
                max_steps=max(0, s.initial_collect_max_steps - self.counters.env_steps),
                show_progress=self.cfg.run.progress,
                desc="initial collection",
            )
        else:
            stats = self.collector.collect(self.collect_agent(), steps)
        self.counters.env_steps += stats.steps
        self._log_collect(stats)
        self._sync_replay()
        return stats

    def _sync_replay(self) -> None:
        """Under ``torchrun``: rank 0's step count on every rank, and the episode files it wrote
        read into every other rank's store (a ``ReplayStore.follower``)."""
        if not distributed.active():
            return
        steps, count = distributed.broadcast((self.counters.env_steps, len(self.store)))
        self.counters.env_steps = steps
        if not distributed.is_main():
            self.store.follow(count)

    def test(self, episodes: int, *, tag: str = "test", video: bool = False) -> TestResult | None:
        """Real test-mode episodes with the current agent; logs returns, HNS and a video (rank 0;
        None on the others)."""
        if not distributed.is_main():
            return None
        e = self.cfg.eval
        env = self.make_env("test", min(e.num_envs, episodes))
        self.test_env_spec = env.spec()
        try:
            result = play_test_episodes(
                self.agent,
                env,
                episodes,
                seed=derive_seed(self.cfg.run.seed, "test", self.counters.epoch),
                device=self.device,
                epsilon=e.epsilon,
                greedy=e.greedy,
                video_max_frames=e.video_max_frames if (video and e.video) else 0,
                show_progress=self.cfg.run.progress,
                observer=AgentInput(self.agent, self.world, self.device),
            )
        finally:
            env.close()
        step = self.counters.env_steps
        self.logger.scalars(
            {
                "return_mean": result.mean,
                "return_std": float(np.std(result.returns)),
                "episode_length": float(np.mean(result.lengths)),
                "steps_per_s": result.steps / max(result.seconds, 1e-9),
            },
            step,
            prefix=f"{tag}/",
        )
        hns = human_normalized(self.cfg.env.game, result.mean)
        if hns is not None:
            self.logger.scalar(f"{tag}/hns", hns, step)
        if result.video is not None:
            self.logger.video(f"{tag}/episode", result.video, step)
        self.logger.flush()
        return result

    def train_world(self) -> None:
        """Train every stage of the world for this epoch's number of steps."""
        epoch, step = self.counters.epoch + 1, self.counters.env_steps
        for name, trainer in self.stage_trainers.items():
            n = trainer.stage.training.steps_in(epoch)
            if n == 0:
                continue
            rate = Rate()
            logs = trainer.train(n)
            rate.add(n)
            logs["steps_per_s"] = rate.read()
            # gradient steps per real env step so far (Atari 100k papers: ~1 per stage)
            logs["update_to_data"] = trainer.updater.steps / max(step, 1)
            self.logger.scalars(logs, step, prefix=f"{name}/")

    def train_agent(self) -> None:
        """Train the agent in imagination for this epoch's number of updates."""
        if self.dream is None:
            return
        n = self.agent.config.training.steps_in(self.counters.epoch + 1)
        if n == 0:
            return
        broken = [name for name, t in self.stage_trainers.items() if t.updater.skipped_in_a_row]
        if broken:  # the world's outputs are NaN or inf now: nothing to learn from its dreams
            self.log(
                f"epoch {self.counters.epoch + 1}: the agent does not train in imagination, "
                f"the last update of {', '.join(broken)} was not finite"
            )
            return
        logs = self.agent_updates(n)
        self.logger.scalars(logs, self.counters.env_steps, prefix="agent/")
        self.log_imagined_vs_real(logs)

    def log_imagined_vs_real(self, agent_logs: dict[str, float], step: int | None = None) -> None:
        """``imagined_vs_real/``: reward per step and end rate of the agent's imagined
        trajectories beside those of its last real collection, and the agent's updates per real
        env step. Imagined trajectories are cut at the dream's horizon, so per-step rates are the
        comparable numbers (an imagined "return" over 15 steps is not an episode's)."""
        step = self.counters.env_steps if step is None else step
        out = {"agent_update_to_data": self.counters.agent_updates / max(step, 1)}
        imagined = self.dream.take_imagined_stats() if self.dream is not None else None
        if imagined is None and "reward_mean" in agent_logs:  # rolled out inside one capture
            imagined = {"reward_per_step": agent_logs["reward_mean"]}
            if "end_rate" in agent_logs:
                imagined["end_rate"] = agent_logs["end_rate"]
        for k, v in (imagined or {}).items():
            out[f"{k}_imagined"] = v
        for k, v in (self._real_rates or {}).items():
            out[f"{k}_real"] = v
        self.logger.scalars(out, step, prefix="imagined_vs_real/")

    def agent_updates(self, n: int) -> dict[str, float]:
        """``n`` agent updates in the dream; their logs averaged, with the imagined frames/s."""
        frames = Rate()
        logs = []
        c = self.counters
        for _ in range(n):
            logs.append(self.agent.train_in_imagination(self.dream))
            c.agent_updates += 1
            frames.add(self.dream.num_envs * self.dream.horizon)
            if logs[-1].get("nonfinite", 0.0):  # an Updater skipped it (agents that use one)
                c.agent_skipped += 1
                c.agent_skipped_in_a_row += 1
            else:
                c.agent_skipped_in_a_row = 0
            check_nonfinite(
                "agent", c.agent_skipped_in_a_row, self.cfg.schedule.max_nonfinite_in_a_row
            )
        mean = {k: float(np.mean([entry[k] for entry in logs])) for k in logs[0]}
        mean["imagination_frames_per_s"] = frames.read()
        if "nonfinite" in logs[0]:
            mean["skipped_steps"] = float(c.agent_skipped)
        return mean

    @torch.inference_mode()
    def log_imagination(self, num: int = 4, step: int | None = None) -> None:
        """A video grid: real frames (left) beside the world's imagination (right) from the same
        real context under the same recorded actions; and, for worlds with a decoder, real frames
        above their reconstructions."""
        if self.world is None or self.video_sampler is None or not distributed.is_main():
            return
        if len(self.store) == 0:
            return
        step = self.counters.env_steps if step is None else step
        batch = self.video_sampler.sample(num).to(self.device)
        recon = contract.reconstruct(self.world)
        if recon is not None:
            frames = batch.obs[:, 0]
            with autocast(self.device, self.amp):
                pairs = torch.cat((frames, recon(frames)))  # (2N, C, H, W): real row, recon row
            self.logger.images("imagination/reconstructions", pairs.cpu(), step, nrow=num)
        t0 = self.world.context_len
        self.world.eval()
        with autocast(self.device, self.amp):
            state, obs = self.world.imagine_start(
                batch.obs[:, :t0], batch.act[:, :t0], batch.mask[:, :t0]
            )
            imagined = [obs]
            for i, t in enumerate(range(t0 - 1, batch.obs.shape[1] - 1)):
                state, obs, _, _ = imagine_step(self.world, state, batch.act[:, t], i)
                imagined.append(obs)
        real = batch.obs[:, t0 - 1 :]  # (N, H + 1, C, H, W), zeros after an episode ended
        fake = torch.stack(imagined, dim=1)
        pairs = torch.stack((real, fake), dim=1).flatten(0, 1)  # (2N, T, C, H, W): real, imagined
        self.logger.video(
            "imagination/real_vs_imagined", pairs.cpu(), step, nrow=2, titles=("real", "imagined")
        )
        # the clip's PSNR, whole frame and moving pixels, beside copy-last's (docs/evaluation.md)
        scores = clip_scores(real, fake, batch.mask[:, t0 - 1 :])
        self.logger.scalars(scores, step, prefix="imagination/")

    def project_duration(self) -> float:
        """Time one update of every stage and of the agent (on copies: the run is untouched) and
        print the projected duration of the remaining epochs; a warning when it is long."""
        s = self.cfg.schedule
        if distributed.active():  # its twins would train data-parallel on one rank alone
            self.log("the duration is not projected under torchrun (bench/world_speed.py times it)")
            return 0.0
        epochs = range(self.counters.epoch + 1, s.epochs + 1)
        self.log(f"timing one update of each stage on {self.device.type} to project the duration")
        rng = global_rng_state()
        parts = []
        total = 0.0
        for name, trainer in self.stage_trainers.items():
            steps = sum(trainer.stage.training.steps_in(e) for e in epochs)
            if steps:
                stage = copy.deepcopy(trainer.stage)  # its module and loss, not the run's
                twin = StageTrainer(
                    stage, self.store, self.device, seed=0, amp=self.amp,
                    graphs=self.graphs or False,
                )  # fmt: skip
                # the first calls pay one-off kernel selection (and graph capture)
                twin.train(3 if self.graphs else 1)
                sec = _seconds(twin.train, 1)
                total += sec * steps
                parts.append(f"{name} {sec:.2f} s/step x {steps:,}")
        if self.dream is not None:
            steps = sum(self.agent.config.training.steps_in(e) for e in epochs)
            if steps:
                agent, dream = copy.deepcopy((self.agent, self.dream))
                for _ in range(3 if self.graphs else 0):  # eager warm-ups and the capture
                    agent.train_in_imagination(dream)
                sec = _seconds(agent.train_in_imagination, dream)
                total += sec * steps
                parts.append(f"agent {sec:.2f} s/update x {steps:,}")
        set_global_rng_state(rng)
        line = f"projected training time on {self.device.type}: {_duration(total)} ({'; '.join(parts)})"
        if total > 3600:
            line = (
                f"warning: {line}. This preset is sized for a CUDA GPU; "
                "--preset smoke runs the same code path in minutes on a CPU."
            )
        self.log(line)
        return total

    # ---------------------------------------------------------------- checkpoints

    def checkpoint(self, name: str) -> None:
        """Everything a resume needs, under ``name`` (the schedule's: names sort in the order
        checkpoints are written, and pruning keeps the newest). Under ``torchrun`` rank 0 writes
        it, with the other ranks' samplers and RNGs (``ranks``) beside its own."""
        self.counters.replay_episodes = len(self.store)
        # torchrun: every rank must still hold rank 0's weights (one line where one drifted)
        distributed.check_same(self._modules(), f" at checkpoint {name}")
        ranks = distributed.gather(self._rank_state())
        if not distributed.is_main():
            return
        collect_agent = self.collect_agent()
        state = {
            "counters": dataclasses.asdict(self.counters),
            "collector": self.collector.state_dict(),
            # the collection policy when it is not the agent (the staged schedule's random one)
            "collect_agent": None if collect_agent is self.agent else collect_agent.state_dict(),
            "rng": global_rng_state(),
            "stages": {name: t.state_dict() for name, t in self.stage_trainers.items()},
            "dream": None if self.dream is None else self.dream.sampler.state_dict(),
            "video": None if self.video_sampler is None else self.video_sampler.state_dict(),
            "ranks": ranks[1:],  # torchrun: what is each rank's own, for ranks 1, 2, ...
        }
        meta = {
            "agent": self.cfg.agent.name,
            "world": None if self.cfg.world is None else self.cfg.world.name,
            "counters": dataclasses.asdict(self.counters),
            "world_size": len(ranks),
            "config": to_dict(self.cfg),
            # what replay held: a resume checks every one of these files against its sha256
            "episodes": {"count": len(self.store), "sha256": self.store.digests()},
        }
        save_checkpoint(
            self.run_dir.checkpoints,
            name,
            modules=self._modules(),
            state=state,
            meta=meta,
            keep=self.cfg.schedule.keep_checkpoints,
        )
        self.logger.flush()

    def _rank_state(self) -> dict[str, Any]:
        """What differs from rank to rank: the global RNGs and the samplers' streams."""
        return {
            "rng": global_rng_state(),
            "stages": {name: t.sampler.state_dict() for name, t in self.stage_trainers.items()},
            "dream": None if self.dream is None else self.dream.sampler.state_dict(),
        }

    def _check_episodes(self, path: Path, meta: dict[str, Any]) -> None:
        """Replay must hold every episode the checkpoint counted, each file unchanged."""
        recorded = meta.get("episodes") or {}
        count = int(self.counters.replay_episodes)
        if len(self.store) < count:
            missing = [self.store.path_of(i) for i in range(len(self.store), count)]
            names = ", ".join(p.name for p in missing[:3] if p is not None)
            raise UserError(
                f"replay is missing {count - len(self.store)} episode file(s) that checkpoint "
                f"{path} counted ({names}{', ...' if len(missing) > 3 else ''} in "
                f"{self.run_dir.episodes}): restore them from a backup to resume this run"
            )
        digests = self.store.digests()
        for i, expected in enumerate(recorded.get("sha256") or []):
            if i < len(digests) and digests[i] is not None and digests[i] != expected:
                raise UserError(
                    f"replay episode file {self.store.path_of(i)} differs from the one checkpoint "
                    f"{path} recorded (its sha256 changed: flipped bytes or a replaced file): "
                    "restore it from a backup to resume this run"
                )

    def restore(self, collection_left: Callable[[], bool]) -> None:
        """Continue from the newest checkpoint (or from scratch if the run died before the first)
        exactly as if the run had never stopped; ``collection_left()`` says whether the schedule
        will still collect real experience from where the checkpoint stands.

        Weights, optimizers, samplers and every RNG come from the checkpoint; the real games are
        brought back to where they stood by replaying their recorded actions from their seed.
        Episodes that finished after the checkpoint are held back, and each is checked against
        the same episode when the resumed run plays it again (its file is reused: nothing is
        stored or counted twice). Only if the games cannot be replayed (a changed ale-py, say)
        does the run go on from a fresh env seed, keeping those episodes and counting their steps.

        Under ``torchrun`` every rank loads the checkpoint (the weights, and its own samplers and
        RNGs), which must be one of as many ranks; rank 0 alone brings the games back.
        """
        path = latest_checkpoint(self.run_dir.checkpoints)
        saved_collector = None
        main = distributed.is_main()
        if path is not None:
            state, meta = load_checkpoint(path, self._modules(), map_location=self.device)
            saved = 1 + len(state.get("ranks") or [])
            if saved != distributed.world_size():
                raise UserError(
                    f"checkpoint {path} was written by a run of {saved} process(es) and this one "
                    f"has {distributed.world_size()}: resume it with "
                    + ("train.py --resume" if saved == 1 else f"torchrun --nproc-per-node {saved}")
                    + " (the batch of each step is the ranks' together)"
                )
            self.counters = Counters(**state["counters"])
            if main:
                self._check_episodes(path, meta)
            own = state if main else state["ranks"][distributed.rank() - 1]
            set_global_rng_state(own["rng"])
            saved_collector = state["collector"]
            if state.get("collect_agent") is not None:
                self.collect_agent().load_state_dict(state["collect_agent"])
            for name, trainer in self.stage_trainers.items():
                trainer.load_state_dict(state["stages"][name])
                if not main:
                    trainer.sampler.load_state_dict(own["stages"][name])
            if self.dream is not None and own.get("dream") is not None:
                self.dream.sampler.load_state_dict(own["dream"])
            if self.video_sampler is not None and state.get("video") is not None:
                self.video_sampler.load_state_dict(state["video"])
        self.counters.resumes += 1
        if not main:  # rank 0 brings the games back; this rank reads the episodes it keeps
            self._sync_replay()
            return
        held = self.store.hold_back(self.counters.replay_episodes)
        where = path.name if path is not None else "the start (no checkpoint yet)"
        problem = None
        if saved_collector is not None and collection_left():
            steps = int(saved_collector.get("vector_steps", 0))
            if steps >= 10_000:  # a minute or so of emulation: say what the wait is
                self.log(f"replaying the {steps:,} steps of the real games since their seed")
            problem = self.collector.restore(saved_collector, self.collect_agent())
        if problem is not None or (held and not collection_left()):
            # The games cannot come back to the checkpoint (or will not be played again): keep
            # what replay holds, count its steps, and collect on from a seed of this session's
            # own (it differs with the number of resumes and of episodes in replay).
            later = self.store.release_held()
            self.counters.env_steps += sum(len(e) for e in later)
            seed = derive_seed(self.cfg.run.seed, "collect", self.counters.resumes, len(self.store))
            self.collector = self.parts.new_collector(seed)
            if problem is not None:
                self.log(
                    f"warning: the real games could not be brought back to {where} ({problem}); "
                    "collection goes on from a fresh env seed, so this run will differ from an "
                    "uninterrupted one"
                )
            held = 0
        self._sync_replay()
        self.log(
            f"resuming from {where}: epoch {self.counters.epoch}, {self.counters.env_steps} env "
            f"steps, {len(self.store)} episodes in replay"
            + (f" ({held} written after it, checked as they are played again)" if held else "")
        )

    def final_test(self) -> dict[str, Any]:
        """The score of the run: ``eval.episodes`` real test episodes, written to results.json
        (rank 0; the others return an empty record)."""
        result = self.test(self.cfg.eval.episodes, tag="final", video=True)
        if result is None:
            return {}
        record = results_record(
            result,
            game=self.cfg.env.game,
            seed=self.cfg.run.seed,
            agent=self.cfg.agent.name,
            world=None if self.cfg.world is None else self.cfg.world.name,
            env_spec=self.test_env_spec,
            protocol=self.cfg.env.protocol_values(),
            versions=self.versions,
            config=to_dict(self.cfg),
            checkpoint=str(latest_checkpoint(self.run_dir.checkpoints)),
            env_steps=self.counters.env_steps,
        )
        kept = keep_previous(self.run_dir.results)  # a rerun (--resume of a finished run)
        if kept is not None:
            self.log(f"the previous results are kept in {kept}")
        write_results(self.run_dir.results, record)
        self.log(summary_line(record))
        return record

    def close(self) -> None:
        if self.train_env is not None:
            self.train_env.close()
        self.logger.close()


class OnlineSchedule:
    """The online schedule (IRIS, DIAMOND): an initial collection, then epochs of collect ->
    train each stage -> train the agent in imagination, with real tests, videos and a
    checkpoint along the way. It only sequences ``steps`` (a ``RunSteps``, or anything with its
    methods and ``counters``: the tests drive it with a fake)."""

    def __init__(self, steps: RunSteps) -> None:
        self.steps = steps

    def collection_left(self) -> bool:
        """Whether the schedule will still collect real experience from where it stands."""
        s, c = self.steps.cfg.schedule, self.steps.counters
        if not c.initial_collect_done:
            return True
        return (
            c.epoch < s.epochs
            and c.env_steps < s.env_steps_budget
            and s.collect_steps_per_epoch > 0
        )

    def checkpoint_name(self) -> str:
        """Names sort in the order checkpoints are written (pruning keeps the newest)."""
        return f"epoch_{self.steps.counters.epoch:06d}"  # epoch 0: after the initial collection

    def _due(self, every: int) -> bool:
        return every > 0 and self.steps.counters.epoch % every == 0

    def restore(self) -> None:
        self.steps.restore(self.collection_left)

    def run(self) -> dict[str, Any]:
        st, s = self.steps, self.steps.cfg.schedule
        c = st.counters
        if not c.initial_collect_done:
            st.collect(max(0, min(s.initial_collect_steps, s.env_steps_budget) - c.env_steps),
                       initial=True)  # fmt: skip
            st.ensure_an_episode()
            c.initial_collect_done = True
            st.checkpoint(self.checkpoint_name())
        if st.device.type == "cpu" and st.world is not None and c.epoch < s.epochs:
            st.project_duration()
        bar = progress(total=s.epochs, desc="epochs", enabled=st.cfg.run.progress, unit="epoch")
        bar.update(c.epoch)
        while c.epoch < s.epochs:
            budget_left = s.env_steps_budget - c.env_steps
            if budget_left > 0:
                st.collect(min(s.collect_steps_per_epoch, budget_left))
            st.train_world()
            st.train_agent()
            c.epoch += 1
            st.logger.scalar("progress/epoch", c.epoch, c.env_steps)
            video = self._due(s.video_every)
            if video:
                st.log_imagination()
            last = c.epoch == s.epochs
            if self._due(s.test_every) and not last:
                st.test(s.test_episodes, video=video)
            if last or c.epoch % max(s.checkpoint_every, 1) == 0:
                st.checkpoint(self.checkpoint_name())
            bar.update(1)
        bar.close()
        return st.final_test()

    @property
    def env_spec(self) -> dict[str, Any]:
        return self.steps.env_spec

    def close(self) -> None:
        self.steps.close()
