"""astra-gym: Gymnasium environments backed by the Astra action-conditioned video world model."""

__version__ = "0.1.0"
