from sb3_diffusion.common.policies import DiffusionActorPolicy


class SDACPolicy(DiffusionActorPolicy):
    """
    Policy class for SDAC, with the defaults of the official code: noise network and critics of
    3 x 256 Mish, linear schedule ``0.8 * linspace(1e-4, 0.999, 20)``, chains started at std 0.5,
    16-dim time embedding (frequencies ``10000^(-j/8)``, scaled by 1/4) with a 16-32-16 time MLP,
    Haiku's truncated-normal initialisation, acting with the EMA actor.

    See :class:`~sb3_diffusion.common.policies.DiffusionActorPolicy` for the parameters.
    """


MlpPolicy = SDACPolicy
