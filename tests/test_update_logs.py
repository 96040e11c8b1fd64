"""Every PPO update reaches TensorBoard, the last one too (fetchrl.pipeline.callbacks.UpdateLogCallback).

SB3 writes an update's ``train/*`` scalars with the next rollout's ``dump_logs``, so on its own the
last update is never written and a one-rollout run has no ``train/*`` curve. These tests train for
real (fast path and plain SB3 PPO on ``--reference-env``) and read the event files back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fetchrl import metrics
from fetchrl.analysis.tbreader import event_files, read_scalars
from fetchrl.artifacts import RunPaths
from fetchrl.config import TrainConfig
from fetchrl.pipeline.train import train

#: The four train/* curves the chapter's diagnosis reads.
UPDATE_TAGS = (metrics.APPROX_KL, metrics.CLIP_FRACTION, metrics.ENTROPY_LOSS, metrics.VALUE_LOSS)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _raw_steps(tb_dir: Path, tag: str) -> list[int]:
    """Every step ``tag`` was written at, in file order (duplicates kept; tbreader would merge them)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    return [int(event.step) for path in event_files(tb_dir) for event in EventFileLoader(str(path)).Load()
            if any(v.tag == tag for v in event.summary.value)]


@pytest.mark.parametrize("config", [
    # the chapter's 8 envs on the fast path (FastPPO): the run `train --total-steps 4096 --n-envs 8 --n-steps 512`
    pytest.param(TrainConfig(total_steps=4096, n_envs=8, n_steps=512), id="fast-8x512"),
    # plain SB3 PPO on Gymnasium-Robotics' env (--reference-env)
    pytest.param(TrainConfig(total_steps=256, n_envs=2, n_steps=128, batch_size=64, fast_env=False),
                 id="reference-2x128"),
])
def test_a_one_rollout_run_logs_its_only_update(tmp_path: Path, config: TrainConfig) -> None:
    paths = RunPaths(config.env_id, config.seed, tmp_path)
    meta = train(config, paths, progress=False)
    assert meta.num_timesteps == config.total_steps  # exactly one rollout
    scalars = read_scalars(paths.tb_dir, UPDATE_TAGS)  # raises if a tag is missing
    for tag in UPDATE_TAGS:
        np.testing.assert_array_equal(scalars[tag].steps, [meta.num_timesteps], err_msg=tag)
        assert np.isfinite(scalars[tag].values).all(), tag


def test_every_update_is_logged_once_at_its_rollout_step(tmp_path: Path) -> None:
    """Three rollouts: update k at step k * 256, beside the rollout it learned from; no step written twice."""
    config = TrainConfig(total_steps=768, n_envs=2, n_steps=128, batch_size=64, n_epochs=2, fast_env=False)
    paths = RunPaths(config.env_id, config.seed, tmp_path)
    train(config, paths, progress=False)
    rollout_steps = [256, 512, 768]
    scalars = read_scalars(paths.tb_dir, (*UPDATE_TAGS, metrics.EP_REW_MEAN))
    np.testing.assert_array_equal(scalars[metrics.EP_REW_MEAN].steps, rollout_steps)
    for tag in UPDATE_TAGS:
        assert _raw_steps(paths.tb_dir, tag) == rollout_steps, tag
