"""The detail checks find CarRacing's car and dashboard bars and notice when a model erases them."""

import numpy as np
import pytest

from astra_gym.envs.frame_bank import load_frame_bank
from astra_gym.evaluation.details import DETAILS, car_present, detail_mask, detail_psnr, detail_report
from astra_gym.evaluation.metrics import psnr


def _grass(count: int = 2) -> np.ndarray:
    frames = np.zeros((count, 64, 64, 3), np.uint8)
    frames[..., 1] = 200  # green
    frames[:, 56:] = 0  # the black dashboard
    return frames


def test_the_car_of_real_carracing_frames_is_found():
    frames = load_frame_bank("drive").frames  # real frames recorded from the simulator
    assert car_present(frames).all()
    assert not car_present(_grass()).any()


def test_a_reconstruction_that_erases_the_car_and_bars_is_caught():
    real = _grass()
    real[:, 45:50, 30:33] = (204, 0, 0)  # the car
    real[:, 58:62, 30:33] = (0, 255, 0)  # the steering bar
    same = detail_report(real, real.copy(), "drive")
    assert same["car_real"] == 1.0 and same["car_kept"] == 1.0 and same["car_iou"] == 1.0
    assert same["steering_kept"] == 1.0 and same["detail_psnr"] == float("inf")
    erased = detail_report(real, _grass(), "drive")
    assert erased["car_kept"] == 0.0 and erased["car_iou"] == 0.0 and erased["steering_kept"] == 0.0
    plain = psnr(real, _grass()).mean()
    assert erased["detail_psnr"] < plain - 8  # scored where the details are, not over the flat grass
    assert np.isnan(erased["speed_kept"])  # no frame has a speed bar: nothing to keep


def test_manipulation_goal_marker_and_bad_frames():
    real = np.full((1, 64, 64, 3), 230, np.uint8)
    real[0, 20:23, 30:33] = (220, 30, 30)
    assert detail_mask(real, DETAILS["manipulation"][0]).sum() == 9
    assert detail_report(real, real, "manipulation")["goal_kept"] == 1.0
    with pytest.raises(ValueError, match="64, 64, 3"):
        car_present(np.zeros((1, 32, 32, 3), np.uint8))
    assert np.isfinite(detail_psnr(real, np.zeros_like(real)))


def test_the_block_is_told_from_dark_scenery_over_many_frames():
    """A dark edge in every frame is scenery; the block moves between episodes and is found only where it is."""
    real = np.full((10, 64, 64, 3), 200, np.uint8)
    rows = np.arange(20, 26)
    real[:, rows, rows - 16] = 10  # a fixed dark diagonal (stock camera: the table's left edge)
    for k in range(4):  # the block in 4 of the 10 frames, each time elsewhere
        real[k, 40:43, 10 + 8 * k : 13 + 8 * k] = 20
    block = DETAILS["manipulation"][1]
    assert detail_report(real, real, "manipulation")["block_real"] == 1.0  # the edge alone counts as a block
    report = detail_report(real, real, "manipulation", static_share=0.5)
    assert report["block_real"] == 0.4 and report["block_kept"] == 1.0 and report["block_static_pixels"] == 6
    erased = real.copy()
    erased[:4, 40:43] = 200
    assert detail_report(real, erased, "manipulation", static_share=0.5)["block_kept"] == 0.0
    assert detail_mask(real, block).sum() == 10 * 6 + 4 * 9  # the mask itself is unchanged
    with pytest.raises(ValueError, match="static_share"):
        detail_report(real, real, "manipulation", static_share=0.0)
