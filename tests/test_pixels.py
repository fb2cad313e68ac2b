"""The one uint8 <-> [-1, 1] pixel conversion, in every layout its callers use."""

import numpy as np
import pytest
import torch

from astra_gym.utils.pixels import pixels_to_uint8, uint8_to_pixels


@pytest.mark.parametrize(
    ("shape", "channel_dim", "expected"),
    [
        ((5, 8, 6, 3), 1, (5, 3, 8, 6)),
        ((2, 4, 8, 6, 3), 1, (2, 3, 4, 8, 6)),
        ((2, 4, 8, 6, 3), -3, (2, 4, 3, 8, 6)),
        ((4, 8, 6, 3), 0, (3, 4, 8, 6)),
    ],
)
def test_layouts_round_trip_exactly(shape, channel_dim, expected):
    frames = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    pixels = uint8_to_pixels(frames, channel_dim)
    assert pixels.shape == expected and pixels.dtype == torch.float32 and pixels.is_contiguous()
    assert pixels.min() >= -1 and pixels.max() <= 1
    assert torch.equal(pixels, uint8_to_pixels(torch.from_numpy(frames), channel_dim))  # numpy or tensor
    assert np.array_equal(pixels_to_uint8(pixels, channel_dim).numpy(), frames)
    # the RGB values land on the channel axis: pixel (0, ..., 0) of frame 0
    first = pixels.movedim(channel_dim, -1).reshape(-1, 3)[0]
    torch.testing.assert_close(first, torch.from_numpy(frames.reshape(-1, 3)[0]).float() / 127.5 - 1)


def test_out_of_range_pixels_clamp_instead_of_wrapping():
    pixels = torch.tensor([-3.0, -1.0, 0.0, 1.0, 2.5]).view(1, 5, 1, 1).expand(1, 5, 1, 3).movedim(-1, 1)
    assert pixels_to_uint8(pixels).flatten(0, 2)[:, 0].tolist() == [0, 0, 128, 255, 255]
