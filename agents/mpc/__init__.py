"""Model-predictive control inside the world model (installed as ``astra_gym.agents.mpc``).

``planner.py`` (the ``Planner`` protocol, ``PlanResult``, candidate scoring), ``cem.py`` and
``mppi.py`` (one algorithm each), ``sampling.py`` (action distributions per space),
``world_model.py`` (the engine seen as native-action dynamics), ``controller.py`` (the receding-
horizon loop against a real simulator) and ``run_mpc.py`` (CLI). See ``agents/README.md``.
"""
