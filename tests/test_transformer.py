"""The GPT block stack and its key/value cache, and IRIS's token world model."""

import pytest
import torch

from envs.dream import where_rows
from worldmodels.dynamics.transformer import (
    TransformerDynamics,
    TransformerDynamicsConfig,
    sample_categorical,
)
from worldmodels.nn.transformer import GPT, GPTConfig
from worldmodels.registry import DYNAMICS

K, VOCAB, ACTIONS, FRAMES = 4, 16, 3, 3  # frames of 4 tokens + 1 action, windows of 3 frames


def tiny(dropout=0.0):
    gpt = GPTConfig(
        num_layers=2, num_heads=2, embed_dim=32, max_tokens=FRAMES * (K + 1), dropout=dropout
    )
    return TransformerDynamicsConfig(
        tokens_per_frame=K, vocab_size=VOCAB, context_frames=FRAMES, gpt=gpt
    )


def tiny_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return TransformerDynamics(tiny(**kwargs), num_actions=ACTIONS).eval()


def frames(b, t, seed=1):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (b, t, K), generator=g)
    actions = torch.randint(0, ACTIONS, (b, t), generator=g)
    return tokens, actions


# ---------------------------------------------------------------------------------------------
# GPT


def test_gpt_cache_matches_full_forward_for_chunks():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(num_layers=2, num_heads=2, embed_dim=16, max_tokens=12)).eval()
    x = torch.randn(3, 12, 16)
    with torch.no_grad():
        full = gpt(x)
        cache = gpt.empty_cache(3, "cpu")
        parts, start = [], 0
        for size in (5, 1, 4, 2):  # chunks after an empty cache, one token, several tokens
            parts.append(gpt(x[:, start : start + size], cache))
            start += size
            assert cache.size == start
        torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="exceed"):
            gpt(x[:, :1], cache)
        cache.reset()
        torch.testing.assert_close(gpt(x[:, :7], cache), full[:, :7], atol=1e-5, rtol=1e-5)


