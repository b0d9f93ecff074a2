"""SDAC's q_normalization option: score-matching weights that do not depend on the scale of Q."""

import numpy as np
import pytest
import torch as th
from torch import nn

from sb3_diffusion import SDAC
from tests.conftest import TINY_POLICY


class ScaledCritic(nn.Module):
    """Stub twin critic: Q(s, a) = scale * sin(3 a_0) + s_0, both heads equal."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, obs, actions):
        q = self.scale * th.sin(3.0 * actions[:, :1]) + obs[:, :1]
        return q, q


def weights_for(scale: float, q_normalization: bool) -> th.Tensor:
    model = SDAC("MlpPolicy", "Pendulum-v1", n_reverse_samples=64, q_normalization=q_normalization, policy_kwargs=TINY_POLICY)
    model.critic = ScaledCritic(scale)
    th.manual_seed(0)
    obs = th.randn(32, 3)
    actions = th.rand(32, 1) * 2 - 1
    return model.reverse_sampling_target(obs, actions, lambda_=1.0, update_q_spread=True).weights


def effective_sample_size(weights: th.Tensor) -> th.Tensor:
    return 1.0 / (weights**2).sum(dim=1)


def test_weights_do_not_depend_on_the_scale_of_q():
    # Official weighting: rewards 100 times smaller make the weights almost uniform
    small, large = weights_for(0.01, False), weights_for(1.0, False)
    assert effective_sample_size(small).mean() > 60 > effective_sample_size(large).mean()
    # Normalised: the same weights at any scale, and far from uniform
    small, large = weights_for(0.01, True), weights_for(1.0, True)
    th.testing.assert_close(small, large, rtol=1e-3, atol=1e-4)  # float32 rounding of Q
    assert effective_sample_size(small).mean() < 20


def test_running_spread_is_an_average_and_is_saved(tmp_path):
    model = SDAC(
        "MlpPolicy",
        "Pendulum-v1",
        n_reverse_samples=16,
        q_normalization=True,
        q_normalization_rate=0.5,
        policy_kwargs=TINY_POLICY,
    )
    assert np.isnan(model.q_spread)
    q_one, q_three = th.tensor([[0.0, 2.0]]), th.tensor([[0.0, 6.0]])  # per-state std sqrt(2) and 3 sqrt(2)
    assert model._q_spread(q_one, update=True) == pytest.approx(2**0.5)
    assert model._q_spread(q_three, update=True) == pytest.approx(2 * 2**0.5)  # halfway, rate 0.5
    assert model._q_spread(q_one, update=False) == pytest.approx(2 * 2**0.5)  # analyses do not move it
    model.learning_starts = 20
    model.learn(60)  # actor steps update it from the critics
    spread = model.q_spread
    assert np.isfinite(spread) and spread != pytest.approx(2 * 2**0.5)
    model.save(tmp_path / "model.zip")
    loaded = SDAC.load(tmp_path / "model.zip")
    assert loaded.q_normalization and loaded.q_spread == spread


def test_bad_q_normalization_arguments():
    with pytest.raises(ValueError, match="q_normalization"):
        SDAC("MlpPolicy", "Pendulum-v1", q_normalization="yes")
    with pytest.raises(ValueError, match="q_normalization_rate"):
        SDAC("MlpPolicy", "Pendulum-v1", q_normalization_rate=0.0)
