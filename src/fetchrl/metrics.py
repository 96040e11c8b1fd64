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
