"""Agents that learn or plan inside the world model (installed as ``astra_gym.agents``).

Nothing is imported here (Stable-Baselines3 and the simulators load only when used); import the
modules themselves:

================================  ==========================================================
module                            what
================================  ==========================================================
``agents.sb3_vec_env``            ``AstraSB3VecEnv``: SB3 ``VecEnv`` over the batched env
``agents.real_env``               ``make_real_env``: the real simulator with the Astra interface
``agents.evaluation``             ``Policy`` protocol, random / SB3 policies, seeded evaluation
``agents.train_sb3``              CLI: PPO/A2C inside (or ``--env-real``), evaluated for real
``agents.mpc``                    CEM / MPPI planners, the MPC controller, ``run_mpc`` CLI
================================  ==========================================================

See ``agents/README.md``.
"""
