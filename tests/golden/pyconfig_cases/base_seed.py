randomness = dict(seed=1, deterministic=False)
hooks = dict(logger=dict(interval=50), checkpoint=dict(interval=1))
