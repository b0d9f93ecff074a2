from typing import Any, ClassVar

from sb3_diffusion.common.networks import Mish
from sb3_diffusion.common.policies import DiffusionActorPolicy


class QVPOPolicy(DiffusionActorPolicy):
    """
    Policy class for QVPO, with the defaults of the official code (see :attr:`defaults`).

    See :class:`~sb3_diffusion.common.policies.DiffusionActorPolicy` for the parameters; only the
    defaults differ (``optimizer_kwargs=None`` also means ``dict(eps=1e-5)``; an explicit dict replaces it).
    """

    defaults: ClassVar[dict[str, Any]] = dict(
        net_arch=[256, 256, 256],  # noise network and critics of 3 x 256 Mish
        activation_fn=Mish,
        diffusion_steps=20,
        beta_schedule="cosine",  # s = 0.008, betas clipped at 0.999
        init_noise_scale=1.0,  # chains start at std 1
        time_embed_dim=32,  # frequencies 10000^(-j/15), then a 32-256-32 time MLP
        time_hidden_dim=256,
        time_embed_shift=1,
        time_embed_scale=1.0,
        init="qvpo",  # init_weights: N(0, (1 / (2 sqrt(fan_in)))^2) weights, zero biases ...
        critic_init="qvpo",  # ... for the critics too (agent/model.py: Critic applies init_weights)
        n_behavior_candidates=4,  # acting: best-of-4 of the online actor, no added noise
        n_eval_candidates=32,  # deterministic actions: best-of-32
        behavior_actor="online",
        optimizer_kwargs=dict(eps=1e-5),  # Adam with eps 1e-5
    )


MlpPolicy = QVPOPolicy
