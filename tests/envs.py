"""Small environments with known answers for behaviour tests."""

import gymnasium as gym
import numpy as np
from gymnasium import spaces

# (location, height, width) of the reward peaks; the global peak is the last one
BANDIT_PEAKS = ((-0.6, 0.5, 0.15), (0.05, 0.7, 0.15), (0.65, 1.0, 0.15))


class MultiPeakBandit(gym.Env):
    """
    One-step continuous bandit: a constant observation, a 1-D action in [-1, 1], and a reward made of
    Gaussian bumps of different heights, so a unimodal or greedy-but-wrong policy is easy to tell
    from the optimum (the global peak at 0.65, reward 1).
    """

    observation_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
    global_peak = BANDIT_PEAKS[-1][0]

    @staticmethod
    def reward(action: np.ndarray) -> float:
        a = float(np.asarray(action).reshape(-1)[0])
        return max(h * np.exp(-0.5 * ((a - c) / w) ** 2) for c, h, w in BANDIT_PEAKS)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action):
        return np.zeros(1, dtype=np.float32), self.reward(action), True, False, {}


class FaultAt(gym.Wrapper):
    """
    Pendulum-like environment that goes wrong at its ``at``-th step: ``fault`` is one of ``"nan_reward"``,
    ``"inf_reward"``, ``"nan_observation"``, ``"nan_terminal_observation"`` (the episode is truncated with
    a NaN last observation, which the VecEnv hands over as ``terminal_observation``) or ``"raise"``;
    ``"nan_reset"``: its first ``reset`` returns a NaN observation.
    """

    def __init__(self, env: gym.Env, at: int, fault: str):
        super().__init__(env)
        self.at, self.fault, self.steps = at, fault, 0

    def reset(self, **kwargs):
        observation, info = self.env.reset(**kwargs)
        if self.fault == "nan_reset" and self.steps == 0:
            observation = observation.copy()
            observation[1] = np.nan
        return observation, info

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        if self.steps == self.at:
            if self.fault == "raise":
                raise RuntimeError(f"the environment failed at its step {self.at}")
            if self.fault == "nan_reward":
                reward = float("nan")
            elif self.fault == "inf_reward":
                reward = float("inf")
            else:
                observation = observation.copy()
                observation[1] = np.nan
                truncated = truncated or self.fault == "nan_terminal_observation"
        return observation, reward, terminated, truncated, info


class ScaleReward(gym.RewardWrapper):
    """Multiplies the rewards by ``scale`` (finite, but large enough to overflow a squared TD error)."""

    def __init__(self, env: gym.Env, scale: float):
        super().__init__(env)
        self.scale = scale

    def reward(self, reward):
        return reward * self.scale
