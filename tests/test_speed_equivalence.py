"""
Every speed optimisation of the hot path against the plain computation: same numbers within float
tolerance. Fast tests, no timing asserts (speed is measured by benchmarks/bench_updates.py).
"""

import shutil

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ContinuousCritic
from torch import nn
from torch.nn import functional as F

from sb3_diffusion.common import kernels
from sb3_diffusion.common.diffusion import DiffusionSchedule, make_betas
from sb3_diffusion.common.kernels import RowMLP, chunk_states, mish_, resolve_compile_mode, split_mlp
from sb3_diffusion.common.networks import Mish, NoisePredictionNet, mish_inference
from sb3_diffusion.common.policies import DiffusionActorPolicy, min_q, repeat_obs

OBS_DIM, ACT_DIM = 5, 3


def make_policy(**kwargs) -> DiffusionActorPolicy:
    obs_space = spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
    act_space = spaces.Box(-2.0, 2.0, (ACT_DIM,), np.float32)
    kwargs = {"net_arch": [32, 24, 16], "diffusion_steps": 6, **kwargs}
    return DiffusionActorPolicy(obs_space, act_space, lambda _: 1e-3, **kwargs)


@pytest.fixture(params=["onednn", "mkl"])
def matmul(request, monkeypatch):
    """Both matmul paths of the hidden layers: oneDNN's linear (large chunks on CPU) and torch.mm/addmm."""
    if request.param == "onednn":
        if not kernels.ONEDNN.available:
            pytest.skip("this build of torch has no oneDNN linear")
        monkeypatch.setattr(kernels, "ONEDNN_MIN_ROWS", 1)
    else:
        monkeypatch.setattr(kernels, "ONEDNN_MIN_ROWS", 1 << 62)
    return request.param


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of a few rows, so that the chunked loops run several chunks of uneven size."""
    monkeypatch.setattr(kernels, "DEFAULT_CHUNK_ROWS", 10)


def test_exact_mish_formulas():
    x = th.cat([th.linspace(-100, 100, 20001), th.tensor([-1e4, -30.0, -20.0, 0.0, 20.0, 30.0, 1e4])])
    reference = F.mish(x.double()).float()
    assert th.allclose(mish_inference(x), reference, rtol=1e-6, atol=1e-6)
    h = x.clone()
    mish_(h, th.empty_like(h), th.empty_like(h))
    assert th.allclose(h, reference, rtol=1e-6, atol=1e-6)
    # relative accuracy where Mish is tiny (the one-exp form has no cancellation)
    tail = x[(x < -5) & (x > -80)]
    h = tail.clone()
    mish_(h, th.empty_like(h), th.empty_like(h))
    assert th.allclose(h, F.mish(tail.double()).float(), rtol=1e-5, atol=0)


def test_mish_module_switches_path_without_changing_values():
    module = Mish()
    x = th.randn(64, 16, requires_grad=True)
    with th.no_grad():
        fast = module(x)
    slow = module(x)
    assert th.allclose(fast, slow, atol=1e-6)
    slow.sum().backward()  # the autograd path is torch's
    assert x.grad is not None


def _plain_mlp(first_weight, state_part, x, linears, activations):
    """The MLP on rows, written the obvious way."""
    b, k, _ = x.shape
    h = state_part.repeat_interleave(k, dim=0) + x.reshape(b * k, -1) @ first_weight.t()
    for activation, layer in zip(activations, linears, strict=True):
        h = layer(activation(h))
    return h


@pytest.mark.parametrize("activation_fn", [Mish, nn.ReLU, nn.Tanh, nn.GELU])
@pytest.mark.parametrize("shape", [(1, 7), (4, 3), (9, 5)])
def test_row_mlp_matches_plain_mlp(activation_fn, shape, matmul):
    th.manual_seed(0)
    b, k = shape
    widths = [32, 24, 16]
    linears = [nn.Linear(widths[0], widths[1]), nn.Linear(widths[1], widths[2]), nn.Linear(widths[2], ACT_DIM)]
    activations = [activation_fn() for _ in linears]
    first_weight = th.randn(widths[0], ACT_DIM)
    state_part, x = th.randn(b, widths[0]), th.randn(b, k, ACT_DIM)
    with th.no_grad():
        expected = _plain_mlp(first_weight, state_part, x, linears, activations)
        mlp = RowMLP(first_weight, activations, linears, max_rows=b * k + 3)
        got = mlp(state_part, x)
    assert got.shape == (b * k, ACT_DIM)
    assert th.allclose(got, expected, atol=1e-5)


def test_split_mlp_recognises_only_plain_mlps():
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    linears, activations = split_mlp(mlp)
    assert len(linears) == 2 and len(activations) == 1
    assert split_mlp(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1), nn.Tanh())) is None
    assert split_mlp(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 1), nn.Linear(1, 1))) is None
    assert split_mlp(nn.Linear(4, 8)) is None


def test_chunk_states_covers_every_state_once():
    for n_states, per_state, chunk_rows in [(10, 3, 7), (5, 20, 7), (1, 1, 1), (64, 32, 2048)]:
        chunks = chunk_states(n_states, per_state, chunk_rows)
        covered = [i for start, stop in chunks for i in range(start, stop)]
        assert covered == list(range(n_states))
        assert all(stop > start for start, stop in chunks)
        assert all((stop - start) * per_state <= max(chunk_rows, per_state) for start, stop in chunks)


def test_noise_net_decomposition_matches_forward():
    th.manual_seed(1)
    net = NoisePredictionNet(OBS_DIM, ACT_DIM, [32, 32], time_embed_dim=8, time_hidden_dim=16)
    b, k, t = 4, 6, 3
    features, x = th.randn(b, OBS_DIM), th.randn(b, k, ACT_DIM)
    with th.no_grad():
        expected = net(features.repeat_interleave(k, dim=0), x.reshape(b * k, -1), th.full((b * k,), t))
        state_part = net.features_in(features) + net.time_table(5)[t]
        got = net.row_mlp(b * k)(state_part, x)
        shared = net.forward_shared(net.features_in(features), x, net.time_table(5)[t])
    assert th.allclose(got, expected, atol=1e-5)
    assert th.allclose(shared.reshape(b * k, -1), expected, atol=1e-5)


def test_reverse_step_matches_textbook_formula():
    schedule = DiffusionSchedule(make_betas("linear", 10, scale=0.8))
    betas = schedule.betas.double()
    abar = th.cumprod(1 - betas, 0)
    abar_prev = th.cat([th.ones(1, dtype=th.float64), abar[:-1]])
    th.manual_seed(2)
    x_t, eps, z = th.randn(50, 3), th.randn(50, 3), th.randn(50, 3)
    for t in [9, 4, 0]:
        x0 = (x_t.double() / abar[t].sqrt() - eps.double() * (1 / abar[t] - 1).sqrt()).clamp(-1, 1)
        mean = (
            betas[t] * abar_prev[t].sqrt() / (1 - abar[t]) * x0
            + (1 - abar_prev[t]) * (1 - betas[t]).sqrt() / (1 - abar[t]) * x_t.double()
        )
        variance = betas[t] * (1 - abar_prev[t]) / (1 - abar[t])
        expected = mean + (variance.sqrt() * z.double() if t > 0 else 0)
        got = schedule.reverse_step(x_t.clone(), t, eps, z if t > 0 else None)
        assert th.allclose(got.double(), expected, atol=1e-5)


@pytest.mark.parametrize("activation_fn", [Mish, nn.ReLU])
def test_sample_matches_plain_chain(small_chunks, activation_fn, matmul):
    th.manual_seed(3)
    policy = make_policy(activation_fn=activation_fn, compile_mode="off")
    obs = th.randn(7, OBS_DIM)
    for n_samples in [1, 4]:
        noise = policy.actor.draw_chain_noise(7, n_samples)
        got = policy.actor.sample(obs, n_samples, noise=noise)
        expected = policy.actor.sample_reference(obs, n_samples, noise)
        assert got.shape == (7, n_samples, ACT_DIM)
        assert not th.is_inference(got)
        assert th.allclose(got, expected, atol=1e-5)
    # one state (the acting path: its state part is the bias of one addmm)
    noise = policy.actor.draw_chain_noise(1, 5)
    one = policy.actor.sample(obs[:1], 5, noise=noise)
    assert th.allclose(one, policy.actor.sample_reference(obs[:1], 5, noise), atol=1e-5)


@pytest.mark.parametrize("n_critics", [1, 2, 3])
def test_min_q_per_state_matches_repeated_critic(small_chunks, n_critics, matmul):
    th.manual_seed(4)
    policy = make_policy(n_critics=n_critics, compile_mode="off")
    obs, actions = th.randn(6, OBS_DIM), th.rand(6, 9, ACT_DIM) * 2 - 1
    with th.no_grad():
        expected = min_q(policy.critic, repeat_obs(obs, 9), actions.reshape(-1, ACT_DIM)).view(6, 9)
        got = min_q(policy.critic, obs, actions)
    assert got.shape == (6, 9) and not th.is_inference(got)
    assert th.allclose(got, expected, atol=1e-5)
    with th.inference_mode():
        assert th.allclose(min_q(policy.critic, obs, actions), expected, atol=1e-5)


def test_min_q_with_autograd_is_the_plain_computation():
    policy = make_policy()
    obs, actions = th.randn(3, OBS_DIM), (th.rand(3, 4, ACT_DIM) * 2 - 1).requires_grad_(True)
    q_values = min_q(policy.critic, obs, actions)
    q_values.sum().backward()
    assert actions.grad is not None and actions.grad.abs().sum() > 0


def test_min_q_falls_back_for_unusual_critics():
    obs_space = spaces.Box(-1, 1, (OBS_DIM,), np.float32)
    act_space = spaces.Box(-1, 1, (ACT_DIM,), np.float32)
    critic = ContinuousCritic(obs_space, act_space, [], nn.Flatten(), OBS_DIM)  # no hidden layer
    obs, actions = th.randn(2, OBS_DIM), th.rand(2, 3, ACT_DIM)
    with th.no_grad():
        expected = min_q(critic, repeat_obs(obs, 3), actions.reshape(-1, ACT_DIM)).view(2, 3)
        assert th.allclose(min_q(critic, obs, actions), expected)


def test_min_q_takes_any_critic_callable():
    """A critic without SB3's q_networks (a stub in a test, a custom class) gets the plain computation."""

    class Stub(nn.Module):
        def forward(self, obs, actions):
            return (obs[:, :1] + actions.sum(1, keepdim=True), obs[:, :1] - actions[:, :1])

    obs, actions = th.randn(4, OBS_DIM), th.randn(4, 6, ACT_DIM)
    with th.no_grad():
        got = min_q(Stub(), obs, actions)
    rows = obs.repeat_interleave(6, dim=0), actions.reshape(-1, ACT_DIM)
    expected = th.minimum(rows[0][:, 0] + rows[1].sum(1), rows[0][:, 0] - rows[1][:, 0]).view(4, 6)
    assert th.allclose(got, expected)


