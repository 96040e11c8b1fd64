"""SAC + HER: SB3's ``SAC("MultiInputPolicy")`` with ``HerReplayBuffer`` — chapter 4's learner.

:class:`HerSACConfig` is :class:`~fetchrl.algos.sac.SACConfig` plus HER's two settings, passed to SB3 as
``replay_buffer_class=HerReplayBuffer, replay_buffer_kwargs={n_sampled_goal, goal_selection_strategy}``;
:data:`SAC_HER` is its descriptor (short name ``sac_her``: ``checkpoints/sac_her_FetchPush-v4_seed0.zip``,
``runs/sac_her/FetchPush-v4/seed0/``). The control arm of chapter 4 is plain :data:`~fetchrl.algos.sac.SAC`
with the same numbers (a plain replay buffer). On the fast path :class:`fetchrl.algos.fastsac.FastSAC`
swaps SB3's buffer for :class:`fetchrl.algos.fasther.FlatHerReplayBuffer` (the same draws and numbers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fetchrl import metrics
from fetchrl.algos.base import POSITIVE_INT, Algorithm, Choice, hyperparameter
from fetchrl.algos.sac import SAC, SACConfig

#: SB3's goal selection strategies (``stable_baselines3.her.GoalSelectionStrategy``), by their keys.
GOAL_STRATEGIES = ("future", "final", "episode")


@dataclass(frozen=True)
class HerSACConfig(SACConfig):
    """SAC's hyper-parameters plus HER's (SB3's ``HerReplayBuffer`` keyword arguments)."""

    n_sampled_goal: int = hyperparameter(4, POSITIVE_INT, sb3=False)
    """Relabeled transitions per real one: a batch is n/(n+1) relabeled (4: 80 %)."""
    goal_selection_strategy: str = hyperparameter("future", Choice(GOAL_STRATEGIES), sb3=False)
    """Where a relabeled goal comes from: future (a later achieved goal of the same episode), final, episode."""

    def sb3_kwargs(self) -> dict[str, Any]:
        """SAC's keyword arguments with SB3's ``HerReplayBuffer`` and its two settings."""
        from stable_baselines3 import HerReplayBuffer

        return {**super().sb3_kwargs(), "replay_buffer_class": HerReplayBuffer,
                "replay_buffer_kwargs": {"n_sampled_goal": self.n_sampled_goal,
                                         "goal_selection_strategy": self.goal_selection_strategy}}


SAC_HER = Algorithm(
    name="sac_her",
    title="SAC + HER",
    config_class=HerSACConfig,
    load_sb3_class=SAC.load_sb3_class,
    load_fast_class=SAC.load_fast_class,
    diagnostics_tags=(*metrics.SAC_CURVES, metrics.FPS),
    checkpoint_members=SAC.checkpoint_members,
    on_policy=False,
)
