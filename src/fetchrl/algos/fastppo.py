"""SB3's PPO with less Python per step and per minibatch — the same numbers, bit for bit.

:class:`FastPPO` is ``stable_baselines3.PPO`` with two methods rewritten for speed on a small CPU:

- :meth:`FastPPO.collect_rollouts` computes the policy with ``F.linear`` on the policy's own
  parameters (no module calls, no per-call distribution validation) and **overlaps** the
  bookkeeping of step ``t`` (episode buffers, time-limit bootstrapping, rollout-buffer writes) with
  the physics of step ``t + 1``: after the callbacks of step ``t`` it calls ``env.step_async`` for
  ``t + 1``, then finishes ``t``; the critic's values and the log-probabilities of step ``t + 1``
  are computed after its ``step_async`` too (they are not needed to act).
  :class:`fetchrl.vecenv.process.ProcessVecEnv` steps half the envs in a worker process, so the two run
  at once; on any other VecEnv the order is merely different, never the result.
- :meth:`FastPPO.train` flattens the rollout buffer into tensors once per update instead of once
  per minibatch, evaluates actions with the same ``F.linear`` path (``Normal``'s log-prob and
  entropy written out), and clips the gradients and steps Adam with the calls torch's wrappers
  make, without the wrappers (:class:`_ClipAndStep`).

Every tensor operation is SB3's, in SB3's order, on the same shapes — a batch-size change alone
alters float32 matmul results here (MKL picks another kernel), so none is made — and every random
number is drawn from the same generator in the same order (torch's for the action noise, NumPy's
global one for the minibatch permutation). ``tests/test_fastppo.py`` checks that the rollout buffer,
the logged ``train/*`` values and the policy and optimiser state after several updates are
``torch.equal`` to SB3's PPO on the same seed.

The lean path covers the policy the chapter uses (``MultiInputPolicy``/``MlpPolicy``: flatten
extractor shared by actor and critic, MLP with Tanh or ReLU, diagonal Gaussian, no gSDE, no
squashing, float observations). For anything else, and on GPU, FastPPO *is* SB3's PPO: it calls
the parent methods. Checkpoints are ordinary SB3 PPO zips (``PPO.load`` reads them).

Callbacks see what they see under SB3: ``on_step`` runs with no env step in flight, and
``self.locals`` holds SB3's names for the step's data (``new_obs``, ``rewards``, ``dones``,
``infos``, ``actions``, ``values``, ``log_probs``, ``n_steps``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch as th
import torch.nn.functional as F
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import DiagGaussianDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import CombinedExtractor, FlattenExtractor
from stable_baselines3.common.utils import explained_variance
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs
from torch import nn
from torch.distributions import Normal
from torch.optim import optimizer as torch_optimizer
from torch.optim.adam import adam

#: An MLP's activation function, applied element-wise.
Activation = Callable[[th.Tensor], th.Tensor]
#: A batch of observations as NumPy arrays (a dict of them for a Dict space), as SB3 types a VecEnv's.
Observation = VecEnvObs

_ACTIVATIONS: dict[type[nn.Module], Activation] = {nn.Tanh: th.tanh, nn.ReLU: F.relu}
_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))  # torch.distributions.Normal.log_prob's constant
_ENTROPY_CONST = 0.5 + 0.5 * math.log(2 * math.pi)  # Normal.entropy's, summed first as it sums it


@dataclass(frozen=True)
class LeanPolicy:
    """Views of an ``ActorCriticPolicy``'s parameters, and its forward passes written with ``F.linear``.

    Holds references to the live ``nn.Parameter`` objects (the optimiser updates them in place), so
    one instance stays valid while the policy trains. Shapes: ``B`` rows, ``F`` features (all
    observation keys flattened and concatenated), ``A`` action dimensions.
    """

    keys: tuple[str, ...] | None
    """Observation keys in the extractor's concatenation order; None for a plain Box observation."""
    pi: tuple[tuple[th.Tensor, th.Tensor], ...]
    vf: tuple[tuple[th.Tensor, th.Tensor], ...]
    activation: Activation
    action_net: tuple[th.Tensor, th.Tensor]
    value_net: tuple[th.Tensor, th.Tensor]
    log_std: th.Tensor

    @classmethod
    def of(cls, policy: object) -> LeanPolicy | None:
        """The lean view of ``policy``, or None when it is outside what this module reproduces."""
        if not isinstance(policy, ActorCriticPolicy) or policy.device.type != "cpu":
            return None
        if (not policy.share_features_extractor or policy.use_sde or policy.squash_output
                or not isinstance(policy.action_dist, DiagGaussianDistribution)
                or not isinstance(policy.action_space, spaces.Box)):
            return None
        supported, keys = _flatten_keys(policy.features_extractor, policy.observation_space)
        if not supported:
            return None
        pi = _mlp_layers(policy.mlp_extractor.policy_net)
        vf = _mlp_layers(policy.mlp_extractor.value_net)
        if pi is None or vf is None:
            return None
        activations = {a for a in (pi[1], vf[1]) if a is not None}  # None: an empty net_arch list
        if len(activations) > 1:
            return None
        activation = activations.pop() if activations else th.tanh
        if not (isinstance(policy.action_net, nn.Linear) and isinstance(policy.value_net, nn.Linear)):
            return None
        return cls(keys=keys, pi=pi[0], vf=vf[0], activation=activation,
                   action_net=(policy.action_net.weight, policy.action_net.bias),
                   value_net=(policy.value_net.weight, policy.value_net.bias), log_std=policy.log_std)

    # ------------------------------------------------------------------ pieces
    def features(self, obs: Observation, batch: bool = True) -> th.Tensor:
        """[B, F] float32: SB3's ``obs_as_tensor`` + ``preprocess_obs`` (``.float()``) + flatten + cat.

        ``obs``: NumPy arrays (a dict of them for a Dict space) with a leading batch axis, or one
        observation without it (``batch=False``, as SB3's ``obs_to_tensor`` reshapes it). Casting
        to float32 before or after the concatenation rounds each element the same way, so one NumPy
        call replaces SB3's three tensor ops per key.
        """
        if self.keys is None:
            x = np.asarray(obs)
            return th.from_numpy(x.reshape(len(x) if batch else 1, -1).astype(np.float32))
        dict_obs = cast("dict[str, np.ndarray]", obs)  # self.keys is set: a Dict space
        parts = [np.asarray(dict_obs[k]) for k in self.keys]
        rows = len(parts[0]) if batch else 1
        return th.from_numpy(np.concatenate([p.reshape(rows, -1) for p in parts], axis=1, dtype=np.float32))

    def _mlp(self, x: th.Tensor, layers: tuple[tuple[th.Tensor, th.Tensor], ...]) -> th.Tensor:
        for w, b in layers:
            x = self.activation(F.linear(x, w, b))
        return x

    def latents(self, features: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """``MlpExtractor.forward``: (latent_pi, latent_vf), actor first."""
        return self._mlp(features, self.pi), self._mlp(features, self.vf)

    def mean_std(self, latent_pi: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """``DiagGaussianDistribution.proba_distribution``'s mean [B, A] and std [B, A]."""
        mean_actions = F.linear(latent_pi, *self.action_net)
        return mean_actions, th.ones_like(mean_actions) * self.log_std.exp()

    def values(self, latent_vf: th.Tensor) -> th.Tensor:
        """[B, 1]: ``policy.value_net``."""
        return F.linear(latent_vf, *self.value_net)

    @staticmethod
    def check(mean: th.Tensor, std: th.Tensor) -> None:
        """Raise torch's own ``ValueError`` (what SB3 users see when training diverges) if ``Normal``
        would refuse these parameters: NaN mean or non-positive std."""
        Normal(mean, std, validate_args=True)

    # ------------------------------------------------------------------ SB3 entry points
    def std_terms(self, n: int) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """(std, 2 * var, log std), each [n, A], as ``Normal`` computes them for a batch of ``n``.

        The policy's std does not depend on the observation, so during a rollout (parameters fixed)
        these are the same every step: computed once, with the same ops, they are the same numbers.
        Validated here, as ``Normal(mean, std)`` would (std > 0).
        """
        with th.no_grad():
            std = th.ones((n, self.log_std.shape[0]), dtype=self.log_std.dtype) * self.log_std.exp()
            self.check(th.zeros_like(std), std)
            return std, 2 * std**2, std.log()

    def sample(self, features: th.Tensor, std_terms: tuple[th.Tensor, th.Tensor, th.Tensor]) -> tuple[th.Tensor, th.Tensor]:
        """The actor half of ``ActorCriticPolicy.forward(obs)`` with sampling, under ``no_grad``:
        (actions [B, A], mean [B, A]); ``Normal.rsample`` written out, op for op.

        The mean is not validated here (torch's checks cost several ops per call): the caller checks
        the sampled actions for NaN, which a NaN mean causes.
        """
        std = std_terms[0]
        mean = F.linear(self._mlp(features, self.pi), *self.action_net)
        eps = th.empty(mean.shape, dtype=mean.dtype, device=mean.device).normal_()  # _standard_normal
        return mean + eps * std, mean

    def value_log_prob(self, features: th.Tensor, actions: th.Tensor, mean: th.Tensor,
                       std_terms: tuple[th.Tensor, th.Tensor, th.Tensor]) -> tuple[th.Tensor, th.Tensor]:
        """The rest of ``forward``: values [B, 1] and ``Normal.log_prob(actions)`` summed, [B].

        Neither depends on the other half's results but its actions, so they may be computed after
        the env step started; the ops and their inputs are ``forward``'s, hence the same numbers.
        """
        _, two_var, log_scale = std_terms
        values = self.predict_values(features)
        log_prob = -((actions - mean) ** 2) / two_var - log_scale - _LOG_SQRT_2PI
        return values, log_prob.sum(dim=1)

    def predict_values(self, features: th.Tensor) -> th.Tensor:
        """``ActorCriticPolicy.predict_values``: [B, 1]."""
        return self.values(self._mlp(features, self.vf))

    def evaluate_actions(self, features: th.Tensor,
                         actions: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor, th.Tensor]:
        """``ActorCriticPolicy.evaluate_actions``: values [B, 1], log_prob [B], entropy [B], and the
        distribution's (unvalidated) mean and std [B, A].

        ``Normal(mean, std).log_prob`` and ``.entropy`` written out, op for op (equal shapes make
        ``Normal``'s broadcasting a no-op), in SB3's order: the autograd graph, and so the order in
        which gradients accumulate, is SB3's.
        """
        latent_pi, latent_vf = self.latents(features)
        mean, std = self.mean_std(latent_pi)
        var = std**2
        log_scale = std.log()
        log_prob = (-((actions - mean) ** 2) / (2 * var) - log_scale - _LOG_SQRT_2PI).sum(dim=1)
        values = self.values(latent_vf)
        entropy = (_ENTROPY_CONST + th.log(std)).sum(dim=1)
        return values, log_prob, entropy, mean, std


def _flatten_keys(extractor: nn.Module, space: spaces.Space) -> tuple[bool, tuple[str, ...] | None]:
    """(supported, keys): the keys of a CombinedExtractor of Flatten layers, None for a FlattenExtractor."""
    def float_box(s: spaces.Space) -> bool:
        return isinstance(s, spaces.Box) and np.issubdtype(s.dtype, np.floating)

    if isinstance(extractor, FlattenExtractor) and float_box(space):
        return True, None
    if isinstance(extractor, CombinedExtractor) and isinstance(space, spaces.Dict):
        keys = tuple(extractor.extractors.keys())
        if all(isinstance(extractor.extractors[k], nn.Flatten) and float_box(space[k]) for k in keys):
            return True, keys
    return False, None


def _mlp_layers(net: nn.Module) -> tuple[tuple[tuple[th.Tensor, th.Tensor], ...], Activation | None] | None:
    """((weight, bias) per Linear, activation function) of Sequential(Linear, act, Linear, act, ...)."""
    mods = list(net.children()) if isinstance(net, nn.Sequential) else None
    if mods is None or len(mods) % 2:
        return None
    layers, act = [], None
    for lin, nonlin in zip(mods[::2], mods[1::2], strict=True):
        fn = _ACTIVATIONS.get(type(nonlin))
        if not isinstance(lin, nn.Linear) or lin.bias is None or fn is None or act not in (None, fn):
            return None
        layers.append((lin.weight, lin.bias))
        act = fn
    return tuple(layers), act


class FastPPO(PPO):
    """``stable_baselines3.PPO`` with a lean, pipelined rollout and a lean update (identical numbers)."""

    def _lean(self) -> LeanPolicy | None:
        return LeanPolicy.of(self.policy)

    # ------------------------------------------------------------------ rollout
    def collect_rollouts(self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer,
                         n_rollout_steps: int) -> bool:
        """``OnPolicyAlgorithm.collect_rollouts``, with step ``t``'s bookkeeping done while ``t + 1`` steps."""
        lean = self._lean()
        if lean is None or not isinstance(self.action_space, spaces.Box):
            return super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)
        assert self._last_obs is not None, "No previous observation was provided"
        self.policy.set_training_mode(False)
        rollout_buffer.reset()
        callback.on_rollout_start()
        low, high = self.action_space.low, self.action_space.high

        in_flight = False  # step_async called, step_wait not yet
        std_terms = lean.std_terms(env.num_envs)

        def act(obs: Observation) -> tuple[th.Tensor, th.Tensor, np.ndarray]:
            """Sample actions for ``obs``, start the env step, then compute the critic and the
            log-probabilities while it runs: (values, log_probs, actions)."""
            nonlocal in_flight
            features = lean.features(obs)
            with th.inference_mode():
                actions, mean = lean.sample(features, std_terms)
            actions_np = actions.numpy()
            if np.isnan(actions_np).any():  # a NaN mean: raise what Normal(mean, std) raises in SB3
                with th.no_grad():
                    lean.check(*lean.mean_std(lean.latents(features)[0]))
            env.step_async(np.clip(actions_np, low, high))
            in_flight = True
            with th.inference_mode():
                values, log_probs = lean.value_log_prob(features, actions, mean, std_terms)
            return values, log_probs, actions_np

        help_step = getattr(env, "step_help", None)
        n_steps = 0
        last_obs: Observation = self._last_obs
        pending: tuple[th.Tensor, th.Tensor, np.ndarray] | None = act(last_obs)
        try:
            while pending is not None:
                in_flight = False
                new_obs, rewards, dones, infos = env.step_wait()
                values, log_probs, actions_np = pending
                self.num_timesteps += env.num_envs
                # Callbacks run before the next step starts, as in SB3: one that stops training leaves
                # the envs where SB3 leaves them; one that draws random numbers draws them in SB3's order.
                callback.update_locals({"self": self, "env": env, "callback": callback,
                                        "rollout_buffer": rollout_buffer, "n_rollout_steps": n_rollout_steps,
                                        "n_steps": n_steps, "actions": actions_np, "values": values,
                                        "log_probs": log_probs, "new_obs": new_obs, "rewards": rewards,
                                        "dones": dones, "infos": infos})
                if not callback.on_step():
                    return False
                # The next step's physics starts before the rest of this step's bookkeeping: with a
                # ProcessVecEnv this process steps its share of the envs first and does the bookkeeping
                # while the worker finishes its own; elsewhere it overlaps whatever step_async began.
                pending = act(new_obs) if n_steps + 1 < n_rollout_steps else None
                if pending is not None and help_step is not None:
                    help_step()
                self._update_info_buffer(infos, dones)
                n_steps += 1
                self._bootstrap_truncated(lean, rewards, dones, infos)
                _buffer_add(rollout_buffer, last_obs, actions_np, rewards, self._last_episode_starts, values, log_probs)
                self._last_obs = last_obs = new_obs  # type: ignore[assignment]
                self._last_episode_starts = dones
        finally:
            if in_flight:  # a callback stopped us, or something raised: let the envs finish that step
                env.step_wait()
        with th.no_grad():
            values = lean.predict_values(lean.features(new_obs))
        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)
        callback.update_locals({"self": self, "env": env, "callback": callback, "rollout_buffer": rollout_buffer,
                                "n_rollout_steps": n_rollout_steps, "n_steps": n_steps, "new_obs": new_obs,
                                "rewards": rewards, "dones": dones, "infos": infos, "values": values})
        callback.on_rollout_end()
        return True

    def _bootstrap_truncated(self, lean: LeanPolicy, rewards: np.ndarray, dones: np.ndarray,
                             infos: list[dict[str, Any]]) -> None:
        """SB3's time-limit fix (GitHub issue #633): add ``gamma * V(terminal obs)``, one env at a time
        as SB3 does (a batch of several would round differently)."""
        for idx, done in enumerate(dones):
            info = infos[idx]
            if done and info.get("terminal_observation") is not None and info.get("TimeLimit.truncated", False):
                with th.no_grad():
                    terminal_value = lean.predict_values(lean.features(info["terminal_observation"], batch=False))[0]
                rewards[idx] += self.gamma * terminal_value

    # ------------------------------------------------------------------ update
    def train(self) -> None:
        """``PPO.train`` on tensors flattened once per update; same minibatches, same arithmetic."""
        lean = self._lean()
        if lean is None or self.clip_range_vf is not None or self.target_kl is not None:
            return super().train()
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        buf = self.rollout_buffer
        data = _flat_buffer(buf, lean)
        n = buf.buffer_size * buf.n_envs
        optimizer = self.policy.optimizer
        clip_and_step = _ClipAndStep(optimizer, list(self.policy.parameters()), self.max_grad_norm)

        entropy_losses: list[float] = []
        pg_losses: list[float] = []
        value_losses: list[float] = []
        clip_fractions: list[float] = []
        approx_kl_divs: list[np.ndarray] = []
        loss = th.zeros(())
        for _epoch in range(self.n_epochs):
            approx_kl_divs = []
            indices = th.from_numpy(np.random.permutation(n))  # DictRolloutBuffer.get's draw
            for start in range(0, n, self.batch_size):
                idx = indices[start:start + self.batch_size]
                values, log_prob, entropy, mean, std = lean.evaluate_actions(data["features"][idx], data["actions"][idx])
                values = values.flatten()
                advantages = data["advantages"][idx]
                old_log_prob = data["log_probs"][idx]
                if self.normalize_advantage and len(advantages) > 1:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
                ratio = th.exp(log_prob - old_log_prob)
                policy_loss_1 = advantages * ratio
                policy_loss_2 = advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)
                policy_loss = -th.min(policy_loss_1, policy_loss_2).mean()
                pg_losses.append(policy_loss.item())
                if not math.isfinite(pg_losses[-1]):  # NaN/inf parameters: fail as SB3's validated Normal does
                    lean.check(mean, std)
                clip_fractions.append(th.mean((th.abs(ratio - 1) > clip_range).float()).item())
                value_loss = F.mse_loss(data["returns"][idx], values)
                value_losses.append(value_loss.item())
                entropy_loss = -th.mean(entropy)
                entropy_losses.append(entropy_loss.item())
                loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
                with th.no_grad():
                    log_ratio = log_prob - old_log_prob
                    approx_kl_divs.append(th.mean((th.exp(log_ratio) - 1) - log_ratio).cpu().numpy())
                clip_and_step.zero_grad()
                loss.backward()
                clip_and_step()
            self._n_updates += 1

        explained_var = explained_variance(buf.values.flatten(), buf.returns.flatten())
        self.logger.record("train/entropy_loss", np.mean(entropy_losses))
        self.logger.record("train/policy_gradient_loss", np.mean(pg_losses))
        self.logger.record("train/value_loss", np.mean(value_losses))
        self.logger.record("train/approx_kl", np.mean(approx_kl_divs))
        self.logger.record("train/clip_fraction", np.mean(clip_fractions))
        self.logger.record("train/loss", loss.item())
        self.logger.record("train/explained_variance", explained_var)
        self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)


