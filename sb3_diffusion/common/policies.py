"""
The diffusion actor-critic policy shared by QVPO and SDAC.

:class:`DiffusionActor` holds the noise network and its schedule and samples with the plain reverse
chain. :class:`DiffusionActorPolicy` holds the actor, its EMA copy, the twin critics and their targets,
and acts best-of-K; its sampling and its scoring of candidates go through the policy's
:class:`~sb3_diffusion.common.hot_path.HotPath`, which gives the plain computation's numbers faster.
"""

import copy
import functools
import inspect
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy, ContinuousCritic
from stable_baselines3.common.preprocessing import get_action_dim
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, FlattenExtractor, get_actor_critic_arch
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import nn

from sb3_diffusion.common.diffusion import (
    BETA_SCHEDULES,
    SAMPLERS,
    DiffusionSchedule,
    make_betas,
    respace_betas,
    respaced_timesteps,
)
from sb3_diffusion.common.hot_path import COMPILE_MODES, PRECISIONS, HotPath
from sb3_diffusion.common.networks import INITIALIZATIONS, NoisePredictionNet, init_mlp_
from sb3_diffusion.common.utils import check_action_space, check_choice, check_float, check_int, observation_seed


class DiffusionActor(BasePolicy):
    """
    Diffusion actor: a noise-prediction network, its DDPM schedule and the reverse sampler.

    :param observation_space: Observation space
    :param action_space: Action space (a bounded Box; actions are produced in [-1, 1])
    :param net_arch: Hidden layer sizes of the noise-prediction network
    :param features_extractor: Network to extract features (``nn.Flatten`` for MlpPolicy)
    :param features_dim: Number of features
    :param activation_fn: Activation function
    :param diffusion_steps: Number of diffusion steps T
    :param beta_schedule: ``"cosine"``, ``"linear"`` or ``"vp"``
    :param beta_schedule_kwargs: Keyword arguments of the schedule (e.g. ``scale`` of the linear one)
    :param init_noise_scale: Standard deviation of the reverse chain's starting point x_T
    :param time_embed_dim: Size of the sinusoidal time embedding
    :param time_hidden_dim: Hidden size of the time MLP
    :param time_embed_shift: Frequency convention of the embedding (see ``SinusoidalEmbedding``)
    :param time_embed_scale: Scale of the embedding
    :param init: Weight initialisation of the noise network (``"haiku"``, ``"qvpo"``, ``"torch"``)
    :param normalize_images: Whether to normalize images or not, dividing by 255.0
    :param sampling_steps: Steps of the reverse chain when sampling (None: all T). Fewer steps use a
        re-spaced schedule (DDPM respacing: the kept steps keep their abar; see ``respace_betas``);
        training is unchanged.
    :param sampler: ``"ddpm"`` (stochastic) or ``"ddim"`` (deterministic DDIM, eta = 0)
    """

    action_space: spaces.Box

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        net_arch: list[int],
        features_extractor: nn.Module,
        features_dim: int,
        *,
        activation_fn: type[nn.Module],
        diffusion_steps: int,
        beta_schedule: str,
        init_noise_scale: float,
        time_embed_dim: int,
        time_hidden_dim: int,
        time_embed_shift: int,
        time_embed_scale: float,
        init: str,
        beta_schedule_kwargs: dict[str, float] | None = None,
        normalize_images: bool = True,
        sampling_steps: int | None = None,
        sampler: str = "ddpm",
    ):
        super().__init__(
            observation_space,
            action_space,
            features_extractor=features_extractor,
            normalize_images=normalize_images,
            squash_output=True,
        )
        self.net_arch = net_arch
        self.features_dim = features_dim
        self.activation_fn = activation_fn
        self.init_noise_scale = init_noise_scale
        self.action_dim = get_action_dim(self.action_space)
        betas = make_betas(beta_schedule, diffusion_steps, **(beta_schedule_kwargs or {}))
        self.schedule = DiffusionSchedule(betas)
        # The chain used for sampling: the training schedule, or its re-spaced / DDIM version (not saved:
        # it is a function of the constructor arguments)
        self.sampling_timesteps = respaced_timesteps(diffusion_steps, sampling_steps or diffusion_steps)
        self.sampler = sampler
        self._sampling_schedule: DiffusionSchedule | None = None
        if len(self.sampling_timesteps) < diffusion_steps or sampler != "ddpm":
            self._sampling_schedule = DiffusionSchedule(
                respace_betas(betas, self.sampling_timesteps), sampler=sampler, persistent=False
            )
        self.noise_net = NoisePredictionNet(
            features_dim,
            self.action_dim,
            net_arch,
            activation_fn=activation_fn,
            time_embed_dim=time_embed_dim,
            time_hidden_dim=time_hidden_dim,
            time_embed_shift=time_embed_shift,
            time_embed_scale=time_embed_scale,
            init=init,
        )

    @property
    def diffusion_steps(self) -> int:
        """T, the steps of the training schedule."""
        return self.schedule.n_steps

    @property
    def sampling_schedule(self) -> DiffusionSchedule:
        """The schedule of the sampling chain (the training schedule unless re-spaced or DDIM)."""
        return self.schedule if self._sampling_schedule is None else self._sampling_schedule

    @property
    def sampling_steps(self) -> int:
        """Steps of the reverse chain when sampling (T unless re-spaced)."""
        return len(self.sampling_timesteps)

    def predict_noise(self, obs: PyTorchObs, x_t: th.Tensor, t: th.Tensor) -> th.Tensor:
        """
        ``eps_theta(s, a_t, t)`` for rows that each have their own step (the training forward; the time
        block once per step of the schedule, see :class:`~sb3_diffusion.common.networks.NoisePredictionNet`).
        """
        features = self.extract_features(obs, self.features_extractor)
        return self.noise_net(features, x_t, t, n_steps=self.diffusion_steps)

    def draw_chain_noise(self, batch_size: int, n_samples: int, generators: list[th.Generator] | None = None) -> th.Tensor:
        """
        All the standard normal noise of ``n_samples`` reverse chains per state, in one tensor of shape
        (S, batch_size, n_samples, d) with S = ``sampling_steps``: slice 0 starts the chain, slice i >= 1
        is the noise of sampling step i.

        :param generators: One CPU generator per state (the noise of each state then depends only on its
            generator); None draws from the global generator on the policy's device.
        """
        shape = (self.sampling_steps, n_samples, self.action_dim)
        if generators is None:
            return th.randn((shape[0], batch_size, *shape[1:]), device=self.device)
        assert len(generators) == batch_size
        per_state = [th.randn(shape, generator=generator) for generator in generators]
        return th.stack(per_state, dim=1).to(self.device)

    def sample(self, obs: PyTorchObs, n_samples: int, noise: th.Tensor | None = None) -> th.Tensor:
        """
        Draw ``n_samples`` actions per state: ``n_samples`` reverse chains per state, from
        ``x = init_noise_scale * z`` through the sampling schedule, predicting the noise of every row
        at every step. This is the plain computation; the policy runs it through its hot path
        (:meth:`DiffusionActorPolicy.sample`), which returns the same numbers faster.

        :param obs: Observations, batch of B
        :param n_samples: Samples per state K
        :param noise: Optional noise from :meth:`draw_chain_noise` (drawn here if None)
        :return: Actions in [-1, 1], shape (B, K, d)
        """
        with th.no_grad():
            features = self.extract_features(obs, self.features_extractor)
            batch_size = features.shape[0]
            if noise is None:
                noise = self.draw_chain_noise(batch_size, n_samples)
            features = features.repeat_interleave(n_samples, dim=0)  # row b*K + j is state b
            x = noise[0].flatten(0, 1) * self.init_noise_scale
            for i in reversed(range(self.sampling_steps)):
                # the network sees the original step; the sampling schedule gives the coefficients
                t = th.full((x.shape[0],), self.sampling_timesteps[i], device=x.device)
                eps = self.noise_net(features, x, t)
                x = self.sampling_schedule.reverse_step(x, i, eps, noise[i].flatten(0, 1))
        return x.view(batch_size, n_samples, self.action_dim)

    def forward(self, obs: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        return self.sample(obs, 1)[:, 0]

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        return self(observation, deterministic)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            dict(
                net_arch=self.net_arch,
                features_dim=self.features_dim,
                activation_fn=self.activation_fn,
                sampling_steps=self.sampling_steps,
                sampler=self.sampler,
            )
        )
        return data


