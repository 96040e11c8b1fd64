"""Chapter 2 — PPO on FetchReachDense-v4: the chapter's numbers, names and commands.

Section 2.3's hyper-parameter table is :class:`fetchrl.algos.ppo.PPOConfig`'s defaults; the passing
criteria are section 3.4's; the artifact names are section 3.1's table (``scripts/ch02_ppo_dense_reach.py``
and every path it writes are typed by the book's readers: they do not change).
"""

from __future__ import annotations

from fetchrl.algos.ppo import PPO, PPOConfig
from fetchrl.chapters.base import Ablation, Chapter
from fetchrl.config import Criterion, EvalConfig, TrainConfig

CHAPTER = Chapter(
    number=2,
    title="PPO on FetchReachDense",
    script="scripts/ch02_ppo_dense_reach.py",
    algorithm=PPO,
    defaults=TrainConfig(env_id="FetchReachDense-v4", seed=0, total_steps=500_000, n_envs=8, device="cpu",
                         algo=PPOConfig()),
    criteria=(
        Criterion("success rate", "success_rate", ">", 0.90),
        Criterion("mean return", "return_mean", ">", -10.0),
        Criterion("final distance (m)", "final_distance_mean", "<", 0.02),
    ),
    multi_seed_name="ch02_ppo_reachdense",
    commands=("train", "eval", "report", "all", "multi-seed", "ablate", "sweep", "check-env", "diagnose", "plot",
              "video"),
    baselines=("random", "zero"),
    eval_defaults=EvalConfig(n_episodes=100),
    seeds=5,  # exercise 2.2
    ablation=Ablation(exercise="2.4", param="clip_range", values=(0.1, 0.2, 0.4), seeds=1),
)
