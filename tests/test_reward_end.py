"""DIAMOND's reward/end model: size, shapes, masking of padded transitions, learning, sampling."""

import pytest
import torch

from worldmodels.envs.testing import random_store
from worldmodels.heads.reward_end import RewardEndConfig, RewardEndModel
from worldmodels.interfaces import Batch
from worldmodels.metrics import EVENT_COUNT_KEYS
from worldmodels.nn.blocks import count_parameters
from worldmodels.nn.pixels import to_float
from worldmodels.replay import SegmentSampler
from worldmodels.training import StageTraining, Updater, logs_to_floats

TINY = RewardEndConfig(
    channels=(8, 8), depths=(1, 1), attn_depths=(False, False), cond_channels=16, lstm_dim=32,
    img_size=16,
)  # fmt: skip


def tiny_model(seed=0, num_actions=4):
    torch.manual_seed(seed)
    return RewardEndModel(TINY, num_actions)


def segments(batch_size=8, seq_len=10, pad=0, seed=0, reward_prob=0.3):
    store = random_store(num_episodes=8, length=20, seed=seed, reward_prob=reward_prob)
    sampler = SegmentSampler(store, seq_len, pad_left=pad, pad_right=pad, seed=seed)
    return sampler.sample(batch_size)


def test_default_config_has_diamonds_parameter_count():
    n = count_parameters(RewardEndModel(RewardEndConfig(), num_actions=4))
    print(f"reward/end model: {n:,} parameters (DIAMOND: 5.9 M)")
    assert abs(n - 5.9e6) / 5.9e6 < 0.05


def test_config_rejects_inconsistent_levels():
    with pytest.raises(ValueError, match="one entry per level"):
        RewardEndConfig(channels=(8, 8), depths=(1,), attn_depths=(False, False))
    with pytest.raises(ValueError, match="divisible"):
        RewardEndConfig(channels=(8, 8, 8), depths=(1, 1, 1), attn_depths=(False,) * 3, img_size=6)


def test_forward_shapes_and_state():
    model = tiny_model()
    b, t = 3, 5
    obs = torch.rand(b, t, 3, 16, 16) * 2 - 1
    nxt = torch.rand(b, t, 3, 16, 16) * 2 - 1
    act = torch.randint(0, 4, (b, t))
    rew, end, (h, c) = model(obs, act, nxt)
    assert rew.shape == (b, t, 3) and end.shape == (b, t, 2)
    assert h.shape == c.shape == (b, 32)  # batch-first
    h0, c0 = model.initial_state(b, "cpu")
    assert h0.shape == (b, 32) and not h0.any() and not c0.any()
    # Running the sequence in two halves with the carried state gives the same logits.
    r1, e1, state = model(obs[:, :2], act[:, :2], nxt[:, :2], (h0, c0))
    r2, e2, state2 = model(obs[:, 2:], act[:, 2:], nxt[:, 2:], state)
    torch.testing.assert_close(torch.cat((r1, r2), 1), rew, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.cat((e1, e2), 1), end, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state2[0], h, rtol=1e-4, atol=1e-5)


def test_loss_logs_and_gradients():
    model = tiny_model()
    loss, logs = model.loss(segments())
    logs = logs_to_floats(logs)
    assert set(logs) == {"loss", "loss_reward", "loss_end", "reward_accuracy", "end_accuracy",
                         *EVENT_COUNT_KEYS}  # fmt: skip
    assert all(isinstance(v, float) for v in logs.values())
    assert logs["loss"] == pytest.approx(logs["loss_reward"] + logs["loss_end"], rel=1e-5)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name


def _valid(batch):
    return batch.mask[:, :-1] & batch.mask[:, 1:]