def test_gpt_padding_tokens_are_invisible():
    """Padding (valid False) changes nothing for the other tokens: they match a run without it,
    in one call and through a cache fed in chunks."""
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(num_layers=2, num_heads=2, embed_dim=16, max_tokens=12)).eval()
    x = torch.randn(2, 10, 16)
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[0, :3] = False  # left padding
    valid[0, 6] = False  # and a hole
    keep = valid[0].nonzero().squeeze(1)
    with torch.no_grad():
        alone = gpt(x[:1, keep])  # row 0 without its padding
        out = gpt(x, valid=valid)
        torch.testing.assert_close(out[0, keep], alone[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[1], gpt(x[1:])[0], atol=1e-5, rtol=1e-5)
        assert torch.isfinite(out).all()
        cache = gpt.empty_cache(2, "cpu")
        chunks = [gpt(x[:, :4], cache, valid=valid[:, :4]), gpt(x[:, 4:7], cache, valid[:, 4:7])]
        chunks += [gpt(x[:, i : i + 1], cache) for i in range(7, 10)]  # valid by default
        torch.testing.assert_close(torch.cat(chunks, 1)[0, keep], alone[0], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# World model: teacher-forced predictions and loss


def test_default_config_has_iris_parameter_count():
    model = DYNAMICS.get("transformer")(TransformerDynamicsConfig(), num_actions=4)
    n = sum(p.numel() for p in model.parameters())
    print(f"IRIS world model, 4 actions: {n:,} parameters")
    assert abs(n - 8.4e6) / 8.4e6 < 0.05


def test_max_tokens_follow_the_context():
    cfg = TransformerDynamicsConfig(tokens_per_frame=4, context_frames=3)  # gpt says 340
    model = TransformerDynamics(cfg, num_actions=3)
    assert cfg.max_tokens == 15 and model.cfg.gpt.max_tokens == 15
    assert model.pos_embed.num_embeddings == 15


def test_predictions_are_causal():
    model = tiny_model()
    tokens, actions = frames(2, 3)
    with torch.no_grad():
        out = model(tokens, actions)
        assert out["obs"].shape == (2, 3, K, VOCAB)
        assert out["reward"].shape == (2, 3, 3) and out["end"].shape == (2, 3, 2)
        assert torch.equal(out["obs"][:, 0, 0], torch.zeros(2, VOCAB))  # no context
        t, k = 1, 2
        changed = tokens.clone()
        changed[:, t, k] = (changed[:, t, k] + 1) % VOCAB
        alt = model(changed, actions)
        # obs[:, t, k] predicts tokens[:, t, k]: only later predictions may see the change.
        torch.testing.assert_close(alt["obs"][:, :t], out["obs"][:, :t], atol=0, rtol=0)
        torch.testing.assert_close(alt["obs"][:, t, : k + 1], out["obs"][:, t, : k + 1])
        torch.testing.assert_close(alt["reward"][:, :t], out["reward"][:, :t], atol=0, rtol=0)
        assert not torch.allclose(alt["obs"][:, t, k + 1], out["obs"][:, t, k + 1])
        assert not torch.allclose(alt["reward"][:, t], out["reward"][:, t])

        changed = actions.clone()
        changed[:, t] = (changed[:, t] + 1) % ACTIONS
        alt = model(tokens, changed)
        torch.testing.assert_close(alt["obs"][:, : t + 1], out["obs"][:, : t + 1])
        torch.testing.assert_close(alt["end"][:, :t], out["end"][:, :t])
        assert not torch.allclose(alt["end"][:, t], out["end"][:, t])
        assert not torch.allclose(alt["obs"][:, t + 1, 0], out["obs"][:, t + 1, 0])


def _segment(b=4, t=3):
    tokens, actions = frames(b, t, seed=2)
    g = torch.Generator().manual_seed(3)
    rew = torch.randint(-2, 3, (b, t), generator=g).float()
    end = torch.rand(b, t, generator=g) < 0.3
    mask = torch.ones(b, t, dtype=torch.bool)
    return tokens, actions, rew, end, mask


def test_loss_falls_on_fixed_tokens():
    model = tiny_model().train()
    batch = _segment()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(100):
        loss, logs = model.loss(*batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else logs
    assert set(logs) == {
        "loss", "loss_obs", "loss_reward", "loss_end", "obs_accuracy", "reward_accuracy",
        "end_accuracy",
    }  # fmt: skip
    assert all(isinstance(v, float) for v in logs.values())
    assert logs["loss"] < 0.3 * first["loss"], (first, logs)
    assert logs["obs_accuracy"] > 0.9


def test_masked_targets_do_not_count():
    model = tiny_model()
    tokens, actions, rew, end, mask = _segment()
    mask[0, 2:] = False  # row 0: frame 2 is padding after the episode
    mask[1, 1:] = False  # row 1: only frame 0 is real
    mask[2, 0] = False  # row 2: the episode starts at frame 1
    with torch.no_grad():
        base, _ = model.loss(tokens, actions, rew, end, mask)
        # Padding frames' tokens and actions, and rewards/ends of transitions into padding.
        tokens2, actions2, rew2, end2 = tokens.clone(), actions.clone(), rew.clone(), end.clone()
        tokens2[0, 2] = (tokens2[0, 2] + 1) % VOCAB
        tokens2[1, 1:] = (tokens2[1, 1:] + 1) % VOCAB
        tokens2[2, 0] = (tokens2[2, 0] + 1) % VOCAB
        actions2[2, 0] = (actions2[2, 0] + 1) % ACTIONS
        rew2[2, 0], end2[2, 0] = -rew2[2, 0] + 1, ~end2[2, 0]
        rew2[0, 1:], end2[0, 1:] = -rew2[0, 1:] + 1, ~end2[0, 1:]
        rew2[1], end2[1] = -rew2[1] + 1, ~end2[1]
        rew2[:, -1], end2[:, -1] = 7.0, ~end2[:, -1]  # the last row has no next row
        torch.testing.assert_close(model.loss(tokens2, actions2, rew2, end2, mask)[0], base)
        # ... while a real target counts (so the comparison above can fail).
        tokens2[0, 1, 3] = (tokens2[0, 1, 3] + 1) % VOCAB
        assert not torch.allclose(model.loss(tokens2, actions2, rew2, end2, mask)[0], base)
        rew3 = rew.clone()
        rew3[3, 0] = -rew3[3, 0] + 1 if rew3[3, 0] <= 0 else -1.0
        assert not torch.allclose(model.loss(tokens, actions, rew3, end, mask)[0], base)


# ---------------------------------------------------------------------------------------------
# World model: imagination


def _contexts():
    """Three rows with 1, 2 and 4 real frames (more than the window keeps), left-padded."""
    tokens, actions = frames(3, FRAMES + 1)
    mask = torch.ones(3, FRAMES + 1, dtype=torch.bool)
    mask[0, :-1] = False
    mask[1, :-2] = False
    return tokens, actions, mask


def test_cached_imagination_matches_full_recompute():
    """Every logit the cached calls draw from equals a plain forward over the frames the window
    is supposed to hold, for rows at different fill levels, before and after the window slides."""
    model = tiny_model()
    tokens, actions, mask = _contexts()
    # Each row's real frames so far: (tokens (K,), action) pairs, the last action not chosen yet.
    history = [[(tokens[b, t], actions[b, t]) for t in range(FRAMES + 1) if mask[b, t]]
               for b in range(3)]  # fmt: skip
    torch.manual_seed(5)
    with torch.no_grad():
        state = model.start(tokens, actions, mask)
        for _ in range(5):
            action = torch.randint(0, ACTIONS, (3,))
            for b in range(3):
                history[b][-1] = (history[b][-1][0], action[b])
            state, new, _, _, logits = model.step(state, action, return_logits=True)
            assert all(v.shape[:2] == (3, FRAMES - 1) for k, v in state.items() if k != "tokens")
            for b in range(3):
                history[b].append((new[b], torch.tensor(0)))
                seen = history[b][-FRAMES:]  # what the model saw: at most context_frames frames
                ref_tokens = torch.stack([f[0] for f in seen])[None]  # (1, n, K)
                ref_actions = torch.stack([f[1] for f in seen])[None]  # (1, n)
                ref = model(ref_tokens, ref_actions)
                n = len(seen)
                tol = {"atol": 1e-4, "rtol": 1e-4}
                torch.testing.assert_close(logits["obs"][b], ref["obs"][0, n - 1], **tol)
                torch.testing.assert_close(logits["reward"][b], ref["reward"][0, n - 2], **tol)
                torch.testing.assert_close(logits["end"][b], ref["end"][0, n - 2], **tol)
                # The state keeps the last context_frames - 1 real frames, right-aligned.
                kept = min(len(history[b]), FRAMES - 1)
                assert state["valid"][b].sum() == kept and state["valid"][b, -kept:].all()
                assert torch.equal(state["tokens"][b, -kept:], ref_tokens[0, -kept:])
                assert torch.equal(state["actions"][b, -kept:-1], ref_actions[0, -kept:-1])
    assert all(len(h) > FRAMES for h in history)  # every row's window slid


def test_padding_frames_are_left_out_of_the_sequence():
    model = tiny_model()
    tokens, actions = frames(2, 3)
    mask = torch.tensor([[False, True, True], [True, True, True]])
    with torch.no_grad():
        padded = model(tokens, actions, mask)
        alone = model(tokens[:1, 1:], actions[:1, 1:])  # row 0 without its padding frame
        torch.testing.assert_close(padded["obs"][0, 1:, 1:], alone["obs"][0, :, 1:])
        torch.testing.assert_close(padded["obs"][0, 2], alone["obs"][0, 1])
        torch.testing.assert_close(padded["reward"][0, 1:], alone["reward"][0])
        torch.testing.assert_close(padded["obs"][1], model(tokens[1:], actions[1:])["obs"][0])


def test_rows_at_different_fill_levels_can_be_swapped():
    """DreamEnv restarts finished rows from spares started earlier, with ``torch.where`` over the
    state's entries: a row must then continue exactly as its own trajectory would."""
    model = tiny_model()
    with torch.no_grad():
        spare = model.start(*frames(4, 1, seed=1))  # one real frame
        active = model.start(*frames(4, 2, seed=2))
        for _ in range(3):  # the window fills and slides
            active, *_ = model.step(active, torch.tensor([0, 1, 2, 0]))
        rows = torch.tensor([True, False, False, True])
        mixed = where_rows(rows, spare, active)
        action = torch.tensor([2, 2, 1, 0])
        *_, got = model.step(mixed, action, return_logits=True)
        *_, ref_spare = model.step(spare, action, return_logits=True)
        *_, ref_active = model.step(active, action, return_logits=True)
        for key in ("reward", "end"):
            expected = torch.where(rows[:, None], ref_spare[key], ref_active[key])
            torch.testing.assert_close(got[key], expected)
        expected = torch.where(rows[:, None], ref_spare["obs"][:, 0], ref_active["obs"][:, 0])
        torch.testing.assert_close(got["obs"][:, 0], expected)


def test_step_shapes_dtypes_and_seeded_determinism():
    model = tiny_model()
    tokens, actions = frames(5, 2)

    def rollout(seed):
        torch.manual_seed(seed)
        with torch.no_grad():
            state = model.start(tokens, actions)
            outs = []
            for _ in range(4):
                state, new, reward, end = model.step(state, torch.tensor([0, 1, 2, 0, 1]))
                assert new.shape == (5, K) and new.dtype == torch.int64
                assert int(new.min()) >= 0 and int(new.max()) < VOCAB
                assert reward.shape == (5,) and reward.dtype == torch.float32
                assert set(reward.tolist()) <= {-1.0, 0.0, 1.0}
                assert end.shape == (5,) and end.dtype == torch.bool
                assert state["tokens"].shape == (5, FRAMES - 1, K)
                assert state["actions"].shape == state["valid"].shape == (5, FRAMES - 1)
                outs += [new, reward, end]
        return outs

    a, b, c = rollout(7), rollout(7), rollout(8)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_sample_categorical_follows_the_distribution():
    torch.manual_seed(0)
    logits = torch.tensor([0.0, 1.0, 2.0]).log_softmax(0).expand(20000, 3)
    counts = torch.bincount(sample_categorical(logits), minlength=3).float() / 20000
    torch.testing.assert_close(counts, logits[0].exp(), atol=0.02, rtol=0)
    assert torch.equal(sample_categorical(logits, temperature=0), torch.full((20000,), 2))
