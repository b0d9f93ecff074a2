from sb3_diffusion.sdac.policies import MlpPolicy, SDACPolicy
from sb3_diffusion.sdac.sdac import SDAC

__all__ = ["SDAC", "MlpPolicy", "SDACPolicy"]
