"""Frame banks: the bundled banks are small, well formed and reproducible by the real simulators."""

import numpy as np
import pytest

from astra_gym.envs.frame_bank import (
    BUNDLED_BANKS,
    bundled_bank_path,
    load_frame_bank,
    main,
    synthetic_frame_bank,
)


@pytest.mark.parametrize("name", BUNDLED_BANKS)
def test_bundled_banks_are_small_and_well_formed(name):
    assert bundled_bank_path(name).stat().st_size < 1_000_000
    bank = load_frame_bank(name)
    assert bank.scenario == name and len(bank) >= 24
    assert bank.frames.dtype == np.uint8 and bank.frames.shape[1:] == (4, 64, 64, 3)
    assert (bank.prefix_lengths >= bank.context_length - 1).all()
    assert bank.context_actions(0).shape[0] == bank.context_length - 1
    assert len(np.unique(bank.seeds)) == len(bank)


def _replay_or_skip(name, bank, index):
    try:
        from astra_gym.data.replay import replay

        return replay(int(bank.seeds[index]), bank.prefix(index), scenario=bank.scenario, **bank.sim_config)
    except (ImportError, RuntimeError) as err:  # simulator or its renderer missing
        pytest.skip(f"the {name} simulator is not available here: {err}")


@pytest.mark.sims
@pytest.mark.parametrize("name", BUNDLED_BANKS)
def test_the_simulator_reproduces_a_context_from_its_seed_and_action_prefix(name):
    bank = load_frame_bank(name)
    index = len(bank) - 1
    with _replay_or_skip(name, bank, index) as session:
        assert np.array_equal(session.frame(), bank.frames[index, -1])


def test_synthetic_bank_is_deterministic_and_has_no_actions():
    first, second = synthetic_frame_bank(seed=1), synthetic_frame_bank(seed=1)
    assert np.array_equal(first.frames, second.frames) and first.context_actions(0) is None
    assert not np.array_equal(first.frames, synthetic_frame_bank(seed=2).frames)


def test_missing_bank_says_how_to_build_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m astra_gym.envs.frame_bank"):
        load_frame_bank(tmp_path / "none.npz")
    (tmp_path / "bad.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable frame bank"):
        load_frame_bank(tmp_path / "bad.npz")


@pytest.mark.sims
def test_cli_builds_a_bank(tmp_path):
    pytest.importorskip("vizdoom")
    out = tmp_path / "explore.npz"
    main(["--scenario", "explore", "--out", str(out), "--count", "2", "--context-frames", "2",
          "--min-start", "2", "--max-start", "4"])  # fmt: skip
    bank = load_frame_bank(out)
    assert bank.frames.shape == (2, 2, 64, 64, 3) and bank.meta["button_names"][0] == "MOVE_FORWARD"


@pytest.mark.sims
def test_cli_records_with_a_checkpoints_simulator_settings(tmp_path):
    """``--checkpoint``: the bank is recorded like the model's data (here its FetchPush camera), so the env
    accepts it for that model, and replaying a context with the bank's settings reproduces it."""
    import json

    pytest.importorskip("gymnasium_robotics")
    from astra_gym.data.replay import replay
    from astra_gym.envs.core import check_bank_matches
    from astra_gym.rollout.bundle import BUNDLE_FORMAT, BUNDLE_VERSION, MANIFEST

    camera = {"distance": 0.9, "azimuth": 180.0, "elevation": -45.0, "lookat": [1.32, 0.75, 0.45]}
    entry = {"reward_model": None, "sim_config": {"camera": camera}}
    manifest = {"format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION, "world_model": "wm", "vae": "vae",
                "scenarios": {"manipulation": entry}}  # fmt: skip
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    out = tmp_path / "front.npz"
    main(["--scenario", "manipulation", "--out", str(out), "--count", "1", "--context-frames", "2",
          "--min-start", "2", "--max-start", "3", "--checkpoint", str(tmp_path)])  # fmt: skip
    bank = load_frame_bank(out)
    assert bank.sim_config["camera"] == camera
    check_bank_matches(bank, "manipulation", entry["sim_config"])
    with pytest.raises(ValueError, match="frame_bank --scenario manipulation --checkpoint"):
        check_bank_matches(load_frame_bank("manipulation"), "manipulation", entry["sim_config"])
    with replay(int(bank.seeds[0]), bank.prefix(0), scenario="manipulation", camera=camera) as session:
        assert np.array_equal(session.frame(), bank.frames[0, -1])


def test_bank_context_actions_reach_the_model_history():
    """A bank context starts the model with the actions that produced it (exact convention)."""
    from astra_gym.data.action_codecs import vehicle_command_rows
    from tests.envs.conftest import make_debug

    env = make_debug("Astra-Drive-v0")
    _, info = env.reset(seed=0)
    bank = env.unwrapped.core.bank
    history = env.unwrapped._state.history
    stored = history.recent_actions[0, -4:, :7].numpy()  # the 4 context latents
    assert np.array_equal(stored[0], np.zeros(7))  # the first latent carries the null row
    assert np.array_equal(stored[1:], vehicle_command_rows(bank.context_actions(info["bank_index"])))


def test_bank_from_episodes_holds_their_frames_and_action_prefixes(tmp_path):
    from astra_gym.data.episodes import save_episode
    from astra_gym.envs.frame_bank import frame_bank_from_episodes
    from tests.data.test_episodes import make_episode

    episodes = [make_episode(steps=12, seed=s) for s in (3, 4)]
    bank = frame_bank_from_episodes(episodes, count=10, context_frames=3, start_steps=(4, 9), seed=1)
    assert bank.frames.shape == (10, 3, 8, 8, 3) and bank.scenario == "explore"
    assert ((bank.prefix_lengths >= 4) & (bank.prefix_lengths <= 9)).all()
    by_seed = {ep.seed: ep for ep in episodes}
    for i in range(len(bank)):
        ep, end = by_seed[int(bank.seeds[i])], int(bank.prefix_lengths[i])
        assert np.array_equal(bank.frames[i], ep.frames[end - 2 : end + 1])  # the context ends at frame `end`
        assert np.array_equal(bank.prefix(i), ep.actions[:end])  # replay(seed, prefix) rebuilds it
        assert np.array_equal(bank.context_actions(i), ep.actions[end - 2 : end])
    pairs = set(zip(bank.seeds.tolist(), bank.prefix_lengths.tolist(), strict=True))
    assert len(pairs) == 10  # drawn without replacement
    again = frame_bank_from_episodes(episodes, count=10, context_frames=3, start_steps=(4, 9), seed=1)
    assert np.array_equal(again.frames, bank.frames)
    with pytest.raises(ValueError, match="12 end frames"):
        frame_bank_from_episodes(episodes, count=13, context_frames=3, start_steps=(4, 9))
    folder = tmp_path / "episodes"
    for k, ep in enumerate(episodes):
        save_episode(ep, folder / f"episode_{k:06d}.hdf5")
    out = tmp_path / "bank.npz"
    main(["--scenario", "explore", "--out", str(out), "--count", "5", "--episodes", str(folder)])
    assert len(load_frame_bank(out)) == 5 and load_frame_bank(out).meta["policy"] == "recorded episodes"
    with pytest.raises(SystemExit, match="--scenario"):
        main(["--scenario", "drive", "--out", str(out), "--count", "5", "--episodes", str(folder)])