def test_best_of_k_picks_the_plain_argmax(small_chunks):
    th.manual_seed(5)
    policy = make_policy(compile_mode="off")
    obs = th.randn(5, OBS_DIM)
    noise = policy.actor.draw_chain_noise(5, 8)
    chosen = policy.best_of_k(obs, 8, noise=noise)
    candidates = policy.actor.sample_reference(obs, 8, noise)
    with th.no_grad():
        q_values = th.cat(policy.critic(repeat_obs(obs, 8), candidates.reshape(-1, ACT_DIM)), dim=1).min(dim=1).values
    best = q_values.view(5, 8).argmax(dim=1)
    assert th.allclose(chosen, candidates[th.arange(5), best], atol=1e-5)


def test_default_thresholds_use_onednn_for_large_chunks():
    """With the real thresholds, a large batch goes through the oneDNN path and matches the plain MLP."""
    th.manual_seed(7)
    linears = [nn.Linear(64, 64), nn.Linear(64, ACT_DIM)]
    activations = [Mish(), Mish()]
    first_weight, state_part, x = th.randn(64, ACT_DIM), th.randn(20, 64), th.randn(20, 16, ACT_DIM)
    assert 20 * 16 >= kernels.ONEDNN_MIN_ROWS
    with th.no_grad():
        expected = _plain_mlp(first_weight, state_part, x, linears, activations)
        got = RowMLP(first_weight, activations, linears, max_rows=320)(state_part, x)
    assert th.allclose(got, expected, atol=1e-5)


