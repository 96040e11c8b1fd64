"""What tells an off-policy (SAC) run's health beyond SB3's own ``train/*``: Q statistics, replay buffer, over-estimation.

:class:`SACDiagnosticsCallback` logs, under the names of ``fetchrl.metrics`` (SAC section):

- every ``every`` gradient steps, the Q statistics of a batch drawn uniformly from the replay buffer
  (the way SB3 draws the batch of a gradient step): mean/max of both critics at the stored
  ``(s, a)`` and of the TD target ``r + gamma (1 - done) (min Q_targ(s', a') - ent_coef log pi(a'|s'))``;
  the buffer's fill (``replay/fill``) and the batch's mean age in environment steps;
- every ``eval_every`` environment steps, ``eval_episodes`` episodes on a separate env (never the
  training envs): ``min(Q1, Q2)`` at each episode's first state and action against the discounted
  *soft* Monte-Carlo return that episode really got, and their gap ``q/overestimation``.

:class:`EntCoefFloorCallback` applies ``--ent-coef-min`` (``SACConfig.ent_coef_min``): a learned entropy
coefficient is raised back to the floor right before every update (its docstring gives the exact timing).

Training is untouched, bit for bit. The batch is drawn with this callback's own
``numpy.random.Generator`` (SB3's ``ReplayBuffer.sample`` draws from numpy's global RNG, which the
training's own batches use), and every torch sample (the next action of the target, the evaluation
episodes' actions) is drawn inside ``torch.random.fork_rng`` from a seed of that Generator, so the
global torch RNG is where it was. Nothing is written to the buffer, the networks or the optimisers.

Why the soft, stochastic return: SAC's critics estimate the *soft* value of the *stochastic* policy,
``Q(s0, a0) = E[sum_t gamma^t r_t - ent_coef sum_{t>=1} gamma^t log pi(a_t|s_t)]``, so the honest
Monte-Carlo counterpart samples actions from the policy and adds the entropy bonus with the current
ent_coef (a deterministic episode without the bonus would call an early, high-entropy critic an
over-estimator by ``ent_coef * H / (1 - gamma)``, about 100 at the start). Fetch never terminates,
it truncates at 50 steps, and SB3 bootstraps through the truncation, so the critics value an
endless episode: the return past step 50 is taken as the last step's soft reward held forever
(``gamma^50 / (1 - gamma)`` times it; on Fetch the arm holds its last position), an approximation
stated here rather than hidden. The gap is in return units (FetchReachDense: returns in [-100, 0]).
"""

from __future__ import annotations

from typing import NamedTuple, cast

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback

from fetchrl import metrics
from fetchrl.errors import FetchRLError
from fetchrl.runtime import Runtime
from fetchrl.tasks import envs


class QStats(NamedTuple):
    """Q statistics of one batch (floats), as logged."""

    critic1_mean: float
    critic1_max: float
    critic2_mean: float
    critic2_max: float
    target_mean: float
    target_max: float
    sample_age_mean: float
    """Mean age of the batch's transitions in environment steps (buffer positions times n_envs)."""


class MCGap(NamedTuple):
    """Q at the start of evaluation episodes against what those episodes returned (means over episodes)."""

    q_start: float
    mc_return: float

    @property
    def overestimation(self) -> float:
        return self.q_start - self.mc_return


#: A batch's observations as tensors: ``{key: [batch, *shape]}`` for dict observations (Fetch), else [batch, *shape].
TensorObs = torch.Tensor | dict[str, torch.Tensor]


class Batch(NamedTuple):
    """Stored transitions as tensors, like SB3's ``ReplayBufferSamples`` (rewards and dones [batch, 1])."""

    obs: TensorObs
    next_obs: TensorObs
    actions: torch.Tensor
    rewards: torch.Tensor
    dones: torch.Tensor


def _replay_buffer(model: SAC) -> ReplayBuffer:
    if model.replay_buffer is None:  # SB3 builds it in the constructor; None only before _setup_model
        raise FetchRLError("SACDiagnosticsCallback: the model has no replay buffer")
    return model.replay_buffer


def _ent_coef(model: SAC) -> torch.Tensor:
    """SAC's current entropy coefficient, [1] (learned: ``exp(log_ent_coef)``; fixed: ``ent_coef_tensor``)."""
    log_ent_coef: torch.Tensor | None = getattr(model, "log_ent_coef", None)
    if log_ent_coef is not None:
        return torch.exp(log_ent_coef.detach())
    return torch.as_tensor(model.ent_coef_tensor)


def _fork_devices(model: SAC) -> list[torch.device]:
    """Devices whose RNG ``fork_rng`` must save besides the CPU's (the model's CUDA device, if any)."""
    return [model.device] if model.device.type == "cuda" else []


