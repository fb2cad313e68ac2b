"""Gymnasium environments (installed as astra_gym.envs)."""
