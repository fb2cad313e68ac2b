"""Manipulation: ``FetchPush-v4`` (gymnasium-robotics on MuJoCo 3.3.x), rendered headless with EGL.

Choices (see ``astra_gym/data/README.md`` for the measurements):

* Rendering: ``MUJOCO_GL=egl`` (set here when unset, before mujoco is imported) and the frame is
  rendered directly at ``size x size`` (MuJoCo's 4x multisampling anti-aliases it); the scene
  has no shadows or reflections to turn off.
* Camera (:data:`CAMERA`): the stock camera sees the whole robot from 2.5 m, where the 5 cm block
  is about one pixel at 64x64. Ours looks down (65 degrees) from 1 m at the area where block and
  goal are sampled (within 15 cm of the gripper's start), from the table's far corner
  (azimuth 150): the whole table top fills the frame (the block is ~3-4 px wide at 64x64), the
  arm enters from the top, and the hand stays in view wherever it moves above the table
  (99% of recorded frames with the default policies); only a few centimetres right behind the
  wrist are hidden from this side. Measured later (session 18), the arm still covers the goal
  marker or the block in half of the reset frames. ``camera="front"`` (:data:`CAMERAS`) looks from
  the table's front (45 degrees, 0.9 m): the arm reaches from behind the objects, and over expert
  episodes the block is visible in 0.97 of the frames at about 10 px (stock: 0.72, 5 px), the goal
  marker in 0.73 (0.61). Models are trained for one camera; the bundled ones use the stock camera.
* The mocap target (where the action moves the hand to) is drawn by the stock model as a small
  green cube with 1 m long crosshair bars, which cross the table as thin green lines; they are
  debug markers without collision, and are made transparent (``hide_mocap_markers``).
* ``frame_skip=1``: one env step is already 20 MuJoCo substeps (0.04 s, 25 fps); a full action
  moves the gripper target by 5 cm, which is a few pixels.
* The gripper: FetchPush-v4's model has no finger actuators (``model.nu == 0``) and the env
  blocks the fingers (``block_gripper=True``), so the 4th action component (open/close) is
  accepted and has no effect; the fingers stay closed. That is the stock task and the default.
  ``env_id="FetchPickAndPlace-v4"`` is the same scene with actuated fingers (its goal is in the
  air half of the time); everything here, replay included, works with it unchanged.

Poses (metres, world frame): ``ee_pos`` and ``ee_quat`` (w, x, y, z) of the ``robot0:grip`` site,
``gripper`` = sum of the two finger joint positions (opening), ``object_pos`` (``object0`` site),
``goal_pos`` (the episode's target).
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import dataclasses  # noqa: E402

import gymnasium as gym  # noqa: E402
import gymnasium_robotics  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from astra_gym.data.sims.base import Simulator  # noqa: E402
from astra_gym.data.sims.frame_skip import FrameSkip  # noqa: E402

__all__ = ["CAMERA", "CAMERAS", "ManipulationConfig", "ManipulationSimulator"]

gym.register_envs(gymnasium_robotics)

#: Free camera (mjvCamera fields) framing gripper, block and goal; see the module docstring.
CAMERA = {"distance": 1.0, "azimuth": 150.0, "elevation": -65.0, "lookat": [1.32, 0.75, 0.45]}
#: Named cameras ``ManipulationConfig(camera=NAME)`` accepts: the stock one and a front view.
CAMERAS = {
    "stock": CAMERA,
    "front": {"distance": 0.9, "azimuth": 180.0, "elevation": -45.0, "lookat": [1.32, 0.75, 0.45]},
}

_NATIVE_SIZE = 480  # gymnasium-robotics' default render size
_FINGERS = ("robot0:r_gripper_finger_joint", "robot0:l_gripper_finger_joint")


@dataclasses.dataclass(frozen=True)
class ManipulationConfig:
    """FetchPush settings.

    Attributes:
        env_id: Gymnasium id (``FetchPickAndPlace-v4`` for a gripper that moves, see above).
        size: Rendered frame side (None: 480, the package default).
        frame_skip: Env steps (0.04 s each) per recorded step.
        camera: mjvCamera fields (distance, azimuth, elevation, lookat), or a name of :data:`CAMERAS`
            (stored as its fields).
        hide_mocap_markers: Make the green mocap-target markers transparent (visual only).
        env_kwargs: Extra ``gym.make`` kwargs (e.g. ``{"reward_type": "dense"}``).
    """

    env_id: str = "FetchPush-v4"
    size: int | None = 64
    frame_skip: int = 1
    camera: dict = dataclasses.field(default_factory=lambda: dict(CAMERA))
    hide_mocap_markers: bool = True
    env_kwargs: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.camera, str):
            if self.camera not in CAMERAS:
                raise ValueError(f"unknown camera {self.camera!r}; choose one of {sorted(CAMERAS)} or give its fields")
            object.__setattr__(self, "camera", dict(CAMERAS[self.camera]))


class ManipulationSimulator(Simulator):
    """FetchPush with the settings of :class:`ManipulationConfig`."""

    scenario = "manipulation"
    pose_keys = ("ee_pos", "ee_quat", "gripper", "object_pos", "goal_pos")
    env_fps = 25

    def __init__(self, config: ManipulationConfig | None = None) -> None:
        super().__init__(config or ManipulationConfig())

    @property
    def render_size(self) -> int:
        """Side of the rendered (and stored) frame."""
        return self.config.size or _NATIVE_SIZE

    def make_env(self) -> gym.Env:
        camera = {k: np.asarray(v, np.float64) if k == "lookat" else v for k, v in self.config.camera.items()}
        env = gym.make(
            self.config.env_id,
            render_mode="rgb_array",
            width=self.render_size,
            height=self.render_size,
            default_camera_config=camera,
            max_episode_steps=-1,  # the recorder decides the length
            disable_env_checker=True,
            **self.config.env_kwargs,
        )
        if self.config.hide_mocap_markers:
            _hide_body_geoms(env.unwrapped.model, "robot0:mocap")
        return FrameSkip(env, self.config.frame_skip)

    def pose(self, env: gym.Env) -> dict[str, np.ndarray]:
        robot = env.unwrapped
        model, data = robot.model, robot.data
        grip = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "robot0:grip")
        obj = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "object0")
        quat = np.empty(4, np.float64)
        mujoco.mju_mat2Quat(quat, data.site_xmat[grip])
        fingers = [model.jnt_qposadr[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, j)] for j in _FINGERS]
        return {
            "ee_pos": np.array(data.site_xpos[grip], np.float64),
            "ee_quat": quat,
            "gripper": np.float64(data.qpos[fingers].sum()),
            "object_pos": np.array(data.site_xpos[obj], np.float64),
            "goal_pos": np.array(robot.goal, np.float64),
        }

    def attrs(self) -> dict:
        return {
            **super().attrs(),
            "env_kwargs": dict(self.config.env_kwargs),
            "fps": self.env_fps / self.config.frame_skip,
            "native_size": [_NATIVE_SIZE, _NATIVE_SIZE],
            "camera": dict(self.config.camera),
            "action_names": ["dx", "dy", "dz", "gripper"],
        }


def _hide_body_geoms(model: mujoco.MjModel, body: str) -> None:
    """Makes a body's geoms fully transparent (rendering only; they have no collision anyway)."""
    body_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, body)
    if body_id < 0:
        raise ValueError(f"the model has no body {body!r}; set hide_mocap_markers=False for this env")
    model.geom_rgba[model.geom_bodyid == body_id, 3] = 0.0
