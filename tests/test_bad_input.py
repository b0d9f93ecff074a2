"""Every bad input gets an error that names the problem and what is allowed."""

import re

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from tests.conftest import TINY_POLICY


class SpaceEnv(gym.Env):
    """A one-step environment with the given spaces."""

    def __init__(self, observation_space, action_space):
        self.observation_space, self.action_space = observation_space, action_space

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, True, False, {}


BOX_OBS = spaces.Box(-1, 1, (3,), np.float32)


@pytest.mark.parametrize(
    "action_space",
    [spaces.Discrete(3), spaces.MultiDiscrete([2, 3]), spaces.MultiBinary(2)],
    ids=["Discrete", "MultiDiscrete", "MultiBinary"],
)
def test_non_box_action_spaces(algo, action_space):
    cls, kwargs = algo
    with pytest.raises(ValueError, match=re.escape(f"continuous Box action space, got {action_space}")):
        cls("MlpPolicy", SpaceEnv(BOX_OBS, action_space), **kwargs)


@pytest.mark.parametrize("low,high", [(-np.inf, np.inf), (-1.0, np.inf)])
def test_unbounded_box_actions(algo, low, high):
    cls, kwargs = algo
    env = SpaceEnv(BOX_OBS, spaces.Box(low, high, (2,), np.float32))
    with pytest.raises(ValueError, match="bounded Box action space"):
        cls("MlpPolicy", env, **kwargs)


@pytest.mark.parametrize(
    "observation_space",
    [spaces.Dict({"a": BOX_OBS}), spaces.Tuple((BOX_OBS, BOX_OBS))],
    ids=["Dict", "Tuple"],
)
def test_structured_observations_name_the_flattening_wrapper(algo, observation_space):
    cls, kwargs = algo
    env = SpaceEnv(observation_space, spaces.Box(-1, 1, (2,), np.float32))
    kind = type(observation_space).__name__
    with pytest.raises(ValueError, match=f"got a {kind} observation space.*FlattenObservation"):
        cls("MlpPolicy", env, **kwargs)
    # and not only at construction: set_env checks the new environment too
    model = cls("MlpPolicy", SpaceEnv(BOX_OBS, spaces.Box(-1, 1, (2,), np.float32)), **kwargs)
    with pytest.raises(ValueError, match="FlattenObservation"):
        model.set_env(env)


@pytest.mark.parametrize("policy", ["MultiInputPolicy", "CnnPolicy", "mlppolicy"])
def test_unknown_policy_names_say_what_is_offered(algo, policy):
    """SB3 tells a user with Dict observations to use MultiInputPolicy: that must not be a dead end."""
    cls, kwargs = algo
    env = SpaceEnv(BOX_OBS, spaces.Box(-1, 1, (2,), np.float32))
    with pytest.raises(ValueError, match=f"Policy '{policy}' unknown: {cls.__name__} offers 'MlpPolicy'"):
        cls(policy, env, **kwargs)


@pytest.mark.parametrize(
    "policy_kwargs,match",
    [
        (dict(diffusion_steps=0), "diffusion_steps"),
        (dict(n_eval_candidates=0), "n_eval_candidates"),
        (dict(n_behavior_candidates=0), "n_behavior_candidates"),
        (dict(beta_schedule="sigmoid"), "beta_schedule"),
        (dict(init_noise_scale=0.0), "init_noise_scale"),
        (dict(exploration_std=-0.1), "exploration_std"),
        (dict(init="xavier"), "init"),
        (dict(behavior_actor="target"), "behavior_actor"),
        (dict(net_arch=[]), "hidden layer"),
        (dict(critic_activation_fn="relu"), "critic_activation_fn"),
    ],
)
def test_bad_policy_arguments(algo, policy_kwargs, match):
    cls, kwargs = algo
    kwargs = {**kwargs, "policy_kwargs": {**TINY_POLICY, **policy_kwargs}}
    with pytest.raises(ValueError, match=match):
        cls("MlpPolicy", "Pendulum-v1", **kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(batch_size=0), "batch_size"),
        (dict(tau=1.5), "tau"),
        (dict(gamma=-0.1), "gamma"),
        (dict(learning_starts=-1), "learning_starts"),
    ],
)
def test_bad_common_arguments(algo, kwargs, match):
    cls, cheap = algo
    with pytest.raises(ValueError, match=match):
        cls("MlpPolicy", "Pendulum-v1", **{**cheap, **kwargs})


def test_candidate_counts(algo):
    cls, kwargs = algo
    name = "n_candidates" if cls.__name__ == "SDAC" else "n_target_candidates"
    with pytest.raises(ValueError, match=name):
        cls("MlpPolicy", "Pendulum-v1", **{**kwargs, name: 0})


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_observations_in_predict(algo, bad):
    cls, kwargs = algo
    model = cls("MlpPolicy", "Pendulum-v1", **kwargs)
    observation = np.array([0.1, bad, 0.3], dtype=np.float32)
    for deterministic in (True, False):
        with pytest.raises(ValueError, match="NaN or infinite"):
            model.predict(observation, deterministic=deterministic)


def test_wrong_observation_shape_in_predict(algo):
    cls, kwargs = algo
    model = cls("MlpPolicy", "Pendulum-v1", **kwargs)
    with pytest.raises(ValueError, match="shape"):
        model.predict(np.zeros(5, dtype=np.float32))