def test_compile_mode_resolution(monkeypatch):
    monkeypatch.delenv(kernels.COMPILE_ENV_VAR, raising=False)
    assert resolve_compile_mode("auto") == "auto"
    assert resolve_compile_mode(None) == "auto"
    assert resolve_compile_mode(False) == "off"
    with pytest.raises(ValueError, match="compile_mode"):
        resolve_compile_mode("sometimes")
    monkeypatch.setenv(kernels.COMPILE_ENV_VAR, "0")
    assert resolve_compile_mode("on") == "off"
    monkeypatch.setenv(kernels.COMPILE_ENV_VAR, "maybe")
    with pytest.raises(ValueError, match=kernels.COMPILE_ENV_VAR):
        resolve_compile_mode("auto")
    with pytest.raises(ValueError, match="compile_mode"):
        make_policy(compile_mode="always")
    # auto compiles only large calls, and never off the CPU
    monkeypatch.delenv(kernels.COMPILE_ENV_VAR)
    cpu = th.device("cpu")
    assert not kernels.use_compiled("auto", cpu, 1000)
    assert kernels.use_compiled("auto", cpu, kernels.AUTO_COMPILE_MIN_ELEMENTS) == kernels.compiled_kernels_available()
    assert not kernels.use_compiled("on", th.device("meta"), 1 << 30)


