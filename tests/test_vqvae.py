"""The VQ-VAE tokenizer (IRIS): quantisation maths, gradient routing, masking, the loss terms and
the optional VGG16 perceptual path."""

import dataclasses

import pytest
import torch

from worldmodels.encoders.vqvae import (
    VQVAE,
    VQVAEConfig,
    image_gradient_l1,
    nearest_code,
    quantize,
    vq_losses,
)
from worldmodels.errors import UserError
from worldmodels.interfaces import Batch, EnvInfo
from worldmodels.nn.blocks import count_parameters
from worldmodels.nn.pixels import to_float
from worldmodels.nn.vgg import VGG16Features
from worldmodels.training import logs_to_floats

TINY = VQVAEConfig(
    vocab_size=32, embed_dim=16, z_channels=16, channels=8, ch_mult=(1, 1, 1), num_res_blocks=1,
    attn_resolutions=(8,), img_size=16, norm_groups=4,  # 2 channels per group, as IRIS at width 64
)  # fmt: skip
TINY_ENV = EnvInfo(num_actions=3, obs_shape=(3, 16, 16))
# torchvision's vgg16().features: the 13 convolutions sit at these indices.
VGG_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def _tiny(**changes) -> VQVAE:
    torch.manual_seed(0)
    return VQVAE(dataclasses.replace(TINY, **changes), TINY_ENV)