def test_padded_and_final_transitions_do_not_count():
    batch = segments(batch_size=16, seq_len=10, pad=9, seed=1)
    valid = _valid(batch)
    assert valid.any() and (~valid).any() and (~batch.mask).any()
    model = tiny_model()
    with torch.no_grad():
        ref, _ = model.loss(batch)
    # Garbage in every row that is not the source of a real transition: targets, and the frames
    # of padding rows (which the model sees as grey whatever they hold).
    invalid_src = torch.cat((~valid, torch.ones_like(valid[:, :1])), dim=1)  # (B, L)
    pad = ~batch.mask
    g = torch.Generator().manual_seed(0)
    noisy = Batch(
        obs=torch.where(pad[..., None, None, None], torch.randint_like(batch.obs, 256), batch.obs),
        act=batch.act,
        rew=torch.where(invalid_src, torch.randn(batch.rew.shape, generator=g) * 5, batch.rew),
        end=torch.where(invalid_src, torch.rand(batch.end.shape, generator=g) < 0.5, batch.end),
        trunc=batch.trunc,
        mask=batch.mask,
    )
    with torch.no_grad():
        out, _ = model.loss(noisy)
    assert torch.equal(out, ref)
    # ...while flipping the end target of one real transition does change it.
    b, t = valid.nonzero()[0].tolist()
    end = batch.end.clone()
    end[b, t] = ~end[b, t]
    with torch.no_grad():
        changed, _ = model.loss(batch._replace(end=end))
    assert not torch.equal(changed, ref)


def test_loss_falls_on_a_fixed_batch():
    batch = segments(batch_size=8, seq_len=12, pad=2, seed=2)
    # A reward the model can learn in a few steps: its sign follows the action (raw values are
    # sign-clipped by the loss, so -3 is class "-1").
    rew = torch.where(batch.act == 1, 1.0, torch.where(batch.act == 2, -3.0, 0.0))
    batch = batch._replace(rew=rew * batch.mask)
    model = tiny_model(seed=1)
    updater = Updater(model, StageTraining(lr=3e-3, warmup_steps=0), torch.device("cpu"))
    logs = [updater.update(model.loss, batch) for _ in range(30)]
    first, last = logs[0], logs[-1]
    print(f"reward/end loss {first['loss']:.3f} -> {last['loss']:.3f}")
    assert last["loss"] < 0.5 * first["loss"]
    assert last["reward_accuracy"] > 0.95 > first["reward_accuracy"]


def test_burn_in_matches_forward_over_the_context():
    model = tiny_model()
    batch = segments(batch_size=4, seq_len=4, pad=3, seed=3)
    h, c = model.burn_in(batch.obs, batch.act, batch.mask)
    assert h.shape == c.shape == (4, 32)
    x = to_float(batch.obs, batch.mask)
    _, _, (h2, _) = model(x[:, :-1], batch.act[:, :-1], x[:, 1:])
    torch.testing.assert_close(h, h2)
    h1, _ = model.burn_in(batch.obs[:, :1], batch.act[:, :1], batch.mask[:, :1])
    assert not h1.any()  # a single frame holds no transition


def test_predict_samples_reward_signs_and_ends():
    model = tiny_model()
    # Strong, distinct logits so that sampling visits every class.
    with torch.no_grad():
        model.head[-1].weight.normal_(0, 1.0)
    b = 64
    obs = torch.randint(0, 256, (b, 3, 16, 16), dtype=torch.uint8)
    nxt = torch.randint(0, 256, (b, 3, 16, 16), dtype=torch.uint8)
    act = torch.randint(0, 4, (b,))
    state = model.initial_state(b, "cpu")
    torch.manual_seed(0)
    rew, end, (h, c) = model.predict(obs, act, nxt, state)
    assert rew.shape == (b,) and rew.dtype == torch.float32
    assert end.shape == (b,) and end.dtype == torch.bool
    assert set(rew.tolist()) <= {-1.0, 0.0, 1.0}
    assert h.shape == (b, 32)
    torch.manual_seed(0)  # float inputs give the same result, and the global RNG drives sampling
    rew2, end2, _ = model.predict(to_float(obs), act, to_float(nxt), state)
    assert torch.equal(rew, rew2) and torch.equal(end, end2)
    draws = torch.stack([model.predict(obs, act, nxt, state)[0] for _ in range(8)])
    assert len(set(draws.flatten().tolist())) == 3  # sampled, not argmax
