"""Chapter 4 — SAC + HER on sparse FetchReach-v4 and FetchPush-v4: the chapter's numbers, names and commands.

Two arms share everything but the replay buffer: ``--her`` trains :data:`CHAPTER` (SB3's ``HerReplayBuffer``,
``n_sampled_goal`` 4, ``future``), without it the control arm :data:`NO_HER` (a plain replay buffer). The
setup is chapter 3's SAC with gamma 0.95 and learning_starts 1,000; FetchPush-v4 trains 2M steps with a
fixed ent_coef 0.05 (with ``auto`` the book's Push runs collapsed to 5 % success) and must also end
within 5 cm. Artifacts: ``checkpoints/sac_her_FetchPush-v4_seed0.zip`` / ``sac_FetchPush-v4_seed0.zip``,
``results/ch04_sac_her_fetchpush-v4_seed0_eval.json``, ``runs/sac_her/FetchPush-v4/seed0/``.
"""

from __future__ import annotations

from fetchrl.algos.her import SAC_HER, HerSACConfig
from fetchrl.algos.sac import SAC, SACConfig
from fetchrl.chapters.base import Ablation, Chapter
from fetchrl.config import Criterion, EvalConfig, TrainConfig

#: The book's sparse-reward setting, common to both arms (everything else is chapter 3's SAC).
GAMMA, LEARNING_STARTS = 0.95, 1_000
SUCCESS = Criterion("success rate", "success_rate", ">=", 0.90)
PUSH = "FetchPush-v4"

_COMMON = dict(
    number=4,
    title="SAC + HER on sparse Reach and Push",
    script="scripts/ch04_her_sparse_reach_push.py",
    criteria=(SUCCESS,),
    env_criteria={PUSH: (SUCCESS, Criterion("final distance (m)", "final_distance_mean", "<", 0.05))},
    env_overrides={PUSH: {"total_steps": 2_000_000, "ent_coef": 0.05}},
    commands=("train", "eval", "report", "all", "compare", "ablation", "multi-seed", "check-env", "diagnose", "plot",
              "video"),
    baselines=("random", "zero"),
    eval_defaults=EvalConfig(n_episodes=100),
    seeds=3,
)

NO_HER = Chapter(
    algorithm=SAC,
    defaults=TrainConfig(env_id="FetchReach-v4", seed=0, total_steps=500_000, n_envs=8, device="cpu",
                         algo=SACConfig(gamma=GAMMA, learning_starts=LEARNING_STARTS)),
    multi_seed_name="ch04_sac_{env}",
    arm_title="SAC without HER",
    diagnose_rules="sac_sparse",  # sparse goals: chapter 4's tests and numbers, not chapter 3's dense-Reach ones
    **_COMMON,  # type: ignore[arg-type]
)

CHAPTER = Chapter(
    algorithm=SAC_HER,
    defaults=TrainConfig(env_id="FetchReach-v4", seed=0, total_steps=500_000, n_envs=8, device="cpu",
                         algo=HerSACConfig(gamma=GAMMA, learning_starts=LEARNING_STARTS)),
    multi_seed_name="ch04_sac_her_{env}",
    ablation=Ablation(exercise="experiment 3", param="n_sampled_goal", values=(2, 4, 8), seeds=1, flag="--nsg-values"),
    control=NO_HER,
    **_COMMON,  # type: ignore[arg-type]
)
