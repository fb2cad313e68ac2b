"""Tests of the VAE interface: shapes, temporal rule, normalisation, Wan streaming decode, SmallVAE training."""

from __future__ import annotations

import pytest
import torch

from astra_gym.world_model.vae import (
    SmallVAE,
    SmallVAEConfig,
    VaeStreamState,
    WanVAE,
    detail_weights,
    get_small_vae_preset,
)

WAN_CONFIG = dict(
    base_dim=8,
    z_dim=4,
    dim_mult=[1, 2, 2, 2],
    num_res_blocks=1,
    latents_mean=[0.5, -0.25, 0.0, 1.0],
    latents_std=[2.0, 0.5, 1.0, 1.5],
)


@pytest.fixture(scope="module")
def wan() -> WanVAE:
    pytest.importorskip("diffusers")
    torch.manual_seed(0)  # diffusers initialises from the global generator
    return WanVAE.from_config(**WAN_CONFIG)


@pytest.fixture(scope="module")
def small() -> SmallVAE:
    torch.manual_seed(0)
    return SmallVAE.from_preset("debug")


def video(batch: int, frames: int, size: int, seed: int = 0) -> torch.Tensor:
    """[B, 3, T, H, W] smooth random video in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch * frames, 3, size // 4, size // 4, generator=g) * 2 - 1
    fine = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return fine.view(batch, frames, 3, size, size).transpose(1, 2)  # [B*T, 3, H, W] -> [B, 3, T, H, W]


# ---- Wan ---------------------------------------------------------------------------------------


def test_wan_shapes_and_temporal_rule(wan):
    assert (wan.latent_channels, wan.spatial_factor, wan.temporal_factor) == (4, 8, 4)
    assert [wan.num_latent_frames(p) for p in (1, 4, 5, 8, 9, 33)] == [1, 1, 2, 2, 3, 9]
    assert wan.num_pixel_frames(3) == 9 and wan.num_pixel_frames(3, first=False) == 12
    with torch.no_grad():
        z = wan.encode(video(1, 9, 16))
        pixels = wan.decode(z)
    assert z.shape == (1, 4, 3, 2, 2) and z.dtype == torch.float32
    assert pixels.shape == (1, 3, 9, 16, 16)
    assert pixels.min() >= -1 and pixels.max() <= 1


def test_wan_encode_is_the_normalised_diffusers_mean(wan):
    x = video(1, 5, 16, seed=1)
    with torch.no_grad():
        z = wan.encode(x)
        mean = wan.model.encode(x).latent_dist.mean  # [1, 4, 2, 2, 2]
    expected = (mean - torch.tensor(WAN_CONFIG["latents_mean"]).view(1, 4, 1, 1, 1)) / torch.tensor(
        WAN_CONFIG["latents_std"]
    ).view(1, 4, 1, 1, 1)
    torch.testing.assert_close(z, expected)
    torch.testing.assert_close(wan.denormalize(z), mean)


@pytest.fixture(scope="module")
def wan_residual() -> WanVAE:
    """Wan2.2-style decoder (residual up blocks), whose first chunk is trimmed via ``first_chunk``."""
    pytest.importorskip("diffusers")
    torch.manual_seed(1)
    return WanVAE.from_config(**WAN_CONFIG, is_residual=True)


@pytest.mark.parametrize("name", ["wan", "wan_residual"])
def test_wan_streaming_decode_equals_whole_decode(name, request):
    wan = request.getfixturevalue(name)
    z = torch.randn(2, 4, 5, 2, 2, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole = wan.decode(z)
        reference = wan.model.decode(wan.denormalize(z)).sample
        parts, state = [], None
        for a, b in [(0, 1), (1, 3), (3, 5)]:
            chunk, state = wan.decode_stream(z[:, :, a:b], state)
            parts.append(chunk)
    assert [p.shape[2] for p in parts] == [1, 8, 8] and state.frames_decoded == 5
    torch.testing.assert_close(whole, reference)
    torch.testing.assert_close(torch.cat(parts, dim=2), whole)


def test_wan_stream_state_is_immutable_and_matters(wan):
    z = torch.randn(1, 4, 3, 2, 2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _, state = wan.decode_stream(z[:, :, :2])
        again_a, _ = wan.decode_stream(z[:, :, 2:], state)
        again_b, _ = wan.decode_stream(z[:, :, 2:], state)
        fresh, _ = wan.decode_stream(z[:, :, 2:], VaeStreamState())
    torch.testing.assert_close(again_a, again_b)
    assert fresh.shape[2] == 1 and again_a.shape[2] == 4
    with pytest.raises(ValueError, match="batch"):
        wan.decode_stream(z.expand(2, -1, -1, -1, -1), state)


def test_wan_from_pretrained_reads_a_local_folder(wan, tmp_path):
    wan.model.save_pretrained(tmp_path / "vae")
    loaded = WanVAE.from_pretrained(tmp_path)
    z = torch.randn(1, 4, 2, 2, 2, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(z), wan.decode(z))
    torch.testing.assert_close(loaded.latents_std, torch.tensor(WAN_CONFIG["latents_std"]))
    with pytest.raises(FileNotFoundError, match="config.json"):
        WanVAE.from_pretrained(tmp_path / "missing")


# ---- SmallVAE ----------------------------------------------------------------------------------


def test_small_vae_presets():
    assert get_small_vae_preset("small").latent_channels == 8
    assert get_small_vae_preset("debug").latent_channels == 4
    assert get_small_vae_preset("small").spatial_factor == 8
    with pytest.raises(ValueError, match="choose one of"):
        get_small_vae_preset("huge")
    with pytest.raises(ValueError, match="recon_loss"):
        SmallVAEConfig(recon_loss="l2")


def test_detail_preset_is_4x_and_weights_small_salient_details():
    vae = SmallVAE.from_preset("detail")
    assert vae.spatial_factor == 4 and vae.latent_channels == 8
    assert vae.encode(torch.zeros(1, 3, 1, 64, 64)).shape == (1, 8, 1, 16, 16)
    pixels = torch.zeros(1, 3, 2, 32, 32)
    pixels[:, 0, :, 10:12, 20:22] = 1.0  # a 2x2 red dot on a flat frame (an ego car, a goal marker)
    weights = detail_weights(pixels, 4.0)
    assert weights.shape == (1, 1, 2, 32, 32)
    torch.testing.assert_close(weights.mean(dim=(3, 4)), torch.full((1, 1, 2), 5.0))  # 1 + detail_weight on average
    assert weights[0, 0, 0, 10, 20] > 20 * weights[0, 0, 0, 0, 0]  # the dot outweighs the flat area
    assert torch.equal(detail_weights(pixels, 0.0), torch.ones(1, 1, 2, 32, 32))
    with pytest.raises(ValueError, match="detail_weight"):
        SmallVAEConfig(detail_weight=-1.0)


def test_small_vae_shapes_and_temporal_rule(small):
    assert (small.latent_channels, small.spatial_factor, small.temporal_factor) == (4, 8, 1)
    assert small.num_latent_frames(7) == 7 and small.num_pixel_frames(7, first=False) == 7
    with torch.no_grad():
        z = small.encode(video(2, 3, 32))
        pixels = small.decode(z)
        first, state = small.decode_stream(z[:, :, :1])
        rest, state = small.decode_stream(z[:, :, 1:], state)
    assert z.shape == (2, 4, 3, 4, 4) and pixels.shape == (2, 3, 3, 32, 32)
    assert pixels.min() >= -1 and pixels.max() <= 1
    torch.testing.assert_close(torch.cat([first, rest], dim=2), pixels)
    assert state.frames_decoded == 3
    with pytest.raises(ValueError, match="multiples of 8"):
        small.encode(torch.zeros(1, 3, 1, 30, 32))
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        small.encode(torch.zeros(1, 1, 1, 32, 32))


def test_small_vae_normalisation_round_trip_and_running_stats():
    torch.manual_seed(0)
    vae = SmallVAE.from_preset("debug")
    x = video(2, 4, 32, seed=5)
    with torch.no_grad():
        raw = vae.encode_raw(x)
        vae.update_latent_stats(raw[:1])
        vae.update_latent_stats(raw[1:])  # two batches merge to the stats of all
        z = vae.encode(x)
    per_channel = z.transpose(0, 1).reshape(4, -1)  # [B, C, T, h, w] -> [C, N]
    torch.testing.assert_close(per_channel.mean(dim=1), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(per_channel.std(dim=1, unbiased=False), torch.ones(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(vae.denormalize(z), raw)
    with pytest.raises(ValueError, match="> 0"):
        vae.set_latent_stats(torch.zeros(4), torch.zeros(4))


def test_small_vae_training_reduces_loss():
    torch.manual_seed(0)
    vae = SmallVAE(get_small_vae_preset("debug").replace(recon_loss="mse"))
    x = video(2, 2, 32, seed=6)
    optimiser = torch.optim.Adam(vae.parameters(), lr=3e-3)

    def evaluate() -> float:
        with torch.no_grad():
            return vae.loss(x, torch.Generator().manual_seed(0))[0].item()

    before = evaluate()
    g = torch.Generator().manual_seed(1)
    for _ in range(25):
        loss, logs = vae.loss(x, g)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert set(logs) == {"loss", "recon", "kl"} and torch.isfinite(logs["kl"])
    assert evaluate() < 0.8 * before
