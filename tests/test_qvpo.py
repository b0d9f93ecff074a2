"""QVPO: the Q weights, the entropy regularisation, its schedule, argument checks and a 2-D bandit."""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from torch import nn

from sb3_diffusion import QVPO
from sb3_diffusion.qvpo import QVPOPolicy
from tests.conftest import TINY_POLICY


def tiny_qvpo(env="Pendulum-v1", **kwargs) -> QVPO:
    config = dict(
        n_target_candidates=2,
        n_eval_candidates=4,
        n_policy_samples=8,
        n_uniform_samples=2,
        learning_starts=20,
        batch_size=8,
        policy_kwargs=TINY_POLICY,
    )
    config.update(kwargs)
    return QVPO("MlpPolicy", env, **config)


class StubCritic(nn.Module):
    """Twin critic with known values: Q1(s, a) = s + a_0 + a_1, Q2(s, a) = s + 2 a_0."""

    def forward(self, obs: th.Tensor, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        q1 = obs[:, :1] + actions[:, :1] + actions[:, 1:2]
        q2 = obs[:, :1] + 2 * actions[:, :1]
        return q1, q2


class OneStepBandit(gym.Env):
    """
    A continuous bandit: one step per episode, constant observation, 2-D action, reward a sum of
    three Gaussian bumps of heights 1.0 (the global peak, at (0.6, 0.6)), 0.8 and 0.7.
    """

    observation_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    peaks = np.array([[0.6, 0.6], [-0.6, 0.4], [0.0, -0.6]])
    heights = np.array([1.0, 0.8, 0.7])
    width = 0.25

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        sq_dist = ((np.asarray(action, dtype=np.float64)[None] - self.peaks) ** 2).sum(axis=1)
        reward = float((self.heights * np.exp(-sq_dist / (2 * self.width**2))).sum())
        return np.zeros(1, np.float32), reward, True, False, {}


def test_defaults_are_the_official_ones():
    model = QVPO("MlpPolicy", "Pendulum-v1")
    policy = model.policy
    assert isinstance(policy, QVPOPolicy)
    actor = policy.actor
    assert actor.diffusion_steps == 20
    assert actor.init_noise_scale == 1.0
    # cosine schedule with s = 0.008: abar_t = cos^2(((t+1)/T + s)/(1 + s) pi/2) / cos^2(s/(1 + s) pi/2),
    # except the last beta, which is clipped at 0.999
    f = lambda x: np.cos((x / 20 + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
    assert actor.schedule.alphas_cumprod[:19].numpy() == pytest.approx([f(t + 1) / f(0) for t in range(19)], rel=1e-5)
    assert actor.schedule.betas[19].item() == pytest.approx(0.999)
    net = actor.noise_net
    assert net.time_embedding.dim == 32 and net.time_embedding.scale == 1.0
    assert net.time_embedding.freqs[-1].item() == pytest.approx(1e-4)  # 10000^(-15/15)
    assert net.time_mlp[0].out_features == 256
    assert [layer.out_features for layer in net.body if isinstance(layer, nn.Linear)] == [256, 256, 1]
    assert policy.n_behavior_candidates == 4 and policy.n_eval_candidates == 32
    assert policy.behavior_actor == "online" and float(policy.exploration_std) == 0.0
    for optimizer, lr in ((policy.actor.optimizer, 1e-4), (policy.critic.optimizer, 3e-4)):
        assert optimizer.param_groups[0]["eps"] == 1e-5
        assert optimizer.param_groups[0]["lr"] == pytest.approx(lr)
    assert (model.n_target_candidates, model.n_policy_samples, model.n_uniform_samples) == (4, 64, 10)
    assert (model.learning_starts, model.batch_size, model.tau, model.max_grad_norm) == (10_000, 256, 0.005, 2.0)
    assert model.weight_transform == "qadv"
    assert policy.critic_init == "qvpo"  # the official critic applies init_weights too


def test_fresh_critics_have_the_official_initialisation():
    """QVPO's init_weights on the critics: weights N(0, (1 / (2 sqrt(fan_in)))^2), zero biases (not PyTorch's default)."""
    th.manual_seed(0)
    model = QVPO("MlpPolicy", "Hopper-v5")  # 11 + 3 inputs, 3 x 256 Mish, 1 output
    for critic in (model.critic, model.critic_target):
        linears = [layer for q_net in critic.q_networks for layer in q_net if isinstance(layer, nn.Linear)]
        assert [layer.in_features for layer in linears] == [14, 256, 256, 256] * 2
        for layer in linears:
            weights = layer.weight.detach().double().flatten()
            std = 0.5 / np.sqrt(layer.in_features)
            n = weights.numel()
            assert th.all(layer.bias == 0)
            # the sample mean and standard deviation within 4 standard errors of a normal's
            assert abs(weights.mean().item()) < 4 * std / np.sqrt(n)
            assert weights.std().item() == pytest.approx(std, rel=4 / np.sqrt(2 * n))
            if n > 10_000:  # normal, not uniform: 4.55% of the weights beyond 2 standard deviations
                assert (weights.abs() > 2 * std).double().mean().item() == pytest.approx(0.0455, abs=0.006)
    assert all(th.equal(a, b) for a, b in zip(model.critic.parameters(), model.critic_target.parameters(), strict=True))


def test_acting_arguments_are_forwarded_to_the_policy():
    model = tiny_qvpo(n_behavior_candidates=3, n_eval_candidates=5, exploration_std=0.2)
    assert (model.policy.n_behavior_candidates, model.policy.n_eval_candidates) == (3, 5)
    assert float(model.policy.exploration_std) == pytest.approx(0.2)
    # explicit policy_kwargs win
    model = tiny_qvpo(n_behavior_candidates=3, policy_kwargs={**TINY_POLICY, "n_behavior_candidates": 7})
    assert model.policy.n_behavior_candidates == 7


def test_qadv_weights_and_argmax():
    model = tiny_qvpo()
    q_values = th.tensor([[1.0, 3.0, 2.0, 0.0], [-1.0, -2.0, -4.0, -1.5], [0.5, 0.2, 0.3, 0.6]])
    weights, best = model.policy_weights(q_values)
    assert best.tolist() == [1, 0, 3]
    # max - mean: 3 - 1.5, -1 - (-2.125), 0.6 - 0.4
    assert weights.tolist() == pytest.approx([1.5, 1.125, 0.2], abs=1e-6)


def test_qcut_weights():
    model = tiny_qvpo(weight_transform="qcut")
    q_values = th.tensor([[1.0, 3.0, 2.0, 0.0], [-1.0, -2.0, -4.0, -1.5], [0.5, 0.2, 0.3, 0.6]])
    weights, best = model.policy_weights(q_values)
    assert best.tolist() == [1, 0, 3]
    assert weights.tolist() == pytest.approx([3.0, 1.0, 1.0])  # Q if Q >= 1 else 1
    model = tiny_qvpo(weight_transform="qcut", q_cut=0.5)
    assert model.policy_weights(q_values)[0].tolist() == pytest.approx([3.0, 0.5, 0.6])


def test_regression_rows_with_stub_critic(monkeypatch):
    model = tiny_qvpo(n_uniform_samples=2)
    monkeypatch.setattr(model, "critic", StubCritic())
    obs = th.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    samples = th.tensor(
        [
            [[0.45, 0.1], [0.2, 0.6], [0.1, 0.9]],
            [[-0.5, -0.5], [0.3, -0.2], [0.0, 0.5]],
        ]
    )
    obs_rows, actions, row_weights, weights = model.actor_regression_rows(obs, samples, entropy_weight=0.1)
    # state 0: Q1 = 0.55, 0.8, 1.0; Q2 = 0.9, 0.4, 0.2; min = 0.55, 0.4, 0.2 -> best 0 (Q1 alone or the
    # max of the critics would pick sample 2); w = 0.55 - 1.15/3
    # state 1: Q1 = 0.0, 1.1, 1.5; Q2 = 0.0, 1.6, 1.0; min = 0.0, 1.1, 1.0 -> best 1; w = 1.1 - 0.7
    w0, w1 = 0.55 - 1.15 / 3, 0.4
    assert weights.tolist() == pytest.approx([w0, w1], abs=1e-6)
    assert row_weights.tolist() == pytest.approx([w0, 0.1 * w0, 0.1 * w0, w1, 0.1 * w1, 0.1 * w1], abs=1e-6)
    assert actions.shape == (6, 2)
    assert actions[0].tolist() == pytest.approx([0.45, 0.1])
    assert actions[3].tolist() == pytest.approx([0.3, -0.2])
    uniform = actions[[1, 2, 4, 5]]
    assert th.all(uniform.abs() <= 1.0)
    assert obs_rows[:, 0].tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]


def test_entropy_actions_are_uniform(monkeypatch):
    model = tiny_qvpo(n_uniform_samples=5000)
    monkeypatch.setattr(model, "critic", StubCritic())
    th.manual_seed(0)
    samples = th.tensor([[[0.1, 0.2], [0.3, 0.4]]])
    _, actions, row_weights, weights = model.actor_regression_rows(th.zeros(1, 3), samples, entropy_weight=0.02)
    uniform = actions[1:].numpy()
    assert uniform.min() >= -1.0 and uniform.max() <= 1.0
    assert uniform.mean(axis=0) == pytest.approx([0.0, 0.0], abs=0.05)
    assert uniform.std(axis=0) == pytest.approx([1 / np.sqrt(3)] * 2, abs=0.02)
    assert (uniform < -0.8).mean() == pytest.approx(0.1, abs=0.02)
    assert row_weights[1:].numpy() == pytest.approx(0.02 * weights.item())


def test_weighted_noise_loss_by_hand(monkeypatch):
    model = tiny_qvpo()
    schedule = model.actor.schedule
    seen = {}

    def zero_noise_prediction(obs, x_t, t):
        seen.update(obs=obs, x_t=x_t, t=t)
        return th.zeros_like(x_t, requires_grad=True)

    monkeypatch.setattr(model.actor, "predict_noise", zero_noise_prediction)
    th.manual_seed(0)
    n_rows = 600
    actions = th.rand(n_rows, 2) * 2 - 1  # two action dimensions: the loss averages over them too
    row_weights = th.rand(n_rows) * 3
    obs_rows = th.randn(n_rows, 3)
    loss = model.weighted_noise_loss(obs_rows, actions, row_weights)
    t = seen["t"]
    assert seen["obs"] is obs_rows
    assert t.min().item() == 0 and t.max().item() == schedule.n_steps - 1  # t ~ U{0 .. T-1} per row
    # recover the noise from a_t = sqrt(abar_t) a + sqrt(1 - abar_t) eps
    eps = (seen["x_t"] - schedule.sqrt_alphas_cumprod[t, None] * actions) / schedule.sqrt_one_minus_alphas_cumprod[t, None]
    assert eps.std().item() == pytest.approx(1.0, abs=0.1)
    expected = (row_weights[:, None] * eps**2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)


@pytest.mark.parametrize(
    "progress_remaining, expected",
    [
        (1.0, 0.02),  # start
        (0.5, 0.02 - 0.018 * 0.5 / 0.9),  # middle
        (0.1, 0.002),  # 90% of training: the floor is reached
        (0.0, 0.002),  # end
    ],
)
def test_entropy_weight_schedule(progress_remaining, expected):
    model = tiny_qvpo()
    assert model.entropy_weight_at(progress_remaining) == pytest.approx(expected)


def test_entropy_weight_schedule_other_settings():
    model = tiny_qvpo(entropy_weight=0.1, entropy_weight_final=0.0, entropy_decay_fraction=0.5)
    assert [model.entropy_weight_at(p) for p in (1.0, 0.75, 0.5, 0.2)] == pytest.approx([0.1, 0.05, 0.0, 0.0])


def test_train_logs_and_uses_two_batches(monkeypatch):
    model = tiny_qvpo(learning_starts=10)
    model.learn(30)
    sample = model.replay_buffer.sample
    calls = []

    def counting_sample(batch_size, env=None):
        calls.append(batch_size)
        return sample(batch_size, env=env)

    monkeypatch.setattr(model.replay_buffer, "sample", counting_sample)
    model._current_progress_remaining = 0.5
    model.train(gradient_steps=3, batch_size=8)
    assert calls == [8] * 6  # a critic batch and an independent actor batch per update
    logged = model.logger.name_to_value
    assert logged["train/entropy_weight"] == pytest.approx(0.02 - 0.018 * 0.5 / 0.9)
    assert logged["train/actor_learning_rate"] == pytest.approx(1e-4)
    assert logged["train/learning_rate"] == pytest.approx(3e-4)
    assert logged["train/weight_max"] >= logged["train/weight_mean"] >= 0.0
    for key in ("train/actor_loss", "train/critic_loss"):
        assert np.isfinite(logged[key])


@pytest.mark.parametrize("tau", [0.0, 1.0])
def test_polyak_on_critic_target_and_ema_actor_every_update(tau):
    model = tiny_qvpo(learning_starts=10, tau=tau)
    model.learn(20)
    before = [p.clone() for p in (*model.actor_target.parameters(), *model.critic_target.parameters())]
    model.train(gradient_steps=1, batch_size=8)
    pairs = [(model.actor, model.actor_target), (model.critic, model.critic_target)]
    after = [p for _, target in pairs for p in target.parameters()]
    online = [p for net, _ in pairs for p in net.parameters()]
    if tau == 0.0:
        assert all(th.equal(a, b) for a, b in zip(after, before, strict=True))
    else:
        assert all(th.equal(a, b) for a, b in zip(after, online, strict=True))
        assert not all(th.equal(a, b) for a, b in zip(after, before, strict=True))


@pytest.mark.parametrize(
    "name, value",
    [
        ("actor_learning_rate", 0.0),
        ("n_behavior_candidates", 0),
        ("n_target_candidates", 0),
        ("n_eval_candidates", 1.5),
        ("n_policy_samples", 0),
        ("n_uniform_samples", -1),
        ("entropy_weight", -0.1),
        ("entropy_weight_final", float("nan")),
        ("entropy_decay_fraction", 0.0),
        ("entropy_decay_fraction", 1.5),
        ("weight_transform", "softmax"),
        ("q_cut", -1.0),
        ("max_grad_norm", 0.0),
        ("exploration_std", -0.1),
    ],
)
def test_invalid_arguments(name, value):
    with pytest.raises(ValueError, match=name):
        QVPO("MlpPolicy", "Pendulum-v1", **{name: value})


@pytest.mark.slow
def test_bandit_2d_finds_the_global_peak():
    """
    The paper's toy problem: a 2-D bandit with three peaks. The deterministic action and most of the
    policy's samples sit at the global peak. (The default suite runs the shared 1-D bandit of
    ``test_behaviour.py``; this one costs about as much again.)
    """
    successes = 0
    for seed in range(3):
        model = QVPO(
            "MlpPolicy",
            OneStepBandit(),
            learning_rate=3e-3,
            actor_learning_rate=3e-3,
            learning_starts=200,
            batch_size=64,
            n_policy_samples=16,
            n_uniform_samples=4,
            n_eval_candidates=16,
            policy_kwargs=dict(net_arch=[32, 32], diffusion_steps=5, time_embed_dim=8, time_hidden_dim=16),
            seed=seed,
        )
        model.learn(1200)
        action, _ = model.predict(np.zeros(1, np.float32), deterministic=True)
        samples = model.actor.sample(th.zeros(1, 1), 200)[0].numpy()
        near_global = (np.linalg.norm(samples - OneStepBandit.peaks[0], axis=1) < 0.2).mean()
        successes += np.linalg.norm(action - OneStepBandit.peaks[0]) < 0.15 and near_global > 0.5
    assert successes >= 2
