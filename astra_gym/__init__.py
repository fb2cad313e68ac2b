"""astra-gym: Gymnasium environments backed by the Astra action-conditioned video world model.

``import astra_gym`` registers the environment ids (``Astra-Drive-v0``, ``Astra-Manipulation-v0``,
``Astra-Explore-v0``, ``Astra-Debug-v0``) with string entry points; torch and the models load only
when an env is made.
"""

__version__ = "0.1.0"

from astra_gym import envs as envs  # noqa: E402  (registers the ids; imports gymnasium only)
