"""DIAMOND's diffusion pieces: EDM maths against closed forms and their defining property, the
samplers against the exact denoiser of a Gaussian, and the denoiser's loss, gradients and sampling."""

from __future__ import annotations

import math

import pytest
import torch

from worldmodels.dynamics.diffusion import (
    SAMPLERS,
    Denoiser,
    DenoiserNet,
    DenoiserNetConfig,
    EDMConfig,
    add_training_noise,
    denoiser_target,
    initial_noise,
    preconditioners,
    quantize,
    sample_euler,
    sample_heun,
    sample_training_sigma,
    sigma_schedule,
)
from worldmodels.nn.blocks import count_parameters
from worldmodels.training import logs_to_floats

TINY = DenoiserNetConfig(
    channels=(8, 8), depths=(1, 1), attn_depths=(False, False), cond_channels=16
)
NUM_ACTIONS = 3


def on_grid(x: torch.Tensor) -> bool:
    k = (x + 1) * 127.5
    return bool(((k - k.round()).abs() < 1e-3).all() and (k >= 0).all() and (k <= 255).all())


# --- EDM maths -----------------------------------------------------------------------------------


def test_preconditioners_karras_table1_at_sigma_data():
    # sigma = sigma_data = 0.5, no offset: c_in = 1/sqrt(0.5), c_skip = 1/2, c_out = 0.25/sqrt(0.5).
    pre = preconditioners(torch.tensor([0.5]), sigma_data=0.5)
    assert pre.c_in.item() == pytest.approx(1.4142136, rel=1e-6)
    assert pre.c_skip.item() == pytest.approx(0.5, rel=1e-6)
    assert pre.c_out.item() == pytest.approx(0.3535534, rel=1e-6)
    assert pre.c_noise.item() == pytest.approx(-0.1732868, rel=1e-6)
    assert all(t.dtype == torch.float32 and t.shape == (1,) for t in pre)