@pytest.mark.filterwarnings("error:sb3_diffusion. torch.compile")
@pytest.mark.parametrize("path", ["chunked", "whole-chain"])
def test_compiled_kernels_match_eager(small_chunks, matmul, path, monkeypatch):
    """
    The torch.compile'd paths against the plain chain: the fused Mish kernels of the chunked path
    (large batches) and the whole chain compiled as one function (small batches: acting).
    """
    monkeypatch.delenv(kernels.COMPILE_ENV_VAR, raising=False)
    if path == "chunked":
        monkeypatch.setattr(kernels, "SMALL_CHAIN_ROWS", 0)
    if not any(shutil.which(compiler) for compiler in ("g++", "c++", "clang++")):
        pytest.skip("no C++ compiler: torch.compile cannot build CPU kernels here (the eager fallback runs)")
    # with a compiler, a failed compilation (which would fall back with a warning) fails the test: the
    # filterwarnings mark turns that warning into an error
    th.manual_seed(6)
    policy = make_policy(compile_mode="on")
    obs = th.randn(5, OBS_DIM)
    noise = policy.actor.draw_chain_noise(5, 4)
    got = policy.actor.sample(obs, 4, noise=noise)
    assert kernels.compiled_kernels_available()
    assert th.allclose(got, policy.actor.sample_reference(obs, 4, noise), atol=1e-5)
    with th.no_grad():
        expected = min_q(policy.critic, repeat_obs(obs, 4), got.reshape(-1, ACT_DIM)).view(5, 4)
        assert th.allclose(min_q(policy.critic, obs, got, compile_mode="on"), expected, atol=1e-5)
    if path == "chunked":
        # the kernels themselves, on values across Mish's whole range
        compiled = kernels._COMPILED.get()
        h = th.linspace(-60, 60, 24 * 16).view(24, 16)
        bias = th.randn(16)
        expected_h = F.mish((h + bias).double()).float()
        with th.inference_mode():
            out = h.clone()
            compiled.bias_mish(out, bias)
            assert th.allclose(out, expected_h, rtol=1e-6, atol=1e-6)
            out = h + bias
            compiled.mish(out)
            assert th.allclose(out, expected_h, rtol=1e-6, atol=1e-6)
    else:
        # the whole-chain function reads the sampling schedule's coefficient table: re-spaced DDIM too
        policy = make_policy(compile_mode="on", sampling_steps=4, sampler="ddim")
        noise = policy.actor.draw_chain_noise(1, 6)
        got = policy.actor.sample(obs[:1], 6, noise=noise)
        assert th.allclose(got, policy.actor.sample_reference(obs[:1], 6, noise), atol=1e-5)


def test_whole_chain_compilation_decision(monkeypatch):
    monkeypatch.delenv(kernels.COMPILE_ENV_VAR, raising=False)
    cpu = th.device("cpu")
    available = kernels.compiled_kernels_available()
    assert kernels.use_compiled_chain("auto", cpu, 32, 256) == available  # acting with official networks
    assert not kernels.use_compiled_chain("auto", cpu, 32, 64)  # small networks (tests, quick starts)
    assert not kernels.use_compiled_chain("auto", cpu, kernels.SMALL_CHAIN_ROWS + 1, 256)  # training batches
    assert kernels.use_compiled_chain("on", cpu, 4, 16) == available
    assert not kernels.use_compiled_chain("off", cpu, 32, 256)
    assert not kernels.use_compiled_chain("on", th.device("meta"), 32, 256)


def test_compile_mode_is_saved_with_the_policy(tmp_path):
    policy = make_policy(compile_mode="off")
    policy.save(tmp_path / "policy.pt")
    loaded = DiffusionActorPolicy.load(tmp_path / "policy.pt")
    assert loaded.compile_mode == "off" and loaded.actor.compile_mode == "off"
    obs = th.randn(3, OBS_DIM)
    noise = policy.actor.draw_chain_noise(3, 4)
    assert th.equal(policy.actor.sample(obs, 4, noise=noise), loaded.actor.sample(obs, 4, noise=noise))
