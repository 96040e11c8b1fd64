"""Chapter 3 — SAC on FetchReachDense-v4: the chapter's numbers, names and commands.

The setup is :class:`fetchrl.algos.sac.SACConfig`'s defaults (SB3's ``SAC("MultiInputPolicy")``, 8 envs,
one gradient step per vector step, a million-transition buffer, a learned entropy coefficient); the
criteria are stricter than chapter 2's, and the artifacts follow chapter 2's layout with chapter 3's
names: ``checkpoints/sac_FetchReachDense-v4_seed0.zip``, ``results/ch03_sac_fetchreachdense-v4_seed0_eval.json``,
``runs/sac/FetchReachDense-v4/seed0/``.
"""

from __future__ import annotations

from fetchrl.algos.sac import SAC, SACConfig
from fetchrl.chapters import ch02
from fetchrl.chapters.base import Chapter
from fetchrl.config import Criterion, EvalConfig, TrainConfig

CHAPTER = Chapter(
    number=3,
    title="SAC on FetchReachDense",
    script="scripts/ch03_sac_dense_reach.py",
    algorithm=SAC,
    defaults=TrainConfig(env_id="FetchReachDense-v4", seed=0, total_steps=500_000, n_envs=8, device="cpu",
                         algo=SACConfig()),
    criteria=(
        Criterion("success rate", "success_rate", ">=", 0.95),
        Criterion("mean return", "return_mean", ">", -5.0),
        Criterion("final distance (m)", "final_distance_mean", "<", 0.03),
    ),
    multi_seed_name="ch03_sac_reachdense",
    commands=("train", "eval", "report", "all", "multi-seed", "compare", "throughput", "check-env", "diagnose", "plot",
              "video"),
    baselines=("random", "zero"),
    eval_defaults=EvalConfig(n_episodes=100),
    seeds=5,
    compare_with=ch02.CHAPTER,
)
