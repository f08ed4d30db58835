"""The World Models ConvVAE: architecture, posterior sampling, the KL term, free bits, padding."""

import dataclasses

import pytest
import torch

from worldmodels.encoders.vae import ConvVAE, ConvVAEConfig, free_bits_kl, gaussian_kl
from worldmodels.interfaces import Batch, EnvInfo
from worldmodels.training import logs_to_floats

ENV = EnvInfo(num_actions=4, obs_shape=(3, 64, 64))
TINY = ConvVAEConfig(z_dim=8, channels=(8, 16, 16, 16))


def _batch(obs, mask=None):
    b, t = obs.shape[:2]
    mask = torch.ones(b, t, dtype=torch.bool) if mask is None else mask
    zeros = torch.zeros(b, t)
    return Batch(obs, zeros.long(), zeros, zeros.bool(), zeros.bool(), mask)


def _frames(n, seed=0):
    """Structured frames: a coloured rectangle on a coloured background, ``(n, 3, 64, 64)`` uint8."""
    g = torch.Generator().manual_seed(seed)
    x = torch.empty(n, 3, 64, 64, dtype=torch.uint8)
    for i in range(n):
        x[i] = torch.randint(0, 256, (3, 1, 1), generator=g, dtype=torch.uint8)
        r, c = torch.randint(0, 40, (2,), generator=g).tolist()
        x[i, :, r : r + 24, c : c + 24] = torch.randint(0, 256, (3, 1, 1), generator=g)
    return x


def test_the_papers_shapes_and_parameter_count():
    torch.manual_seed(0)
    vae = ConvVAE(ConvVAEConfig(), ENV)
    n_params = sum(p.numel() for p in vae.parameters())
    print(f"ConvVAE default (z 32) parameters: {n_params:,}")
    assert n_params == 4_348_547  # the paper's 4 convs + 4 deconvs with a 1024-wide bottleneck
    assert vae.config.feature_dim == 1024
    obs = _frames(3)
    z = vae.encode(obs)
    assert z.shape == (3, 32) and z.dtype == torch.float32
    x = vae.decode(z)
    assert x.shape == (3, 3, 64, 64) and x.dtype == torch.float32
    # Leading dims pass through: (B, T, C, H, W) -> (B, T, Z) -> (B, T, C, H, W).
    assert vae.encode(obs.view(1, 3, 3, 64, 64)).shape == (1, 3, 32)
    assert vae.decode(z.view(3, 1, 32)).shape == (3, 1, 3, 64, 64)


def test_decode_stays_in_range_even_for_far_latents():
    torch.manual_seed(0)
    vae = ConvVAE(TINY, ENV)
    x = vae.decode(200.0 * torch.randn(4, TINY.z_dim))
    assert x.min() >= -1.0 and x.max() <= 1.0 and torch.isfinite(x).all()


def test_encode_mean_vs_reparameterised_sample():
    torch.manual_seed(0)
    vae = ConvVAE(TINY, ENV)
    with torch.no_grad():
        vae.fc_logvar.bias.fill_(-2.0)  # posterior std about exp(-1), far from 1 and from var
    obs = _frames(64)
    mu, logvar = vae.encode_dist(obs)
    assert torch.equal(vae.encode(obs), mu)  # the mean, deterministically
    assert torch.equal(vae.encode(obs), vae.encode(obs))
    s1, s2 = vae.encode(obs, sample=True), vae.encode(obs, sample=True)
    assert not torch.equal(s1, s2)
    eps = ((s1 - mu) / (0.5 * logvar).exp()).detach()  # should be standard normal: 64 * 8 draws
    assert abs(float(eps.mean())) < 0.15 and abs(float(eps.std()) - 1.0) < 0.1


def test_kl_matches_the_closed_form():
    mu = torch.tensor([[0.0, 1.0, -2.0], [0.5, 0.0, 3.0]])
    logvar = torch.tensor([[0.0, 0.0, 1.0], [-2.0, 2.0, -0.5]])
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)
    )
    torch.testing.assert_close(gaussian_kl(mu, logvar), expected)
    assert float(gaussian_kl(torch.tensor(1.0), torch.tensor(0.0))) == pytest.approx(0.5)
    # The model logs the raw KL of its posterior, summed over dims and averaged over frames.
    torch.manual_seed(0)
    vae = ConvVAE(TINY, ENV)
    obs = _frames(5)
    _, logs = vae.loss(_batch(obs[None]))
    logs = logs_to_floats(logs)
    with torch.no_grad():
        mu, logvar = vae.encode_dist(obs)
    assert logs["kl"] == pytest.approx(float(gaussian_kl(mu, logvar).sum(1).mean()), rel=1e-5)
    assert logs["kl_per_dim"] == pytest.approx(logs["kl"] / TINY.z_dim, rel=1e-5)


