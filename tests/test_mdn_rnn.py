"""The World Models MDN-RNN: the mixture NLL against a slow reference, training, temperature,
dream steps and masking."""

import math

import pytest
import torch

from worldmodels.dynamics.mdn_rnn import MDNRNN, MDNRNNConfig, mixture_nll, sample_mixture
from worldmodels.metrics import EVENT_COUNT_KEYS
from worldmodels.training import logs_to_floats

SMALL = MDNRNNConfig(z_dim=4, hidden=32, mixtures=3)


def _log_normal(x, mu, log_sigma):
    return -0.5 * ((x - mu) / math.exp(log_sigma)) ** 2 - log_sigma - 0.5 * math.log(2 * math.pi)


def _logsumexp(values):
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _reference_nll(log_pi, mu, log_sigma, target, *, joint=False, log_space=False):
    """Slow float64 reference, one element at a time. ``log_space=False`` sums explicit normal pdfs
    (fine for moderate values); ``log_space=True`` uses a hand-written logsumexp (for extremes)."""
    lead = target.shape[:-1]
    m, z = mu.shape[-2:]
    out = torch.empty(lead, dtype=torch.float64)
    for idx in torch.cartesian_prod(*(torch.arange(n) for n in lead)).view(-1, len(lead)).tolist():
        idx = tuple(idx)
        lp, mean, ls, x = (
            log_pi[idx].tolist(),
            mu[idx].tolist(),
            log_sigma[idx].tolist(),
            target[idx].tolist(),
        )
        if joint:
            norm = _logsumexp(lp)
            terms = [
                lp[k] - norm + sum(_log_normal(x[d], mean[k][d], ls[k][d]) for d in range(z))
                for k in range(m)
            ]
            total = -_logsumexp(terms) if log_space else -math.log(sum(math.exp(t) for t in terms))
        else:
            total = 0.0
            for d in range(z):
                norm = _logsumexp([lp[k][d] for k in range(m)])
                w = [lp[k][d] - norm for k in range(m)]
                if log_space:
                    total -= _logsumexp(
                        [w[k] + _log_normal(x[d], mean[k][d], ls[k][d]) for k in range(m)]
                    )
                else:
                    pdf = [
                        math.exp(-0.5 * ((x[d] - mean[k][d]) / math.exp(ls[k][d])) ** 2)
                        / (math.exp(ls[k][d]) * math.sqrt(2 * math.pi))
                        for k in range(m)
                    ]
                    total -= math.log(sum(math.exp(w[k]) * pdf[k] for k in range(m)))
        out[idx] = total
    return out


@pytest.mark.parametrize("joint", [False, True], ids=["per_dimension", "joint"])
def test_mixture_nll_matches_a_slow_reference(joint):
    g = torch.Generator().manual_seed(0)
    b, t, m, z = 2, 3, 4, 5
    mu = torch.randn(b, t, m, z, generator=g)
    log_sigma = 0.5 * torch.randn(b, t, m, z, generator=g)
    log_pi = torch.randn(b, t, m, *(() if joint else (z,)), generator=g)  # raw logits
    target = torch.randn(b, t, z, generator=g)
    got = mixture_nll(log_pi, mu, log_sigma, target)
    assert got.shape == (b, t)
    ref = _reference_nll(log_pi, mu, log_sigma, target, joint=joint)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("joint", [False, True], ids=["per_dimension", "joint"])
def test_mixture_nll_is_stable_at_extreme_scales_and_weights(joint):
    g = torch.Generator().manual_seed(1)
    m, z = 3, 4
    mu = torch.randn(6, m, z, generator=g)
    target = mu[:, 0] + torch.randn(6, z, generator=g)  # near one component, far from its sigma
    log_sigma = torch.tensor([-20.0, 0.0, 20.0]).view(1, m, 1).expand(6, m, z).clone()
    log_sigma[::2] = torch.tensor([-20.0, -15.0, -18.0]).view(m, 1)  # every component very sharp
    shape = (6, m) if joint else (6, m, z)
    log_pi = torch.zeros(shape)
    log_pi[1::2] = -80.0 * torch.arange(m, dtype=torch.float32).view(m, *(() if joint else (1,)))
    log_pi.requires_grad_(True)
    log_sigma.requires_grad_(True)
    got = mixture_nll(log_pi, mu, log_sigma, target)
    assert torch.isfinite(got).all(), got
    ref = _reference_nll(
        log_pi.detach(), mu, log_sigma.detach(), target, joint=joint, log_space=True
    )
    torch.testing.assert_close(got.detach().double(), ref, rtol=1e-4, atol=1e-3)
    got.sum().backward()
    assert torch.isfinite(log_pi.grad).all() and torch.isfinite(log_sigma.grad).all()


