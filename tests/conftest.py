"""Shared fixtures: one tiny *real* training run per test session, reused read-only."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

from fetchrl.artifacts import RunPaths  # noqa: E402
from fetchrl.config import EvalConfig, TrainConfig  # noqa: E402

#: Small enough for seconds of training, large enough for several PPO updates and episodes.
TINY = TrainConfig(total_steps=2048, n_envs=2, n_steps=256, batch_size=64, n_epochs=4, seed=0)
TINY_EVAL = EvalConfig(n_episodes=6)


@pytest.fixture(autouse=True)
def _no_env_worker_outlives_its_test() -> Iterator[None]:
    """Close the process VecEnvs a test dropped without closing: each holds a forked worker with a copy
    of this process (~1 GB resident late in the session) until the session ends otherwise."""
    yield
    from fetchrl.vecenv.process import close_open_envs

    close_open_envs()


@pytest.fixture
def overlap_calls(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """One entry per FastSAC update the test makes, in order: True when it was made while the envs stepped
    (``FastSAC._train_lean`` got a batch drawn ahead), False when steps and updates took turns."""
    from fetchrl.algos.fastsac import FastSAC

    calls: list[bool] = []
    inner = FastSAC._train_lean

    def spy(self: FastSAC, lean: Any, buf: Any, gradient_steps: int, batch_size: int, batches: Any) -> None:
        calls.append(batches is not None)
        inner(self, lean, buf, gradient_steps, batch_size, batches)

    monkeypatch.setattr(FastSAC, "_train_lean", spy)
    return calls


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> RunPaths:
    """A real 2,048-step PPO run with its eval JSON, under a session temp dir. Do not modify it."""
    from fetchrl.pipeline.evaluate import evaluate
    from fetchrl.pipeline.setup import runtime_for
    from fetchrl.pipeline.train import train

    root = tmp_path_factory.mktemp("tiny_run")
    paths = RunPaths(TINY.env_id, TINY.seed, root)
    runtime = runtime_for(TINY)
    train(TINY, paths, progress=False, runtime=runtime)
    evaluate(paths, TINY_EVAL, runtime, progress=False)
    return paths


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for the test (restored after): small MLPs on 2 shared cores train faster, and the
    subprocesses the tests start (OMP_NUM_THREADS=1) produce the same bits."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
