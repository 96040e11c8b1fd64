"""Tasks: env ids, the env factory, fast bit-equal envs and the check-env rules."""