class DiffusionActorPolicy(BasePolicy):
    """
    Policy class (diffusion actor, EMA actor, twin critics and their targets) shared by QVPO and SDAC.
    It has no algorithm's defaults: the modelling choices are required arguments, and each algorithm's
    policy (``SDACPolicy``, ``QVPOPolicy``) gives them as defaults in its :attr:`defaults`.

    Acting is best-of-K: K reverse chains per state, scored by the minimum of the online critics, the
    argmax kept. ``predict(obs, deterministic=True)`` uses ``n_eval_candidates`` chains and no
    exploration noise, with chain noise seeded from each observation's bytes, so the action is a pure
    function of (observation, parameters). ``deterministic=False`` is the behaviour policy:
    ``n_behavior_candidates`` chains of the ``behavior_actor`` plus Gaussian noise of std
    ``exploration_std``, clipped to [-1, 1].

    :param observation_space: Observation space
    :param action_space: Action space (a bounded Box)
    :param lr_schedule: Learning rate schedule (could be constant)
    :param net_arch: Hidden sizes: a list for both networks, or ``dict(pi=[...], qf=[...])``
    :param activation_fn: Activation function (``Mish``: exact Mish with a fast form without autograd)
    :param critic_activation_fn: Activation function of the critics, an option (None: ``activation_fn``,
        as both official codes do; ``nn.ReLU`` gives critics like SB3 SAC's)
    :param diffusion_steps: Number of diffusion steps T
    :param beta_schedule: ``"cosine"``, ``"linear"`` or ``"vp"``
    :param init_noise_scale: Standard deviation of the reverse chain's starting point
    :param time_embed_dim: Size of the sinusoidal time embedding
    :param time_hidden_dim: Hidden size of the time MLP
    :param time_embed_shift: Frequency convention of the embedding: 0 gives ``10000^(-j/(dim/2))``,
        1 gives ``10000^(-j/(dim/2-1))``
    :param time_embed_scale: Scale of the embedding
    :param init: Initialisation of the noise network (``"haiku"``, ``"qvpo"`` or ``"torch"``)
    :param critic_init: Initialisation of the critics (``"haiku"``, ``"qvpo"`` or ``"torch"``)
    :param n_behavior_candidates: K of the behaviour policy (``deterministic=False``)
    :param n_eval_candidates: K of the deterministic policy (``deterministic=True``)
    :param behavior_actor: Which actor acts: ``"ema"`` (the EMA copy) or ``"online"``
    :param beta_schedule_kwargs: Keyword arguments of the schedule
    :param exploration_std: Standard deviation of the Gaussian noise added to behaviour actions
        (in the [-1, 1] action scale); algorithms may change it during training
    :param features_extractor_class: Features extractor to use
    :param features_extractor_kwargs: Keyword arguments to pass to the features extractor
    :param normalize_images: Whether to normalize images or not, dividing by 255.0
    :param optimizer_class: The optimizer to use, ``th.optim.Adam`` by default
    :param optimizer_kwargs: Additional keyword arguments, excluding the learning rate, to pass to the optimizer
    :param n_critics: Number of critic networks
    :param compile_mode: ``"auto"`` (default), ``"on"`` or ``"off"``: whether sampling and candidate
        scoring use ``torch.compile``'d kernels (CPU) or a captured CUDA graph of the reverse chain (CUDA).
        ``"auto"`` compiles on CPU only for large batches; the environment variable
        ``SB3_DIFFUSION_COMPILE`` overrides it. The results are the same up to float rounding.
    :param sampling_steps: Cheaper sampling, an option: reverse-chain steps when sampling (None: all
        ``diffusion_steps``); fewer steps use a re-spaced schedule. Training is unchanged.
    :param sampler: ``"ddpm"`` (default) or ``"ddim"`` (deterministic DDIM, eta = 0, an option)
    :param precision: ``"fp32"`` (default, the faithful setting), ``"bf16"`` or ``"bf16_chains"``: arithmetic of the
        sampling chains and of the critics' scoring of candidates (behaviour and evaluation actions, TD
        targets, the actor update's samples). ``"bf16"`` runs their first and hidden layers in bfloat16
        where the device has hardware bf16 (AVX512-BF16 or AMX on CPU, CUDA with bf16) and falls back
        to fp32 with a warning elsewhere; parameters, optimizers, gradient steps, the schedule, the
        output layers, argmax and weights stay fp32. Faster only where bf16 matmuls are (AMX, GPUs):
        see ``docs/precision.md``. ``"bf16_chains"``: the chains in bf16, the critics' scoring in fp32
        (where bf16 perturbs the algorithms' quantities most, QVPO's weights above all).
    """

    #: The algorithm's defaults for the arguments of ``__init__`` (a subclass declares them; passing
    #: None for one of them also gives its default)
    defaults: ClassVar[dict[str, Any]] = {}

    actor: DiffusionActor
    actor_target: DiffusionActor
    critic: ContinuousCritic
    critic_target: ContinuousCritic
    exploration_std: th.Tensor

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "defaults" in cls.__dict__ and "__init__" not in cls.__dict__:
            cls.__init__ = _with_defaults(cls.__init__, cls.defaults)  # type: ignore[method-assign]

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        *,
        net_arch: list[int] | dict[str, list[int]],
        activation_fn: type[nn.Module],
        diffusion_steps: int,
        beta_schedule: str,
        init_noise_scale: float,
        time_embed_dim: int,
        time_hidden_dim: int,
        time_embed_shift: int,
        time_embed_scale: float,
        init: str,
        critic_init: str,
        n_behavior_candidates: int,
        n_eval_candidates: int,
        behavior_actor: str,
        beta_schedule_kwargs: dict[str, float] | None = None,
        exploration_std: float = 0.0,
        features_extractor_class: type[BaseFeaturesExtractor] = FlattenExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        n_critics: int = 2,
        compile_mode: str = "auto",
        sampling_steps: int | None = None,
        sampler: str = "ddpm",
        precision: str = "fp32",
        critic_activation_fn: type[nn.Module] | None = None,
    ):
        check_action_space(action_space)
        if isinstance(observation_space, spaces.Dict) and features_extractor_class is FlattenExtractor:
            raise ValueError(
                f"This policy takes Box, Discrete, MultiDiscrete or MultiBinary observations, got a Dict space "
                f"({observation_space}). Flatten it first, for example with gymnasium.wrappers.FlattenObservation."
            )
        super().__init__(
            observation_space,
            action_space,
            features_extractor_class,
            features_extractor_kwargs,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
            normalize_images=normalize_images,
            squash_output=True,
        )
        actor_arch, critic_arch = get_actor_critic_arch(net_arch)
        self.net_arch = net_arch
        self.activation_fn = activation_fn
        if critic_activation_fn is not None and not (
            isinstance(critic_activation_fn, type) and issubclass(critic_activation_fn, nn.Module)
        ):
            raise ValueError(
                f"critic_activation_fn must be None or an nn.Module class such as nn.ReLU, got {critic_activation_fn!r}"
            )
        self.critic_activation_fn = critic_activation_fn
        self.diffusion_kwargs = dict(
            diffusion_steps=check_int("diffusion_steps", diffusion_steps),
            beta_schedule=check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES),
            beta_schedule_kwargs=beta_schedule_kwargs,
            init_noise_scale=check_float("init_noise_scale", init_noise_scale),
            time_embed_dim=check_int("time_embed_dim", time_embed_dim, minimum=2),
            time_hidden_dim=check_int("time_hidden_dim", time_hidden_dim),
            time_embed_shift=check_int("time_embed_shift", time_embed_shift, minimum=0),
            time_embed_scale=check_float("time_embed_scale", time_embed_scale),
            init=check_choice("init", init, INITIALIZATIONS),
            sampling_steps=None if sampling_steps is None else check_int("sampling_steps", sampling_steps),
            sampler=check_choice("sampler", sampler, SAMPLERS),
        )
        if sampling_steps is not None and sampling_steps > diffusion_steps:
            raise ValueError(
                f"sampling_steps must be at most diffusion_steps ({diffusion_steps}), got {sampling_steps}: "
                "it selects a subset of the diffusion steps"
            )
        self.critic_init = check_choice("critic_init", critic_init, INITIALIZATIONS)
        self.n_behavior_candidates = check_int("n_behavior_candidates", n_behavior_candidates)
        self.n_eval_candidates = check_int("n_eval_candidates", n_eval_candidates)
        self.behavior_actor = check_choice("behavior_actor", behavior_actor, ("ema", "online"))
        self.n_critics = check_int("n_critics", n_critics)
        # The seam to the fast paths of sampling and scoring (not saved: a function of these arguments)
        self.hot_path = HotPath(
            check_choice("compile_mode", compile_mode, COMPILE_MODES), check_choice("precision", precision, PRECISIONS)
        )
        self.actor_kwargs = dict(
            observation_space=self.observation_space,
            action_space=self.action_space,
            net_arch=actor_arch,
            activation_fn=activation_fn,
            normalize_images=normalize_images,
            **self.diffusion_kwargs,
        )
        self.critic_kwargs = dict(
            observation_space=self.observation_space,
            action_space=self.action_space,
            net_arch=critic_arch,
            activation_fn=activation_fn if critic_activation_fn is None else critic_activation_fn,
            normalize_images=normalize_images,
            n_critics=n_critics,
            share_features_extractor=False,
        )
        self.register_buffer("exploration_std", th.tensor(check_float("exploration_std", exploration_std, strict=False)))
        self._build(lr_schedule)

    @property
    def compile_mode(self) -> str:
        """The hot path's compile mode (see :class:`~sb3_diffusion.common.hot_path.HotPath`)."""
        return self.hot_path.compile_mode

    @property
    def precision(self) -> str:
        """The hot path's precision, ``"fp32"`` or ``"bf16"`` (see :class:`~sb3_diffusion.common.hot_path.HotPath`)."""
        return self.hot_path.precision

    def make_optimizer(self, params: Any, lr: float) -> th.optim.Optimizer:
        """
        ``optimizer_class(params, lr=lr, **optimizer_kwargs)``. When the optimizer takes a ``foreach``
        argument and ``optimizer_kwargs`` does not set it, it is set to True: torch picks the
        multi-tensor implementation only on accelerators, and on a CPU the one-tensor-at-a-time loop
        costs about a third of the optimizer's time for this library's small networks. The two
        implementations give bitwise-identical parameters for Adam (tests/test_speed_equivalence.py).
        """
        kwargs = dict(self.optimizer_kwargs)
        if "foreach" not in kwargs and "foreach" in inspect.signature(self.optimizer_class).parameters:
            kwargs["foreach"] = True
        return self.optimizer_class(params, lr=lr, **kwargs)  # type: ignore[call-arg]

    def _build(self, lr_schedule: Schedule) -> None:
        self.actor = self.make_actor()
        self.actor_target = self.make_actor()
        self.actor_target.load_state_dict(self.actor.state_dict())
        self.actor.optimizer = self.make_optimizer(self.actor.parameters(), lr_schedule(1))

        self.critic = self.make_critic()
        init_mlp_(self.critic, self.critic_init)
        self.critic_target = self.make_critic()
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic.optimizer = self.make_optimizer(self.critic.parameters(), lr_schedule(1))

        # Targets are never trained directly
        self.actor_target.set_training_mode(False)
        self.critic_target.set_training_mode(False)
        for param in [*self.actor_target.parameters(), *self.critic_target.parameters()]:
            param.requires_grad_(False)

    def make_actor(self, features_extractor: BaseFeaturesExtractor | None = None) -> DiffusionActor:
        actor_kwargs = self._update_features_extractor(self.actor_kwargs, features_extractor)
        return DiffusionActor(**actor_kwargs).to(self.device)

    def make_critic(self, features_extractor: BaseFeaturesExtractor | None = None) -> ContinuousCritic:
        critic_kwargs = self._update_features_extractor(self.critic_kwargs, features_extractor)
        return ContinuousCritic(**critic_kwargs).to(self.device)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            dict(
                net_arch=self.net_arch,
                activation_fn=self.activation_fn,
                **self.diffusion_kwargs,
                critic_init=self.critic_init,
                n_behavior_candidates=self.n_behavior_candidates,
                n_eval_candidates=self.n_eval_candidates,
                behavior_actor=self.behavior_actor,
                exploration_std=float(self.exploration_std),
                lr_schedule=self._dummy_schedule,  # not needed for loading the policy alone
                optimizer_class=self.optimizer_class,
                optimizer_kwargs=self.optimizer_kwargs,
                features_extractor_class=self.features_extractor_class,
                features_extractor_kwargs=self.features_extractor_kwargs,
                n_critics=self.n_critics,
                compile_mode=self.compile_mode,
                precision=self.precision,
                critic_activation_fn=self.critic_activation_fn,
            )
        )
        return data

    def sample(
        self, obs: PyTorchObs, n_samples: int, actor: DiffusionActor | None = None, noise: th.Tensor | None = None
    ) -> th.Tensor:
        """
        ``actor.sample(obs, n_samples, noise)`` (the online actor by default), computed by the hot path.

        :return: Actions in [-1, 1], shape (B, n_samples, d)
        """
        return self.hot_path.sample(self.actor if actor is None else actor, obs, n_samples, noise)

    def min_q(self, obs: PyTorchObs, candidates: th.Tensor, critic: ContinuousCritic | None = None) -> th.Tensor:
        """
        ``min_q(critic, obs, candidates)`` of K candidates per state (the online critics by default),
        computed by the hot path.

        :param candidates: Actions, shape (B, K, d)
        :return: Shape (B, K)
        """
        return self.hot_path.min_q(self.critic if critic is None else critic, obs, candidates)

    def best_of_k(
        self,
        obs: PyTorchObs,
        n_candidates: int,
        actor: DiffusionActor | None = None,
        critic: ContinuousCritic | None = None,
        noise: th.Tensor | None = None,
    ) -> th.Tensor:
        """
        Best-of-K actions: ``n_candidates`` reverse chains per state (one batch of B*K rows), scored by
        the minimum of the critics, the argmax kept.

        :param obs: Observations, batch of B
        :param n_candidates: K
        :param actor: Actor that samples (the online actor by default)
        :param critic: Critics that score (the online critics by default)
        :param noise: Optional chain noise (see ``DiffusionActor.draw_chain_noise``)
        :return: Actions in [-1, 1], shape (B, d)
        """
        with th.no_grad():
            candidates = self.sample(obs, n_candidates, actor=actor, noise=noise)
            if n_candidates == 1:
                return candidates[:, 0]
            best = self.min_q(obs, candidates, critic=critic).argmax(dim=1)
        return candidates[th.arange(candidates.shape[0], device=candidates.device), best]

    def add_exploration_noise(self, actions: th.Tensor, std: float | th.Tensor | None = None) -> th.Tensor:
        """Add N(0, std^2) noise (``exploration_std`` by default) and clip to [-1, 1]."""
        std = self.exploration_std if std is None else std
        if float(std) == 0.0:
            return actions
        return (actions + std * th.randn_like(actions)).clamp(-1.0, 1.0)

    def forward(self, obs: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        return self._predict(obs, deterministic=deterministic)

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        if deterministic:
            return self._deterministic_action(observation)
        actions = self.best_of_k(observation, self.n_behavior_candidates, actor=self.acting_actor)  # type: ignore[arg-type]
        return self.add_exploration_noise(actions)

    @property
    def acting_actor(self) -> DiffusionActor:
        """The actor used by ``predict`` (``behavior_actor``: the EMA copy or the online actor)."""
        return self.actor_target if self.behavior_actor == "ema" else self.actor

    def _deterministic_action(self, observation: PyTorchObs) -> th.Tensor:
        # One state at a time, with chain noise seeded from the observation's bytes: the action is then
        # independent of the rest of the batch, bit for bit (a batched matmul may round differently
        # for different batch sizes, which could flip a near-tie in the argmax).
        assert isinstance(observation, th.Tensor), "deterministic actions need a tensor observation"
        raw = observation.detach().cpu().numpy()
        actions = []
        for index in range(observation.shape[0]):
            generator = th.Generator().manual_seed(observation_seed(raw[index]))
            noise = self.actor.draw_chain_noise(1, self.n_eval_candidates, generators=[generator])
            state = observation[index : index + 1]
            actions.append(self.best_of_k(state, self.n_eval_candidates, actor=self.acting_actor, noise=noise))
        return th.cat(actions, dim=0)

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        values = observation.values() if isinstance(observation, dict) else [observation]
        for value in values:
            array = np.asarray(value)
            if np.issubdtype(array.dtype, np.number) and not np.all(np.isfinite(array)):
                raise ValueError(
                    "The observation passed to predict() contains NaN or infinite values; "
                    "a diffusion policy would return a meaningless action. Check the environment or its wrappers."
                )
        return super().predict(observation, state, episode_start, deterministic)

    def set_training_mode(self, mode: bool) -> None:
        """
        Put the policy in either training or evaluation mode (the targets stay in evaluation mode).

        :param mode: if true, set to training mode, else set to evaluation mode
        """
        # Called two or three times per environment step (collect_rollouts, predict, train): the same
        # effect as actor.train(mode) and critic.train(mode), without nn.Module's per-module overhead
        _set_training_flags(self.actor, mode)
        _set_training_flags(self.critic, mode)
        self.training = mode


def _set_training_flags(module: nn.Module, mode: bool) -> None:
    """
    ``module.train(mode)``, cheaper: the ``training`` flag is written directly and the children are
    walked through ``_modules``; a module whose class overrides ``train`` gets its own ``train(mode)``.
    """
    if type(module).train is not nn.Module.train:
        module.train(mode)
        return
    module.__dict__["training"] = mode
    for child in module._modules.values():
        if child is not None:
            _set_training_flags(child, mode)


def _with_defaults(init: Callable[..., None], defaults: dict[str, Any]) -> Callable[..., None]:
    """
    ``init`` with the defaults of some of its arguments replaced by ``defaults`` (copied at each call;
    an argument passed as None also gets its default), and a signature that shows them.
    """
    signature = inspect.signature(init)
    unknown = set(defaults) - set(signature.parameters)
    if unknown:
        raise TypeError(f"defaults name arguments that the policy does not take: {sorted(unknown)}")
    parameters = [p.replace(default=defaults[p.name]) if p.name in defaults else p for p in signature.parameters.values()]
    signature = signature.replace(parameters=parameters)

    @functools.wraps(init)
    def __init__(*args: Any, **kwargs: Any) -> None:
        bound = signature.bind(*args, **kwargs)
        for name, value in defaults.items():
            if bound.arguments.get(name) is None:
                bound.arguments[name] = copy.deepcopy(value)
        init(*bound.args, **bound.kwargs)

    __init__.__signature__ = signature  # type: ignore[attr-defined]
    return __init__
