from sb3_diffusion.qvpo.policies import MlpPolicy, QVPOPolicy
from sb3_diffusion.qvpo.qvpo import QVPO

__all__ = ["QVPO", "MlpPolicy", "QVPOPolicy"]
