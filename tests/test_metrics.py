"""Rare-event metrics: counts against hand-counted cases, expectations against sampling, rates as
ratios of sums, and every world's reward / end stage logging them (and predicting teacher-forced
probabilities) on real segments."""

import pytest
import torch

from worldmodels.envs.testing import random_store
from worldmodels.interfaces import EnvInfo
from worldmodels.metrics import (
    add_event_rates,
    detection_scores,
    event_counts,
    expected_event_counts,
)
from worldmodels.registry import WORLDS
from worldmodels.replay import SegmentSampler
from worldmodels.training import StageTrainer


def test_event_counts_match_a_hand_count():
    valid = torch.tensor([True, True, True, True, True, False])
    pred_rew = torch.tensor([1.0, -1.0, 0.0, 1.0, 0.0, 1.0])
    real_rew = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 1.0])  # 6th row: padding, never counted
    pred_end = torch.tensor([True, False, True, False, False, True])
    real_end = torch.tensor([True, True, False, False, False, True])
    c = {
        k: float(v) for k, v in event_counts(valid, pred_rew, real_rew, pred_end, real_end).items()
    }
    # a -1 predicted where the real reward is +1 is a predicted event and a miss, not a hit
    assert c == {"transitions": 5, "reward_hits": 1, "reward_predicted": 3, "reward_real": 3,
                 "end_hits": 1, "end_predicted": 2, "end_real": 2}  # fmt: skip
    s = detection_scores(1, 3, 3, 5)
    assert s["precision"] == pytest.approx(1 / 3) and s["recall"] == pytest.approx(1 / 3)
    assert s["f1"] == pytest.approx(1 / 3) and s["base_rate"] == pytest.approx(0.6)
    none = detection_scores(0, 0, 0, 5)
    assert none["precision"] is None and none["recall"] is None and none["f1"] is None


def test_rates_are_ratios_of_summed_counts_not_means_of_ratios():
    # batch 1: 1 real end, found; batch 2: 9 real ends, 0 found -> recall 1 / 10 (not 0.5)
    logs = [
        {"transitions": 10.0, "end_hits": 1.0, "end_predicted": 1.0, "end_real": 1.0, "loss": 2.0},
        {"transitions": 10.0, "end_hits": 0.0, "end_predicted": 0.0, "end_real": 9.0, "loss": 4.0},
    ]
    mean = {k: (logs[0][k] + logs[1][k]) / 2 for k in logs[0]}
    out = add_event_rates(mean)
    assert out["end_recall"] == pytest.approx(0.1) and out["end_precision"] == 1.0
    assert out["end_base_rate"] == pytest.approx(0.5) and out["loss"] == 3.0
    assert not {"end_hits", "transitions"} & out.keys()  # counts are replaced by rates
    quiet = add_event_rates({"transitions": 4.0, "end_hits": 0.0, "end_predicted": 0.0,
                             "end_real": 0.0})  # fmt: skip
    assert "end_precision" not in quiet and "end_recall" not in quiet  # no NaN curves


def test_expected_counts_are_the_mean_of_sampled_counts():
    g = torch.Generator().manual_seed(0)
    n = 64
    probs = torch.softmax(torch.randn(n, 3, generator=g), -1)
    end_p = torch.rand(n, generator=g)
    real_rew = torch.randint(-1, 2, (n,), generator=g).float()
    real_end = torch.rand(n, generator=g) < 0.3
    valid = torch.rand(n, generator=g) < 0.9
    exp = expected_event_counts(valid, probs, real_rew, end_p, real_end)
    draws = 4000
    rew = torch.multinomial(probs, draws, replacement=True, generator=g).T.float() - 1  # (D, n)
    end = torch.rand(draws, n, generator=g) < end_p
    sums = {k: 0.0 for k in exp}
    for i in range(draws):
        for k, v in event_counts(valid, rew[i], real_rew, end[i], real_end).items():
            sums[k] += float(v)
    for k, v in exp.items():
        assert sums[k] / draws == pytest.approx(float(v), rel=0.02, abs=0.05), k


def _tiny_world(name):
    from worldmodels import config as C
    from worldmodels.build import build_world

    env = EnvInfo(num_actions=4, obs_shape=(3, 64, 64))
    cfg = C.resolve(env="Breakout", world=name, preset="smoke")
    return build_world(cfg.world, env, device=torch.device("cpu"), channels_last=False)


EVENT_STAGE = {"diffusion": "reward_end", "iris": "transformer", "vae": "mdn_rnn"}


@pytest.mark.parametrize("name", WORLDS.names())
def test_every_world_logs_rare_event_rates_and_predicts_them_teacher_forced(name):
    if name not in EVENT_STAGE:
        pytest.skip(f"{name}: not a world of this repository (no known reward / end stage)")
    torch.manual_seed(0)
    world = _tiny_world(name)
    store = random_store(num_episodes=4, length=24, obs_shape=(3, 64, 64), reward_prob=0.3)
    stage = world.stages()[EVENT_STAGE[name]]
    t = stage.training
    batch = SegmentSampler(store, t.seq_len, pad_left=t.pad_left, pad_right=t.pad_right).sample(3)
    _, logs = stage.loss_of(batch)
    real = batch.mask[:, :-1] & batch.mask[:, 1:]  # the real transitions t -> t + 1
    assert float(logs["transitions"]) == float(real.sum())
    assert float(logs["reward_real"]) == float((batch.rew[:, :-1].ne(0) & real).sum())
    assert 0 <= float(logs["reward_hits"]) <= min(float(logs["reward_real"]),
                                                  float(logs["reward_predicted"]))  # fmt: skip
    trainer = StageTrainer(stage, store, torch.device("cpu"), seed=0)
    out = trainer.train(2)
    assert "reward_base_rate" in out and "reward_recall" in out, sorted(out)
    assert not {"reward_hits", "transitions"} & out.keys()

    world.eval()
    seg = next(iter(store))  # one real episode, all real rows
    obs, act = torch.tensor(seg.obs[None, :12]), torch.tensor(seg.act[None, :12])
    mask = torch.ones(1, 12, dtype=torch.bool)
    rew_p, end_p = world.reward_end_probs(obs, act, mask)
    if rew_p is not None:
        assert rew_p.shape == (1, 11, 3)
        torch.testing.assert_close(rew_p.sum(-1), torch.ones(1, 11))
    if end_p is not None:
        assert end_p.shape == (1, 11) and bool(((end_p >= 0) & (end_p <= 1)).all())
    assert rew_p is not None or end_p is not None