class _ClipAndStep:
    """``clip_grad_norm_(params, max_norm)`` then ``optimizer.step()``: the same arithmetic, fewer calls.

    For SB3's default optimiser — ``torch.optim.Adam`` on CPU without amsgrad, fused, capturable or
    differentiable modes and without step hooks — this calls what those two functions run inside
    their grouping, profiling and grad-mode wrappers: the gradient norms, the total norm and one
    clamped scale (``torch.nn.utils.clip_grad``), then Adam's multi-tensor step — the calls of
    ``torch.optim.adam._multi_tensor_adam``, on the optimiser's own state tensors, listed once per
    ``train`` (:meth:`_adam_step`; the first step, which creates the state, goes through
    ``_init_group`` and the functional ``adam``). The multi-tensor step does the single-tensor
    step's arithmetic element by element, in a handful of calls instead of ~100; PyTorch picks it
    by itself only on GPU. :meth:`zero_grad` is ``optimizer.zero_grad()`` without its profiler
    scope. The optimiser's ``param_groups`` and state are SB3's, so checkpoints stay SB3's. Every
    other optimiser or setting gets torch's functions as SB3 calls them. Bit-equality:
    tests/test_fastppo.py.
    """

    def __init__(self, optimizer: th.optim.Optimizer, params: list[th.Tensor], max_norm: float) -> None:
        self.optimizer, self.params, self.max_norm = optimizer, params, float(max_norm)
        groups = optimizer.param_groups
        self.direct = (
            type(optimizer) is th.optim.Adam
            and not optimizer._optimizer_step_pre_hooks and not optimizer._optimizer_step_post_hooks
            and not torch_optimizer._global_optimizer_pre_hooks
            and not torch_optimizer._global_optimizer_post_hooks
            and all(p.device.type == "cpu" and p.dtype == th.float32 for p in params)
            and all(not (g["amsgrad"] or g["fused"] or g["capturable"] or g["differentiable"] or g["maximize"])
                    for g in groups)
        )
        self._adam_state: dict[int, _AdamState] = {}

    def __call__(self) -> None:
        if not self.direct:
            th.nn.utils.clip_grad_norm_(self.params, self.max_norm)
            self.optimizer.step()
            return
        grads = [p.grad for p in self.params if p.grad is not None]
        with th.no_grad():
            total_norm = th.linalg.vector_norm(th.stack(th._foreach_norm(grads, 2.0)), 2.0)
            th._foreach_mul_(grads, th.clamp(self.max_norm / (total_norm + 1e-6), max=1.0))
            for k, group in enumerate(self.optimizer.param_groups):
                state = self._adam_state.get(k) or self._cache_state(k, group)
                if state is not None:
                    group_grads = [p.grad for p in state[0] if p.grad is not None]
                    if len(group_grads) == len(state[0]):
                        self._adam_step(group, group_grads, *state)
                        continue
                params: list[th.Tensor] = []
                group_grads = []
                exp_avgs: list[th.Tensor] = []
                exp_avg_sqs: list[th.Tensor] = []
                max_exp_avg_sqs: list[th.Tensor] = []
                steps: list[th.Tensor] = []
                has_complex = self.optimizer._init_group(  # type: ignore[attr-defined]
                    group, params, group_grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps)
                beta1, beta2 = group["betas"]
                adam(params, group_grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, foreach=True,
                     has_complex=has_complex, amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"],
                     weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
                     decoupled_weight_decay=group["decoupled_weight_decay"])

    def zero_grad(self) -> None:
        """``optimizer.zero_grad()`` (``set_to_none=True``, torch's default) without its profiler scope."""
        if not self.direct:
            self.optimizer.zero_grad()
            return
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                p.grad = None

    def _cache_state(self, k: int, group: dict[str, Any]) -> _AdamState | None:
        """Group ``k``'s (params, exp_avgs, exp_avg_sqs, steps) once every param has its Adam state
        (after the first step), for :meth:`_adam_step`; None before, or for what it does not cover.

        The state tensors are updated in place, so the lists stay valid for this object's lifetime
        (one ``train`` call; loading a state dict in between would replace them).
        """
        scalars = (group["lr"], *group["betas"])  # tensors here take torch's checks (and errors)
        if group["weight_decay"] != 0 or any(isinstance(x, th.Tensor) for x in scalars):
            return None
        params = list(group["params"])
        states = [self.optimizer.state.get(p) for p in params]
        if not params or not all(st and {"step", "exp_avg", "exp_avg_sq"} <= st.keys() for st in states):
            return None
        if any(p.is_complex() or p.is_sparse for p in params):
            return None
        cached = (params, [st["exp_avg"] for st in states], [st["exp_avg_sq"] for st in states],  # type: ignore[index]
                  [st["step"] for st in states])  # type: ignore[index]
        self._adam_state[k] = cached
        return cached

    @staticmethod
    def _adam_step(group: dict[str, Any], grads: list[th.Tensor], params: list[th.Tensor],
                   exp_avgs: list[th.Tensor], exp_avg_sqs: list[th.Tensor], steps: list[th.Tensor]) -> None:
        """``torch.optim.adam._multi_tensor_adam`` for one CPU float32 group without weight decay,
        amsgrad, maximize or capturable: its calls, in its order, with its Python-float scalars
        (the step counts read in one call instead of one ``item()`` each)."""
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        th._foreach_add_(steps, th.tensor(1.0, device="cpu"), alpha=1.0)
        th._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        th._foreach_mul_(exp_avg_sqs, beta2)
        th._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        counts = th.stack(steps).tolist()
        step_size = [(lr / (1 - beta1**n)) * -1 for n in counts]
        bias_correction2_sqrt = [(1 - beta2**n) ** 0.5 for n in counts]
        exp_avg_sq_sqrt = th._foreach_sqrt(exp_avg_sqs)
        th._foreach_div_(exp_avg_sq_sqrt, bias_correction2_sqrt)
        th._foreach_add_(exp_avg_sq_sqrt, eps)
        th._foreach_addcdiv_(params, exp_avgs, exp_avg_sq_sqrt, step_size)


