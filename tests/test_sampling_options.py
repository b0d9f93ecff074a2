"""
Cheaper sampling options (not defaults): re-spaced DDPM chains with fewer steps, and deterministic
DDIM (eta = 0). The maths against closed forms and independent implementations.
"""

import numpy as np
import pytest
import torch as th
from gymnasium import spaces

from torch import nn

from sb3_diffusion.common.diffusion import DiffusionSchedule, make_betas, respace_betas, respaced_timesteps
from sb3_diffusion.sdac.policies import SDACPolicy

ACT_DIM = 2
MU = th.tensor([0.3, -0.2], dtype=th.float64)
STD = th.tensor([0.1, 0.12], dtype=th.float64)  # +- 5 std inside [-1, 1]: the x0 clamp stays inactive


def make_policy(**kwargs) -> SDACPolicy:
    obs_space = spaces.Box(-1, 1, (3,), np.float32)
    act_space = spaces.Box(-1, 1, (ACT_DIM,), np.float32)
    kwargs = {"net_arch": [8], "diffusion_steps": 20, "compile_mode": "off", **kwargs}
    return SDACPolicy(obs_space, act_space, lambda _: 1e-3, **kwargs)


class GaussianOracle(nn.Module):
    """
    The exact noise predictor of the target N(mu, diag(std^2)), in place of the noise network:
    eps(x_t, t) = sqrt(1 - abar_t) (x_t - sqrt(abar_t) mu) / (abar_t std^2 + 1 - abar_t), with abar from
    the training schedule at the step the network is given. The actor's real sampling loop, with its
    step indices and coefficients, is what is tested.
    """

    def __init__(self, alphas_cumprod: th.Tensor, mu: th.Tensor = MU, std: th.Tensor = STD):
        super().__init__()
        self.abar, self.mu, self.std = alphas_cumprod.double(), mu, std

    def forward(self, features: th.Tensor, x_t: th.Tensor, t: th.Tensor) -> th.Tensor:
        a = self.abar[t][:, None]
        return ((1 - a).sqrt() * (x_t.double() - a.sqrt() * self.mu) / (a * self.std**2 + 1 - a)).float()


def install_gaussian_oracle(actor, mu=MU, std=STD):
    actor.noise_net = GaussianOracle(actor.schedule.alphas_cumprod, mu, std)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "vp"])
@pytest.mark.parametrize("n_steps, sampling_steps", [(20, 20), (20, 5), (20, 2), (20, 1), (100, 7)])
def test_respaced_schedule_keeps_abar_at_kept_steps(schedule, n_steps, sampling_steps):
    betas = make_betas(schedule, n_steps)
    steps = respaced_timesteps(n_steps, sampling_steps)
    assert len(steps) == sampling_steps == len(set(steps))
    assert steps == sorted(steps) and steps[-1] == n_steps - 1
    if sampling_steps > 1:
        assert steps[0] == 0
    new_betas = respace_betas(betas, steps)
    assert np.all(new_betas > 0) and np.all(new_betas < 1)
    assert np.allclose(np.cumprod(1 - new_betas), np.cumprod(1 - betas)[steps], rtol=1e-6, atol=0)
    if sampling_steps == n_steps:
        assert steps == list(range(n_steps)) and np.allclose(new_betas, betas)


def test_respaced_timesteps_rejects_bad_counts():
    for bad in [0, 21]:
        with pytest.raises(ValueError, match="sampling_steps"):
            respaced_timesteps(20, bad)
    with pytest.raises(ValueError, match="sampling_steps must be at most diffusion_steps"):
        make_policy(sampling_steps=30)
    with pytest.raises(ValueError, match="sampling_steps"):
        make_policy(sampling_steps=0)
    with pytest.raises(ValueError, match="sampler"):
        make_policy(sampler="euler")
    with pytest.raises(ValueError, match="sampler"):
        DiffusionSchedule(make_betas("linear", 5), sampler="euler")


def test_ddim_coefficients_closed_form():
    betas = make_betas("cosine", 10)
    schedule = DiffusionSchedule(betas, sampler="ddim")
    abar = np.cumprod(1 - betas)
    abar_prev = np.append(1.0, abar[:-1])
    c2 = np.sqrt((1 - abar_prev) / (1 - abar))
    assert np.allclose(schedule.posterior_mean_coef2.numpy(), c2, atol=1e-6)
    assert np.allclose(schedule.posterior_mean_coef1.numpy(), np.sqrt(abar_prev) - c2 * np.sqrt(abar), atol=1e-6)
    assert np.all(schedule.posterior_std.numpy() == 0)
    # with x0 = the model's own estimate (no clamp), the step is sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps
    x0, eps = th.rand(50, 3) * 1.6 - 0.8, th.randn(50, 3)
    for t in [9, 3, 0]:
        x_t = float(np.sqrt(abar[t])) * x0 + float(np.sqrt(1 - abar[t])) * eps
        expected = float(np.sqrt(abar_prev[t])) * x0 + float(np.sqrt(1 - abar_prev[t])) * eps
        assert th.allclose(schedule.reverse_step(x_t, t, eps, None), expected, atol=1e-5)


