"""SDAC's own pieces: the reverse-sampling target, the temperature, the actor schedule, the policy delay."""

import math

import numpy as np
import pytest
import torch as th
from torch import nn

from sb3_diffusion import SDAC
from tests.conftest import TINY_POLICY


class QuadraticCritic(nn.Module):
    """Stub twin critic with Q(s, a) = -curvature/2 ||a - peak||^2 (a Gaussian energy), both heads equal."""

    def __init__(self, peak: float, curvature: float):
        super().__init__()
        self.peak, self.curvature = peak, curvature

    def forward(self, obs, actions):
        q = -0.5 * self.curvature * ((actions - self.peak) ** 2).sum(dim=1, keepdim=True)
        return q, q + 1.0  # the minimum is the first head


def test_reverse_sampling_target_matches_tilted_gaussian():
    # a0_k = x - sigma eps_k (x = a_t / sqrt(abar_t), sigma = sqrt(1/abar_t - 1)), weights exp(beta Q(a0_k))
    # with Q quadratic: under the weights eps is Gaussian with mean beta sigma (x - peak) / (1 + beta sigma^2),
    # which the self-normalised weighted mean of many samples must reproduce.
    th.manual_seed(0)
    policy_kwargs = dict(TINY_POLICY, diffusion_steps=1, beta_schedule_kwargs=dict(beta_start=0.02, scale=1.0))
    model = SDAC("MlpPolicy", "Pendulum-v1", n_reverse_samples=4096, lambda_init=2.0, policy_kwargs=policy_kwargs)
    peak, curvature = 0.1, 20.0
    model.critic = QuadraticCritic(peak, curvature)
    obs = th.zeros(64, 3)
    actions = th.full((64, 1), -0.05)
    a_t, t, target, weights = model.reverse_sampling_target(obs, actions, lambda_=2.0)
    assert th.all(t == 0) and weights.shape == (64, 4096)
    th.testing.assert_close(weights.sum(dim=1), th.ones(64))
    abar = float(model.actor.schedule.alphas_cumprod[0])
    x, sigma = a_t / math.sqrt(abar), math.sqrt(1 / abar - 1)
    beta = model.q_weight_scale * curvature / 2.0  # q_weight_scale * curvature / lambda
    expected = beta * sigma * (x - peak) / (1 + beta * sigma**2)
    assert beta * sigma**2 == pytest.approx(1.02, rel=0.01)  # weights are peaked enough to matter
    assert expected.abs().mean() > 0.1
    th.testing.assert_close(target, expected, rtol=0, atol=0.06)


def test_weighted_mean_noise_has_the_per_sample_gradient():
    # sum_k w_k (e - eps_k)^2 / K and (e - sum_k w_k eps_k)^2 / K differ by a constant: same gradient
    th.manual_seed(0)
    n_states, n_samples, dim = 5, 64, 3
    weights = th.softmax(th.randn(n_states, n_samples), dim=1)
    eps = th.randn(n_states, n_samples, dim)
    prediction = th.randn(n_states, dim, requires_grad=True)
    full = (weights[..., None] * (prediction[:, None] - eps) ** 2).mean()
    (full_grad,) = th.autograd.grad(full, prediction)
    reduced = ((prediction - th.einsum("bk,bkd->bd", weights, eps)) ** 2).mean() / n_samples
    (reduced_grad,) = th.autograd.grad(reduced, prediction)
    th.testing.assert_close(full_grad, reduced_grad)


def test_lambda_fixed_point_and_direction():
    model = SDAC("MlpPolicy", "Pendulum-v1", policy_kwargs=TINY_POLICY)
    assert model.target_entropy == pytest.approx(-0.9)
    # the entropy of N(0, (0.1 lambda)^2) reaches -0.9 d at lambda = 10 exp(-0.9 - log(2 pi e) / 2) ~ 0.98
    fixed_point = 10 * math.exp(-0.9 - 0.5 * math.log(2 * math.pi * math.e))
    assert fixed_point == pytest.approx(0.984, abs=1e-3)
    assert model.exploration_entropy(fixed_point) == pytest.approx(model.target_entropy)
    assert float(model.policy.exploration_std) == pytest.approx(0.5)  # 0.1 * lambda_init


