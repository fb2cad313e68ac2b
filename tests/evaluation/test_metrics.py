"""PSNR, SSIM, delta-PSNR and the aggregation helpers on hand-made inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from astra_gym.evaluation import metrics


def frames(seed: int = 0, shape=(4, 24, 24, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def noisy(x: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, sigma, x.shape)
    return np.clip(x.astype(np.float64) + noise, 0, 255).round().astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# PSNR
# ------------------------------------------------------------------------------------------------


def test_identical_frames_give_infinite_psnr_and_unit_ssim():
    x = frames()
    assert np.all(np.isposinf(metrics.psnr(x, x)))
    assert np.array_equal(metrics.ssim(x, x), np.ones(4))
    y = x / 255.0
    assert np.all(np.isposinf(metrics.psnr(y, y)))
    assert np.array_equal(metrics.ssim(y, y), np.ones(4))


def test_psnr_hand_computed():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[0] += 1  # MSE 1 -> 20 log10(255)
    b[1, 0, 0, 0] = 255  # MSE 255^2 / 48 -> 10 log10(48)
    np.testing.assert_allclose(metrics.psnr(a, b), [20 * math.log10(255), 10 * math.log10(48)])
    # The same frames as floats in [0, 1] give the same PSNR.
    np.testing.assert_allclose(metrics.psnr(a / 255.0, b / 255.0), metrics.psnr(a, b))


def test_more_noise_lowers_psnr_and_ssim_monotonically():
    x = frames()
    sigmas = [2, 5, 10, 20, 40, 80]
    p = np.array([metrics.psnr(x, noisy(x, s)).mean() for s in sigmas])
    s = np.array([metrics.ssim(x, noisy(x, s)).mean() for s in sigmas])
    assert np.all(np.diff(p) < 0), p
    assert np.all(np.diff(s) < 0), s
    assert np.all(s < 1) and np.all(s > -1)


def test_inputs_are_checked():
    x = frames()
    with pytest.raises(ValueError, match="same shape"):
        metrics.psnr(x, x[:2])
    with pytest.raises(ValueError, match="cannot compare uint8 with float64"):
        metrics.psnr(x, x / 255.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.psnr(x * 2.0, x * 2.0)
    with pytest.raises(ValueError, match="uint8"):
        metrics.psnr(x.astype(np.int64), x.astype(np.int64))
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(x[:, :8, :8], x[:, :8, :8])


# ------------------------------------------------------------------------------------------------
# SSIM
# ------------------------------------------------------------------------------------------------


def test_gaussian_window_matches_the_paper():
    g = metrics.gaussian_window()
    assert g.shape == (11,)
    assert math.isclose(g.sum(), 1.0)
    assert np.argmax(g) == 5 and np.allclose(g, g[::-1])
    np.testing.assert_allclose(g[4] / g[5], math.exp(-1 / (2 * 1.5**2)))


def test_ssim_of_constant_images_is_the_luminance_term():
    # mu_x = 0.2, mu_y = 0.6, no variance: SSIM = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1).
    a, b = np.full((16, 16, 3), 0.2), np.full((16, 16, 3), 0.6)
    c1 = 0.01**2
    assert metrics.ssim(a, b) == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1), rel=1e-9)


def _ssim_one_window(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM of one 11x11 grey patch written out term by term (Wang et al. 2004, eqs. 14-16)."""
    w = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    w = np.outer(w, w) / np.outer(w, w).sum()
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy = (w * (x - mx) ** 2).sum(), (w * (y - my) ** 2).sum()
    cxy = (w * (x - mx) * (y - my)).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    return (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))


def test_ssim_matches_a_hand_computed_window():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (11, 11), dtype=np.uint8)
    y = np.clip(x * 0.7 + rng.normal(20, 15, x.shape), 0, 255).astype(np.uint8)
    expected = _ssim_one_window(x.astype(np.float64), y.astype(np.float64))
    assert metrics.ssim(x[..., None], y[..., None]) == pytest.approx(expected, rel=1e-9)
    # RGB: the mean of the channels' SSIMs.
    z = np.stack([x, y, 255 - x], -1)
    v = np.stack([y, y, 255 - y], -1)
    per_channel = [_ssim_one_window(z[..., c].astype(float), v[..., c].astype(float)) for c in range(3)]
    assert metrics.ssim(z, v) == pytest.approx(np.mean(per_channel), rel=1e-9)


def test_ssim_is_symmetric_and_per_frame():
    x, y = frames(0), noisy(frames(0), 30)
    np.testing.assert_allclose(metrics.ssim(x, y), metrics.ssim(y, x))
    np.testing.assert_allclose(metrics.ssim(x, y)[2], metrics.ssim(x[2], y[2]))


# ------------------------------------------------------------------------------------------------
# delta-PSNR and aggregation
# ------------------------------------------------------------------------------------------------


def test_delta_psnr_sign():
    real = frames()
    close, far = noisy(real, 5), noisy(real, 40)
    assert np.all(metrics.delta_psnr(real, close, far) > 0)  # the true actions help
    assert np.all(metrics.delta_psnr(real, far, close) < 0)
    np.testing.assert_array_equal(metrics.delta_psnr(real, close, close), 0.0)  # actions ignored
    exact = metrics.delta_psnr(real, real, far)  # an exact rollout stays finite: cap - PSNR
    np.testing.assert_allclose(exact, metrics.PSNR_CAP_DB - metrics.psnr(real, far))


def test_summarize_reports_inf_and_a_capped_mean():
    stats = metrics.summarize([np.inf, 30.0, 40.0], cap=100.0)
    assert stats == {
        "count": 3,
        "mean": "inf",
        "mean_capped": 170 / 3,
        "std_capped": pytest.approx(np.std([100, 30, 40])),
        "num_inf": 1,
    }
    assert metrics.summarize([1.0, 3.0])["mean"] == 2.0
    assert metrics.summarize([])["count"] == 0


def test_per_chunk_aggregation():
    values = np.array([[1.0, 3.0, 10.0, 20.0], [3.0, 5.0, np.inf, 0.0]])  # 2 rollouts, 2 chunks of 2 frames
    np.testing.assert_allclose(metrics.chunk_means(values, 2, cap=100.0), [[2.0, 15.0], [4.0, 50.0]])
    rows = metrics.per_chunk_summary(values, 2, cap=100.0)
    assert [r["chunk"] for r in rows] == [1, 2]
    assert rows[0]["mean_capped"] == 3.0 and rows[0]["num_inf"] == 0
    assert rows[1]["mean"] == "inf" and rows[1]["mean_capped"] == 32.5 and rows[1]["num_inf"] == 1
    with pytest.raises(ValueError, match="dividing the frame count"):
        metrics.chunk_means(values, 3)