def _independent_chain(betas, steps, sampler, x_start, noise, mu=MU, std=STD):
    """The sampling chain in float64, written from the formulas (respacing included)."""
    abar_full = np.cumprod(1 - betas)
    abar = abar_full[steps]
    x = x_start.double()
    for i in reversed(range(len(steps))):
        a = float(abar[i])
        a_prev = float(abar[i - 1]) if i > 0 else 1.0
        eps = np.sqrt(1 - a) * (x - np.sqrt(a) * mu) / (a * std**2 + 1 - a)
        x0 = (x / np.sqrt(a) - eps * np.sqrt(1 / a - 1)).clamp(-1, 1)
        if sampler == "ddim":
            x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * (x - np.sqrt(a) * x0) / np.sqrt(1 - a)
        else:
            beta = 1 - a / a_prev
            x = (beta * np.sqrt(a_prev) * x0 + (1 - a_prev) * np.sqrt(1 - beta) * x) / (1 - a)
            if i > 0:
                x = x + np.sqrt(beta * (1 - a_prev) / (1 - a)) * noise[i].double()
    return x


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize("sampling_steps", [20, 6, 1])
def test_sampler_matches_independent_chain(sampler, sampling_steps):
    policy = make_policy(beta_schedule="cosine", init_noise_scale=1.0, sampling_steps=sampling_steps, sampler=sampler)
    actor = policy.actor
    install_gaussian_oracle(actor)
    th.manual_seed(0)
    noise = actor.draw_chain_noise(50, 4)
    assert noise.shape == (sampling_steps, 50, 4, ACT_DIM)
    got = actor.sample(th.zeros(50, 3), 4, noise=noise)
    betas = make_betas("cosine", 20)
    expected = _independent_chain(betas, respaced_timesteps(20, sampling_steps), sampler, noise[0], noise)
    assert th.allclose(got.double(), expected, atol=1e-4)


def test_ddim_maps_a_gaussian_to_the_target():
    """
    With the exact noise of a Gaussian target, DDIM is an affine map of x_T, with slope the product over
    steps of (sqrt(a a') s^2 + sqrt((1-a)(1-a'))) / (a s^2 + 1 - a); it ignores the per-step noise, and
    with many steps it carries N(0, 1) to the target N(mu, s^2).
    """
    betas = make_betas("cosine", 200)
    for sampling_steps in [200, 10, 3]:
        policy = make_policy(
            diffusion_steps=200, beta_schedule="cosine", init_noise_scale=1.0, sampling_steps=sampling_steps, sampler="ddim"
        )
        actor = policy.actor
        install_gaussian_oracle(actor)
        th.manual_seed(1)
        noise = actor.draw_chain_noise(2000, 2)
        got = actor.sample(th.zeros(2000, 3), 2, noise=noise).double()
        # the per-step noise plays no part
        other = noise.clone()
        other[1:] = th.randn_like(other[1:])
        assert th.allclose(actor.sample(th.zeros(2000, 3), 2, noise=other).double(), got, atol=1e-6)
        abar = np.cumprod(1 - betas)[respaced_timesteps(200, sampling_steps)]
        slope = th.ones(ACT_DIM, dtype=th.float64)
        for i in range(len(abar)):
            a, a_prev = float(abar[i]), float(abar[i - 1]) if i > 0 else 1.0
            slope = slope * (np.sqrt(a * a_prev) * STD**2 + np.sqrt((1 - a) * (1 - a_prev))) / (a * STD**2 + 1 - a)
        x_start = noise[0].double()
        expected = MU + slope * (x_start - np.sqrt(abar[-1]) * MU)
        assert th.allclose(got, expected, atol=1e-4)
        if sampling_steps == 200:  # the fine-step map carries N(0, 1) to the target
            samples = got.reshape(-1, ACT_DIM)
            assert th.allclose(samples.mean(0), MU, atol=0.01)
            assert th.allclose(samples.std(0), STD, rtol=0.05)


def test_respaced_ddpm_reproduces_a_gaussian():
    """
    DDPM with the exact noise of a Gaussian target keeps the target's mean at any number of steps; its
    spread approaches the target's with many steps and shrinks with fewer (the reverse kernel uses the
    posterior mean of x0, not its spread): a known property of few-step DDPM, visible in the table of
    docs/performance.md.
    """
    ratios = {}
    for sampling_steps in [200, 50, 10]:
        policy = make_policy(diffusion_steps=200, beta_schedule="cosine", init_noise_scale=1.0, sampling_steps=sampling_steps)
        install_gaussian_oracle(policy.actor)
        th.manual_seed(2)
        samples = policy.actor.sample(th.zeros(4000, 3), 4, noise=None).double().reshape(-1, ACT_DIM)
        assert th.allclose(samples.mean(0), MU, atol=0.01)
        ratios[sampling_steps] = samples.std(0) / STD
    assert th.all(ratios[200] > 0.88) and th.all(ratios[200] < 1.02)
    assert th.all(ratios[10] < ratios[50]) and th.all(ratios[50] < ratios[200])


def test_sampling_options_are_saved_and_leave_training_alone(tmp_path):
    policy = make_policy(sampling_steps=5, sampler="ddim")
    reference = make_policy()
    # same parameters and buffers in the state dict: models saved before these options still load
    assert set(policy.state_dict()) == set(reference.state_dict())
    assert th.equal(policy.actor.schedule.betas, reference.actor.schedule.betas)
    assert policy.actor.sampling_schedule.n_steps == 5 and policy.actor.sampling_steps == 5
    policy.save(tmp_path / "policy.pt")
    loaded = SDACPolicy.load(tmp_path / "policy.pt")
    assert loaded.actor.sampling_timesteps == policy.actor.sampling_timesteps and loaded.actor.sampler == "ddim"
    obs = np.random.default_rng(0).uniform(-1, 1, (4, 3)).astype(np.float32)
    assert np.array_equal(policy.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])