def test_the_papers_parameter_count():
    model = MDNRNN(MDNRNNConfig(), num_actions=4)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"MDN-RNN default (hidden 256, 5 mixtures, 4 actions) parameters: {n_params:,}")
    # LSTM (32 + 4 -> 256): 4 * 256 * (36 + 256 + 2); head 256 -> 3 * 5 * 32 + 3 + 2.
    assert n_params == 4 * 256 * (36 + 256 + 2) + (256 + 1) * (3 * 5 * 32 + 5)


def test_forward_shapes_and_state_carry_over():
    torch.manual_seed(0)
    model = MDNRNN(SMALL, num_actions=3)
    z, a = torch.randn(2, 6, 4), torch.randint(0, 3, (2, 6))
    out, (h, c) = model(z, a)
    assert out["log_pi"].shape == out["mu"].shape == out["log_sigma"].shape == (2, 6, 3, 4)
    assert out["reward_logits"].shape == (2, 6, 3) and out["end_logits"].shape == (2, 6, 2)
    assert out["h_seq"].shape == (2, 6, 32) and h.shape == c.shape == (2, 32)
    torch.testing.assert_close(out["log_pi"].exp().sum(-2), torch.ones(2, 6, 4))
    torch.testing.assert_close(out["h_seq"][:, -1], h)
    # Running in two halves with the state handed over gives the same outputs.
    first, state = model(z[:, :4], a[:, :4], model.initial_state(2, "cpu"))
    second, _ = model(z[:, 4:], a[:, 4:], state)
    for key in out:
        torch.testing.assert_close(torch.cat((first[key], second[key]), 1), out[key])


def _sequences(b=8, t=16, z_dim=4, num_actions=3, seed=0):
    """Latent sequences with learnable dynamics: z_{t+1} = 0.8 z_t + a shift set by the action;
    reward sign = sign of the first latent; the episode ends at the last transition."""
    g = torch.Generator().manual_seed(seed)
    shifts = torch.randn(num_actions, z_dim, generator=g)
    a = torch.randint(0, num_actions, (b, t), generator=g)
    z = torch.empty(b, t, z_dim)
    z[:, 0] = torch.randn(b, z_dim, generator=g)
    for i in range(1, t):
        z[:, i] = 0.8 * z[:, i - 1] + shifts[a[:, i - 1]]
    rew = z[:, :, 0].sign() * (z[:, :, 0].abs() > 0.3)
    end = torch.zeros(b, t, dtype=torch.bool)
    end[:, -2] = True
    return z, a, rew, end, torch.ones(b, t, dtype=torch.bool)


def test_loss_falls_on_fixed_latent_sequences():
    torch.manual_seed(0)
    model = MDNRNN(SMALL, num_actions=3)
    data = _sequences()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    logs = []
    for _ in range(100):
        loss, log = model.loss(*data)
        log = logs_to_floats(log)
        opt.zero_grad()
        loss.backward()
        opt.step()
        logs.append(log)
    assert set(logs[0]) == {"loss", "nll", "loss_reward", "loss_end", *EVENT_COUNT_KEYS}
    assert all(isinstance(v, float) for v in logs[0].values())
    print({k: (round(logs[0][k], 3), round(logs[-1][k], 3)) for k in logs[0]})
    assert logs[-1]["nll"] < logs[0]["nll"] - 1.0  # deterministic dynamics: the NLL keeps falling
    assert logs[-1]["loss_reward"] < 0.5 * logs[0]["loss_reward"]
    assert logs[-1]["loss_end"] < 0.5 * logs[0]["loss_end"]