_AdamState = tuple[list[th.Tensor], list[th.Tensor], list[th.Tensor], list[th.Tensor]]


def _buffer_add(buf: RolloutBuffer, obs: Observation, actions: np.ndarray, rewards: np.ndarray,
                episode_starts: np.ndarray | None,
                values: th.Tensor, log_probs: th.Tensor) -> None:
    """``(Dict)RolloutBuffer.add`` for Box spaces: the same values written, without its per-call
    checks and intermediate copies (Discrete observations and 0-d log-probs never occur here)."""
    pos = buf.pos
    if isinstance(buf.observations, dict):
        for key, stored in buf.observations.items():
            stored[pos] = obs[key]
    else:
        buf.observations[pos] = obs
    buf.actions[pos] = actions.reshape((buf.n_envs, buf.action_dim))
    buf.rewards[pos] = rewards
    buf.episode_starts[pos] = episode_starts
    buf.values[pos] = values.numpy().flatten()
    buf.log_probs[pos] = log_probs.numpy()
    buf.pos += 1
    if buf.pos == buf.buffer_size:
        buf.full = True


def _flat_buffer(buf: RolloutBuffer, lean: LeanPolicy) -> dict[str, th.Tensor]:
    """The rollout buffer as [n_steps * n_envs, ...] tensors, in ``RolloutBuffer.get``'s env-major order.

    Flattens the buffer's arrays in place exactly as ``get`` does (``swap_and_flatten``, once), so
    code reading them afterwards (``explained_variance``, callbacks) sees what it sees under SB3.
    """
    if not buf.generator_ready:
        if isinstance(buf.observations, dict):
            for key, obs in buf.observations.items():
                buf.observations[key] = buf.swap_and_flatten(obs)
        else:
            buf.observations = buf.swap_and_flatten(buf.observations)
        for name in ("actions", "values", "log_probs", "advantages", "returns"):
            buf.__dict__[name] = buf.swap_and_flatten(buf.__dict__[name])
        buf.generator_ready = True
    return {
        "features": lean.features(buf.observations),
        "actions": th.as_tensor(buf.actions.astype(np.float32, copy=False)),
        "log_probs": th.as_tensor(buf.log_probs.reshape(-1)),
        "advantages": th.as_tensor(buf.advantages.reshape(-1)),
        "returns": th.as_tensor(buf.returns.reshape(-1)),
    }
