"""The astra-gym command line, run in-process (``main([...])``) on small envs."""

import json
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest

from astra_gym import cli
from astra_gym.envs.frame_bank import FrameBank
from astra_gym.envs.recording import read_video

STAND_IN = "AstraGymTestDrive-v0"


def _bank(seed):
    """A one-context frame bank; seed -1 means synthetic frames (no simulator behind them)."""
    scenario = "drive" if seed >= 0 else "synthetic"
    frames = np.zeros((1, 1, 16, 16, 3), np.uint8)
    actions = np.zeros((1, 2, 3), np.float32)
    return FrameBank(frames, np.array([seed]), actions, np.array([2]), {"scenario": scenario, "sim_config": {}})


class _TinyDriveEnv(gym.Env):
    """A fast stand-in for AstraEnv: 16x16 frames whose colour follows the action, 2 frames per step in
    info["frames"], 5-step episodes, and a ``core`` with the frame bank the episode starts from."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode="rgb_array", bank_seed=None, bank_index=0):
        self.render_mode = render_mode
        self.action_space = gym.spaces.Box(np.float32([-1, 0, 0]), np.float32([1, 1, 1]))
        self.observation_space = gym.spaces.Box(0, 255, (16, 16, 3), np.uint8)
        self.core = None if bank_seed is None else SimpleNamespace(scenario="drive", bank=_bank(bank_seed))
        self.bank_index = bank_index
        self.t = 0

    def _frame(self, action):
        value = (np.asarray(action, float) * [100, 200, 250] + [120, 0, 0]).clip(0, 255)
        return np.broadcast_to(value.astype(np.uint8), (16, 16, 3)).copy()

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        info = {} if self.core is None else {"bank_index": self.bank_index}
        return self._frame([0, 0, 0]), info

    def step(self, action):
        self.t += 1
        frames = np.stack([self._frame(action)] * 2)
        return frames[-1], 0.0, False, self.t >= 5, {"frames": frames}

    def render(self):
        return self._frame([0, 0, 0])


@pytest.fixture(scope="module", autouse=True)
def _stand_in():
    gym.register(STAND_IN, entry_point=_TinyDriveEnv)
    yield
    gym.registry.pop(STAND_IN, None)


def _run(*argv):
    return cli.main([str(a) for a in argv])


def test_every_flag_has_help():
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0])))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings} has no help"


def test_rollout_writes_every_chunk_frame(tmp_path, capsys):
    out = tmp_path / "videos" / "drive.mp4"  # missing folders are created
    assert _run("rollout", "--env", STAND_IN, "--steps", 3, "--out", out) == 0
    video = read_video(out)
    assert video.shape == (1 + 3 * 2, 256 + 60, 256, 3)  # reset frame + 2 per step; frame + HUD strip
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "frames/s" in printed


def test_rollout_without_hud_and_episode_end(tmp_path, capsys):
    out = tmp_path / "plain.mp4"
    assert _run("rollout", "--env", STAND_IN, "--steps", 9, "--policy", "zero", "--no-hud", "--out", out) == 0
    assert read_video(out).shape == (1 + 5 * 2, 256, 256, 3)
    assert "truncated after 5 steps" in capsys.readouterr().out


def test_scripted_and_random_policies_differ():
    space = gym.spaces.Box(np.float32([-1, 0, 0]), np.float32([1, 1, 1]))
    scripted = cli.scripted_policy("drive", space)
    steering = [float(scripted(t)[0]) for t in range(48)]
    assert min(steering) < -0.5 < 0.5 < max(steering)
    assert all(space.contains(scripted(t)) for t in range(64))
    fetch = cli.scripted_policy("manipulation", gym.spaces.Box(-1, 1, (4,), np.float32))
    assert fetch(0)[0] > 0 and fetch(0)[3] > 0 and fetch(25)[3] < 0
    buttons = cli.scripted_policy("explore", gym.spaces.MultiBinary(6))
    assert buttons(0).tolist() == [1, 0, 0, 0, 0, 0] and buttons(30).tolist() == [1, 0, 1, 0, 0, 0]


def _error(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        _run(*argv)
    err = capsys.readouterr().err
    assert exit_info.value.code != 0 and "Traceback" not in err
    return err


def test_unknown_env_lists_the_astra_ids(capsys):
    err = _error(capsys, "rollout", "--env", "Astra-Flying-v0", "--steps", 1)
    assert "unknown env id 'Astra-Flying-v0'" in err
    for env_id in cli._astra_ids():
        assert env_id in err


def test_output_path_errors(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    err = _error(capsys, "rollout", "--env", STAND_IN, "--out", blocker / "x.mp4")
    assert "cannot create the folder" in err and "choose another path" in err
    assert "must end in .mp4" in _error(capsys, "rollout", "--env", STAND_IN, "--out", tmp_path / "x.gif")
    assert "is a folder" in _error(capsys, "rollout", "--env", STAND_IN, "--out", tmp_path)


def test_model_flags_only_for_astra_envs(tmp_path, capsys):
    err = _error(capsys, "rollout", "--env", STAND_IN, "--checkpoint", "debug", "--out", tmp_path / "x.mp4")
    assert "--checkpoint only apply to Astra envs" in err


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "does not say which simulator state"),
        ({"bank_seed": 3, "bank_index": -1}, "came from a user image"),
        ({"bank_seed": -1}, "synthetic frames"),
    ],
)
def test_side_by_side_needs_a_simulator_start(tmp_path, capsys, kwargs, message):
    gym.register("AstraGymTestStart-v0", entry_point=_TinyDriveEnv, kwargs=kwargs)
    try:
        err = _error(capsys, "rollout", "--env", "AstraGymTestStart-v0", "--side-by-side", "--out", tmp_path / "x.mp4")
    finally:
        gym.registry.pop("AstraGymTestStart-v0")
    assert "--side-by-side is unavailable" in err and message in err
    assert list(tmp_path.iterdir()) == []


def test_side_by_side_runs_the_real_simulator(tmp_path):
    pytest.importorskip("Box2D")
    gym.register("AstraGymTestTwin-v0", entry_point=_TinyDriveEnv, kwargs={"bank_seed": 3})
    try:
        out = tmp_path / "twin.mp4"
        assert _run("rollout", "--env", "AstraGymTestTwin-v0", "--steps", 2, "--side-by-side", "--out", out) == 0
    finally:
        gym.registry.pop("AstraGymTestTwin-v0")
    video = read_video(out)
    assert video.shape[0] == 1 + 2 * 2 and video.shape[2] == 2 * 256 + 4
    right_panel = video[1:, 22:278, 260:]
    assert right_panel.std() > 10  # CarRacing's track and grass, not the flat stand-in frames


# --------------------------------------------------------------------------------------------- play


@pytest.fixture
def headless(monkeypatch):
    pygame = pytest.importorskip("pygame")
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    pygame.display.init()
    yield pygame
    pygame.display.quit()


def test_keyboard_control_maps_keys_to_actions(headless):
    pygame = headless
    control = cli.KeyboardControl("drive", gym.spaces.Box(np.float32([-1, 0, 0]), np.float32([1, 1, 1])))

    def key(kind, code):
        return pygame.event.Event(kind, key=code)

    control.handle([key(pygame.KEYDOWN, pygame.K_UP), key(pygame.KEYDOWN, pygame.K_LEFT)])
    assert control.action().tolist() == [-1.0, 1.0, 0.0]
    control.handle([key(pygame.KEYUP, pygame.K_LEFT), key(pygame.KEYDOWN, pygame.K_s)])
    assert control.action().tolist() == [0.0, 1.0, pytest.approx(0.8)]
    explore = cli.KeyboardControl("explore", gym.spaces.MultiBinary(6))
    explore.handle([key(pygame.KEYDOWN, pygame.K_w), key(pygame.KEYDOWN, pygame.K_RIGHT)])
    assert explore.action().tolist() == [1, 0, 0, 1, 0, 0]
    explore.handle([key(pygame.KEYDOWN, pygame.K_ESCAPE)])
    assert explore.quit


def test_play_headless_with_scripted_keys(headless, tmp_path, capsys):
    pygame = headless
    pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_UP))  # hold gas
    out = tmp_path / "play.mp4"
    assert _run("play", "--env", STAND_IN, "--max-steps", 3, "--fps", 1000, "--size", 64, "--record", out) == 0
    assert "played 3 steps" in capsys.readouterr().out
    video = read_video(out)
    assert video.shape[0] == 1 + 3 * 2
    assert video[-1, 10, 10, 1] > 150 > video[0, 10, 10, 1]  # the stand-in's green channel is the gas


def test_play_quits_on_escape(headless, capsys):
    pygame = headless
    pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_ESCAPE))
    assert _run("play", "--env", STAND_IN, "--max-steps", 1000, "--fps", 1000, "--size", 64) == 0
    assert "played 0 steps" in capsys.readouterr().out


def test_play_without_display_is_a_clean_error(monkeypatch, capsys):
    monkeypatch.setattr("astra_gym.envs.render.sys.platform", "linux")
    for name in ("SDL_VIDEODRIVER", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    err = _error(capsys, "play", "--env", STAND_IN, "--max-steps", 1)
    assert "cannot open a window" in err and "rgb_array" in err


# --------------------------------------------------------------------------------------------- Astra envs


def test_rollout_on_astra_debug(tmp_path, capsys):
    import torch

    out = tmp_path / "debug.mp4"
    before = torch.get_num_threads()
    try:
        assert (
            _run("rollout", "--env", "Astra-Debug-v0", "--steps", 2, "--device", "cpu", "--out", out, "--threads", 2)
            == 0
        )
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    video = read_video(out)
    assert video.shape[0] >= 3 and video.shape[1:] == (256 + 60, 256, 3)  # context frame(s) + 2 steps
    assert "frames/s" in capsys.readouterr().out


def test_missing_bundled_model_says_to_use_debug(tmp_path, capsys):
    err = _error(
        capsys,
        "rollout",
        "--env",
        "Astra-Manipulation-v0",
        "--checkpoint",
        "no-such-model",
        "--out",
        tmp_path / "x.mp4",
    )
    assert "cannot load the world model" in err and "--checkpoint debug" in err
    assert list(tmp_path.iterdir()) == []


def test_synthetic_start_has_no_side_by_side(tmp_path, capsys):
    err = _error(capsys, "rollout", "--env", "Astra-Debug-v0", "--side-by-side", "--out", tmp_path / "x.mp4")
    assert "--side-by-side is unavailable" in err and "synthetic frames" in err and "Astra-Drive-v0" in err


def test_unavailable_device_is_a_clean_error(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    err = _error(capsys, "rollout", "--env", "Astra-Debug-v0", "--device", "cuda", "--out", tmp_path / "x.mp4")
    assert "--device cuda" in err and "CUDA is not available" in err


def test_play_on_astra_debug(headless, capsys):
    assert _run("play", "--env", "Astra-Debug-v0", "--device", "cpu", "--max-steps", 1, "--fps", 1000) == 0
    assert "played 1 step\n" in capsys.readouterr().out


def test_dataclass_entry_points_print_their_resolved_config(capsys):
    """``--print-config`` shows the flags applied to the defaults, then exits without running."""
    from astra_gym.agents.mpc import run_mpc

    with pytest.raises(SystemExit) as exit_info:
        run_mpc.main(["--horizon", "12", "--prior", "centre", "--value", "none", "--print-config"])
    assert exit_info.value.code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["horizon"] == 12 and printed["prior"] == "centre" and printed["value"] is None
    assert printed["candidates"] == run_mpc.Args().candidates


@pytest.mark.parametrize(
    "module",
    [
        "astra_gym.agents.dyna",
        "astra_gym.data.generate",
        "astra_gym.data.latent_cache",
        "astra_gym.training.bundle",
        "astra_gym.training.add_reward",
        "astra_gym.envs.frame_bank",
        "astra_gym.agents.mpc.run_mpc",
        "astra_gym.agents.train_sb3",
        "astra_gym.training.train_reward",
        "astra_gym.training.train_vae",
        "astra_gym.training.train_world_model",
        "astra_gym.world_model.release_checkpoint",
        "benchmarks.action_following",
        "benchmarks.env_throughput",
        "benchmarks.eval_world_model",
        "benchmarks.model_speed",
        "benchmarks.rollout_speed",
        "benchmarks.summarize_evals",
        "benchmarks.train_speed",
        "benchmarks.imagined_vs_real",
        "benchmarks.planning_signal",
        "benchmarks.transfer",
        "benchmarks.vae_details",
    ],
)
def test_config_entry_points_show_their_help(module, capsys):
    import importlib

    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main(["--help"])
    assert exit_info.value.code == 0
    assert "--print-config" in capsys.readouterr().out


def test_fields_without_a_default_are_required_flags(capsys):
    from astra_gym.data import generate

    with pytest.raises(SystemExit) as exit_info:
        generate.main(["--scenario", "drive", "--episodes", "2"])
    assert exit_info.value.code == 2 and "required: --steps, --out" in capsys.readouterr().err


def test_astra_gym_commands_print_their_resolved_config(capsys):
    """The subcommands' flags come from dataclasses, like every other entry point (``--print-config``)."""
    with pytest.raises(SystemExit) as exit_info:
        _run("rollout", "--steps", 3, "--no-hud", "--out", "x.mp4", "--print-config")
    assert exit_info.value.code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["steps"] == 3 and printed["hud"] is False and printed["out"] == "x.mp4"
    assert printed["env"] == "Astra-Drive-v0" and printed["size"] == 256
