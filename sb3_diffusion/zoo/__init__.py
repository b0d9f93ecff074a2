"""
RL Zoo and Optuna glue: ``register()`` (run by the start-up hook, see :mod:`sb3_diffusion.zoo.hook`),
the shipped configs, the Optuna samplers and converters, and the ``python -m sb3_diffusion.zoo`` wrapper.
"""

from sb3_diffusion.zoo.callbacks import NonFiniteLossCallback, NonFiniteLossError
from sb3_diffusion.zoo.registration import ALGO_NAMES, config_path, register
from sb3_diffusion.zoo.samplers import CONVERTERS, SAMPLERS

__all__ = [
    "ALGO_NAMES",
    "CONVERTERS",
    "SAMPLERS",
    "NonFiniteLossCallback",
    "NonFiniteLossError",
    "config_path",
    "register",
]
