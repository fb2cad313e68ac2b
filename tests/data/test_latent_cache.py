"""Latent cache: round trip, per-latent alignment, index.json, windows, atomic writes, CLI."""

from __future__ import annotations

import dataclasses
import json
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from astra_gym.data import latent_cache as lc
from astra_gym.data.action_codecs import FEATURES, align_to_latents, episode_rows
from astra_gym.data.episodes import save_episode
from astra_gym.data.synthetic import drive_episode, explore_episode, manipulation_episode
from astra_gym.world_model.vae import SmallVAE


class PoolVAE(torch.nn.Module):
    """Stand-in VAE: 8x average pooling; temporal groups of ``temporal_factor`` frames averaged after frame 0."""

    def __init__(self, channels: int = 4, temporal_factor: int = 1, fail_on_call: int | None = None) -> None:
        super().__init__()
        self.latent_channels, self.spatial_factor, self.temporal_factor = channels, 8, temporal_factor
        self.register_buffer("scale", torch.linspace(0.5, 2.0, channels))
        self.calls, self.fail_on_call = 0, fail_on_call

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("VAE failed")
        x = F.avg_pool3d(pixels, (1, 8, 8))  # [B, 3, P, h, w]
        b, _, p, h, w = x.shape
        n, tf = (p - 1) // self.temporal_factor, self.temporal_factor
        rest = x[:, :, 1 : 1 + n * tf].reshape(b, 3, n, tf, h, w).mean(3)
        z = torch.cat([x[:, :, :1], rest], 2)  # [B, 3, L, h, w]
        z = z.repeat(1, self.latent_channels, 1, 1, 1)[:, : self.latent_channels]
        return z * self.scale.view(1, -1, 1, 1, 1)


