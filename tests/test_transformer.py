"""The GPT block stack and its key/value cache, and IRIS's token world model."""

import pytest
import torch

from worldmodels.dynamics.transformer import (
    TransformerDynamics,
    TransformerDynamicsConfig,
    sample_categorical,
)
from worldmodels.envs.dream import _rows, where_rows
from worldmodels.metrics import EVENT_COUNT_KEYS
from worldmodels.nn.transformer import GPT, GPTConfig
from worldmodels.training import logs_to_floats

K, VOCAB, ACTIONS, FRAMES = 4, 16, 3, 3  # frames of 4 tokens + 1 action, windows of 3 frames


def tiny(dropout=0.0, frames=FRAMES, k=K, **kwargs):
    gpt = GPTConfig(
        num_layers=2, num_heads=2, embed_dim=32, max_tokens=frames * (k + 1), dropout=dropout
    )
    return TransformerDynamicsConfig(
        tokens_per_frame=k, vocab_size=VOCAB, context_frames=frames, gpt=gpt, **kwargs
    )


def tiny_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return TransformerDynamics(tiny(**kwargs), num_actions=ACTIONS).eval()


def advance(model, state, action, steps, **kwargs):
    """``model.step`` after ``steps`` steps since ``start``, refreshing the cache first when the
    host-side schedule says so (what DreamEnv does)."""
    if model.refresh_due(state, steps):
        state = model.refresh(state)
    return model.step(state, action, **kwargs)


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
        # Only the last features (the final block's other outputs are skipped), same cache.
        tol = {"atol": 1e-5, "rtol": 1e-5}
        torch.testing.assert_close(gpt(x, last=3), full[:, -3:], **tol)
        for last in (0, 1, 2):
            cache.reset()
            out = gpt(x[:, :5], cache, last=last)
            assert out.shape == (3, last, 16)
            torch.testing.assert_close(out, full[:, 5 - last : 5], **tol)
            torch.testing.assert_close(gpt(x[:, 5:8], cache, last=2), full[:, 6:8], **tol)
            torch.testing.assert_close(gpt(x[:, 8:], cache), full[:, 8:], **tol)


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
    model = TransformerDynamics(TransformerDynamicsConfig(), num_actions=4)
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
        logs = logs_to_floats(logs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else logs
    assert set(logs) == {
        "loss", "loss_obs", "loss_reward", "loss_end", "obs_accuracy", "reward_accuracy",
        "end_accuracy", *EVENT_COUNT_KEYS,
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
        for step in range(5):
            action = torch.randint(0, ACTIONS, (3,))
            for b in range(3):
                history[b][-1] = (history[b][-1][0], action[b])
            state, new, _, _, logits = advance(model, state, action, step, return_logits=True)
            assert state["actions"].shape == state["valid"].shape == (3, FRAMES - 1)
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
        for step in range(3):  # the window fills and slides
            active, *_ = advance(model, active, torch.tensor([0, 1, 2, 0]), step)
        if model.refresh_due(active, 3):
            active = model.refresh(active)
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
            for step in range(4):
                state, new, reward, end = advance(model, state, torch.tensor([0, 1, 2, 0, 1]), step)
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


# ---------------------------------------------------------------------------------------------
# World model: the cache carried from frame to frame

LONG = 5  # context_frames of the models below: windows of 4 frames, 25 cache slots


class Reference:
    """Each row's frames (real, then imagined; the last action chosen at each step) and the
    logits a plain ``forward`` gives over the frames the row is supposed to see: its last
    ``min(W, n)`` frames (exact), or the suffix tracked here with ``rebuild_keep_frames``."""

    def __init__(self, model, tokens, actions, mask):
        self.model = model
        self.history = [
            [(tokens[b, t], actions[b, t]) for t in range(tokens.shape[1]) if mask[b, t]]
            for b in range(tokens.shape[0])
        ]
        self.seen = [min(model.window, len(h)) for h in self.history]  # frames in the cache

    def restart(self, rows, spare):
        for b in rows.nonzero().flatten().tolist():
            self.history[b], self.seen[b] = list(spare.history[b]), spare.seen[b]

    def check(self, fill, new_fill, action, new, logits):
        """One step from a state of ``fill`` to one of ``new_fill``: ``action (B,)`` taken,
        ``new (B, K)`` drawn from ``logits``."""
        model, k = self.model, self.model.K
        rebuilt = int(new_fill) != int(fill) + k + 1  # else carried (or refreshed first)
        for b in range(len(self.history)):
            h = self.history[b]
            h[-1] = (h[-1][0], action[b])
            if rebuilt:
                self.seen[b] = min(model.rebuild_frames, len(h))
            n = self.seen[b]
            assert 1 <= n <= model.window
            if model.rebuild_frames == model.window:  # exact: the last W frames, always
                assert n == min(model.window, len(h))
            seen = h[-n:] + [(new[b], torch.tensor(0))]
            ref = model(
                torch.stack([f[0] for f in seen])[None], torch.stack([f[1] for f in seen])[None]
            )
            tol = {"atol": 1e-4, "rtol": 1e-4}
            torch.testing.assert_close(logits["obs"][b], ref["obs"][0, n], **tol)
            torch.testing.assert_close(logits["reward"][b], ref["reward"][0, n - 1], **tol)
            torch.testing.assert_close(logits["end"][b], ref["end"][0, n - 1], **tol)
            h.append(seen[-1])
            self.seen[b] = n + 1


def _ragged(b, t, seed, k=K):
    """``b`` contexts of ``t`` columns with 1, 2, .. real frames (left padding), cycling."""
    tokens, actions = frames(b, t, seed=seed)
    tokens = tokens[:, :, :k] if k <= K else tokens.repeat(1, 1, k // K + 1)[:, :, :k]
    real = torch.arange(b) % t + 1  # (B,)
    mask = torch.arange(t)[None] >= t - real[:, None]
    return tokens, actions, mask


def _fills(model, state, steps, seed=0):
    """The fill after each refresh-then-step (host ints, read back for the test)."""
    fills = [int(state["fill"])]
    torch.manual_seed(seed)
    for t in range(steps):
        action = torch.zeros(state["pos"].shape[0], dtype=torch.long)
        state, *_ = advance(model, state, action, t)
        fills.append(int(state["fill"]))
    return fills


@pytest.mark.parametrize("k", [K, 1])
@pytest.mark.parametrize("keep", [0, 1, 2])
@pytest.mark.parametrize("columns", [1, 2, 6])
def test_carried_cache_matches_full_recompute(columns, keep, k):
    """Logits equal a plain forward over the frames each row sees, for rows of 1 .. 4 real
    frames, while the cache is carried (the window filling) and after it is rebuilt (the window
    sliding); with ``rebuild_keep_frames`` over the suffix the docstring describes. Also with
    one token per frame (nothing to encode at a 1-frame start; a rebuild one frame earlier)."""
    model = tiny_model(frames=LONG, rebuild_keep_frames=keep, k=k)
    tokens, actions, mask = _ragged(4, columns, seed=columns, k=k)
    ref = Reference(model, tokens, actions, mask)
    torch.manual_seed(5)
    with torch.no_grad():
        state = model.start(tokens, actions, mask)
        fills = [int(state["fill"])]
        for step in range(9):
            action = torch.randint(0, ACTIONS, (4,))
            fill = int(state["fill"])
            state, new, _, _, logits = advance(model, state, action, step, return_logits=True)
            ref.check(fill, state["fill"], action, new, logits)
            fills.append(int(state["fill"]))
            kept = min(len(h) for h in ref.history)
            assert torch.equal(state["tokens"][:, -1], new) and state["valid"][:, -kept:].all()
    assert all(s["fill"].ndim == 0 for s in (state,))  # a tensor: every fill level, one graph
    steps = [b - a for a, b in zip(fills, fills[1:], strict=False)]
    assert (k + 1) in steps and any(s != k + 1 for s in steps)  # carried and rebuilt
    assert all(len(h) > LONG for h in ref.history)  # every row's window slid


def test_a_one_frame_start_is_rebuilt_only_once_the_window_slides():
    """IRIS's geometry (16 tokens, 20 frames): 19 imagined frames on the carried cache, then a
    rebuild each frame (exact sliding window); with rebuild_keep_frames=10, every 10 frames. The
    host-side schedule (``refresh_due``) names exactly the steps whose frame would not fit."""
    k, n = 16, 20
    for keep, rebuilds in ((0, [19, 20, 21]), (10, [19, 29])):
        torch.manual_seed(0)
        model = TransformerDynamics(tiny(frames=n, k=k, rebuild_keep_frames=keep), ACTIONS).eval()
        tokens = torch.randint(0, VOCAB, (2, 1, k))
        with torch.no_grad():
            start = model.start(tokens, torch.zeros(2, 1, dtype=torch.long))
            fills = _fills(model, start, 30)
        assert fills[0] == k - 1  # all but the current frame's last token (and its action)
        got = [i for i in range(30) if fills[i + 1] != fills[i] + k + 1]
        assert got[: len(rebuilds)] == rebuilds, fills
        if keep:
            assert got == rebuilds
        assert got == [i for i in range(30) if model.refresh_due(start, i)]
        assert max(fills) <= n * (k + 1)


@pytest.mark.parametrize(("keep", "columns"), [(0, 2), (2, 2), (1, 3)])
def test_restarted_rows_continue_like_fresh_starts(keep, columns):
    """DreamEnv's pattern: one start of 2B rows split into active and spare halves (views of
    the same buffers), the active half stepped, finished rows replaced by their spares with
    ``where_rows`` at any step (twice for one row). Every row stays exact (plain forward over
    what it sees), and a restarted row gives the logits of its spare started and stepped alone
    (exact mode: the same frames whatever the rebuild times). With ``rebuild_keep_frames=1``
    a rebuild leaves fewer tokens than the spares hold: the fill must stay above theirs."""
    b = 4
    model = tiny_model(frames=LONG, rebuild_keep_frames=keep)
    tokens, actions, mask = _ragged(2 * b, columns, seed=7)
    with torch.no_grad():
        both = model.start(tokens, actions, mask)
        active, spare = _rows(both, slice(0, b)), _rows(both, slice(b, 2 * b))
        spare_before = {k: v.clone() for k, v in spare.items() if torch.is_tensor(v)}
        ref = Reference(model, tokens[:b], actions[:b], mask[:b])
        ref_spare = Reference(model, tokens[b:], actions[b:], mask[b:])
        restarts = {1: [True, False, True, False], 3: [False, True, False, False],
                    6: [True, False, False, True]}  # fmt: skip
        alone = {}  # step -> the spares started then and stepped by themselves (temperature 0)
        last = {}  # row -> the step it last restarted at
        g = torch.Generator().manual_seed(3)
        for t in range(10):
            fill = int(active["fill"])
            if t in restarts:  # at the end of step t - 1, in DreamEnv
                rows = torch.tensor(restarts[t])
                active = where_rows(rows, spare, active)
                ref.restart(rows, ref_spare)
                last.update((r, t) for r in rows.nonzero().flatten().tolist())
                if keep == 0:
                    alone[t] = (model.start(tokens[b:], actions[b:], mask[b:]), t)
            if model.refresh_due(active, t):  # then the refresh that step t needs
                active = model.refresh(active)
            action = torch.randint(0, ACTIONS, (b,), generator=g)
            active, new, _, _, logits = model.step(
                active, action, temperature=0, return_logits=True
            )
            ref.check(fill, active["fill"], action, new, logits)
            for t0, (alone_state, born) in list(alone.items()):
                alone_state, _, _, _, alone_logits = advance(
                    model, alone_state, action, t - born, temperature=0, return_logits=True
                )
                alone[t0] = (alone_state, born)
                for r in (r for r, t1 in last.items() if t1 == t0):
                    for key in ("obs", "reward", "end"):
                        torch.testing.assert_close(
                            logits[key][r], alone_logits[key][r], atol=1e-4, rtol=1e-4
                        )
        # The spare half of the shared buffers was never written.
        for key, value in spare_before.items():
            assert torch.equal(spare[key], value), key
        assert int(active["fill"]) >= int(both["fill"])


def test_stepping_a_state_twice_or_a_later_spare_is_caught():
    """A device-side assertion (no read-back) catches states whose rows hold tokens at or above
    the fill: a state stepped a second time (its successor's newest tokens live there), or a
    spare from a start with more frames than the running state's fill."""
    model = tiny_model(frames=LONG)
    tokens, actions, mask = _ragged(2, 2, seed=1)
    with torch.no_grad():
        state = model.start(tokens, actions, mask)
        model.step(state, torch.zeros(2, dtype=torch.long))
        with pytest.raises(RuntimeError):
            model.step(state, torch.zeros(2, dtype=torch.long))
        short = model.start(tokens[:, -1:], actions[:, -1:])  # 1 frame: fill 3
        longer = model.start(*frames(2, 3))  # 3 frames: fill 13
        mixed = where_rows(torch.tensor([True, False]), longer, short)
        with pytest.raises(RuntimeError):
            model.step(mixed, torch.zeros(2, dtype=torch.long))


def test_imagination_reads_nothing_back(monkeypatch):
    """No host synchronisation in start, step or refresh, or after ``where_rows``: every way of
    reading a tensor back raises here (the refresh schedule is host arithmetic)."""
    model = tiny_model(frames=LONG)
    tokens, actions, mask = _ragged(4, 2, seed=2)
    with torch.no_grad():
        spare = model.start(tokens, actions, mask)

    def read_back(*args, **kwargs):
        raise AssertionError("host synchronisation")

    import worldmodels.nn.transformer as gpt_module

    monkeypatch.setattr(gpt_module, "CPU_READS_FILLED_SLOTS", False)  # the CPU-only shortcut

    for name in ("item", "tolist", "numpy", "nonzero", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, read_back)
    monkeypatch.setattr(torch, "nonzero", read_back)
    action = torch.zeros(4, dtype=torch.long)
    with torch.inference_mode():
        state = model.start(tokens, actions, mask)
        refreshed = 0
        for t in range(8):  # through carried steps and refreshes
            if t == 2:
                state = where_rows(torch.tensor([True, False, False, True]), spare, state)
            refreshed += model.refresh_due(state, t)
            state, new, reward, end = advance(model, state, action, t)
            assert state["fill"].ndim == 0 and isinstance(state["start_fill"], int)
        assert refreshed
    monkeypatch.undo()
    assert new.shape == (4, K) and reward.shape == end.shape == (4,)


def test_bf16_autocast_imagination_runs():
    """Under autocast the cache holds bf16 keys (as the attention computes them)."""
    model = tiny_model(frames=LONG)
    tokens, actions, mask = _ragged(3, 2, seed=4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        state = model.start(tokens, actions, mask)
        assert state["keys"].dtype == torch.bfloat16
        for t in range(6):
            state, new, reward, end, logits = advance(model, state, torch.ones(3, dtype=torch.long),
                                                      t, return_logits=True)  # fmt: skip
            assert all(torch.isfinite(v).all() for v in logits.values())


def test_rebuild_keep_frames_is_checked():
    with pytest.raises(ValueError, match="rebuild_keep_frames"):
        tiny(frames=LONG, rebuild_keep_frames=LONG)
    assert tiny_model(frames=LONG, rebuild_keep_frames=LONG - 1).rebuild_frames == LONG - 1
    assert tiny_model(frames=LONG).rebuild_frames == LONG - 1


def test_slots_a_row_does_not_own_are_finite(monkeypatch):
    """A restarted row reads (masked out) the slots between its spare's tokens and the fill:
    they must not hold NaN (0 * NaN in the attention), whatever a new buffer holds."""
    from worldmodels.nn.transformer import KVCache

    empty = KVCache.empty.__func__

    def nan_filled(cls, *args, **kwargs):
        cache = empty(cls, *args, **kwargs)
        cache.k.fill_(float("nan"))
        cache.v.fill_(float("nan"))
        return cache

    monkeypatch.setattr(KVCache, "empty", classmethod(nan_filled))
    model = tiny_model(frames=LONG)
    tokens, actions, mask = _ragged(4, 1, seed=5)
    with torch.no_grad():
        spare = model.start(tokens, actions, mask)
        state = model.start(tokens, actions, mask)
        state, *_ = model.step(state, torch.zeros(4, dtype=torch.long))
        state = where_rows(torch.tensor([True, False, True, False]), spare, state)
        for t in range(1, 7):  # carried, then refreshed
            state, *_, logits = advance(model, state, torch.ones(4, dtype=torch.long), t,
                                        return_logits=True)  # fmt: skip
            assert all(torch.isfinite(v).all() for v in logits.values())
