"""Agents that train and plan inside the world model (installed as astra_gym.agents)."""
