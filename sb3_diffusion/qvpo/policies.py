from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, FlattenExtractor
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

from sb3_diffusion.common.networks import Mish
from sb3_diffusion.common.policies import DiffusionActorPolicy


class QVPOPolicy(DiffusionActorPolicy):
    """
    Policy class for QVPO, with the defaults of the official code: noise network and critics of
    3 x 256 Mish, cosine schedule (T = 20) with chains started at std 1, 32-dim sinusoidal time
    embedding (frequencies ``10000^(-j/15)``) with a 32-256-32 time MLP, QVPO's ``init_weights`` for the
    noise network and the critics alike (weights N(0, (1 / (2 sqrt(fan_in)))^2), zero biases; the
    official critic applies it too), acting with the online actor
    (best-of-4, no added noise), deterministic actions best-of-32, Adam with ``eps=1e-5``.

    See :class:`~sb3_diffusion.common.policies.DiffusionActorPolicy` for the parameters. Only the
    defaults differ; ``optimizer_kwargs=None`` means ``dict(eps=1e-5)`` (an explicit dict replaces it).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = Mish,
        diffusion_steps: int = 20,
        beta_schedule: str = "cosine",
        beta_schedule_kwargs: dict[str, float] | None = None,
        init_noise_scale: float = 1.0,
        time_embed_dim: int = 32,
        time_hidden_dim: int = 256,
        time_embed_shift: int = 1,
        time_embed_scale: float = 1.0,
        init: str = "qvpo",
        critic_init: str = "qvpo",
        n_behavior_candidates: int = 4,
        n_eval_candidates: int = 32,
        behavior_actor: str = "online",
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
    ):
        if optimizer_kwargs is None:
            optimizer_kwargs = dict(eps=1e-5)
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch=net_arch,
            activation_fn=activation_fn,
            diffusion_steps=diffusion_steps,
            beta_schedule=beta_schedule,
            beta_schedule_kwargs=beta_schedule_kwargs,
            init_noise_scale=init_noise_scale,
            time_embed_dim=time_embed_dim,
            time_hidden_dim=time_hidden_dim,
            time_embed_shift=time_embed_shift,
            time_embed_scale=time_embed_scale,
            init=init,
            critic_init=critic_init,
            n_behavior_candidates=n_behavior_candidates,
            n_eval_candidates=n_eval_candidates,
            behavior_actor=behavior_actor,
            exploration_std=exploration_std,
            features_extractor_class=features_extractor_class,
            features_extractor_kwargs=features_extractor_kwargs,
            normalize_images=normalize_images,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
            n_critics=n_critics,
            compile_mode=compile_mode,
            sampling_steps=sampling_steps,
            sampler=sampler,
        )


MlpPolicy = QVPOPolicy