def test_free_bits_floor_the_kl_per_dimension():
    mu = torch.tensor([[0.1, 2.0, 0.0], [-0.1, 2.0, 0.0]], requires_grad=True)
    logvar = torch.zeros(2, 3, requires_grad=True)
    kl = gaussian_kl(mu, logvar)  # per dim: 0.005, 2.0, 0.0
    term, per_dim = free_bits_kl(kl, torch.ones(2, dtype=torch.bool), free_bits=0.5)
    torch.testing.assert_close(per_dim, torch.tensor([0.005, 2.0, 0.0]))
    assert term.item() == pytest.approx(0.5 + 2.0 + 0.5)  # dims below the floor count as 0.5
    term.backward()
    assert torch.all(mu.grad[:, 0] == 0) and torch.all(mu.grad[:, 2] == 0)  # below: no gradient
    assert torch.all(mu.grad[:, 1] != 0)  # above the floor: the usual KL gradient
    # In the model: with a floor above every dimension's KL, the KL term is the constant floor.
    torch.manual_seed(0)
    vae = ConvVAE(dataclasses.replace(TINY, free_bits=50.0, kl_weight=0.5), ENV)
    _, logs = vae.loss(_batch(_frames(4)[None]))
    logs = logs_to_floats(logs)
    assert logs["loss"] - logs["reconstruction_loss"] == pytest.approx(0.5 * 50.0 * TINY.z_dim)
    assert logs["kl"] < 50.0 * TINY.z_dim  # the raw KL is logged, not the floored one


def test_padding_frames_do_not_count():
    torch.manual_seed(0)
    vae = ConvVAE(TINY, ENV)
    real = _frames(5)
    mask = torch.tensor([[False, True, True, True], [True, True, False, False]])
    obs = torch.zeros(2, 4, 3, 64, 64, dtype=torch.uint8)
    obs[mask] = real
    noisy = obs.clone()
    noisy[~mask] = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    torch.manual_seed(1)
    loss_a, logs_a = vae.loss(_batch(obs, mask))
    logs_a = logs_to_floats(logs_a)
    torch.manual_seed(1)
    loss_b, logs_b = vae.loss(_batch(noisy, mask))
    logs_b = logs_to_floats(logs_b)
    assert torch.equal(loss_a, loss_b)  # padding contents never reach the loss
    _, logs_real = vae.loss(_batch(real[None]))
    logs_real = logs_to_floats(logs_real)
    assert logs_a["kl"] == pytest.approx(logs_real["kl"], rel=1e-5)  # averaged over 5 real frames


@pytest.mark.parametrize("reconstruction", ["mse", "bce"])
def test_loss_falls_on_fixed_frames(reconstruction):
    torch.manual_seed(0)
    vae = ConvVAE(dataclasses.replace(TINY, reconstruction=reconstruction), ENV)
    frames = _frames(8)
    batch = _batch(frames[None])
    opt = torch.optim.Adam(vae.parameters(), lr=5e-3)
    losses = []
    for _ in range(60):
        loss, logs = vae.loss(batch)
        logs = logs_to_floats(logs)
        assert set(logs) == {"loss", "reconstruction_loss", "kl", "kl_per_dim"}
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(logs["reconstruction_loss"])
    # The lowest reachable value: 0 for the squared error, the pixels' own entropy for the BCE.
    p = frames.float() / 255
    floor = 0.0
    if reconstruction == "bce":
        floor = float(torch.nn.functional.binary_cross_entropy(p, p, reduction="sum")) / 8
    first, last = sum(losses[:3]) / 3 - floor, sum(losses[-3:]) / 3 - floor
    print(f"{reconstruction}: reconstruction above its floor {first:.1f} -> {last:.1f}")
    assert last < 0.7 * first


def test_config_rejects_sizes_the_kernels_do_not_fit():
    with pytest.raises(ValueError, match="64x64"):
        ConvVAEConfig(img_size=84)
    with pytest.raises(ValueError, match="4 conv levels"):
        ConvVAEConfig(channels=(32, 64, 128))
    with pytest.raises(ValueError, match="configured for frames"):
        ConvVAE(ConvVAEConfig(), EnvInfo(num_actions=4, obs_shape=(1, 64, 64)))
