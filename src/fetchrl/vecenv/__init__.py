"""Vector envs: the process-parallel VecEnv and its torch-free worker."""