def sample_indices(buffer: ReplayBuffer, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Uniform transition indices the way SB3's ``ReplayBuffer.sample`` draws them, from ``rng``.

    Returns:
        batch_inds: [batch_size] int64 buffer positions; env_inds: [batch_size] int64 env columns.
    """
    n = buffer.buffer_size if buffer.full else buffer.pos
    if n == 0:
        raise FetchRLError("the replay buffer is empty: nothing to sample")
    return rng.integers(0, n, size=batch_size), rng.integers(0, buffer.n_envs, size=batch_size)


def replay_fill(buffer: ReplayBuffer) -> float:
    """Share of the buffer holding transitions, in [0, 1]."""
    return float(buffer.size()) / float(buffer.buffer_size)


def sample_age(buffer: ReplayBuffer, batch_inds: np.ndarray) -> np.ndarray:
    """[batch] float64: environment steps since each position was written (0 = the newest position).

    Each position holds ``n_envs`` transitions written by one vector step, so its age in environment
    steps is its age in positions times ``n_envs``. ``buffer.pos`` is the next position to write.
    """
    newest = buffer.pos - 1
    age_positions = np.mod(newest - batch_inds, buffer.buffer_size)
    return np.asarray(age_positions * buffer.n_envs, dtype=np.float64)


def _batch(buffer: ReplayBuffer, batch_inds: np.ndarray, env_inds: np.ndarray, device: torch.device) -> Batch:
    """The stored transitions at (batch_inds, env_inds) as tensors, like SB3's ``_get_samples`` (no VecNormalize).

    Dict observations (Fetch) give ``{key: [batch, *shape]}``; ``dones`` are 1 only for a true
    termination (a truncation is bootstrapped, as SB3 does with ``handle_timeout_termination``).
    """
    def obs(stored: np.ndarray | dict[str, np.ndarray]) -> TensorObs:
        if isinstance(stored, dict):
            return {k: torch.as_tensor(v[batch_inds, env_inds], device=device) for k, v in stored.items()}
        return torch.as_tensor(stored[batch_inds, env_inds], device=device)

    if getattr(buffer, "optimize_memory_usage", False):
        raise FetchRLError("SACDiagnosticsCallback needs next_observations stored (optimize_memory_usage=False)")
    dones = buffer.dones[batch_inds, env_inds] * (1 - buffer.timeouts[batch_inds, env_inds])
    return Batch(
        obs=obs(buffer.observations),
        next_obs=obs(buffer.next_observations),
        actions=torch.as_tensor(buffer.actions[batch_inds, env_inds], device=device),
        rewards=torch.as_tensor(buffer.rewards[batch_inds, env_inds], device=device).reshape(-1, 1),
        dones=torch.as_tensor(dones, device=device).reshape(-1, 1),
    )


def batch_q_stats(model: SAC, rng: np.random.Generator, batch_size: int | None = None) -> QStats:
    """Q statistics of one batch drawn from ``model.replay_buffer`` with ``rng`` (training's RNGs untouched).

    Args:
        model: an SB3 SAC (``critic``, ``critic_target``, ``actor``, ``replay_buffer``, ``gamma``).
        rng: this caller's Generator: the batch indices and the torch seed of the target's next actions.
        batch_size: batch size (default: the model's).
    """
    buffer = _replay_buffer(model)
    batch_inds, env_inds = sample_indices(buffer, batch_size or model.batch_size, rng)
    b = _batch(buffer, batch_inds, env_inds, model.device)
    torch_seed = int(rng.integers(0, 2**63 - 1))
    with torch.random.fork_rng(devices=_fork_devices(model)), torch.no_grad():
        torch.manual_seed(torch_seed)
        q1, q2 = model.critic(b.obs, b.actions)[:2]
        next_actions, next_log_prob = model.actor.action_log_prob(b.next_obs)
        next_q = torch.min(torch.cat(model.critic_target(b.next_obs, next_actions), dim=1), dim=1, keepdim=True)[0]
        next_q = next_q - _ent_coef(model) * next_log_prob.reshape(-1, 1)
        target = b.rewards + (1 - b.dones) * model.gamma * next_q
    age = sample_age(buffer, batch_inds)
    return QStats(float(q1.mean()), float(q1.max()), float(q2.mean()), float(q2.max()),
                  float(target.mean()), float(target.max()), float(age.mean()))


def mc_gap(model: SAC, env: gym.Env, n_episodes: int, rng: np.random.Generator) -> MCGap:
    """Q at each episode's first (state, action) against the discounted soft return the episode got.

    Actions are sampled from the policy (the critics value the stochastic policy); the soft return is
    ``sum_t gamma^t r_t - ent_coef sum_{t>=1} gamma^t log pi(a_t|s_t)`` plus, for the truncation, the
    last step's soft reward held forever (module docstring).

    Args:
        model: an SB3 SAC. env: one Gymnasium env (not a VecEnv) of the training task, not a training env.
        n_episodes: episodes to average. rng: seeds the env resets and the torch samples.
    """
    gamma = float(model.gamma)
    alpha = float(_ent_coef(model).reshape(-1)[0])
    q_starts, returns = [], []
    torch_seed = int(rng.integers(0, 2**63 - 1))
    with torch.random.fork_rng(devices=_fork_devices(model)), torch.no_grad():
        torch.manual_seed(torch_seed)
        for _ in range(n_episodes):
            obs, _info = env.reset(seed=int(rng.integers(0, 2**31 - 1)))
            ret, discount, t, soft_reward = 0.0, 1.0, 0, 0.0
            done = False
            while not done:
                obs_t, _ = model.policy.obs_to_tensor(obs)
                action, log_prob = model.actor.action_log_prob(obs_t)  # action in [-1, 1] (SB3 scaled)
                if t == 0:
                    q_starts.append(float(torch.min(torch.cat(model.critic(obs_t, action), dim=1))))
                env_action = model.policy.unscale_action(action.cpu().numpy())[0]
                obs, reward, terminated, truncated, _info = env.step(env_action)
                # the entropy bonus of a_0 is not in Q(s0, a0): a0 is given, not sampled
                soft_reward = float(reward) - (alpha * float(log_prob) if t > 0 else 0.0)
                ret += discount * soft_reward
                discount *= gamma
                t += 1
                done = bool(terminated or truncated)
            if not terminated:  # truncated: the critics bootstrap past it, so the return does too
                ret += discount * soft_reward / (1.0 - gamma)
            returns.append(ret)
    return MCGap(float(np.mean(q_starts)), float(np.mean(returns)))


class SACDiagnosticsCallback(BaseCallback):
    """Logs Q statistics, replay fill/age and the Q-vs-Monte-Carlo gap of an SB3 SAC (module docstring).

    Args:
        every: gradient steps between two batch Q statistics (and replay fill/age) records.
        eval_every: environment steps between two over-estimation measurements (0: never).
        eval_episodes: episodes per measurement (each 50 steps on Fetch).
        seed: seeds this callback's own Generator (batch indices, eval resets, torch samples).
        eval_env: one Gymnasium env of the training task; default: made from the training env's
            ``spec.id`` with ``fetchrl.tasks.envs.make_env`` when the first measurement is due.

    Values are recorded into the model's logger and written at SB3's next log dump (every
    ``log_interval`` episodes), at that dump's step, like SB3's own ``train/*``.
    """

    def __init__(self, every: int = 1000, *, eval_every: int = 10_000, eval_episodes: int = 5, seed: int = 0,
                 eval_env: gym.Env | None = None, verbose: int = 0) -> None:
        super().__init__(verbose)
        if every < 1 or eval_every < 0 or eval_episodes < 1:
            raise FetchRLError(f"SACDiagnosticsCallback: every ({every}) and eval_episodes ({eval_episodes}) "
                               f"must be >= 1, eval_every ({eval_every}) >= 0")
        self.every = every
        self.eval_every = eval_every
        self.eval_episodes = eval_episodes
        self.rng = np.random.default_rng(seed)
        self.eval_env = eval_env
        self._owns_eval_env = eval_env is None
        self._next_stats = every
        self._next_eval = eval_every

    def _gradient_steps(self) -> int:
        # SB3 keeps the count in a private attribute (logged as train/n_updates, which TensorBoard never sees)
        return int(getattr(self.model, "_n_updates", 0))

    def _make_eval_env(self) -> gym.Env:
        """One env of the training task: its id from fetchrl's process VecEnv, or from the envs' gym spec."""
        env_id = getattr(self.training_env, "env_id", None)  # ProcessVecEnv (its fast envs have no spec)
        if env_id is None:
            spec = self.training_env.get_attr("spec", indices=[0])[0]
            env_id = spec.id if spec is not None else None
        if env_id is None:
            raise FetchRLError("SACDiagnosticsCallback: cannot tell the training env's id; pass eval_env=")
        return envs.make_env(Runtime.decide(env_id))

    def allows_overlap(self) -> bool:
        """For :func:`fetchrl.algos.fastsac.allows_overlap`: not at a step where it measures (it reads the
        critics, the actor and the update count, which the overlapped update would already have moved)."""
        due_eval = self.eval_every and self.model.num_timesteps + self.training_env.num_envs >= self._next_eval
        return self._gradient_steps() + 1 < self._next_stats and not due_eval

    def _on_step(self) -> bool:
        model = cast(SAC, self.model)  # an SB3 SAC (or a subclass: FastSAC); BaseAlgorithm has no replay buffer
        steps = self._gradient_steps()
        if steps >= self._next_stats and _replay_buffer(model).size() > 0:
            self._next_stats = steps + self.every
            stats = batch_q_stats(model, self.rng)
            for tag, value in zip((metrics.Q1_MEAN, metrics.Q1_MAX, metrics.Q2_MEAN, metrics.Q2_MAX,
                                   metrics.Q_TARGET_MEAN, metrics.Q_TARGET_MAX, metrics.REPLAY_SAMPLE_AGE),
                                  stats, strict=True):
                self.logger.record(tag, value)
            self.logger.record(metrics.REPLAY_FILL, replay_fill(_replay_buffer(model)))
        if self.eval_every and self.num_timesteps >= self._next_eval and steps > 0:
            self._next_eval = self.num_timesteps + self.eval_every
            if self.eval_env is None:
                self.eval_env = self._make_eval_env()
            gap = mc_gap(model, self.eval_env, self.eval_episodes, self.rng)
            self.logger.record(metrics.EVAL_Q, gap.q_start)
            self.logger.record(metrics.EVAL_MC_RETURN, gap.mc_return)
            self.logger.record(metrics.Q_OVERESTIMATION, gap.overestimation)
        return True

    def _on_training_end(self) -> None:
        if self._owns_eval_env and self.eval_env is not None:
            self.eval_env.close()
            self.eval_env = None


# ============================================================================ the entropy coefficient's floor
def clamp_ent_coef(model: SAC, floor: float) -> bool:
    """Raise a learned entropy coefficient to ``floor`` if it fell below: ``log_ent_coef`` clamped in place.

    In place and under ``no_grad``: the same parameter object stays registered with the coefficient's
    Adam optimiser (whose moments are left as they are). Nothing happens to a fixed coefficient (SB3's
    ``log_ent_coef`` is then None) or with ``floor <= 0``. Returns True when the value changed.
    """
    log_ent_coef: torch.Tensor | None = getattr(model, "log_ent_coef", None)
    if log_ent_coef is None or floor <= 0:
        return False
    bound = float(np.log(floor))
    with torch.no_grad():
        below = bool((log_ent_coef < bound).any())
        if below:
            log_ent_coef.clamp_(min=bound)
    return below


class EntCoefFloorCallback(BaseCallback):
    """``--ent-coef-min``: keeps a learned SAC entropy coefficient at or above ``ent_coef_min``.

    When it acts, in SB3's off-policy loop (``collect_rollouts`` -- one ``on_step`` per vector step --
    then ``on_rollout_end``, then ``train(gradient_steps)``): the coefficient is clamped at
    ``on_rollout_end``, i.e. right before every ``train`` call, and at ``on_training_start`` and
    ``on_training_end`` (so a resumed model and the saved one respect it too). Consequences, exactly:

    - every ``train`` call starts with ``ent_coef >= ent_coef_min``; with the chapters' ``gradient_steps=1``
      every gradient step therefore *uses* (and SB3 logs as ``train/ent_coef``) a value at or above it;
    - with ``gradient_steps = g > 1`` the coefficient may dip below the floor inside one ``train`` call
      for its remaining ``g - 1`` steps (Adam moves ``log_ent_coef`` by about ``learning_rate`` per step)
      and is raised again before the next call;
    - acting never reads the coefficient, so collecting transitions is unaffected; a snapshot taken at
      ``on_rollout_start`` may hold the last update's unclamped value, which the resumed run clamps before
      its first update just as the uninterrupted run does (resume stays bit-exact).

    Without a learned coefficient (``ent_coef`` a number) or with ``ent_coef_min <= 0`` it does nothing.

    Args:
        ent_coef_min: the floor (``SACConfig.ent_coef_min``), > 0.
    """

    def __init__(self, ent_coef_min: float, verbose: int = 0) -> None:
        super().__init__(verbose)
        if not ent_coef_min > 0:
            raise FetchRLError(f"EntCoefFloorCallback: ent_coef_min must be > 0, got {ent_coef_min}")
        self.ent_coef_min = ent_coef_min
        self.clamps = 0
        """How many times the coefficient was raised to the floor (for tests and curiosity)."""

    def _clamp(self) -> None:
        if clamp_ent_coef(cast(SAC, self.model), self.ent_coef_min):
            self.clamps += 1

    def _on_training_start(self) -> None:
        self._clamp()

    def _on_rollout_end(self) -> None:
        self._clamp()

    def _on_training_end(self) -> None:
        self._clamp()

    def allows_overlap(self) -> bool:
        """For :func:`fetchrl.algos.fastsac.allows_overlap`: only with a fixed coefficient, when it does
        nothing (its clamp must come before the update, which an overlapped update would precede)."""
        return getattr(self.model, "log_ent_coef", None) is None

    def _on_step(self) -> bool:
        return True