def _frames(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """``(n, 3, size, size)`` uint8: a coloured rectangle on a coloured background (learnable)."""
    g = torch.Generator().manual_seed(seed)
    frames = torch.empty(n, 3, size, size, dtype=torch.uint8)
    for i in range(n):
        frames[i] = torch.randint(0, 256, (3, 1, 1), generator=g, dtype=torch.uint8)
        y, x = torch.randint(0, size - 4, (2,), generator=g).tolist()
        h, w = torch.randint(3, 7, (2,), generator=g).tolist()
        frames[i, :, y : y + h, x : x + w] = torch.randint(
            0, 256, (3, 1, 1), generator=g, dtype=torch.uint8
        )
    return frames


def _batch(obs: torch.Tensor, mask: torch.Tensor) -> Batch:
    """Segments ``(B, T, C, H, W)`` with only the fields the tokenizer reads made meaningful."""
    b, t = mask.shape
    z = torch.zeros(b, t)
    return Batch(obs, z.long(), z, z.bool(), z.bool(), mask)


def test_the_published_size():
    model = VQVAE(VQVAEConfig(), EnvInfo(num_actions=4, obs_shape=(3, 64, 64)))
    n = count_parameters(model)
    print(f"VQVAE default trainable parameters: {n:,}")
    assert abs(n - 4.0e6) / 4.0e6 < 0.05, n
    assert model.tokens_per_frame == 16 and model.vocab_size == 512
    assert model.perceptual is None
    codes = model.codebook.weight.detach()  # uniform(-1/V, 1/V), as IRIS
    assert float(codes.abs().max()) <= 1 / 512 and float(codes.abs().max()) > 0.9 / 512


def test_frame_shape_must_match_the_environment():
    with pytest.raises(UserError, match="img_size"):
        VQVAE(TINY, EnvInfo(num_actions=3, obs_shape=(3, 64, 64)))


def test_loss_falls_on_a_fixed_batch():
    # Codebook + commitment + L1 only: with the image-gradient term as well, a model this small
    # first sits on a plateau that predicts the mean frame for over 100 steps (measured on several
    # seeds), longer than a unit test should run. That term has its own tests below.
    model = _tiny(gradient_weight=0.0)
    frames = _frames(8).reshape(2, 4, 3, 16, 16)
    batch = _batch(frames, torch.ones(2, 4, dtype=torch.bool))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(100):
        loss, logs = model.loss(batch)
        logs = logs_to_floats(logs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(logs["reconstruction_loss"])
    first, last = history[0], sum(history[-5:]) / 5
    # 0.5 x is well below the mean-frame plateau (about 0.85 x here): the tokens carry the frames.
    assert last < 0.5 * first, (first, last)
    assert logs["perplexity"] > 1.0  # more than one code in use


def test_encode_decode_round_trip_shapes_and_ranges():
    model = _tiny()
    with torch.no_grad():  # make the raw decoder output overshoot [-1, 1]: decode must clamp
        model.decoder[-1].weight.mul_(50.0)
    obs = _frames(5)
    with torch.inference_mode():
        tokens = model.encode(obs)
        recon = model.decode(tokens)
        z, z_q_st, tokens3, raw = model(to_float(obs))
    assert tokens.shape == (5, model.tokens_per_frame) == (5, 16) and tokens.dtype == torch.int64
    assert int(tokens.min()) >= 0 and int(tokens.max()) < model.vocab_size
    assert recon.shape == (5, 3, 16, 16) and recon.dtype == torch.float32
    assert float(recon.min()) >= -1.0 and float(recon.max()) <= 1.0
    assert float(raw.abs().max()) > 1.0  # the clamp was needed
    assert torch.equal(tokens, tokens3)
    assert torch.equal(recon, raw.clamp(-1, 1))
    assert z.shape == z_q_st.shape == (5, 16, 4, 4)


def test_nearest_code_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(300, 16, generator=g)
    codebook = torch.randn(32, 16, generator=g)
    brute = ((z[:, None, :] - codebook[None, :, :]) ** 2).sum(-1).argmin(1)  # (N, V, D) on purpose
    assert torch.equal(nearest_code(z, codebook), brute)

    # quantize: token k of a frame is grid cell (k // w, k % w), and z_q holds that cell's code.
    zmap = torch.randn(2, 16, 3, 5, generator=g)
    _, tokens, z_q = quantize(zmap, codebook)
    assert tokens.shape == (2, 15)
    for b, i, j in [(0, 0, 0), (0, 1, 4), (1, 2, 3)]:
        cell = zmap[b, :, i, j]
        expected = int(((cell - codebook) ** 2).sum(1).argmin())
        assert int(tokens[b, i * 5 + j]) == expected
        assert torch.equal(z_q[b, :, i, j], codebook[expected])


def test_quantiser_gradient_is_straight_through():
    g = torch.Generator().manual_seed(2)
    codebook = torch.randn(32, 8, generator=g)
    z = torch.randn(2, 8, 3, 3, generator=g, requires_grad=True)
    weight = torch.randn(2, 8, 3, 3, generator=g)

    def f(t):
        return (weight * t.pow(2)).sum() + t.sin().sum()  # non-linear: the gradient depends on t

    z_q_st, _, z_q = quantize(z, codebook)
    assert torch.equal(z_q_st, z_q)  # the forward value is the code
    (dz,) = torch.autograd.grad(f(z_q_st), z)
    zq_leaf = z_q.detach().requires_grad_(True)
    (dzq,) = torch.autograd.grad(f(zq_leaf), zq_leaf)
    torch.testing.assert_close(dz, dzq)
    assert not torch.allclose(dz, torch.autograd.grad(f(z), z)[0])  # evaluated at z_q, not z


def _grads(module):
    return [p.grad for p in module.parameters()]


def _nonzero(grads):
    return any(g is not None and bool(g.abs().sum() > 0) for g in grads)


def test_codebook_loss_moves_only_the_codebook_and_commitment_only_the_encoder():
    model = _tiny()
    x = to_float(_frames(4))
    for term in ("codebook", "commitment"):
        model.zero_grad(set_to_none=True)
        z, z_q_st, tokens, recon = model(x)
        z_q = model.codebook(tokens).reshape(4, 4, 4, 16).permute(0, 3, 1, 2)
        codebook_loss, commitment_loss = vq_losses(z, z_q, commitment=0.25)
        (codebook_loss if term == "codebook" else commitment_loss).backward()
        encoder = _grads(model.encoder) + _grads(model.pre_quant)
        decoder = _grads(model.decoder) + _grads(model.post_quant)
        assert not _nonzero(decoder)
        if term == "codebook":
            assert _nonzero([model.codebook.weight.grad]) and not _nonzero(encoder)
            torch.testing.assert_close(codebook_loss, ((z.detach() - z_q) ** 2).mean())
        else:
            assert not _nonzero([model.codebook.weight.grad]) and _nonzero(encoder)
            assert _nonzero(_grads(model.encoder)[:2])  # all the way to the first conv
            torch.testing.assert_close(commitment_loss, 0.25 * ((z - z_q.detach()) ** 2).mean())


def test_reconstruction_reaches_the_encoder_but_not_the_codebook():
    model = _tiny()
    _, _, _, recon = model(to_float(_frames(2)))
    recon.abs().mean().backward()
    assert _nonzero(_grads(model.encoder)) and not _nonzero([model.codebook.weight.grad])


def test_padding_frames_do_not_affect_the_loss():
    model = _tiny().eval()
    frames = _frames(4)
    mask = torch.tensor([[False, True, True], [True, True, False]])
    obs = torch.zeros(2, 3, 3, 16, 16, dtype=torch.uint8)
    obs[mask] = frames
    loss, logs = model.loss(_batch(obs, mask))
    logs = logs_to_floats(logs)
    garbage = obs.clone()
    garbage[~mask] = _frames(2, seed=7)
    loss_g, logs_g = model.loss(_batch(garbage, mask))
    logs_g = logs_to_floats(logs_g)
    dense, logs_d = model.loss(_batch(frames[None], torch.ones(1, 4, dtype=torch.bool)))
    logs_d = logs_to_floats(logs_d)
    torch.testing.assert_close(loss, loss_g)
    torch.testing.assert_close(loss, dense)
    assert logs == logs_g
    assert logs["perplexity"] == pytest.approx(logs_d["perplexity"])


def test_default_loss_is_l1_and_the_gradient_term_is_opt_in():
    mask = torch.ones(1, 4, dtype=torch.bool)
    _, plain = _tiny().loss(_batch(_frames(4)[None], mask))  # the default: no perceptual term
    plain = logs_to_floats(plain)
    assert "perceptual_loss" not in plain and plain.get("gradient_loss", 0.0) == 0.0
    model = _tiny(gradient_weight=1.0)
    loss, logs = model.loss(_batch(_frames(4)[None], mask))
    logs = logs_to_floats(logs)
    assert "gradient_loss" in logs and "perceptual_loss" not in logs
    assert logs["gradient_loss"] > 0
    parts = ("codebook_loss", "commitment_loss", "reconstruction_loss", "gradient_loss")
    assert logs["loss"] == pytest.approx(sum(logs[k] for k in parts), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(logs["loss"], rel=1e-6)
    for k in ("perplexity", "dead_codes"):
        assert k in logs
    # The gradient weight scales exactly that term.
    heavy = _tiny(gradient_weight=3.0)  # vs 1.0 above
    _, logs3 = heavy.loss(_batch(_frames(4)[None], mask))
    logs3 = logs_to_floats(logs3)
    assert logs3["gradient_loss"] == pytest.approx(3 * logs["gradient_loss"], rel=1e-5)


def test_image_gradient_term_charges_blurred_edges():
    sharp = torch.zeros(1, 1, 4, 6)
    sharp[..., 3:] = 1.0
    blurred = sharp.clone()
    blurred[..., 2], blurred[..., 3] = 1 / 3, 2 / 3
    assert float(image_gradient_l1(sharp, sharp)) == 0.0
    # dx rows: sharp (0, 0, 1, 0, 0), blurred (0, 1/3, 1/3, 1/3, 0): 4/3 per row over 5 columns.
    assert float(image_gradient_l1(sharp, blurred)) == pytest.approx(4 / 15)
    # A uniform brightness shift has no edges to charge for.
    assert float(image_gradient_l1(sharp, sharp + 0.3)) == pytest.approx(0.0, abs=1e-7)


def test_codebook_usage_counts():
    model = _tiny()
    usage = model.codebook_usage(torch.tensor([[0, 0, 1, 1], [2, 2, 3, 3]]))
    assert usage["perplexity"] == pytest.approx(4.0) and usage["dead_codes"] == 32 - 4
    usage = model.codebook_usage(torch.zeros(3, 16, dtype=torch.long))
    assert usage["perplexity"] == pytest.approx(1.0) and usage["dead_codes"] == 31


@pytest.fixture(scope="module")
def vgg_files(tmp_path_factory):
    """Random VGG16 feature weights under torchvision's names, as .pth (``features.`` prefixed, as
    ``vgg16().state_dict()``) and as safetensors (as ``vgg16().features.state_dict()``)."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    state = VGG16Features().state_dict()
    expected = {f"{i}.{p}" for i in VGG_CONVS for p in ("weight", "bias")}
    assert set(state) == expected
    d = tmp_path_factory.mktemp("vgg")
    torch.save({f"features.{k}": v for k, v in state.items()}, d / "vgg16.pth")
    save_file(state, str(d / "vgg16.safetensors"))
    return d / "vgg16.pth", d / "vgg16.safetensors", state


@pytest.mark.parametrize("kind", ["pth", "safetensors"])
def test_vgg_perceptual_term(vgg_files, kind):
    pth, st, state = vgg_files
    model = _tiny(vgg16_weights=str(pth if kind == "pth" else st))
    assert model.perceptual is not None
    assert torch.equal(model.perceptual.state_dict()["28.weight"], state["28.weight"])
    assert count_parameters(model) == count_parameters(_tiny())  # the VGG is frozen
    mask = torch.ones(1, 4, dtype=torch.bool)
    loss, logs = model.loss(_batch(_frames(4)[None], mask))
    logs = logs_to_floats(logs)
    assert "perceptual_loss" in logs and "gradient_loss" not in logs
    assert torch.isfinite(loss) and logs["perceptual_loss"] > 0
    parts = ("codebook_loss", "commitment_loss", "reconstruction_loss", "perceptual_loss")
    assert logs["loss"] == pytest.approx(sum(logs[k] for k in parts), rel=1e-5)
    loss.backward()
    assert all(p.grad is None for p in model.perceptual.parameters())
    assert _nonzero(_grads(model.decoder))

    # Checkpoints leave the VGG out, and load back strictly into a model with or without one.
    sd = model.state_dict()
    assert not any(k.startswith("perceptual.") for k in sd)
    plain = _tiny()
    plain.load_state_dict(sd, strict=True)
    again = _tiny(vgg16_weights=str(pth))
    again.load_state_dict(plain.state_dict(), strict=True)
    assert torch.equal(again.perceptual.state_dict()["0.weight"], state["0.weight"])


def test_missing_or_corrupt_vgg_file_is_a_user_error(tmp_path):
    missing = tmp_path / "nowhere" / "vgg16.pth"
    with pytest.raises(UserError, match="nowhere"):
        _tiny(vgg16_weights=str(missing))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="corrupt.pth"):
        _tiny(vgg16_weights=str(corrupt))
    wrong = tmp_path / "wrong.pth"
    torch.save({"0.weight": torch.zeros(3)}, wrong)
    with pytest.raises(UserError, match="wrong.pth"):
        _tiny(vgg16_weights=str(wrong))
