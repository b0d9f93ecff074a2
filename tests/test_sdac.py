"""SDAC's own pieces: the reverse-sampling target, the temperature, the actor schedule, the policy delay."""

import math

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.save_util import load_from_zip_file, save_to_zip_file
from torch import nn

from sb3_diffusion import SDAC
from tests.conftest import TINY_POLICY

# lambda at which the entropy of N(0, (0.1 lambda)^2) is the target -0.9 (one action dimension)
FIXED_POINT = 10 * math.exp(-0.9 - 0.5 * math.log(2 * math.pi * math.e))


def tiny_sdac(**kwargs) -> SDAC:
    config = dict(learning_starts=20, batch_size=8, n_candidates=2, n_reverse_samples=4, policy_kwargs=TINY_POLICY, seed=0)
    return SDAC("MlpPolicy", "Pendulum-v1", **{**config, **kwargs})


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
    regression = model.reverse_sampling_target(obs, actions, lambda_=2.0)
    target, weights = regression.mean_noise, regression.weights
    assert th.all(regression.t == 0) and weights.shape == (64, 4096)
    th.testing.assert_close(weights.sum(dim=1), th.ones(64))
    abar = float(model.actor.schedule.alphas_cumprod[0])
    x, sigma = regression.a_t / math.sqrt(abar), math.sqrt(1 / abar - 1)
    beta = model.q_weight_scale * curvature / 2.0  # q_weight_scale * curvature / lambda
    expected = beta * sigma * (x - peak) / (1 + beta * sigma**2)
    assert beta * sigma**2 == pytest.approx(1.02, rel=0.01)  # weights are peaked enough to matter
    assert expected.abs().mean() > 0.1
    th.testing.assert_close(target, expected, rtol=0, atol=0.06)


def test_score_matching_loss_has_the_per_sample_gradient():
    # The official loss is mean_{b,k,dim} w_k (eps_theta(s, a_t, t) - eps_k)^2; the library runs the network
    # once per state on the weighted mean noise. Same gradient for every parameter of the actor.
    th.manual_seed(0)
    model = tiny_sdac(n_reverse_samples=16, lambda_init=0.5)
    obs = th.randn(6, 3)
    actions = th.rand(6, 1) * 2 - 1
    with th.no_grad():
        regression = model.reverse_sampling_target(obs, actions, lambda_=0.5)
    assert regression.weights.max() > 2.0 / 16  # weights far from uniform: a wrong weighting would show
    parameters = list(model.actor.parameters())
    library = th.autograd.grad(model.score_matching_loss(obs, regression), parameters)
    predicted = model.actor.predict_noise(obs, regression.a_t, regression.t)  # (B, d)
    per_sample = (regression.weights[..., None] * (predicted[:, None, :] - regression.noise) ** 2).mean()
    official = th.autograd.grad(per_sample, parameters)
    for got, expected in zip(library, official, strict=True):
        th.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7)
    assert sum(grad.abs().sum() for grad in official) > 0


@pytest.mark.parametrize("lambda_init", [5.0, 0.3])
def test_temperature_moves_towards_its_fixed_point(lambda_init):
    model = tiny_sdac(lambda_init=lambda_init, lambda_update_interval=1, lambda_lr=0.05)
    assert model.target_entropy == pytest.approx(-0.9)
    assert model.exploration_entropy(FIXED_POINT) == pytest.approx(model.target_entropy)
    assert float(model.policy.exploration_std) == pytest.approx(0.1 * lambda_init)
    model.learn(20 + 6)  # 6 updates, each with a temperature step
    assert model._n_updates == 6
    # from above the fixed point lambda falls, from below it rises; steps of Adam, about lr each in log lambda
    direction = -1.0 if lambda_init > FIXED_POINT else 1.0
    assert direction * (math.log(model.lambda_) - math.log(lambda_init)) == pytest.approx(6 * 0.05, rel=0.01)
    assert float(model.policy.exploration_std) == pytest.approx(0.1 * model.lambda_)


