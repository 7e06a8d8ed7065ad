"""paddy's Hydra sweeper plugin: ``hydra/sweeper=paddy_optuna`` (see :mod:`.paddy_sweeper`)."""
