from typing import Any, ClassVar

from sb3_diffusion.common.networks import Mish
from sb3_diffusion.common.policies import DiffusionActorPolicy


class SDACPolicy(DiffusionActorPolicy):
    """
    Policy class for SDAC, with the defaults of the official code (see :attr:`defaults`).

    See :class:`~sb3_diffusion.common.policies.DiffusionActorPolicy` for the parameters; only the
    defaults differ.
    """

    defaults: ClassVar[dict[str, Any]] = dict(
        net_arch=[256, 256, 256],  # noise network and critics of 3 x 256 Mish
        activation_fn=Mish,
        diffusion_steps=20,
        beta_schedule="linear",  # 0.8 * linspace(1e-4, 0.999, 20)
        init_noise_scale=0.5,  # chains start at std 0.5
        time_embed_dim=16,  # frequencies 10000^(-j/8), scaled by 1/4, then a 16-32-16 time MLP
        time_hidden_dim=32,
        time_embed_shift=0,
        time_embed_scale=0.25,
        init="haiku",  # Haiku's truncated normal for the noise network and the critics
        critic_init="haiku",
        n_behavior_candidates=32,  # best-of-32 acting (SDAC sets both from its n_candidates)
        n_eval_candidates=32,
        behavior_actor="ema",  # acting with the EMA actor
    )


MlpPolicy = SDACPolicy
