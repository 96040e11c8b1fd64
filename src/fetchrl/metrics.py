"""TensorBoard tag names, exactly as Stable-Baselines3 logs them.

The from-scratch lab logs the same keys so both curves overlay in one TensorBoard.
"""

from typing import Final

EP_REW_MEAN: Final = "rollout/ep_rew_mean"
EP_LEN_MEAN: Final = "rollout/ep_len_mean"
SUCCESS_RATE: Final = "rollout/success_rate"
VALUE_LOSS: Final = "train/value_loss"
POLICY_GRADIENT_LOSS: Final = "train/policy_gradient_loss"
APPROX_KL: Final = "train/approx_kl"
CLIP_FRACTION: Final = "train/clip_fraction"
ENTROPY_LOSS: Final = "train/entropy_loss"
EXPLAINED_VARIANCE: Final = "train/explained_variance"
LOSS: Final = "train/loss"
STD: Final = "train/std"
FPS: Final = "time/fps"

#: The chapter's table in section 3.3 ("Healthy training looks like"), in its order.
CHAPTER_CURVES: Final = (EP_REW_MEAN, SUCCESS_RATE, VALUE_LOSS, APPROX_KL, CLIP_FRACTION, ENTROPY_LOSS)
#: Every tag a training run must leave in its event files.
REQUIRED_TAGS: Final = (*CHAPTER_CURVES, EXPLAINED_VARIANCE, FPS)

# ---------------------------------------------------------------- SAC (chapters 3 and 4)
# SB3's SAC logs these four once per log dump (the mean over the gradient steps of the last train() call).
ENT_COEF: Final = "train/ent_coef"
ENT_COEF_LOSS: Final = "train/ent_coef_loss"
"""Only logged when ``ent_coef="auto..."`` (a learned coefficient)."""
ACTOR_LOSS: Final = "train/actor_loss"
CRITIC_LOSS: Final = "train/critic_loss"
# fetchrl.pipeline.offpolicy_callbacks.SACDiagnosticsCallback logs the rest.
Q1_MEAN: Final = "q/critic1_mean"
Q1_MAX: Final = "q/critic1_max"
Q2_MEAN: Final = "q/critic2_mean"
Q2_MAX: Final = "q/critic2_max"
Q_TARGET_MEAN: Final = "q/target_mean"
"""The TD target ``r + gamma (1 - done) (min Q_targ(s', a') - ent_coef log pi(a'|s'))`` of the batch."""
Q_TARGET_MAX: Final = "q/target_max"
EVAL_Q: Final = "q/eval_q_start"
"""min(Q1, Q2) at the first state and action of separate-env evaluation episodes (mean over episodes)."""
EVAL_MC_RETURN: Final = "q/eval_mc_return"
"""The discounted soft Monte-Carlo return those episodes really got from that state and action."""
Q_OVERESTIMATION: Final = "q/overestimation"
"""``EVAL_Q - EVAL_MC_RETURN``: positive means the critics promise more than the policy gets."""
REPLAY_FILL: Final = "replay/fill"
"""Share of the replay buffer holding transitions, in [0, 1]."""
REPLAY_SAMPLE_AGE: Final = "replay/sample_age_mean"
"""Mean age, in environment steps, of the transitions of a uniformly sampled batch."""

#: What a SAC run must leave in its event files for ``diagnose --algo sac``.
SAC_CURVES: Final = (EP_REW_MEAN, SUCCESS_RATE, ENT_COEF, ACTOR_LOSS, CRITIC_LOSS)
#: Logged by SACDiagnosticsCallback (or only with a learned ent_coef); rules that read them say "info" without.
SAC_OPTIONAL: Final = (ENT_COEF_LOSS, Q1_MEAN, Q1_MAX, Q2_MEAN, Q2_MAX, Q_TARGET_MEAN, Q_TARGET_MAX,
                       EVAL_Q, EVAL_MC_RETURN, Q_OVERESTIMATION, REPLAY_FILL, REPLAY_SAMPLE_AGE)

# ---------------------------------------------------------------- HER (chapter 4)
# fetchrl.pipeline.her_callbacks.HERDiagnosticsCallback logs these ("HER's truth serum").
HER_RELABELED_REWARD0: Final = "her/relabeled_reward0_fraction"
"""Share of relabeled (virtual) transitions with reward 0 (a success) in a batch sampled like HER's."""
HER_REAL_REWARD0: Final = "her/real_reward0_fraction"
"""The same share for the transitions as they were collected (their stored reward, goal not relabeled)."""
OBJECT_DISPLACEMENT: Final = "her/object_displacement"
"""Tasks with an object (Push): mean over the episodes finished since the last log dump of
``||achieved_goal at the episode's end - at its start||`` in metres: did the arm move the object at all?"""

#: Logged by HERDiagnosticsCallback (the relabeling fractions only with a HER buffer, the displacement only
#: on a task with an object); ``diagnose --algo sac_her`` reads them when present.
HER_OPTIONAL: Final = (HER_RELABELED_REWARD0, HER_REAL_REWARD0, OBJECT_DISPLACEMENT)