def test_lambda_steps_follow_the_schedule():
    model = SDAC(
        "MlpPolicy",
        "Pendulum-v1",
        learning_starts=20,
        batch_size=8,
        n_candidates=2,
        n_reverse_samples=4,
        lambda_update_interval=5,
        policy_kwargs=TINY_POLICY,
        seed=0,
    )
    model.learn(20 + 20)  # 20 updates: 4 steps on log(lambda), each of about lr (Adam) downwards
    assert model._n_updates == 20
    assert math.log(model.lambda_) == pytest.approx(math.log(5.0) - 4 * 7e-3, abs=1e-4)
    assert float(model.policy.exploration_std) == pytest.approx(0.1 * model.lambda_)
    assert model.logger.name_to_value["train/lambda"] == pytest.approx(model.lambda_)


def test_actor_learning_rate_schedule():
    model = SDAC("MlpPolicy", "Pendulum-v1", policy_kwargs=TINY_POLICY)
    expected = {0: 3e-4, 24_999: 3e-4, 25_000: 3e-4, 50_000: 1.65e-4, 75_000: 3e-5, 200_000: 3e-5}
    for step, lr in expected.items():
        assert model.actor_lr_at(step) == pytest.approx(lr)


def test_policy_delay():
    model = SDAC(
        "MlpPolicy",
        "Pendulum-v1",
        learning_starts=30,
        batch_size=8,
        n_candidates=2,
        n_reverse_samples=4,
        policy_kwargs=TINY_POLICY,
        seed=0,
    )
    model.learn(30)  # fill the buffer, no update yet

    def snapshot():
        return [
            p.detach().clone()
            for p in (
                *model.actor.parameters(),
                *model.actor_target.parameters(),
                *model.critic_target.parameters(),
                *model.critic.parameters(),
            )
        ]

    n_actor = len(list(model.actor.parameters())) * 2 + len(list(model.critic_target.parameters()))
    before = snapshot()
    model.train(gradient_steps=1, batch_size=8)  # update 1: critic only
    after = snapshot()
    assert all(th.equal(a, b) for a, b in zip(before[:n_actor], after[:n_actor], strict=False))
    assert not all(th.equal(a, b) for a, b in zip(before[n_actor:], after[n_actor:], strict=False))
    model.train(gradient_steps=1, batch_size=8)  # update 2: actor, EMA actor and critic targets too
    final = snapshot()
    for group in (slice(0, n_actor),):
        assert all(not th.equal(a, b) for a, b in zip(after[group], final[group], strict=False) if a.numel() > 1)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(n_reverse_samples=0), "n_reverse_samples"),
        (dict(reward_scale=0.0), "reward_scale"),
        (dict(policy_delay=0), "policy_delay"),
        (dict(lambda_init=-1.0), "lambda_init"),
        (dict(lambda_lr=-1e-3), "lambda_lr"),
        (dict(exploration_scale=0.0), "exploration_scale"),
        (dict(q_weight_scale=float("nan")), "q_weight_scale"),
        (dict(target_entropy="high"), "target_entropy"),
        (dict(actor_lr_decay_steps=-1), "actor_lr_decay_steps"),
    ],
)
def test_sdac_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SDAC("MlpPolicy", "Pendulum-v1", **kwargs)


def test_lambda_can_be_fixed():
    model = SDAC(
        "MlpPolicy",
        "Pendulum-v1",
        lambda_lr=0.0,
        lambda_update_interval=1,
        learning_starts=10,
        batch_size=4,
        n_candidates=2,
        n_reverse_samples=2,
        policy_kwargs=TINY_POLICY,
    )
    model.learn(15)
    assert model.lambda_ == pytest.approx(5.0) and model.lambda_optimizer is None
    assert np.isfinite(model.logger.name_to_value["train/critic_loss"])
