"""The functional rollout core: explicit state in, explicit state out (see :mod:`.engine`)."""

from astra_gym.rollout.engine import DEFAULT_LAYOUT, RolloutConfig, WorldModelRollout
from astra_gym.rollout.state import RolloutState

__all__ = ["DEFAULT_LAYOUT", "RolloutConfig", "RolloutState", "WorldModelRollout"]
