"""SB3's SAC with less Python per env step and per gradient step — the same numbers, bit for bit.

:class:`FastSAC` is ``stable_baselines3.SAC`` with three pieces rewritten for speed on a small CPU:

- **Replay buffer** (:class:`FlatDictReplayBuffer`): SB3's ``DictReplayBuffer`` keeps each
  observation key in its own float64 array and gathers six arrays per sample; this one keeps the
  keys side by side, in the features extractor's order, as one float32 row per transition
  (``[buffer_size, n_envs, F]``) for ``obs`` and one for ``next_obs``, so a sample is two gathers
  that are already the networks' input. SB3 casts the float64 observations to float32 in
  ``preprocess_obs`` (``.float()``) before any arithmetic, and a float64 -> float32 cast rounds the
  same whether it happens at storage or at use, so the networks see the same numbers. 1M
  transitions of FetchReach take 156 MB instead of 284 MB. Same ``np.random`` draws as SB3's
  ``sample`` (``batch_inds`` then ``env_indices``).
- **Acting** (:meth:`FastSAC.collect_rollouts`): the actor's forward pass with ``F.linear`` on the
  policy's own parameters under ``inference_mode`` (no module calls, no ``obs_to_tensor`` deep copy,
  no distribution objects); the store is a row write instead of a deep copy plus six array copies.
- **Update** (:meth:`FastSAC.train`): ``SAC.train``'s tensor operations in its order, on the same
  shapes, written with ``F.linear`` (no module calls or distribution objects); Adam's multi-tensor
  step on the optimisers' own state (:class:`AdamStep`, the arithmetic of torch's single-tensor
  step, a handful of calls instead of ~10 per parameter); the Polyak update as two
  ``torch._foreach_*`` calls (the same ``mul_`` then ``add(alpha=tau)`` per tensor); the actor
  loss's backward pass restricted to the actor's parameters (``backward(inputs=...)``: SB3's also
  fills the critic's ``.grad``, which its next ``zero_grad`` discards unread, so skipping those
  matrix products changes no parameter, no optimiser state and no logged value).

Every random number is drawn from the same generator in the same order (torch's for the action
noise, NumPy's global one for the replay indices, the action space's for the warm-up actions).
``tests/test_fastsac.py`` checks that parameters, target networks, optimiser states,
``log_ent_coef``, the replay buffer and the logged ``train/*`` values after several hundred
updates are ``torch.equal`` / ``np.array_equal`` to SB3's SAC on the same seed.

- **Overlap** (:meth:`FastSAC._batches_ahead`): the gradient step SB3 makes right after env step
  ``t`` runs *while* the envs make step ``t`` (the process VecEnv steps them all in its worker),
  whenever that changes nothing: its batch can be drawn before step ``t`` returns (NumPy's draws
  depend only on the buffer's size) and does not read the row transition ``t`` goes to, no episode
  ends at step ``t`` (Fetch truncates at 50 steps, which the VecEnv counts; a HER buffer samples
  finished episodes only), and every callback allows it (``allows_overlap()``: it neither reads
  the networks or the update count at that step nor stops training there). Otherwise the step and
  the update take turns as in SB3. ``learn``'s own ``train`` call after that step then does nothing.

What is *not* bit-equal and therefore not done: the twin critics as one batched matmul (a ``bmm``
rounds differently from two ``mm``), acting with a one-update-old policy. Differences a caller can
see: after ``train`` the critic's ``.grad`` holds only the critic loss's gradient (SB3 adds the
actor loss's into it), ``replay_buffer.observations`` are float32 views, and a callback without
``allows_overlap`` turns the overlap off.

The lean path covers the chapter's set-up: ``MultiInputPolicy`` on a Dict of 1-D float Boxes
(flatten extractors, ReLU/Tanh MLPs, squashed Gaussian without gSDE), default Adam optimisers, no
VecNormalize, no action noise, no n-step returns, CPU. For anything else FastSAC
*is* SB3's SAC (the parent methods run). Checkpoints are ordinary SB3 SAC zips.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch as th
import torch.nn.functional as F
from gymnasium import spaces
from stable_baselines3 import SAC
from stable_baselines3.common.buffers import BaseBuffer, DictReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, ConvertCallback
from stable_baselines3.common.distributions import SquashedDiagGaussianDistribution
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.policies import ContinuousCritic
from stable_baselines3.common.torch_layers import CombinedExtractor
from stable_baselines3.common.type_aliases import (
    DictReplayBufferSamples,
    RolloutReturn,
    TrainFreq,
    TrainFrequencyUnit,
)
from stable_baselines3.common.utils import should_collect_more_steps
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs
from stable_baselines3.sac.policies import LOG_STD_MAX, LOG_STD_MIN, Actor
from torch import nn
from torch.distributions import Normal
from torch.optim import optimizer as torch_optimizer
from torch.optim.adam import adam

_ACTIVATIONS: dict[type[nn.Module], Any] = {nn.ReLU: F.relu, nn.Tanh: th.tanh}
_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))  # Normal.log_prob's constant, computed as it computes it

Layers = tuple[tuple[th.Tensor, th.Tensor], ...]


# ---------------------------------------------------------------------------------------------- replay
def flat_obs_keys(space: spaces.Space) -> tuple[tuple[str, ...], tuple[int, ...]] | None:
    """(keys, widths) of a Dict space of 1-D float Boxes, in the space's (and CombinedExtractor's)
    order; None for any other space."""
    if not isinstance(space, spaces.Dict):
        return None
    keys, widths = [], []
    for key, sub in space.spaces.items():
        if not (isinstance(sub, spaces.Box) and len(sub.shape) == 1 and np.issubdtype(sub.dtype, np.floating)):
            return None
        keys.append(key)
        widths.append(int(sub.shape[0]))
    return tuple(keys), tuple(widths)


class FlatSamples(NamedTuple):
    """One replay batch as the networks read it. ``B`` rows, ``F`` features, ``A`` action dims."""

    observations: th.Tensor
    """[B, F] float32: the observation keys concatenated (the features extractor's output)."""
    actions: th.Tensor
    """[B, A] float32, scaled to [-1, 1] as SB3 stores them."""
    next_observations: th.Tensor
    """[B, F] float32."""
    dones: th.Tensor
    """[B, 1] float32: ``done * (1 - timeout)`` — 0 for every Fetch transition (Fetch only truncates)."""
    rewards: th.Tensor
    """[B, 1] float32."""


class FlatDictReplayBuffer(DictReplayBuffer):
    """``DictReplayBuffer`` for a Dict of 1-D float Boxes, storing each observation as one float32 row.

    ``obs``/``next_obs``: [buffer_size, n_envs, F] float32, the keys side by side in the
    observation space's order; ``actions`` [buffer_size, n_envs, A] float32, ``rewards``, ``dones``,
    ``timeouts`` [buffer_size, n_envs] float32, as SB3 keeps them. :meth:`sample` draws SB3's
    indices; :meth:`sample_flat` returns what the networks read (:class:`FlatSamples`).
    """

    def __init__(self, buffer_size: int, observation_space: spaces.Dict, action_space: spaces.Space,
                 device: th.device | str = "auto", n_envs: int = 1, optimize_memory_usage: bool = False,
                 handle_timeout_termination: bool = True) -> None:
        BaseBuffer.__init__(self, buffer_size, observation_space, action_space, device, n_envs=n_envs)
        layout = flat_obs_keys(observation_space)
        if layout is None or optimize_memory_usage:
            raise ValueError("FlatDictReplayBuffer needs a Dict of 1-D float Boxes and no optimize_memory_usage")
        self.buffer_size = max(buffer_size // n_envs, 1)
        self.optimize_memory_usage = False
        self.handle_timeout_termination = handle_timeout_termination
        self.keys, widths = layout
        ends = np.cumsum(widths)
        self.columns = {k: slice(int(e - w), int(e)) for k, w, e in zip(self.keys, widths, ends, strict=True)}
        n_features = int(ends[-1])
        # np.zeros: pages are committed as rows are written, as in SB3's buffer
        self.obs = np.zeros((self.buffer_size, self.n_envs, n_features), dtype=np.float32)
        self.next_obs = np.zeros((self.buffer_size, self.n_envs, n_features), dtype=np.float32)
        self.actions = np.zeros((self.buffer_size, self.n_envs, self.action_dim),
                                dtype=self._maybe_cast_dtype(action_space.dtype))
        self.rewards = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)
        self.dones = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)
        self.timeouts = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)

    @property  # type: ignore[override]
    def observations(self) -> dict[str, np.ndarray]:  # type: ignore[override]
        """SB3's per-key view: {key: [buffer_size, n_envs, width] float32} (views, not copies)."""
        return {k: self.obs[:, :, c] for k, c in self.columns.items()}

    @property  # type: ignore[override]
    def next_observations(self) -> dict[str, np.ndarray]:  # type: ignore[override]
        return {k: self.next_obs[:, :, c] for k, c in self.columns.items()}

    def add(self, obs: dict[str, np.ndarray], next_obs: dict[str, np.ndarray],  # type: ignore[override]
            action: np.ndarray, reward: np.ndarray, done: np.ndarray, infos: list[dict[str, Any]]) -> None:
        """SB3's ``add``: ``obs``/``next_obs`` {key: [n_envs, width]}, ``action`` [n_envs, A],
        ``reward``/``done`` [n_envs]; the values are copied (cast to float32)."""
        pos = self.pos
        for key, cols in self.columns.items():
            self.obs[pos, :, cols] = obs[key]
            self.next_obs[pos, :, cols] = next_obs[key]
        self.actions[pos] = np.asarray(action).reshape((self.n_envs, self.action_dim))
        self.rewards[pos] = reward
        self.dones[pos] = done
        if self.handle_timeout_termination:
            self.timeouts[pos] = [info.get("TimeLimit.truncated", False) for info in infos]
        self.pos += 1
        if self.pos == self.buffer_size:
            self.full = True
            self.pos = 0

    def replace_next_obs(self, pos: int, env_idx: int, obs: dict[str, np.ndarray]) -> None:
        """Overwrite the stored next observation of one transition (a finished episode's terminal one)."""
        for key, cols in self.columns.items():
            self.next_obs[pos, env_idx, cols] = obs[key]

    def indices(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """SB3's two draws from NumPy's global generator: (rows [B], env columns [B])."""
        batch_inds = np.random.randint(0, self.buffer_size if self.full else self.pos, size=batch_size)
        return batch_inds, np.random.randint(0, high=self.n_envs, size=(len(batch_inds),))

    def sample_flat(self, batch_size: int) -> FlatSamples:
        """A batch drawn as SB3's ``sample`` draws it, gathered into the networks' input tensors."""
        return self._gather(*self.indices(batch_size))

    def sample_flat_before_add(self, batch_size: int) -> FlatSamples | None:
        """The batch :meth:`sample_flat` will draw right after the next ``add``, drawn and gathered now,
        or None when that batch reads the row the ``add`` writes (row ``pos``; its episode may also not
        end with that ``add`` -- the caller's to know). NumPy's global generator has advanced either
        way: to take the None path, the caller restores it and samples after adding, as usual."""
        upper = self.buffer_size if self.full or self.pos + 1 == self.buffer_size else self.pos + 1
        rows = np.random.randint(0, upper, size=batch_size)
        if (rows == self.pos).any():
            return None
        return self._gather(rows, np.random.randint(0, high=self.n_envs, size=(batch_size,)))

    def _gather(self, rows: np.ndarray, cols: np.ndarray) -> FlatSamples:
        dones = self.dones[rows, cols] * (1 - self.timeouts[rows, cols])
        return FlatSamples(th.from_numpy(self.obs[rows, cols]), th.from_numpy(self.actions[rows, cols]),
                           th.from_numpy(self.next_obs[rows, cols]), th.from_numpy(dones.reshape(-1, 1)),
                           th.from_numpy(self.rewards[rows, cols].reshape(-1, 1)))

    def _get_samples(self, batch_inds: np.ndarray, env: Any = None) -> DictReplayBufferSamples:  # type: ignore[override]
        """SB3's sample layout (dict observations, float32), for code that calls ``sample``."""
        env_indices = np.random.randint(0, high=self.n_envs, size=(len(batch_inds),))
        obs = self._normalize_obs({k: self.obs[batch_inds, env_indices, c] for k, c in self.columns.items()}, env)
        next_obs = self._normalize_obs(
            {k: self.next_obs[batch_inds, env_indices, c] for k, c in self.columns.items()}, env)
        assert isinstance(obs, dict) and isinstance(next_obs, dict)
        dones = self.dones[batch_inds, env_indices] * (1 - self.timeouts[batch_inds, env_indices])
        return DictReplayBufferSamples(
            observations={k: self.to_torch(v) for k, v in obs.items()},
            actions=self.to_torch(self.actions[batch_inds, env_indices]),
            next_observations={k: self.to_torch(v) for k, v in next_obs.items()},
            dones=self.to_torch(dones).reshape(-1, 1),
            rewards=self.to_torch(self._normalize_reward(self.rewards[batch_inds, env_indices].reshape(-1, 1), env)),
        )


# ---------------------------------------------------------------------------------------------- networks
def _mlp_layers(net: nn.Module, last_linear: bool) -> tuple[Layers, Any] | None:
    """((weight, bias) per Linear, activation) of Sequential(Linear, act, ..., [Linear]); None otherwise."""
    mods = list(net.children()) if isinstance(net, nn.Sequential) else None
    if mods is None:
        return None
    body = mods[:-1] if last_linear and mods else mods
    if len(body) % 2:
        return None
    layers: list[tuple[th.Tensor, th.Tensor]] = []
    act = None
    for lin, nonlin in zip(body[::2], body[1::2], strict=True):
        fn = _ACTIVATIONS.get(type(nonlin))
        if not isinstance(lin, nn.Linear) or lin.bias is None or fn is None or act not in (None, fn):
            return None
        layers.append((lin.weight, lin.bias))
        act = fn
    if last_linear:
        if not mods or not isinstance(mods[-1], nn.Linear) or mods[-1].bias is None:
            return None
        layers.append((mods[-1].weight, mods[-1].bias))
    return tuple(layers), act


def _flattens(extractor: nn.Module, keys: tuple[str, ...]) -> bool:
    """True when ``extractor`` only flattens and concatenates ``keys``, in that order."""
    return (isinstance(extractor, CombinedExtractor) and tuple(extractor.extractors.keys()) == keys
            and all(isinstance(m, nn.Flatten) for m in extractor.extractors.values()))


@dataclass(frozen=True)
class LeanSAC:
    """Views of a ``SACPolicy``'s parameters, and its forward passes written with ``F.linear``.

    Holds the live parameters (the optimisers update them in place). ``B`` rows, ``F`` features,
    ``A`` action dimensions.
    """

    keys: tuple[str, ...]
    """Observation keys in the extractors' concatenation order."""
    latent_pi: Layers
    mu: tuple[th.Tensor, th.Tensor]
    log_std: tuple[th.Tensor, th.Tensor]
    critic: tuple[Layers, ...]
    """Each Q-network's layers (the last one without activation)."""
    critic_target: tuple[Layers, ...]
    activation: Any
    epsilon: float
    """The squashed Gaussian's epsilon in ``log(1 - tanh(u)^2 + epsilon)``."""

    @classmethod
    def of(cls, policy: Any) -> LeanSAC | None:
        """The lean view of a ``SACPolicy``, or None when it is outside what this module reproduces."""
        actor, critic, target = (getattr(policy, name, None) for name in ("actor", "critic", "critic_target"))
        if not (isinstance(actor, Actor) and isinstance(critic, ContinuousCritic)
                and isinstance(target, ContinuousCritic)) or policy.device.type != "cpu":
            return None
        if actor.use_sde or not isinstance(actor.action_dist, SquashedDiagGaussianDistribution):
            return None
        if critic.share_features_extractor or target.share_features_extractor:
            return None
        layout = flat_obs_keys(policy.observation_space)
        if layout is None:  # a Box observation uses SB3's ReplayBuffer: SB3's path throughout
            return None
        keys = layout[0]
        if not all(_flattens(m.features_extractor, keys) for m in (actor, critic, target)):
            return None
        pi = _mlp_layers(actor.latent_pi, last_linear=False)
        qs = [_mlp_layers(q, last_linear=True) for q in (*critic.q_networks, *target.q_networks)]
        if pi is None or any(q is None for q in qs) or not (isinstance(actor.mu, nn.Linear)
                                                            and isinstance(actor.log_std, nn.Linear)):
            return None
        acts = {a for a in (pi[1], *(q[1] for q in qs if q is not None)) if a is not None}
        if len(acts) > 1:
            return None
        n = len(critic.q_networks)
        q_layers = tuple(q[0] for q in qs if q is not None)
        return cls(keys=keys, latent_pi=pi[0], mu=(actor.mu.weight, actor.mu.bias),
                   log_std=(actor.log_std.weight, actor.log_std.bias), critic=q_layers[:n],
                   critic_target=q_layers[n:], activation=acts.pop() if acts else F.relu,
                   epsilon=actor.action_dist.epsilon)

    def features(self, obs: VecEnvObs) -> th.Tensor:
        """[B, F] float32 from a VecEnv observation ({key: [B, width]} NumPy): SB3's ``obs_as_tensor``
        + ``.float()`` + flatten + cat; casting before or after concatenating rounds alike."""
        assert isinstance(obs, dict)
        parts = [np.asarray(obs[k]) for k in self.keys]
        return th.from_numpy(np.concatenate([p.reshape(len(p), -1) for p in parts], axis=1, dtype=np.float32))

    def action_log_prob(self, features: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """``Actor.action_log_prob``: (squashed actions [B, A], log-prob [B]); draws [B, A] normals."""
        actions, gaussian, mean, std = self._sample(features)
        var = std**2  # Normal.log_prob, op for op
        log_prob = -((gaussian - mean) ** 2) / (2 * var) - std.log() - _LOG_SQRT_2PI
        log_prob = log_prob.sum(dim=1)  # sum_independent_dims
        log_prob -= th.sum(th.log(1 - actions**2 + self.epsilon), dim=1)  # the tanh correction
        return actions, log_prob

    def act(self, features: th.Tensor) -> th.Tensor:
        """``Actor.forward(obs, deterministic=False)``: squashed actions [B, A]."""
        return self._sample(features)[0]

    def _sample(self, features: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor]:
        """(tanh(u), u, mean, std): ``get_action_dist_params`` then ``Normal.rsample`` written out."""
        latent = features
        for w, b in self.latent_pi:
            latent = self.activation(F.linear(latent, w, b))
        mean = F.linear(latent, *self.mu)
        log_std = th.clamp(F.linear(latent, *self.log_std), LOG_STD_MIN, LOG_STD_MAX)
        std = th.ones_like(mean) * log_std.exp()
        eps = th.empty(mean.shape, dtype=mean.dtype, device=mean.device).normal_()  # _standard_normal
        gaussian = mean + eps * std
        return th.tanh(gaussian), gaussian, mean, std

    def q_values(self, nets: tuple[Layers, ...], features: th.Tensor, actions: th.Tensor) -> list[th.Tensor]:
        """``ContinuousCritic.forward``: one [B, 1] tensor per Q-network."""
        x0 = th.cat([features, actions], dim=1)
        out = []
        for layers in nets:
            x = x0
            for w, b in layers[:-1]:
                x = self.activation(F.linear(x, w, b))
            out.append(F.linear(x, *layers[-1]))
        return out

    def check(self, features: th.Tensor) -> None:
        """Raise torch's ``ValueError`` (what SB3 users see when training diverges) if ``Normal``
        would refuse the actor's parameters for ``features`` [B, F]: NaN mean or std."""
        with th.no_grad():
            latent = features
            for w, b in self.latent_pi:
                latent = self.activation(F.linear(latent, w, b))
            mean = F.linear(latent, *self.mu)
            std = th.ones_like(mean) * th.clamp(F.linear(latent, *self.log_std), LOG_STD_MIN, LOG_STD_MAX).exp()
            Normal(mean, std, validate_args=True)


# ---------------------------------------------------------------------------------------------- optimiser
_AdamLists = tuple[list[th.Tensor], list[th.Tensor], list[th.Tensor], list[th.Tensor]]


class AdamStep:
    """``optimizer.zero_grad()`` and ``optimizer.step()`` for torch's Adam on CPU float32, with
    fewer Python calls: the multi-tensor step (``foreach=True``: the single-tensor step's arithmetic
    element by element, which torch picks by itself only on GPU) on the optimiser's own state
    tensors, listed once. The first step (which creates the state), any other optimiser or setting,
    and step hooks go through torch's own ``step``. State and ``param_groups`` stay torch's, so
    checkpoints are unchanged. Bit-equality: tests/test_fastsac.py.
    """

    def __init__(self, optimizer: th.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self._lists: _AdamLists | None = None

    def _direct(self) -> bool:
        opt = self.optimizer
        return (type(opt) is th.optim.Adam and len(opt.param_groups) == 1
                and not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
                and not torch_optimizer._global_optimizer_pre_hooks and not torch_optimizer._global_optimizer_post_hooks
                and not any(opt.param_groups[0][k] for k in ("amsgrad", "fused", "capturable", "differentiable",
                                                              "maximize", "weight_decay"))
                and not any(isinstance(opt.param_groups[0][k], th.Tensor) for k in ("lr", "betas"))
                and all(p.device.type == "cpu" and p.dtype == th.float32 for p in opt.param_groups[0]["params"]))

    def _state_lists(self) -> _AdamLists | None:
        """(params, exp_avgs, exp_avg_sqs, steps) once every parameter has Adam state; else None."""
        params = list(self.optimizer.param_groups[0]["params"])
        states = [self.optimizer.state.get(p) for p in params]
        if not params or not all(st and {"step", "exp_avg", "exp_avg_sq"} <= st.keys() for st in states):
            return None
        return (params, [st["exp_avg"] for st in states], [st["exp_avg_sq"] for st in states],  # type: ignore[index]
                [st["step"] for st in states])  # type: ignore[index]

    def zero_grad(self) -> None:
        """``optimizer.zero_grad()`` (set_to_none) without its profiler scope."""
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                p.grad = None

    def step(self) -> None:
        if self._lists is None and self._direct():
            self._lists = self._state_lists()
        lists = self._lists
        if lists is None:
            self.optimizer.step()
            return
        params, exp_avgs, exp_avg_sqs, steps = lists
        grads = [p.grad for p in params]
        if self.optimizer.state[params[0]].get("exp_avg") is not exp_avgs[0]:  # a state dict was loaded
            self._lists = None
            self.step()
            return
        if any(g is None for g in grads):  # torch skips params without grad; keep its bookkeeping
            self.optimizer.step()
            return
        group = self.optimizer.param_groups[0]
        beta1, beta2 = group["betas"]
        with th.no_grad():
            adam(params, grads, exp_avgs, exp_avg_sqs, [], steps, foreach=True,  # type: ignore[arg-type]
                 has_complex=False, amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"],
                 weight_decay=0.0, eps=group["eps"], maximize=False,
                 decoupled_weight_decay=group.get("decoupled_weight_decay", False))


# ---------------------------------------------------------------------------------------------- the algorithm
def allows_overlap(callback: BaseCallback) -> bool:
    """Whether ``callback`` (a :class:`CallbackList`: each of its callbacks) lets :class:`FastSAC` make the
    coming env step's gradient step while the envs step, i.e. before the callback's ``on_step`` and
    ``on_rollout_end`` of that step. A callback allows it through an ``allows_overlap()`` method that
    returns True only when, at this step, it will not read the networks, the optimisers or the update
    count, will not change them, and will not stop training; one without that method never allows it."""
    if isinstance(callback, CallbackList):
        return all(allows_overlap(c) for c in callback.callbacks)
    if isinstance(callback, ConvertCallback) and callback.callback is None:  # learn(callback=None)
        return True
    method = getattr(callback, "allows_overlap", None)
    return method is not None and bool(method())


class FastSAC(SAC):
    """``stable_baselines3.SAC`` with a flat float32 replay buffer, lean acting, a lean update and the
    update overlapped with env stepping where that changes nothing (identical numbers)."""

    overlaps_env_steps = True
    """Its models make gradient steps while the envs step: give them a VecEnv that steps every env
    outside this process (``fetchrl.vecenv.factory.make_vec_env(..., all_in_worker=True)``). False on
    an instance: env steps and updates take turns (``bench/bench_sac.py``'s lockstep arm)."""

    _lean_cache: tuple[Any, LeanSAC | None] | None = None
    _steppers: tuple[Any, ...] | None = None
    _mode_modules: list[nn.Module] | None = None
    _made_update = 0
    """Gradient steps already made for the current env step (:meth:`_batches_ahead`); ``train`` skips them."""

    def _excluded_save_params(self) -> list[str]:
        """SB3's list plus this class's caches (views of live tensors, rebuilt on demand), so the zip's
        ``data`` holds what SB3's SAC writes."""
        return [*super()._excluded_save_params(), "_lean_cache", "_steppers", "_mode_modules", "_made_update"]

    def _setup_model(self) -> None:
        """SB3's set-up, with :class:`FlatDictReplayBuffer` where SB3 would pick ``DictReplayBuffer``
        for a Dict of 1-D float Boxes without VecNormalize. ``replay_buffer_class`` stays None as
        the caller left it, so the saved model says what SB3's says."""
        from stable_baselines3.her.her_replay_buffer import HerReplayBuffer

        from fetchrl.algos.fasther import FlatHerReplayBuffer

        asked = self.replay_buffer_class
        her = asked is HerReplayBuffer and not (self.replay_buffer_kwargs or {}).get("copy_info_dict", False)
        flat = ((asked is None or her) and self.replay_buffer is None and self.n_steps == 1
                and not self.optimize_memory_usage and self._vec_normalize_env is None
                and flat_obs_keys(self.observation_space) is not None)
        if flat:
            self.replay_buffer_class = FlatHerReplayBuffer if her else FlatDictReplayBuffer
        try:
            super()._setup_model()
        finally:
            self.replay_buffer_class = asked
        if flat and her and self._lean() is None:  # SB3's update samples per-key float64: give it SB3's buffer
            self.replay_buffer = HerReplayBuffer(self.buffer_size, self.observation_space, self.action_space,  # type: ignore[arg-type]
                                                 device=self.device, n_envs=self.n_envs,
                                                 optimize_memory_usage=self.optimize_memory_usage,
                                                 env=self.env, **self.replay_buffer_kwargs)  # type: ignore[arg-type]

    def _lean(self) -> LeanSAC | None:
        """The lean view of the current policy (rebuilt when the policy object changes), or None
        when this run is outside the lean path."""
        cached = self._lean_cache
        if cached is not None and cached[0] is self.policy:
            return cached[1]
        lean = LeanSAC.of(self.policy)
        if lean is not None and (self.use_sde or self._vec_normalize_env is not None or self.n_steps != 1
                                 or not isinstance(self.action_space, spaces.Box)):
            lean = None
        self._lean_cache = (self.policy, lean)
        self._steppers = None
        return lean

    def _set_training_mode(self, mode: bool) -> None:
        """``SACPolicy.set_training_mode(mode)``: the same ``training`` flags (policy, actor and critic
        modules; the target stays in eval mode), set on a list made once instead of by two recursive
        ``nn.Module.train`` walks per env step. On the lean path no module reads the flag (no dropout,
        no batch norm): it is kept only so that callers see what SB3 leaves."""
        modules = self._mode_modules
        if modules is None or modules[0] is not self.policy:
            modules = self._mode_modules = [self.policy, *self.actor.modules(), *self.critic.modules()]
        for module in modules:
            module.__dict__["training"] = mode  # what nn.Module.train sets, without __setattr__'s checks

    # ------------------------------------------------------------------ acting
    def collect_rollouts(self, env: VecEnv, callback: BaseCallback, train_freq: TrainFreq,  # type: ignore[override]
                         replay_buffer: Any, action_noise: ActionNoise | None = None, learning_starts: int = 0,
                         log_interval: int | None = None) -> RolloutReturn:
        """``OffPolicyAlgorithm.collect_rollouts`` with the lean actor and the flat buffer's row write."""
        lean = self._lean()
        if lean is None or action_noise is not None or not isinstance(replay_buffer, FlatDictReplayBuffer):
            return super().collect_rollouts(env, callback, train_freq, replay_buffer, action_noise,
                                            learning_starts, log_interval)
        self._set_training_mode(False)
        num_collected_steps, num_collected_episodes = 0, 0
        assert isinstance(env, VecEnv), "You must pass a VecEnv"
        assert train_freq.frequency > 0, "Should at least collect one step or episode."
        if env.num_envs > 1:
            assert train_freq.unit == TrainFrequencyUnit.STEP, "You must use only one env when doing episodic training."
        callback.on_rollout_start()
        continue_training = True
        while should_collect_more_steps(train_freq, num_collected_steps, num_collected_episodes):
            actions, buffer_actions = self._lean_sample_action(lean, learning_starts, env.num_envs)
            batches = self._batches_ahead(env, callback, replay_buffer, train_freq)
            if batches is None:
                new_obs, rewards, dones, infos = env.step(actions)
            else:  # the update SB3 makes after this step, made while the envs step (_batches_ahead)
                env.step_async(actions)
                self._update_current_progress_remaining(self.num_timesteps + env.num_envs, self._total_timesteps)
                self._train_lean(lean, replay_buffer, len(batches), self.batch_size, batches)
                self._made_update = len(batches)
                self._set_training_mode(False)
                new_obs, rewards, dones, infos = env.step_wait()
                if np.any(dones):
                    raise RuntimeError("FastSAC: an episode ended at a step its VecEnv said would end none")
            self.num_timesteps += env.num_envs
            num_collected_steps += 1
            callback.update_locals({"self": self, "env": env, "callback": callback, "train_freq": train_freq,
                                    "replay_buffer": replay_buffer, "action_noise": action_noise,
                                    "learning_starts": learning_starts, "log_interval": log_interval,
                                    "num_collected_steps": num_collected_steps,
                                    "num_collected_episodes": num_collected_episodes,
                                    "continue_training": continue_training, "actions": actions,
                                    "buffer_actions": buffer_actions, "new_obs": new_obs, "rewards": rewards,
                                    "dones": dones, "infos": infos})
            if not callback.on_step():
                if batches is not None:
                    raise RuntimeError("FastSAC: a callback stopped training at a step it allowed to overlap")
                return RolloutReturn(num_collected_steps * env.num_envs, num_collected_episodes, continue_training=False)
            self._update_info_buffer(infos, dones)
            self._store_flat(replay_buffer, buffer_actions, new_obs, rewards, dones, infos)
            self._update_current_progress_remaining(self.num_timesteps, self._total_timesteps)
            self._on_step()
            for done in dones:
                if done:
                    num_collected_episodes += 1
                    self._episode_num += 1
                    if log_interval is not None and self._episode_num % log_interval == 0:
                        self.dump_logs()
        callback.on_rollout_end()
        return RolloutReturn(num_collected_steps * env.num_envs, num_collected_episodes, continue_training)

    def _batches_ahead(self, env: VecEnv, callback: BaseCallback, buf: FlatDictReplayBuffer,
                       train_freq: TrainFreq) -> list[FlatSamples] | None:
        """The batches of the gradient steps ``learn`` makes right after the coming env step, drawn now,
        before that step, when that draws and reads exactly what SB3 would; None otherwise (NumPy's
        generator then as it was). Every condition keeps SB3's numbers:

        - one env step per rollout (``train_freq`` 1 step) and ``gradient_steps >= 1``, past
          ``learning_starts``: ``learn`` then calls ``train(gradient_steps)`` right after this step;
        - no episode ends at this step (the VecEnv's ``episode_ends_next``): a HER buffer samples
          finished episodes only, and SB3 writes its logs when episodes end;
        - no batch reads the row this step's transitions go to (``sample_flat_before_add``);
        - every callback allows it (:func:`allows_overlap`).
        """
        steps = self.gradient_steps
        ends_next = getattr(type(env), "episode_ends_next", None)  # the class's: a wrapper may change dones
        if (not self.overlaps_env_steps or ends_next is None or steps < 1 or train_freq.frequency != 1 or train_freq.unit != TrainFrequencyUnit.STEP
                or self.num_timesteps + env.num_envs <= max(self.learning_starts, 0)
                or ends_next(env) or not allows_overlap(callback)):
            return None
        state = np.random.get_state()
        batches = []
        for _ in range(steps):
            batch = buf.sample_flat_before_add(self.batch_size)
            if batch is None:
                np.random.set_state(state)
                return None
            batches.append(batch)
        return batches

    def _lean_sample_action(self, lean: LeanSAC, learning_starts: int, n_envs: int) -> tuple[np.ndarray, np.ndarray]:
        """``_sample_action`` without action noise: (env actions [n_envs, A], buffer actions in [-1, 1])."""
        if self.num_timesteps < learning_starts:
            unscaled = np.array([self.action_space.sample() for _ in range(n_envs)])
        else:
            with th.inference_mode():
                actions = lean.act(lean.features(self._last_obs))  # type: ignore[arg-type]
            unscaled = self.policy.unscale_action(actions.numpy().reshape(-1, *self.action_space.shape))  # type: ignore[misc]
            if np.isnan(unscaled).any():  # a NaN mean: raise what Normal(mean, std) raises in SB3
                self.policy.predict(self._last_obs, deterministic=False)  # type: ignore[arg-type]
        scaled = self.policy.scale_action(unscaled)
        return self.policy.unscale_action(scaled), scaled

    def _store_flat(self, buf: FlatDictReplayBuffer, buffer_actions: np.ndarray, new_obs: Any,
                    rewards: np.ndarray, dones: np.ndarray, infos: list[dict[str, Any]]) -> None:
        """``_store_transition`` without VecNormalize: the terminal observation replaces ``new_obs``
        in the stored next observation of a finished env (written straight into the buffer row)."""
        pos = buf.pos
        buf.add(self._last_obs, new_obs, buffer_actions, rewards, dones, infos)  # type: ignore[arg-type]
        for i, done in enumerate(dones):
            terminal = infos[i].get("terminal_observation") if done else None
            if terminal is not None:
                buf.replace_next_obs(pos, i, terminal)
        self._last_original_obs = self._last_obs
        self._last_obs = new_obs

    # ------------------------------------------------------------------ update
    def _optimizer_steppers(self) -> tuple[AdamStep, AdamStep, AdamStep | None]:
        if self._steppers is None:
            ent = AdamStep(self.ent_coef_optimizer) if self.ent_coef_optimizer is not None else None
            self._steppers = (AdamStep(self.critic.optimizer), AdamStep(self.actor.optimizer), ent)
        return self._steppers  # type: ignore[return-value]

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        """``SAC.train``: same draws, same tensor operations in the same order (nothing when
        ``collect_rollouts`` already made these gradient steps while the envs stepped)."""
        made, self._made_update = self._made_update, 0
        if made:
            if (made, batch_size) != (gradient_steps, self.batch_size):
                raise RuntimeError(f"FastSAC: made {made} gradient steps of {self.batch_size} during the env step, "
                                   f"asked for {gradient_steps} of {batch_size}")
            self._set_training_mode(True)  # the flags SB3's train leaves
            return None
        lean = self._lean()
        buf = self.replay_buffer
        if lean is None or not isinstance(buf, FlatDictReplayBuffer):
            return super().train(gradient_steps, batch_size)
        self._train_lean(lean, buf, gradient_steps, batch_size, None)
        return None

    def _train_lean(self, lean: LeanSAC, buf: FlatDictReplayBuffer, gradient_steps: int, batch_size: int,
                    batches: list[FlatSamples] | None) -> None:
        """The lean ``SAC.train``; ``batches``: the gradient steps' batches, already drawn (else drawn here)."""
        self._set_training_mode(True)
        optimizers = [self.actor.optimizer, self.critic.optimizer]
        if self.ent_coef_optimizer is not None:
            optimizers += [self.ent_coef_optimizer]
        self._update_learning_rate(optimizers)
        critic_step, actor_step, ent_step = self._optimizer_steppers()
        critic_params: list[th.Tensor] = list(self.critic.parameters())
        target_params: list[th.Tensor] = list(self.critic_target.parameters())
        actor_params: list[th.Tensor] = list(self.actor.parameters())

        ent_coef_losses: list[float] = []
        ent_coefs: list[float] = []
        actor_losses: list[float] = []
        critic_losses: list[float] = []
        for gradient_step in range(gradient_steps):
            data = buf.sample_flat(batch_size) if batches is None else batches[gradient_step]
            actions_pi, log_prob = lean.action_log_prob(data.observations)
            log_prob = log_prob.reshape(-1, 1)

            ent_coef_loss = None
            if ent_step is not None and self.log_ent_coef is not None:
                ent_coef = th.exp(self.log_ent_coef.detach())
                assert isinstance(self.target_entropy, float)
                ent_coef_loss = -(self.log_ent_coef * (log_prob + self.target_entropy).detach()).mean()
                ent_coef_losses.append(ent_coef_loss.item())
            else:
                ent_coef = self.ent_coef_tensor
            ent_coefs.append(ent_coef.item())
            if ent_coef_loss is not None and ent_step is not None:
                ent_step.zero_grad()
                ent_coef_loss.backward()
                ent_step.step()

            with th.no_grad():
                next_actions, next_log_prob = lean.action_log_prob(data.next_observations)
                next_q_values = th.cat(lean.q_values(lean.critic_target, data.next_observations, next_actions), dim=1)
                next_q_values, _ = th.min(next_q_values, dim=1, keepdim=True)
                next_q_values = next_q_values - ent_coef * next_log_prob.reshape(-1, 1)
                target_q_values = data.rewards + (1 - data.dones) * self.gamma * next_q_values

            current_q_values = lean.q_values(lean.critic, data.observations, data.actions)
            critic_loss = 0.5 * sum(F.mse_loss(current_q, target_q_values) for current_q in current_q_values)
            assert isinstance(critic_loss, th.Tensor)
            critic_losses.append(critic_loss.item())
            if not math.isfinite(critic_losses[-1]):  # diverged: fail where SB3's validated Normal fails
                lean.check(data.observations)
            critic_step.zero_grad()
            critic_loss.backward()
            critic_step.step()

            q_values_pi = th.cat(lean.q_values(lean.critic, data.observations, actions_pi), dim=1)
            min_qf_pi, _ = th.min(q_values_pi, dim=1, keepdim=True)
            actor_loss = (ent_coef * log_prob - min_qf_pi).mean()
            actor_losses.append(actor_loss.item())
            actor_step.zero_grad()
            # Only the actor's gradients: SB3's backward also adds into the critic's .grad, which the
            # critic's next zero_grad discards unread (the input gradients are the same products).
            actor_loss.backward(inputs=actor_params)
            actor_step.step()

            if gradient_step % self.target_update_interval == 0:
                with th.no_grad():  # polyak_update: mul_(1 - tau) then add(alpha=tau), per tensor
                    th._foreach_mul_(target_params, 1 - self.tau)
                    th._foreach_add_(target_params, critic_params, alpha=self.tau)

        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/ent_coef", np.mean(ent_coefs))
        self.logger.record("train/actor_loss", np.mean(actor_losses))
        self.logger.record("train/critic_loss", np.mean(critic_losses))
        if len(ent_coef_losses) > 0:
            self.logger.record("train/ent_coef_loss", np.mean(ent_coef_losses))