def _pixels(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0


def _episodes():
    return [("drive-0", drive_episode(4, 4, seed=0)), ("explore-0", explore_episode(3, 3, seed=1))]


def _read_shard(root, index, n):
    from safetensors import safe_open

    entry = [e | {"file": s["file"]} for s in index["shards"] for e in s["episodes"]][n]
    with safe_open(str(root / entry["file"]), framework="pt") as f:
        return {k.split("/", 1)[1]: f.get_tensor(k) for k in f.keys() if k.startswith(f"{entry['key']}/")}, entry


def test_round_trip_exact_factor_1(tmp_path):
    vae = PoolVAE()
    index = lc.build_latent_cache(_episodes(), vae, tmp_path, lc.CacheConfig(episodes_per_shard=1))
    for n, (source, ep) in enumerate(_episodes()):
        stored, entry = _read_shard(tmp_path, index, n)
        assert entry["source"] == source and entry["seed"] == ep.seed and entry["scenario"] == ep.scenario
        expected = vae.encode(_pixels(ep.frames))[0].half()
        assert stored["latents"].dtype == torch.float16 and stored["latents"].shape == (4, ep.num_steps + 1, 2, 2)
        torch.testing.assert_close(stored["latents"], expected, rtol=0, atol=0)
        for name, rows in episode_rows(ep).items():
            torch.testing.assert_close(stored[f"rows/{name}"], torch.from_numpy(align_to_latents(rows, 1)))
        assert stored["rewards"][0] == 0 and torch.equal(stored["rewards"][1:], torch.from_numpy(ep.rewards))
        assert torch.equal(stored["truncated"][1:], torch.from_numpy(ep.truncated)) and not stored["truncated"][0]


def test_factor_4_trims_and_aggregates_per_latent(tmp_path):
    ep = drive_episode(straight=4, turn=6, seed=3)  # 10 steps -> 8 used, 3 latents
    index = lc.build_latent_cache([("d", ep)], PoolVAE(temporal_factor=4), tmp_path)
    stored, entry = _read_shard(tmp_path, index, 0)
    assert (entry["num_steps"], entry["used_steps"], entry["dropped_steps"], entry["num_latents"]) == (10, 8, 2, 3)
    assert stored["latents"].shape == (4, 3, 2, 2)
    np.testing.assert_allclose(stored["rewards"].numpy(), [0, ep.rewards[:4].sum(), ep.rewards[4:8].sum()], rtol=1e-6)
    assert not stored["truncated"].any()  # the truncated last step was trimmed away
    steer = stored["rows/vehicle_command"][:, 0].numpy()
    np.testing.assert_allclose(steer, [0.0, 0.0, -1.0])  # latent 2 <- steps 4..7, all steering left


def test_index_json_describes_the_cache(tmp_path):
    vae = PoolVAE()
    lc.build_latent_cache(
        _episodes() + [("m", manipulation_episode())], vae, tmp_path, lc.CacheConfig(episodes_per_shard=2)
    )
    index = json.loads((tmp_path / lc.INDEX_NAME).read_text())
    assert index["format"] == lc.FORMAT_NAME and index["version"] == lc.FORMAT_VERSION and index["complete"]
    assert index["vae"] == lc.vae_identity(vae) and len(index["vae"]["hash"]) == 16
    assert index["alignment"]["convention"] == "exact" and index["alignment"]["temporal_factor"] == 1
    assert index["latent_shape"] == [4, 2, 2] and index["num_episodes"] == 3
    assert [len(s["episodes"]) for s in index["shards"]] == [2, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([lc.INDEX_NAME] + [s["file"] for s in index["shards"]])
    assert index["inference_feature"] == {
        "drive": "vehicle_command",
        "manipulation": "robot_command",
        "explore": "keyboard",
    }
    for name, spec in index["features"].items():
        assert spec["modality"] == FEATURES[name].modality and spec["dim"] == FEATURES[name].dim
    assert index["features"]["vehicle_command"]["stats"]["count"] == 8  # 8 non-null rows of the drive episode
    assert index["features"]["camera_pose"]["stats"]["count"] == 8 + 6 + 8


def test_feature_selection_per_scenario(tmp_path):
    config = lc.CacheConfig(features=("vehicle_command", "keyboard"))
    index = lc.build_latent_cache(_episodes(), PoolVAE(), tmp_path, config)
    assert [e["features"] for e in index["shards"][0]["episodes"]] == [["vehicle_command"], ["keyboard"]]


def test_vae_hash_tracks_the_weights():
    a, b = PoolVAE(), PoolVAE()
    assert lc.vae_identity(a)["hash"] == lc.vae_identity(b)["hash"]
    b.scale.add_(1.0)
    assert lc.vae_identity(a)["hash"] != lc.vae_identity(b)["hash"]


def test_windows_shapes_alignment_and_sampling(tmp_path):
    episodes = [("d", drive_episode(4, 4, seed=0)), ("e", explore_episode(3, 3, seed=1))]  # 9 and 7 latents
    lc.build_latent_cache(episodes, PoolVAE(), tmp_path)
    ds = lc.LatentShardDataset(tmp_path, lc.WindowSpec(history=2, target=3))
    assert len(ds) == (9 - 5 + 1) + (7 - 5 + 1)
    np.testing.assert_array_equal(ds.windows[:6], [[0, 0], [0, 1], [0, 2], [0, 3], [0, 4], [1, 0]])
    item = ds[2]
    assert item["latents"].shape == (4, 5, 2, 2) and item["latents"].dtype == torch.float32
    assert item["rows"].shape == (5, 7) and item["modality"] == "vehicle" and item["history"] == 2
    full = ds.load_episode(0)
    torch.testing.assert_close(item["latents"], full["latents"][:, 2:7].float())
    drive = episodes[0][1]
    # exact convention: window row j belongs to latent start + j and holds the action of step start + j - 1
    np.testing.assert_array_equal(item["rows"][:, 0].numpy(), drive.actions[1:6, 0])
    assert ds[len(ds) - 1]["rows"].shape == (5, 16) and ds[len(ds) - 1]["modality"] == "keyboard"
    first = ds.sample_indices(16, torch.Generator().manual_seed(7))
    assert torch.equal(first, ds.sample_indices(16, torch.Generator().manual_seed(7)))
    assert first.min() >= 0 and first.max() < len(ds)
    clone = pickle.loads(pickle.dumps(ds))  # DataLoader workers pickle the dataset (shard handles are dropped)
    torch.testing.assert_close(clone[2]["latents"], item["latents"])


def test_dataset_filters_and_checks(tmp_path):
    lc.build_latent_cache(_episodes(), PoolVAE(), tmp_path)
    only_drive = lc.LatentShardDataset(tmp_path, lc.WindowSpec(1, 1), features={"drive": "camera_pose"})
    assert {only_drive[i]["feature"] for i in range(len(only_drive))} == {"camera_pose"}
    assert lc.LatentShardDataset(tmp_path, lc.WindowSpec(5, 10)).windows.shape == (0, 2)
    with pytest.raises(ValueError, match="no rows for feature"):
        lc.LatentShardDataset(tmp_path, lc.WindowSpec(1, 1), features={"explore": "vehicle_pose"})
    with pytest.raises(ValueError, match="rebuild the cache with the model's VAE"):
        lc.LatentShardDataset(tmp_path, lc.WindowSpec(1, 1), expected_vae_hash="0" * 16)


def test_failing_encode_leaves_no_partial_shard(tmp_path):
    vae = PoolVAE(fail_on_call=2)  # the second shard's encode fails
    with pytest.raises(RuntimeError, match="VAE failed"):
        lc.build_latent_cache(_episodes(), vae, tmp_path, lc.CacheConfig(episodes_per_shard=1))
    index = json.loads((tmp_path / lc.INDEX_NAME).read_text())
    assert not index["complete"] and [len(s["episodes"]) for s in index["shards"]] == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([lc.INDEX_NAME, index["shards"][0]["file"]])
    with pytest.raises(ValueError, match="did not finish"):
        lc.LatentShardDataset(tmp_path, lc.WindowSpec(1, 1))
    assert len(lc.LatentShardDataset(tmp_path, lc.WindowSpec(1, 1), allow_incomplete=True)) == 8


def test_failing_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def half_write(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial shard bytes")
        raise OSError("disk full")

    monkeypatch.setattr(lc, "save_file", half_write)
    with pytest.raises(OSError, match="disk full"):
        lc.build_latent_cache(_episodes(), PoolVAE(), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_existing_cache_needs_overwrite_and_stale_shards_go(tmp_path):
    lc.build_latent_cache(_episodes(), PoolVAE(), tmp_path, lc.CacheConfig(episodes_per_shard=1))
    with pytest.raises(FileExistsError, match="overwrite"):
        lc.build_latent_cache(_episodes(), PoolVAE(), tmp_path)
    index = lc.build_latent_cache(_episodes(), PoolVAE(), tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([lc.INDEX_NAME, index["shards"][0]["file"]])


def test_same_latent_space_ignores_training_only_config_but_not_weights():
    torch.manual_seed(0)
    vae = SmallVAE.from_preset("debug").eval()
    reweighted = SmallVAE(dataclasses.replace(vae.config, detail_weight=2.0)).eval()
    reweighted.load_state_dict(vae.state_dict())
    a, b = lc.vae_identity(vae), lc.vae_identity(reweighted)
    assert a["hash"] != b["hash"] and lc.same_latent_space(a, b)  # only a loss weight differs
    with torch.no_grad():
        next(reweighted.parameters()).add_(1e-3)
    assert not lc.same_latent_space(a, lc.vae_identity(reweighted))
    assert not lc.same_latent_space({"hash": "a"}, {"hash": "b"})  # no weights digests: the hashes decide
    assert lc.same_latent_space({"hash": "a"}, {"hash": "a"})


def test_per_frame_vae_chunks_like_one_call(tmp_path):
    torch.manual_seed(0)
    vae = SmallVAE.from_preset("debug").eval()
    ep = drive_episode(4, 4)
    (chunked,) = lc.encode_episodes(vae, [("d", ep)], lc.CacheConfig(batch_frames=3))
    with torch.inference_mode():
        whole = vae.encode(_pixels(ep.frames))[0].half()
    torch.testing.assert_close(chunked.latents, whole)


def test_cli_builds_a_cache_from_episode_files(tmp_path):
    episodes_dir = tmp_path / "episodes"
    for n, (_, ep) in enumerate(_episodes()):
        save_episode(ep, episodes_dir / f"episode_{n:06d}.hdf5")
    lc.main(["--episodes", str(episodes_dir), "--vae", "debug", "--out", str(tmp_path / "cache"), "--device", "cpu"])
    index = lc.read_index(tmp_path / "cache")
    assert index["num_episodes"] == 2 and index["latent_shape"] == [4, 2, 2]
    assert index["shards"][0]["episodes"][0]["source"].endswith("episode_000000.hdf5")
