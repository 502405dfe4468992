"""Design exploration: a seeded search over AttendNeXt designs with hardware in the loop.

``design_space`` (the choices), ``naswot`` (the training-free accuracy proxy) and ``pareto``
(dominance with a noise band) serve ``search``, which screens designs, compiles and times the
promising ones on the target and saves the Pareto front as models (``models/saved.py``).
"""