@pytest.mark.parametrize("offset", [0.0, 0.3])
def test_preconditioners_closed_form(offset):
    sd = 0.5
    sigmas = [2e-3, 0.1, 0.5, 3.0, 20.0]
    pre = preconditioners(torch.tensor(sigmas), sigma_data=sd, sigma_offset_noise=offset)
    for i, sigma in enumerate(sigmas):
        s = math.sqrt(sigma**2 + offset**2)  # offset noise folded in (DIAMOND)
        assert pre.c_in[i].item() == pytest.approx(1 / math.sqrt(s**2 + sd**2), rel=1e-5)
        assert pre.c_skip[i].item() == pytest.approx(sd**2 / (s**2 + sd**2), rel=1e-5)
        assert pre.c_out[i].item() == pytest.approx(s * sd / math.sqrt(s**2 + sd**2), rel=1e-5)
        assert pre.c_noise[i].item() == pytest.approx(math.log(s) / 4, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("offset", [0.0, 0.3])
@pytest.mark.parametrize("sigma", [0.05, 0.5, 5.0])
def test_preconditioning_gives_unit_variance(sigma, offset):
    # Karras Appendix B.6: c_in makes the net input, and c_skip / c_out the training target, unit
    # variance for data of std sigma_data. Offset noise is one more noise source of std `offset`.
    torch.manual_seed(0)
    sd = 0.5
    x0 = sd * torch.randn(4000, 1, 4, 4)
    sig = torch.full((4000,), sigma)
    noisy = add_training_noise(x0, sig, offset)
    pre = preconditioners(sig, sd, offset)
    assert (noisy * pre.c_in[:, None, None, None]).var().item() == pytest.approx(1.0, rel=0.05)
    assert denoiser_target(x0, noisy, pre).var().item() == pytest.approx(1.0, rel=0.05)


def test_add_training_noise_offset_is_per_image_and_channel():
    torch.manual_seed(0)
    x0 = torch.rand(3000, 2, 5, 5)
    diff = add_training_noise(x0, torch.zeros(3000), 0.3) - x0
    assert torch.allclose(diff, diff[:, :, :1, :1].expand_as(diff), atol=1e-6)  # constant over H, W
    assert diff[:, :, 0, 0].std().item() == pytest.approx(0.3, rel=0.05)
    corr = torch.corrcoef(diff[:, :, 0, 0].T)[0, 1].item()
    assert abs(corr) < 0.1  # independent per channel
    diff = add_training_noise(x0, torch.full((3000,), 2.0), 0.0) - x0
    assert diff.std().item() == pytest.approx(2.0, rel=0.02)


def test_training_sigma_is_clipped_log_normal():
    torch.manual_seed(0)
    cfg = EDMConfig()
    sigma = sample_training_sigma(100_000, cfg, "cpu")
    assert sigma.shape == (100_000,) and sigma.dtype == torch.float32
    assert sigma.min() >= cfg.sigma_min_train and sigma.max() <= cfg.sigma_max_train
    assert sigma.log().median().item() == pytest.approx(cfg.p_mean, abs=0.02)
    assert sigma.log().std().item() == pytest.approx(cfg.p_std, rel=0.02)
    narrow = EDMConfig(p_mean=0.0, p_std=3.0, sigma_min_train=0.5, sigma_max_train=2.0)
    sigma = sample_training_sigma(10_000, narrow, "cpu")
    assert sigma.min() == 0.5 and sigma.max() == 2.0


# --- samplers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 3, 18])
def test_sigma_schedule(steps):
    smin, smax, rho = 2e-3, 5.0, 7.0
    s = sigma_schedule(steps, smin, smax, rho)
    assert s.shape == (steps + 1,) and s.dtype == torch.float32
    assert s[0].item() == pytest.approx(smax) and s[-1].item() == 0
    if steps > 1:
        assert s[-2].item() == pytest.approx(smin, rel=1e-5)
        assert (s[1:] < s[:-1]).all()
        for i in range(steps):  # Karras eq. (5)
            ref = (
                smax ** (1 / rho) + i / (steps - 1) * (smin ** (1 / rho) - smax ** (1 / rho))
            ) ** rho
            assert s[i].item() == pytest.approx(ref, rel=1e-5)


MU, STD = 0.7, 0.3


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Exact D(x; sigma) = E[x0 | x] for x0 ~ N(MU, STD^2)."""
    assert sigma.shape == (x.shape[0],)
    return MU + (STD**2 / (STD**2 + sigma**2))[:, None] * (x - MU)


@pytest.mark.parametrize("name,steps", [("euler", 200), ("heun", 50)])
def test_samplers_reproduce_a_gaussian(name, steps):
    torch.manual_seed(0)
    x = initial_noise((20_000, 1), 80.0, "sigma_max", "cpu")
    assert x.std().item() == pytest.approx(80.0, rel=0.03)
    out = SAMPLERS[name](gaussian_denoiser, x, sigma_schedule(steps, 2e-3, 80.0, 7.0))
    assert out.mean().item() == pytest.approx(MU, abs=0.01)
    assert out.std().item() == pytest.approx(STD, rel=0.03)


def test_heun_needs_fewer_steps_than_euler():
    # The probability-flow ODE of a Gaussian is linear: from sigma_max to 0 it maps
    # x -> MU + (x - MU) * STD / sqrt(STD^2 + sigma_max^2). Compare each sampler to that map.
    x = 80.0 * torch.linspace(-3, 3, 13, dtype=torch.float64)[:, None]
    exact = MU + (x - MU) * STD / math.sqrt(STD**2 + 80.0**2)

    def err(sampler, steps):
        sigmas = sigma_schedule(steps, 2e-3, 80.0, 7.0).double()
        return (sampler(gaussian_denoiser, x, sigmas) - exact).abs().max().item()

    assert err(sample_heun, 20) < err(sample_euler, 40)  # half the steps, same evaluations
    assert err(sample_heun, 40) < err(sample_euler, 160)  # a quarter of the steps
    assert err(sample_heun, 80) < err(sample_heun, 40) / 3  # second order: error ~ 1 / steps^2
    assert err(sample_euler, 160) > err(sample_euler, 80) / 2.5  # first order: error ~ 1 / steps


def test_initial_noise_modes():
    torch.manual_seed(0)
    assert initial_noise((50_000,), 5.0, "unit", "cpu").std().item() == pytest.approx(1, rel=0.02)
    assert initial_noise((50_000,), 5.0, "sigma_max", "cpu").std().item() == pytest.approx(
        5, rel=0.02
    )
    with pytest.raises(ValueError, match="valid"):
        initial_noise((2,), 5.0, "bogus", "cpu")  # type: ignore[arg-type]


# --- denoiser ------------------------------------------------------------------------------------


def test_quantize_rounds_to_nearest_8bit_level():
    k = torch.tensor([0.0, 1, 128, 254, 255])
    step = 2 / 255

    def level(x):
        return (quantize(x) + 1) * 127.5

    assert torch.allclose(level(k * step - 1 + 0.4 * step), k, atol=1e-4)  # floor agrees here ...
    assert torch.allclose(
        level(k[:-1] * step - 1 + 0.6 * step), k[:-1] + 1, atol=1e-4
    )  # ... not here
    assert torch.equal(quantize(torch.tensor([-3.0, 3.0])), torch.tensor([-1.0, 1.0]))
    assert on_grid(quantize(torch.randn(1000)))


def test_default_net_has_diamond_parameter_count():
    n = count_parameters(DenoiserNet(DenoiserNetConfig(), num_actions=4))
    print(f"DIAMOND denoiser parameters: {n}")
    assert abs(n - 4.41e6) / 4.41e6 < 0.05


@pytest.mark.parametrize("hw", [(16, 16), (14, 10)])
def test_net_shapes_and_padding(hw):
    torch.manual_seed(0)
    cfg = DenoiserNetConfig(
        context=2,
        channels=(8, 16, 8),
        depths=(1, 2, 1),
        attn_depths=(False, True, False),
        cond_channels=16,
        img_channels=1,
    )
    net = DenoiserNet(cfg, num_actions=5)
    nn_init_output(net)
    h, w = hw
    out = net(
        torch.randn(3, 1, h, w), torch.randn(3), torch.randn(3, 2, h, w), torch.randint(5, (3, 2))
    )
    assert out.shape == (3, 1, h, w) and out.dtype == torch.float32
    assert out.abs().sum() > 0


def nn_init_output(net: DenoiserNet) -> None:
    """Give the zero-initialised output conv weights, so outputs depend on the input."""
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)


def make_segments(b=4, length=6, hw=16, seed=0):
    """Blocky random frames in [-1, 1] on the 8-bit grid, each segment one scene drifting by a pixel
    per frame, so the next frame is predictable from the context."""
    g = torch.Generator().manual_seed(seed)
    scene = torch.rand(b, 3, hw // 4, hw // 4 + length, generator=g)
    scene = scene.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    frames = torch.stack([scene[..., t : t + hw] for t in range(length)], dim=1)
    obs = quantize(frames * 2 - 1)  # (B, T + K, C, H, W)
    act = torch.randint(NUM_ACTIONS, (b, length), generator=g)
    act[0] = torch.arange(length) % NUM_ACTIONS  # every action appears
    return obs, act, torch.ones(b, length, dtype=torch.bool)


def tiny_denoiser(seed=0) -> Denoiser:
    torch.manual_seed(seed)
    return Denoiser(TINY, EDMConfig(), NUM_ACTIONS)


def seeded_loss(model, obs, act, mask, seed=123):
    torch.manual_seed(seed)
    return model.loss(obs, act, mask)


def test_loss_falls_and_trains_every_parameter():
    model = tiny_denoiser()
    obs, act, mask = make_segments()
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        before = sum(seeded_loss(model, obs, act, mask, s)[0].item() for s in range(4))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(100):
        loss, logs = model.loss(obs, act, mask)
        logs = logs_to_floats(logs)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            missing = [n for n, p in model.named_parameters() if p.grad is None]
            assert not missing, f"no gradient reaches {missing}"
        opt.step()
    assert set(logs) == {"loss", "loss_target0", "loss_target1"}
    with torch.no_grad():
        after = sum(seeded_loss(model, obs, act, mask, s)[0].item() for s in range(4))
    assert after < 0.5 * before, (before, after)
    unchanged = [
        n for (n, p), p0 in zip(model.named_parameters(), start, strict=True) if torch.equal(p, p0)
    ]
    assert not unchanged, f"never updated: {unchanged}"


def test_second_target_sees_own_detached_prediction():
    model = tiny_denoiser()
    nn_init_output(model.net)
    obs, act, mask = make_segments()
    calls = []

    def hook(module, args, out):
        calls.append(
            (*(a.detach().clone() for a in args), out.detach().clone(), args[2].requires_grad)
        )

    handle = model.net.register_forward_hook(hook)
    model.loss(obs, act, mask)
    handle.remove()
    assert len(calls) == 2
    (noisy_in, c_noise, _, _, out, _), (_, _, ctx1, act1, _, ctx1_grad) = calls
    sd, c = model.edm.sigma_data, obs.shape[2]
    # Rebuild the first prediction D = c_skip * noisy + c_out * F from what the net saw.
    s = (4 * c_noise).exp()  # c_noise = ln(s) / 4, s the noise std with the offset folded in
    var = s**2 + sd**2
    noisy = noisy_in * var.sqrt()[:, None, None, None]
    pred = (sd**2 / var)[:, None, None, None] * noisy + (s * sd / var.sqrt())[
        :, None, None, None
    ] * out
    last_ctx = ctx1[:, -c:] * sd  # frame T of the second target's context, unscaled
    assert on_grid(last_ctx)
    assert (last_ctx - quantize(pred)).abs().max() <= 2 / 255 + 1e-4  # rounding may flip a level
    assert (last_ctx - obs[:, 4]).abs().mean() > 0.05  # not the real frame
    assert torch.allclose(ctx1[:, :-c] * sd, obs[:, 1:4].flatten(1, 2), atol=1e-6)  # real frames
    assert torch.equal(act1, act[:, 1:5])
    assert not ctx1_grad  # no gradient flows back through the prediction


def test_loss_averages_over_unmasked_rows_only():
    model = tiny_denoiser()
    nn_init_output(model.net)
    obs, act, mask = make_segments()
    # Same seed, so every call draws the same sigmas and noise: row i's loss alone is its MSE.
    per_row = []
    for i in range(4):
        only_i = torch.zeros_like(mask)
        only_i[i] = True
        per_row.append(seeded_loss(model, obs, act, only_i)[0])
    per_row = torch.stack(per_row)
    assert seeded_loss(model, obs, act, mask)[0].item() == pytest.approx(
        per_row.mean().item(), rel=1e-5
    )
    mask[0, 4:] = False  # row 0's targets are padding
    ref, _ = seeded_loss(model, obs, act, mask)
    assert ref.item() == pytest.approx(per_row[1:].mean().item(), rel=1e-5)
    changed = obs.clone()
    changed[0, 4:] = -1.0  # padding contents must not matter
    assert seeded_loss(model, changed, act, mask)[0].item() == pytest.approx(ref.item(), rel=1e-6)


def test_all_padding_target_contributes_zero():
    model = tiny_denoiser()
    nn_init_output(model.net)
    obs, act, mask = make_segments()
    mask[:, 5] = False  # the second target is padding everywhere
    loss, logs = seeded_loss(model, obs, act, mask)
    logs = logs_to_floats(logs)
    assert logs["loss_target1"] == 0 and math.isfinite(loss.item())
    assert loss.item() == pytest.approx(logs["loss_target0"] / 2, rel=1e-6)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_denoise_shapes_and_dtypes():
    model = tiny_denoiser()
    obs, act, _ = make_segments(b=2)
    d = model.denoise(torch.randn(2, 3, 16, 16), torch.tensor([0.1, 3.0]), obs[:, :4], act[:, :4])
    assert d.shape == (2, 3, 16, 16) and d.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d = model.denoise(
            torch.randn(2, 3, 16, 16), torch.tensor([0.1, 3.0]), obs[:, :4], act[:, :4]
        )
    assert d.dtype == torch.float32


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_sample_on_8bit_grid_and_seeded(sampler):
    model = tiny_denoiser()
    nn_init_output(model.net)
    obs, act, _ = make_segments(b=2)
    kw = dict(steps=3, sampler=sampler, sigma_min=2e-3, sigma_max=5.0, rho=7.0, init="unit")
    torch.manual_seed(7)
    a = model.sample(obs[:, :4], act[:, :4], **kw)
    torch.manual_seed(7)
    b = model.sample(obs[:, :4], act[:, :4], **kw)
    c = model.sample(obs[:, :4], act[:, :4], **kw)
    assert a.shape == (2, 3, 16, 16) and a.dtype == torch.float32
    assert on_grid(a) and torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="valid"):
        model.sample(obs[:, :4], act[:, :4], **{**kw, "sampler": "dpm"})


def test_loss_is_seeded():
    obs, act, mask = make_segments()
    a = seeded_loss(tiny_denoiser(), obs, act, mask)[0]
    b = seeded_loss(tiny_denoiser(), obs, act, mask)[0]
    c = seeded_loss(tiny_denoiser(), obs, act, mask, seed=5)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
