"""The diffusion maths: schedules against closed forms, the reverse sampler against known Gaussians,
the time embedding, the initialisations and the decomposed noise network."""

import math

import numpy as np
import pytest
import torch as th
from torch.nn import functional as F

from sb3_diffusion.common.diffusion import DiffusionSchedule, cosine_betas, linear_betas, make_betas, vp_betas
from sb3_diffusion.common.networks import (
    Mish,
    NoisePredictionNet,
    SinusoidalEmbedding,
    _MishFunction,
    init_linear_,
    mish,
    mish_expression,
)


def test_cosine_alphas_cumprod_closed_form():
    n_steps, s = 20, 0.008
    abar = np.cumprod(1 - cosine_betas(n_steps))
    f = lambda u: math.cos((u / n_steps + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    expected = np.array([f(t + 1) / f(0) for t in range(n_steps)])
    # all but the last step are unaffected by the 0.999 clip
    np.testing.assert_allclose(abar[:-1], expected[:-1], rtol=1e-12)
    assert cosine_betas(n_steps)[-1] == pytest.approx(0.999)


def test_scaled_linear_betas_t20():
    betas = linear_betas(20)  # SDAC: 0.8 * linspace(1e-4, 0.999, 20)
    step = (0.999 - 1e-4) / 19
    np.testing.assert_allclose(betas, [0.8 * (1e-4 + i * step) for i in range(20)], rtol=1e-12)
    assert betas[0] == pytest.approx(8e-5) and betas[-1] == pytest.approx(0.7992)
    np.testing.assert_allclose(linear_betas(5, scale=1.0), np.linspace(1e-4, 0.999, 5))


def test_vp_betas_closed_form():
    n_steps = 10
    t = np.arange(1, n_steps + 1)
    expected = 1 - np.exp(-0.1 / n_steps - 0.5 * (10 - 0.1) * (2 * t - 1) / n_steps**2)
    np.testing.assert_allclose(vp_betas(n_steps), expected, rtol=1e-12)


def test_ddpm_coefficients():
    schedule = DiffusionSchedule(make_betas("cosine", 20))
    betas = schedule.betas.double()
    abar = th.cumprod(1 - betas, 0)
    th.testing.assert_close(schedule.alphas_cumprod.double(), abar, rtol=1e-6, atol=1e-9)
    abar_prev = th.cat([th.ones(1, dtype=th.float64), abar[:-1]])
    # posterior q(x_{t-1} | x_t, x0): the coefficients reproduce the forward marginals
    th.testing.assert_close(
        schedule.posterior_mean_coef1.double(), betas * abar_prev.sqrt() / (1 - abar), rtol=1e-5, atol=1e-7
    )
    assert schedule.posterior_mean_coef1[0] == pytest.approx(1.0) and schedule.posterior_mean_coef2[0] == 0
    th.testing.assert_close(schedule.posterior_std[1:].double() ** 2, betas[1:] * (1 - abar_prev[1:]) / (1 - abar[1:]))


def test_x0_from_noise_inverts_the_forward_noising():
    schedule = DiffusionSchedule(make_betas("cosine", 20))
    th.manual_seed(3)
    x0, eps, t = th.rand(64, 3) * 2 - 1, th.randn(64, 3), th.randint(20, (64,))
    x_t = schedule.q_sample(x0, t, eps)
    th.testing.assert_close(schedule.predict_x0(x_t, t, eps), x0, rtol=0, atol=2e-4)
    # one step per row, broadcast over several noises per row (SDAC's reverse samples)
    many = th.randn(64, 5, 3)
    abar = schedule.alphas_cumprod[t, None, None]
    expected = x_t[:, None, :] / abar.sqrt() - many * (1 / abar - 1).sqrt()
    th.testing.assert_close(schedule.predict_x0(x_t[:, None, :], t, many), expected, rtol=1e-5, atol=1e-5)
    # the reverse step's coefficients are the schedule's, by name
    step = schedule.steps[7]
    assert step.sqrt_recip_alphas_cumprod == pytest.approx(float(schedule.sqrt_recip_alphas_cumprod[7]), rel=1e-6)
    assert step.posterior_std == pytest.approx(float(schedule.posterior_std[7]), rel=1e-6)


@pytest.mark.parametrize("bad", [dict(schedule="quadratic"), dict(n_steps=0), dict(n_steps=2.5)])
def test_make_betas_rejects_bad_arguments(bad):
    kwargs = dict(schedule="linear", n_steps=5, **{}) | bad
    with pytest.raises(ValueError, match=r"schedule|diffusion steps"):
        make_betas(**kwargs)


def gaussian_oracle_eps(x_t: th.Tensor, abar: float, mu: float, std: float) -> th.Tensor:
    """Exact noise prediction when a_0 ~ N(mu, std^2): eps* = sqrt(1 - abar) (x_t - sqrt(abar) mu) / Var[x_t]."""
    return math.sqrt(1 - abar) * (x_t - math.sqrt(abar) * mu) / (abar * std**2 + 1 - abar)


def run_chain(schedule: DiffusionSchedule, mu: float, std: float, n: int) -> th.Tensor:
    abar_last = float(schedule.alphas_cumprod[-1])
    x = th.randn(n, 1) * math.sqrt(abar_last * std**2 + 1 - abar_last) + math.sqrt(abar_last) * mu
    for t in reversed(range(schedule.n_steps)):
        eps = gaussian_oracle_eps(x, float(schedule.alphas_cumprod[t]), mu, std)
        x = schedule.reverse_step(x, t, eps, th.randn_like(x) if t > 0 else None)
    return x


def test_reverse_sampler_reproduces_gaussian_target():
    th.manual_seed(0)
    mu, std = 0.3, 0.2
    # a fine standard schedule: ancestral sampling with the exact noise gives the target
    x = run_chain(DiffusionSchedule(linear_betas(1000, 1e-4, 0.02, scale=1.0)), mu, std, 100_000)
    assert x.mean().item() == pytest.approx(mu, abs=0.005)
    assert x.std().item() == pytest.approx(std, rel=0.02)


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_reverse_sampler_matches_linear_gaussian_recursion(name):
    # With T = 20 the sampler plugs E[x0 | x_t] into the posterior and so under-disperses; with a
    # Gaussian target every step is affine, x_{t-1} = A_t x_t + b_t + sigma_t z, and the output
    # moments follow by hand. The sampler must match them (the clamp at [-1, 1] is never active here).
    th.manual_seed(1)
    mu, std = 0.3, 0.2
    schedule = DiffusionSchedule(make_betas(name, 20))
    abar = schedule.alphas_cumprod.double().numpy()
    mean, var = math.sqrt(abar[-1]) * mu, abar[-1] * std**2 + 1 - abar[-1]
    for t in reversed(range(20)):
        gain = math.sqrt(abar[t]) * std**2 / (abar[t] * std**2 + 1 - abar[t])  # d E[x0|x_t] / d x_t
        c1, c2 = float(schedule.posterior_mean_coef1[t]), float(schedule.posterior_mean_coef2[t])
        slope = c1 * gain + c2
        mean = c1 * (mu + gain * (mean - math.sqrt(abar[t]) * mu)) + c2 * mean
        var = slope**2 * var + (float(schedule.posterior_std[t]) ** 2 if t > 0 else 0.0)
    x = run_chain(schedule, mu, std, 200_000)
    assert x.mean().item() == pytest.approx(mean, abs=0.003)
    assert x.std().item() == pytest.approx(math.sqrt(var), rel=0.01)
    assert math.sqrt(var) < 0.9 * std  # the under-dispersion is real, so the test can tell the two apart


def test_mish_is_exact():
    x = th.cat([th.linspace(-100, 100, 20001), th.tensor([-1e4, -30.0, -20.0, 0.0, 19.99, 20.0, 20.01, 30.0, 1e4])])
    reference = F.mish(x.double()).float()
    x_copy = x.clone()
    assert th.allclose(mish(x), reference, rtol=1e-6, atol=1e-6)
    assert th.equal(x, x_copy)  # the input is not modified
    # in place with scratch buffers: the same numbers
    h = x.clone()
    assert mish(h, out=h, scratch=(th.empty_like(h), th.empty_like(h))) is h
    assert th.equal(h, mish(x))
    # relative accuracy where Mish is tiny (the one-exp form has no cancellation)
    tail = x[(x < -5) & (x > -80)]
    assert th.allclose(mish(tail), F.mish(tail.double()).float(), rtol=1e-5, atol=0)


def test_mish_module_gradient_is_torchs():
    # the gradient steps' Mish (one exp, torch's gradient formula) against F.mish in float64
    x = th.cat([th.linspace(-200, 60, 5001), th.tensor([-87.5, -87.0, 0.0, 19.99, 20.0, 20.01])])
    x.requires_grad_()
    grad_out = th.randn(x.shape, generator=th.Generator().manual_seed(0))
    value = Mish()(x)
    (grad,) = th.autograd.grad(value, x, grad_out)
    x64 = x.detach().double().requires_grad_()
    value64 = F.mish(x64)
    (grad64,) = th.autograd.grad(value64, x64, grad_out.double())
    assert th.allclose(value.double(), value64, rtol=1e-6, atol=1e-6)
    assert th.allclose(grad.double(), grad64, rtol=1e-5, atol=2e-6)
    # the formula itself, in float64
    assert th.autograd.gradcheck(_MishFunction.apply, (th.randn(30, dtype=th.float64, requires_grad=True),))
    # second derivatives are refused rather than wrong (none of the losses needs them)
    z = th.randn(5, requires_grad=True)
    (first,) = th.autograd.grad(_MishFunction.apply(z).sum(), z, create_graph=True)
    with pytest.raises(RuntimeError):
        first.sum().backward()


def test_mish_far_below_zero_stays_on_normal_floats():
    # Below about -87.3 e^x is a denormal (then zero), where the CPU's vectorised exp is 10-150x slower;
    # the lower clamp keeps every intermediate and the result a normal float, within 2e-34 of exact
    x = th.cat([th.linspace(-1e4, -80, 5001), th.linspace(-110, -86, 2401)])
    a, b = th.empty_like(x), th.empty_like(x)
    out = mish(x, scratch=(a, b))
    tiny = th.finfo(th.float32).tiny
    for tensor in (out, a, b):
        assert not ((tensor != 0) & (tensor.abs() < tiny)).any()
    assert th.allclose(out, F.mish(x.double()).float(), rtol=0, atol=2e-34)
    assert (out < 0).all()  # still on the right side of zero


def test_mish_expression_is_the_same_formula():
    """The out-of-place form compiled kernels use gives :func:`mish`'s float32 results bit for bit."""
    x = th.cat([th.linspace(-1e4, -80, 501), th.linspace(-90, 90, 2001), th.linspace(80, 1e4, 501), th.randn(1000) * 3])
    assert th.equal(mish_expression(x), mish(x))


def test_sinusoidal_embedding_values():
    sdac = SinusoidalEmbedding(16, shift=0, scale=0.25)
    freqs = [10000 ** (-j / 8) for j in range(8)]
    expected = 0.25 * th.tensor([math.sin(3 * f) for f in freqs] + [math.cos(3 * f) for f in freqs])
    th.testing.assert_close(sdac(th.tensor([3]))[0], expected)
    qvpo = SinusoidalEmbedding(32, shift=1)
    assert qvpo.freqs[-1].item() == pytest.approx(1e-4)  # 10000^(-15/15)
    with pytest.raises(ValueError, match="even"):
        SinusoidalEmbedding(7)


@pytest.mark.parametrize("method,std", [("haiku", 1 / 20 * 0.8796), ("qvpo", 0.5 / 20)])
def test_initialisations(method, std):
    th.manual_seed(0)
    layer = th.nn.Linear(400, 300)
    init_linear_(layer, method)
    weights = layer.weight.detach()
    assert weights.std().item() == pytest.approx(std, rel=0.03)
    assert th.all(layer.bias == 0)
    if method == "haiku":  # truncated at two standard deviations of 1/sqrt(fan_in)
        assert weights.abs().max().item() <= 2 / 20 + 1e-6


def test_noise_network_is_a_plain_mlp_on_the_concatenation():
    th.manual_seed(0)
    net = NoisePredictionNet(5, 3, [32, 32], time_embed_dim=8, time_hidden_dim=16)
    features, x_t, t = th.randn(7, 5), th.randn(7, 3), th.randint(10, (7,))
    first = th.nn.Linear(5 + 3 + 8, 32)
    with th.no_grad():
        first.weight.copy_(th.cat([net.features_in.weight, net.action_in.weight, net.time_in.weight], dim=1))
        first.bias.copy_(net.features_in.bias)
    time_features = net.time_mlp(net.time_embedding(t))
    plain = net.body(first(th.cat([features, x_t, time_features], dim=1)))
    th.testing.assert_close(net(features, x_t, t), plain)


def test_time_block_once_per_step_is_the_same_function_and_gradient():
    """With n_steps, the time block of N rows is computed for the n_steps steps and gathered."""
    th.manual_seed(0)
    net = NoisePredictionNet(5, 2, [32, 32], time_embed_dim=8, time_hidden_dim=64)
    features, x_t, t = th.randn(300, 5), th.randn(300, 2), th.randint(10, (300,))
    outputs, grads = [], []
    for n_steps in (None, 10):
        net.zero_grad()
        output = net(features, x_t, t, n_steps=n_steps)
        output.square().mean().backward()
        outputs.append(output.detach())
        grads.append([p.grad.clone() for p in net.parameters()])
    th.testing.assert_close(outputs[1], outputs[0], rtol=1e-6, atol=1e-6)
    for with_steps, per_row in zip(grads[1], grads[0], strict=True):
        th.testing.assert_close(with_steps, per_row, rtol=1e-5, atol=1e-7)
    # fewer rows than steps: per row, as before
    few = (features[:4], x_t[:4], t[:4])
    th.testing.assert_close(net(*few, n_steps=10), net(*few), rtol=0, atol=0)