def test_lambda_steps_follow_the_schedule():
    model = tiny_sdac(lambda_update_interval=5)
    model.learn(20 + 1)  # the first update takes a temperature step, as update 0 of the official code
    assert math.log(model.lambda_) == pytest.approx(math.log(5.0) - 7e-3, abs=1e-4)
    model.learn(19, reset_num_timesteps=False)  # updates 2 to 20: steps at updates 6, 11 and 16
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
    model = tiny_sdac(learning_starts=30)
    model.learn(30)  # fill the buffer, no update yet

    def snapshot(*modules):
        return [p.detach().clone() for module in modules for p in module.parameters()]

    actor_side = (model.actor, model.actor_target, model.critic_target)

    def changed(before, after):
        return [not th.equal(a, b) for a, b in zip(before, after, strict=True)]

    # update 1 (update 0 of the official code): critics, actor, EMA actor and critic targets
    actor_before, critic_before = snapshot(*actor_side), snapshot(model.critic)
    model.train(gradient_steps=1, batch_size=8)
    assert all(changed(actor_before, snapshot(*actor_side))) and all(changed(critic_before, snapshot(model.critic)))
    assert model._n_actor_steps == 1
    # update 2: the critics alone
    actor_before, critic_before = snapshot(*actor_side), snapshot(model.critic)
    model.train(gradient_steps=1, batch_size=8)
    assert not any(changed(actor_before, snapshot(*actor_side))) and all(changed(critic_before, snapshot(model.critic)))
    assert model._n_actor_steps == 1
    model.train(gradient_steps=5, batch_size=8)  # updates 3 to 7: actor steps at 3, 5 and 7
    assert (model._n_updates, model._n_actor_steps) == (7, 4)


def test_actor_steps_set_the_actor_learning_rate_and_are_saved(tmp_path):
    model = tiny_sdac(actor_lr_decay_start=0, actor_lr_decay_steps=4)
    model.learn(20 + 3)  # 3 updates: actor steps at updates 1 and 3, at the rates of actor steps 0 and 1
    assert model._n_actor_steps == 2
    assert model.actor.optimizer.param_groups[0]["lr"] == pytest.approx(model.actor_lr_at(1)) != model.actor_lr_at(0)
    model.save(tmp_path / "model.zip")
    assert SDAC.load(tmp_path / "model.zip")._n_actor_steps == 2
    # a model saved before the count was kept: its actor stepped every policy_delay-th update
    data, params, variables = load_from_zip_file(tmp_path / "model.zip")
    del data["_n_actor_steps"]
    data["_n_updates"] = 7
    save_to_zip_file(tmp_path / "old.zip", data=data, params=params, pytorch_variables=variables)
    assert SDAC.load(tmp_path / "old.zip")._n_actor_steps == 3


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
        (dict(n_target_candidates=0), "n_target_candidates"),
    ],
)
def test_sdac_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SDAC("MlpPolicy", "Pendulum-v1", **kwargs)


def test_lambda_can_be_fixed():
    model = tiny_sdac(lambda_lr=0.0, lambda_update_interval=1, learning_starts=10, batch_size=4, n_reverse_samples=2)
    model.learn(15)
    assert model.lambda_ == pytest.approx(5.0) and model.lambda_optimizer is None
    assert np.isfinite(model.logger.name_to_value["train/critic_loss"])


@pytest.mark.parametrize("n_target_candidates", [None, 1])
def test_target_candidates(n_target_candidates, monkeypatch, tmp_path):
    # Default: one merged best-of-K chain of 2B states on actor steps, K for the TD target otherwise.
    # n_target_candidates=1: the TD target's a' from one actor sample, the actor's own choice still best-of-K.
    model = tiny_sdac(n_candidates=3, n_target_candidates=n_target_candidates, learning_starts=20)
    model.learn(20)
    calls = []
    best_of_k = model.policy.best_of_k

    def recording(obs, n_candidates, **kwargs):
        calls.append((obs.shape[0], n_candidates))
        return best_of_k(obs, n_candidates, **kwargs)

    monkeypatch.setattr(model.policy, "best_of_k", recording)
    model.train(gradient_steps=2, batch_size=8)  # an actor step, then a critic-only step
    if n_target_candidates is None:
        assert calls == [(16, 3), (8, 3)]
    else:
        assert calls == [(8, 1), (8, 3), (8, 1)]
    model.save(tmp_path / "model.zip")
    assert SDAC.load(tmp_path / "model.zip").n_target_candidates == n_target_candidates