def test_masked_transitions_do_not_count():
    torch.manual_seed(0)
    model = MDNRNN(SMALL, num_actions=3)
    z, a, rew, end, mask = _sequences(b=3, t=8)
    expected, logs = model.loss(z, a, rew, end, mask)
    logs = logs_to_floats(logs)
    # The same episodes, padded on both sides with garbage (2 rows before, 3 after).
    pad = lambda x, fill: torch.cat((fill(x[:, :2]), x, fill(x[:, :3])), 1)  # noqa: E731
    garbage = lambda x: (100 * torch.rand_like(x.float())).to(x.dtype)  # noqa: E731
    padded = [pad(x, garbage) for x in (z, a.clamp(max=2), rew, end)]
    padded[1] = padded[1] % 3  # valid action ids, still garbage
    padded_mask = pad(mask, torch.zeros_like)
    got, logs_padded = model.loss(*padded, padded_mask)
    logs_padded = logs_to_floats(logs_padded)
    torch.testing.assert_close(got, expected)
    assert logs_padded == pytest.approx(logs)
    # Cutting an episode's mask short removes exactly its later transitions.
    short = mask.clone()
    short[:, 5:] = False
    cut, _ = model.loss(z, a, rew, end, short)
    head, _ = model.loss(z[:, :5], a[:, :5], rew[:, :5], end[:, :5], mask[:, :5])
    torch.testing.assert_close(cut, head)


def test_lower_temperature_narrows_the_next_latents():
    n, m, z = 4000, 3, 2
    log_pi = torch.tensor([1.0, 0.0, -0.5]).view(1, m, 1).expand(n, m, z)
    mu = torch.tensor([0.0, 3.0, -3.0]).view(1, m, 1).expand(n, m, z)
    log_sigma = torch.full((n, m, z), math.log(0.5))
    torch.manual_seed(0)
    stds = [float(sample_mixture(log_pi, mu, log_sigma, tau).std()) for tau in (0.1, 1.0, 1.5)]
    assert stds[0] < stds[1] < stds[2], stds
    assert stds[0] == pytest.approx(
        0.5 * math.sqrt(0.1), rel=0.1
    )  # one component, sigma * sqrt(tau)
    # The same through the model's dream step.
    torch.manual_seed(0)
    model = MDNRNN(SMALL, num_actions=3)
    z0, act = torch.randn(1, 4).expand(n, 4), torch.ones(n, dtype=torch.long)
    stds = [
        float(model.step(z0, act, None, temperature=tau)[0].std(0).mean())
        for tau in (0.1, 1.0, 1.5)
    ]
    assert stds[0] < stds[1] < stds[2], stds


def test_step_shapes_and_sampled_heads():
    torch.manual_seed(0)
    model = MDNRNN(SMALL, num_actions=3)
    z, act = torch.randn(64, 4), torch.randint(0, 3, (64,))
    state = model.initial_state(64, "cpu")
    z_next, reward, end, state, h = model.step(z, act, state)
    assert z_next.shape == (64, 4) and z_next.dtype == torch.float32
    assert reward.shape == (64,) and reward.dtype == torch.float32
    assert set(reward.tolist()) <= {-1.0, 0.0, 1.0} and len(set(reward.tolist())) > 1  # sampled
    assert end.shape == (64,) and end.dtype == torch.bool
    assert h.shape == (64, 32) and torch.equal(h, state[0]) and state[1].shape == (64, 32)
    out, _ = model(z[:, None], act[:, None], model.initial_state(64, "cpu"))
    torch.testing.assert_close(out["h_seq"][:, 0], h)  # h: the state after consuming (z, act)
    headless = MDNRNN(
        MDNRNNConfig(z_dim=4, hidden=8, mixtures=2, reward_head=False, end_head=False), 3
    )
    _, reward, end, _, _ = headless.step(z, act, None)
    assert not reward.any() and not end.any()
    _, logs = headless.loss(*_sequences(b=2, t=5))
    logs = logs_to_floats(logs)
    assert set(logs) == {"loss", "nll"}
