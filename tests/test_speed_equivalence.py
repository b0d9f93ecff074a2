"""
Every fast path of the hot path against the plain computation (``DiffusionActor.sample``, ``min_q``):
same numbers within float tolerance. Fast tests, no timing asserts (speed is measured by
benchmarks/bench_updates.py).
"""

import copy
import pickle
import shutil

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ContinuousCritic
from torch import nn
from torch.nn import functional as F

from sb3_diffusion.common import hot_path, kernels
from sb3_diffusion.common.hot_path import HotPath
from sb3_diffusion.common.kernels import RowMLP, chunk_states, resolve_compile_mode, split_mlp
from sb3_diffusion.common.networks import Mish, min_q, repeat_obs
from sb3_diffusion.sdac.policies import SDACPolicy

OBS_DIM, ACT_DIM = 5, 3
HAS_COMPILER = any(shutil.which(compiler) for compiler in ("g++", "c++", "clang++"))
# the CPU paths; "compiled" and "chunked_compiled" run only Mish networks (the selection never gives them others)
CPU_PATHS = ["chunked", "chunked_compiled", "compiled"]
SAMPLING_OPTIONS = [{}, dict(sampling_steps=4), dict(sampler="ddim"), dict(sampling_steps=3, sampler="ddim")]


def make_policy(**kwargs) -> SDACPolicy:
    obs_space = spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
    act_space = spaces.Box(-2.0, 2.0, (ACT_DIM,), np.float32)
    kwargs = {"net_arch": [32, 24, 16], "diffusion_steps": 6, **kwargs}
    return SDACPolicy(obs_space, act_space, lambda _: 1e-3, **kwargs)


def force_path(policy: SDACPolicy, monkeypatch: pytest.MonkeyPatch, path: str) -> list[str]:
    """Make the policy's hot path take ``path`` wherever it has a fast path; returns what it would have chosen."""
    if "compiled" in path:
        if not HAS_COMPILER:
            pytest.skip("no C++ compiler: torch.compile cannot build CPU kernels here (the eager paths run)")
        assert kernels.compiled_kernels_available()
    chosen: list[str] = []
    select = policy.hot_path.select

    def forced(*args):
        chosen.append(select(*args))
        return path if chosen[-1] != "plain" else "plain"

    monkeypatch.setattr(policy.hot_path, "select", forced)
    return chosen


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
@pytest.mark.parametrize("shape", [(1, 7), (4, 3), (9, 5), (20, 16)])
def test_row_mlp_matches_plain_mlp(activation_fn, shape, matmul):
    th.manual_seed(0)
    b, k = shape
    widths = [32, 24, 16]
    linears = [nn.Linear(widths[0], widths[1]), nn.Linear(widths[1], widths[2]), nn.Linear(widths[2], ACT_DIM)]
    activations = [activation_fn() for _ in linears]
    first_weight = th.randn(widths[0], ACT_DIM) * 3  # Mish's eager scratch form runs on blocks of > 4096 elements
    state_part, x = th.randn(b, widths[0]), th.randn(b, k, ACT_DIM)
    with th.no_grad():
        expected = _plain_mlp(first_weight, state_part, x, linears, activations)
        mlp = RowMLP(first_weight, activations, linears, max_rows=b * k + 3)
        got = mlp(state_part, x)
    assert got.shape == (b * k, ACT_DIM)
    assert th.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("activation_fn", [Mish, nn.ReLU])
def test_row_mlp_takes_rows_of_any_states(activation_fn, matmul):
    """Rows not grouped by state (a state index per row) give each row its own state's first-layer part."""
    th.manual_seed(1)
    n_states, n_rows = 5, 23
    widths = [32, 24]
    linears = [nn.Linear(widths[0], widths[1]), nn.Linear(widths[1], 1)]
    activations = [activation_fn() for _ in linears]
    first_weight = th.randn(widths[0], ACT_DIM) * 3
    state_part, x = th.randn(n_states, widths[0]), th.randn(n_rows, ACT_DIM)
    state_index = th.randint(0, n_states, (n_rows,))
    with th.no_grad():
        h = state_part[state_index] + x @ first_weight.t()
        for activation, layer in zip(activations, linears, strict=True):
            h = layer(activation(h))
        got = RowMLP(first_weight, activations, linears, max_rows=n_rows)(state_part, x, state_index=state_index)
    assert got.shape == (n_rows, 1)
    assert th.allclose(got, h, atol=1e-5)


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


@pytest.mark.filterwarnings("error:sb3_diffusion. torch.compile")
@pytest.mark.parametrize("path", CPU_PATHS)
@pytest.mark.parametrize("activation_fn", [Mish, nn.ReLU])
@pytest.mark.parametrize("options", SAMPLING_OPTIONS, ids=["ddpm", "respaced", "ddim", "respaced-ddim"])
def test_sample_matches_the_plain_chain(path, activation_fn, options, matmul, small_chunks, monkeypatch):
    if activation_fn is not Mish and path != "chunked":
        pytest.skip("compiled paths are only chosen for Mish networks")
    th.manual_seed(3)
    policy = make_policy(activation_fn=activation_fn, **options)
    chosen = force_path(policy, monkeypatch, path)
    obs = th.randn(7, OBS_DIM)
    # several states (chunked over states), and one state (acting: its state part is the bias of one addmm);
    # the whole-chain function compiles once per shape, so it gets fewer shapes
    shapes = [(7, 1), (7, 4), (1, 5)]
    if path == "compiled":
        shapes = shapes[1:] if not options else shapes[2:]
    for batch_size, n_samples in shapes:
        noise = policy.actor.draw_chain_noise(batch_size, n_samples)
        got = policy.sample(obs[:batch_size], n_samples, noise=noise)
        expected = policy.actor.sample(obs[:batch_size], n_samples, noise=noise)
        assert got.shape == (batch_size, n_samples, ACT_DIM)
        assert not th.is_inference(got)
        assert th.allclose(got, expected, atol=1e-5)
    assert chosen and "plain" not in chosen


@pytest.mark.filterwarnings("error:sb3_diffusion. torch.compile")
@pytest.mark.parametrize("path", CPU_PATHS)
@pytest.mark.parametrize("n_critics", [1, 2, 3])
def test_min_q_matches_the_plain_scoring(path, n_critics, matmul, small_chunks, monkeypatch):
    if path == "compiled" and n_critics == 1:
        pytest.skip("one compilation per number of critics: 2 and 3 are enough")
    th.manual_seed(4)
    policy = make_policy(n_critics=n_critics)
    chosen = force_path(policy, monkeypatch, path)
    obs, actions = th.randn(6, OBS_DIM), th.rand(6, 9, ACT_DIM) * 2 - 1
    with th.no_grad():
        expected = th.cat(policy.critic(repeat_obs(obs, 9), actions.reshape(-1, ACT_DIM)), dim=1).min(dim=1).values.view(6, 9)
        assert th.allclose(min_q(policy.critic, obs, actions), expected)  # the plain form of K candidates
        got = policy.min_q(obs, actions)
    assert got.shape == (6, 9) and not th.is_inference(got)
    assert th.allclose(got, expected, atol=1e-5)
    with th.inference_mode():
        assert th.allclose(policy.min_q(obs, actions), expected, atol=1e-5)
    assert chosen and "plain" not in chosen


def corner_candidates(n_states: int, n_candidates: int, n_inside: int) -> th.Tensor:
    """Clamped wide samples (most at a corner of the box, as SDAC's reverse samples at large t), a few inside."""
    actions = (th.randn(n_states, n_candidates, ACT_DIM) * 10).clamp(-1.0, 1.0)
    actions[:, :n_inside] = th.rand(n_states, n_inside, ACT_DIM) * 2 - 1
    return actions


@pytest.mark.filterwarnings("error:sb3_diffusion. torch.compile")
@pytest.mark.parametrize("path", ["chunked", "chunked_compiled"])
@pytest.mark.parametrize("activation_fn", [Mish, nn.ReLU])
def test_min_q_scores_each_box_corner_once_per_state(path, activation_fn, matmul, small_chunks, monkeypatch):
    if activation_fn is not Mish and path != "chunked":
        pytest.skip("compiled paths are only chosen for Mish networks")
    monkeypatch.setattr(kernels, "DEDUPE_MIN_ROWS", 1)
    th.manual_seed(6)
    policy = make_policy(critic_activation_fn=activation_fn)
    chosen = force_path(policy, monkeypatch, path)
    obs, actions = th.randn(6, OBS_DIM), corner_candidates(6, 40, n_inside=5)
    plan = hot_path._corner_plan(actions)
    assert plan is not None
    at_corner = (actions.abs() == 1).all(dim=-1)
    assert plan.n_others == int((~at_corner).sum()) and plan.rows.shape[0] <= plan.n_others + 6 * 2**ACT_DIM
    distinct = []
    scoring = hot_path._scoring_distinct
    monkeypatch.setattr(hot_path, "_scoring_distinct", lambda *args: distinct.append(1) or scoring(*args))
    with th.no_grad():
        q_values = policy.critic(repeat_obs(obs, 40), actions.reshape(-1, ACT_DIM))
        expected = th.cat(q_values, dim=1).min(dim=1).values.view(6, 40)
        got = policy.min_q(obs, actions)
    assert distinct and chosen and "plain" not in chosen
    assert got.shape == (6, 40) and not th.is_inference(got)
    assert th.allclose(got, expected, atol=1e-5)


def test_corner_scoring_only_where_it_saves_rows(monkeypatch):
    monkeypatch.setattr(kernels, "DEDUPE_MIN_ROWS", 1)
    th.manual_seed(7)
    assert hot_path._corner_plan(th.rand(6, 40, ACT_DIM) * 2 - 1) is None  # no candidate at a corner
    assert hot_path._corner_plan(corner_candidates(6, 40, n_inside=38)) is None  # too few to be worth it
    assert hot_path._corner_plan(corner_candidates(6, 40, n_inside=5)) is not None
    # below DEDUPE_MIN_ROWS (acting, small scorings) the plain chunked scoring runs, whatever the candidates
    monkeypatch.setattr(kernels, "DEDUPE_MIN_ROWS", 241)
    policy = make_policy(compile_mode="off")
    monkeypatch.setattr(hot_path, "_scoring_distinct", lambda *args: pytest.fail("scored distinct rows"))
    with th.no_grad():
        policy.min_q(th.randn(6, OBS_DIM), corner_candidates(6, 40, n_inside=5))


@pytest.mark.skipif(not th.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("options", SAMPLING_OPTIONS[:2], ids=["ddpm", "respaced"])
def test_cuda_graph_chain_matches_the_plain_chain(options):
    th.manual_seed(8)
    policy = make_policy(**options).to("cuda")
    obs = th.randn(7, OBS_DIM, device="cuda")
    assert policy.hot_path.select("sample", obs.device, 28, 32, list(policy.actor.noise_net.body)[0::2]) == "cuda_graph"
    for _ in range(2):  # capture, then replay
        noise = policy.actor.draw_chain_noise(7, 4)
        got = policy.sample(obs, 4, noise=noise)
        assert th.allclose(got, policy.actor.sample(obs, 4, noise=noise), atol=1e-5)
    assert len(policy.hot_path.cuda_graphs.graphs) == 1
    # the graph reads the parameters in place: an optimizer step is seen by the next replay
    with th.no_grad():
        for param in policy.actor.parameters():
            param.add_(0.01)
    noise = policy.actor.draw_chain_noise(7, 4)
    assert th.allclose(policy.sample(obs, 4, noise=noise), policy.actor.sample(obs, 4, noise=noise), atol=1e-5)


def test_min_q_with_autograd_is_the_plain_computation():
    policy = make_policy()
    obs, actions = th.randn(3, OBS_DIM), (th.rand(3, 4, ACT_DIM) * 2 - 1).requires_grad_(True)
    q_values = policy.min_q(obs, actions)
    q_values.sum().backward()
    assert actions.grad is not None and actions.grad.abs().sum() > 0


def test_min_q_falls_back_for_unusual_critics():
    obs_space = spaces.Box(-1, 1, (OBS_DIM,), np.float32)
    act_space = spaces.Box(-1, 1, (ACT_DIM,), np.float32)
    critic = ContinuousCritic(obs_space, act_space, [], nn.Flatten(), OBS_DIM)  # no hidden layer
    obs, actions = th.randn(2, OBS_DIM), th.rand(2, 3, ACT_DIM)
    with th.no_grad():
        expected = min_q(critic, repeat_obs(obs, 3), actions.reshape(-1, ACT_DIM)).view(2, 3)
        assert th.allclose(HotPath().min_q(critic, obs, actions), expected)


def test_min_q_takes_any_critic_callable():
    """A critic without SB3's q_networks (a stub in a test, a custom class) gets the plain computation."""

    class Stub(nn.Module):
        def forward(self, obs, actions):
            return (obs[:, :1] + actions.sum(1, keepdim=True), obs[:, :1] - actions[:, :1])

    obs, actions = th.randn(4, OBS_DIM), th.randn(4, 6, ACT_DIM)
    with th.no_grad():
        got = HotPath().min_q(Stub(), obs, actions)
    rows = obs.repeat_interleave(6, dim=0), actions.reshape(-1, ACT_DIM)
    expected = th.minimum(rows[0][:, 0] + rows[1].sum(1), rows[0][:, 0] - rows[1][:, 0]).view(4, 6)
    assert th.allclose(got, expected)


def test_best_of_k_picks_the_plain_argmax(small_chunks):
    th.manual_seed(5)
    policy = make_policy(compile_mode="off")
    obs = th.randn(5, OBS_DIM)
    noise = policy.actor.draw_chain_noise(5, 8)
    chosen = policy.best_of_k(obs, 8, noise=noise)
    candidates = policy.actor.sample(obs, 8, noise=noise)
    with th.no_grad():
        q_values = th.cat(policy.critic(repeat_obs(obs, 8), candidates.reshape(-1, ACT_DIM)), dim=1).min(dim=1).values
    best = q_values.view(5, 8).argmax(dim=1)
    assert th.allclose(chosen, candidates[th.arange(5), best], atol=1e-5)


def test_selection_is_made_in_one_place(monkeypatch):
    """The real choices, from the settings and shapes alone."""
    monkeypatch.delenv(kernels.COMPILE_ENV_VAR, raising=False)
    cpu, meta = th.device("cpu"), th.device("meta")
    compiled = "compiled" if kernels.compiled_kernels_available() else "chunked"
    chunked_compiled = "chunked_compiled" if kernels.compiled_kernels_available() else "chunked"
    mish3, relu3 = [Mish()] * 3, [nn.ReLU()] * 3
    auto, on, off = HotPath("auto"), HotPath("on"), HotPath("off")
    for operation in ("sample", "min_q"):
        with th.no_grad():
            assert auto.select(operation, cpu, 32, 256, mish3) == compiled  # acting with official networks
            assert auto.select(operation, cpu, 32, 64, mish3) == "chunked"  # small networks: no compilation
            assert auto.select(operation, cpu, 512 * 32, 256, mish3) == chunked_compiled  # training batches
            assert auto.select(operation, cpu, kernels.SMALL_CHAIN_ROWS + 1, 64, mish3) == "chunked"
            assert on.select(operation, cpu, 4, 16, mish3) == compiled
            assert on.select(operation, cpu, 4096, 16, mish3) == chunked_compiled
            assert off.select(operation, cpu, 32, 256, mish3) == "chunked"
            assert on.select(operation, cpu, 32, 256, relu3) == "chunked"  # compiled kernels are Mish kernels
            assert on.select(operation, meta, 32, 256, mish3) == "chunked"
            assert auto.select(operation, cpu, 32, 256, None) == "plain"  # a network without a fast path
    assert on.select("sample", th.device("cuda"), 32, 256, mish3) == "cuda_graph"
    assert off.select("sample", th.device("cuda"), 32, 256, mish3) == "chunked"
    assert auto.select("min_q", cpu, 32, 256, mish3) == "plain"  # autograd on: the plain scoring
    monkeypatch.setenv(kernels.COMPILE_ENV_VAR, "off")
    assert on.select("sample", cpu, 32, 256, mish3) == "chunked"


def test_vector_width_of_the_compiled_kernels(monkeypatch):
    """256-bit code for float32 on Intel AVX-512 CPUs (measured faster there), the widest for bf16; env override."""
    monkeypatch.delenv(kernels.SIMDLEN_ENV_VAR, raising=False)
    monkeypatch.setattr(kernels, "_intel_avx512", lambda: True)
    assert kernels.inductor_simdlen(th.float32) == 256
    assert kernels.inductor_simdlen(th.bfloat16) is None
    monkeypatch.setattr(kernels, "_intel_avx512", lambda: False)
    assert kernels.inductor_simdlen(th.float32) is None
    monkeypatch.setenv(kernels.SIMDLEN_ENV_VAR, "512")
    assert kernels.inductor_simdlen(th.float32) == kernels.inductor_simdlen(th.bfloat16) == 512
    monkeypatch.setenv(kernels.SIMDLEN_ENV_VAR, "Auto")
    assert kernels.inductor_simdlen(th.float32) is None
    for bad in ("wide", "300", "-256"):
        monkeypatch.setenv(kernels.SIMDLEN_ENV_VAR, bad)
        with pytest.raises(ValueError, match=kernels.SIMDLEN_ENV_VAR):
            kernels.inductor_simdlen(th.float32)


def test_a_bf16_call_runs_the_bf16_variant(monkeypatch):
    """Each precision has its own compiled functions (own vector width): a call is routed by its compute dtype."""
    seen = []
    names = [name + suffix for name in ("bias_mish", "mish", "chain", "min_q") for suffix in ("", kernels.BF16_SUFFIX)]
    functions = {name: (lambda *args, name=name: seen.append(name)) for name in names}
    monkeypatch.setattr(kernels.COMPILED, "functions", functions)
    monkeypatch.setattr(kernels.COMPILED, "broken", False)
    kernels.COMPILED("bias_mish", th.zeros(2, 2), th.zeros(2))
    kernels.COMPILED("mish", th.zeros(2, 2, dtype=th.bfloat16))
    kernels.COMPILED("chain", th.zeros(1), [], [], th.bfloat16)
    kernels.COMPILED("min_q", [], th.zeros(1), [], [], [], th.float32)
    kernels.COMPILED("min_q", [], th.zeros(1), [], [], [])  # dtype left at its default (float32)
    assert seen == ["bias_mish", "mish" + kernels.BF16_SUFFIX, "chain" + kernels.BF16_SUFFIX, "min_q", "min_q"]


def test_chunk_rows_from_the_environment(monkeypatch):
    monkeypatch.delenv(kernels.CHUNK_ROWS_ENV_VAR, raising=False)
    assert kernels._chunk_rows_from_env(2048) == 2048
    monkeypatch.setenv(kernels.CHUNK_ROWS_ENV_VAR, "8192")
    assert kernels._chunk_rows_from_env(2048) == 8192
    for bad in ("0", "many", "-5"):
        monkeypatch.setenv(kernels.CHUNK_ROWS_ENV_VAR, bad)
        with pytest.raises(ValueError, match=kernels.CHUNK_ROWS_ENV_VAR):
            kernels._chunk_rows_from_env(2048)


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
    with pytest.raises(ValueError, match="precision"):
        HotPath(precision="fp8")


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler")
@pytest.mark.filterwarnings("error:sb3_diffusion. torch.compile")
def test_compiled_kernels_across_mishs_range(monkeypatch):
    monkeypatch.delenv(kernels.COMPILE_ENV_VAR, raising=False)
    h = th.linspace(-60, 60, 24 * 16).view(24, 16)
    bias = th.randn(16)
    expected = F.mish((h + bias).double()).float()
    with th.inference_mode():
        out = h.clone()
        kernels.COMPILED("bias_mish", out, bias)
        assert th.allclose(out, expected, rtol=1e-6, atol=1e-6)
        out = h + bias
        kernels.COMPILED("mish", out)
        assert th.allclose(out, expected, rtol=1e-6, atol=1e-6)
        # far below zero (trained critics do get there): normal floats, within 2e-34 of exact
        low = th.linspace(-1e3, -86, 24 * 16).view(24, 16)
        out = low.clone()
        kernels.COMPILED("mish", out)
        assert th.allclose(out, F.mish(low.double()).float(), rtol=0, atol=2e-34)
        assert not ((out != 0) & (out.abs() < th.finfo(th.float32).tiny)).any()


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler")
@pytest.mark.filterwarnings("error:sb3_diffusion. torch.compile")
def test_compiled_bf16_mish_rounds_once(monkeypatch):
    """
    A compiled bf16 bias+Mish computes in float32 and rounds once: the bf16 nearest the exact value of
    mish(h + bias), within half the spacing of bf16 numbers there.
    """
    monkeypatch.delenv(kernels.COMPILE_ENV_VAR, raising=False)
    th.manual_seed(3)
    h = (th.randn(64, 32) * 4).to(th.bfloat16)
    bias = th.randn(32).to(th.bfloat16)
    exact = F.mish(h.double() + bias.double())
    with th.inference_mode():
        out = h.clone()
        kernels.COMPILED("bias_mish", out, bias)
    # the spacing of bf16 numbers at each value (8 bits of mantissa): rounding once is within half of it
    spacing = 2.0 ** (th.floor(th.log2(exact.abs().clamp_min(1e-30))) - 7)
    assert ((out.double() - exact).abs() <= 0.5 * spacing * (1 + 1e-4)).all()


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler")
@pytest.mark.filterwarnings("error:sb3_diffusion. torch.compile")
def test_bf16_mish_through_the_bias_kernel_is_the_same(monkeypatch):
    """RowMLP's in-place compiled Mish goes through the bias kernel in bf16 (faster there): same values."""
    monkeypatch.delenv(kernels.COMPILE_ENV_VAR, raising=False)
    th.manual_seed(4)
    for dtype in (th.bfloat16, th.float32):
        h = (th.randn(48, 24) * 5).to(dtype)
        with th.inference_mode():
            routed, direct = h.clone(), h.clone()
            kernels._compiled_mish_(routed)
            kernels.COMPILED("mish", direct)
        assert th.equal(routed, direct)


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler")
def test_global_torch_settings_are_restored(monkeypatch):
    """The compiled fixed-shape functions raise dynamo's recompile limit only while they run."""
    monkeypatch.delenv(kernels.COMPILE_ENV_VAR, raising=False)
    config = th._dynamo.config
    before = config.recompile_limit
    seen = []
    monkeypatch.setitem(kernels.COMPILED.functions, "chain", lambda *args: seen.append(config.recompile_limit) or args[1])
    policy = make_policy(compile_mode="on")
    policy.sample(th.randn(1, OBS_DIM), 4)
    assert seen == [max(before, kernels.RECOMPILE_LIMIT)]
    assert config.recompile_limit == before


def test_a_failed_compilation_falls_back_with_a_warning(monkeypatch):
    monkeypatch.delenv(kernels.COMPILE_ENV_VAR, raising=False)
    monkeypatch.setattr(kernels.COMPILED, "broken", False)

    def broken(*args):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(kernels.COMPILED, "functions", dict.fromkeys(("bias_mish", "mish", "chain", "min_q"), broken))
    th.manual_seed(9)
    policy = make_policy(compile_mode="on")
    obs = th.randn(2, OBS_DIM)
    noise = policy.actor.draw_chain_noise(2, 4)
    with pytest.warns(UserWarning, match="torch.compile of the fast paths failed"):
        got = policy.sample(obs, 4, noise=noise)
    assert not kernels.compiled_kernels_available()
    assert th.allclose(got, policy.actor.sample(obs, 4, noise=noise), atol=1e-5)
    candidates = th.rand(2, 4, ACT_DIM)
    with th.no_grad():
        assert th.allclose(policy.min_q(obs, candidates), min_q(policy.critic, obs, candidates), atol=1e-5)


def test_hot_path_copies_and_pickles_without_its_caches():
    policy = make_policy(compile_mode="off")
    policy.hot_path.cuda_graphs.graphs[("key",)] = object()  # type: ignore[assignment]
    for copied in (copy.deepcopy(policy).hot_path, pickle.loads(pickle.dumps(policy.hot_path))):
        assert copied is not policy.hot_path and copied.compile_mode == "off" and copied.precision == "fp32"
        assert copied.cuda_graphs.graphs == {}


def test_compile_mode_is_saved_with_the_policy(tmp_path):
    policy = make_policy(compile_mode="off")
    policy.save(tmp_path / "policy.pt")
    loaded = SDACPolicy.load(tmp_path / "policy.pt")
    assert loaded.compile_mode == "off" and loaded.hot_path.compile_mode == "off"
    obs = th.randn(3, OBS_DIM)
    noise = policy.actor.draw_chain_noise(3, 4)
    assert th.equal(policy.sample(obs, 4, noise=noise), loaded.sample(obs, 4, noise=noise))


def test_training_mode_reaches_every_module_and_spares_the_targets():
    policy = make_policy()

    calls: list[bool] = []

    class Recorder(nn.Identity):
        def train(self, mode: bool = True):
            calls.append(mode)
            return super().train(mode)

    policy.critic.qf0.append(Recorder())  # a module with its own train() gets it called
    for mode in (False, True, True, False):
        policy.set_training_mode(mode)
        assert policy.training == mode
        assert all(module.training == mode for module in (*policy.actor.modules(), *policy.critic.modules()))
        assert not any(module.training for module in (*policy.actor_target.modules(), *policy.critic_target.modules()))
    assert calls == [False, True, True, False]


def test_multi_tensor_adam_is_bitwise_the_plain_one():
    # the policy asks for the multi-tensor optimizer unless optimizer_kwargs says otherwise
    fast, plain = make_policy(), make_policy(optimizer_kwargs=dict(foreach=False))
    assert fast.critic.optimizer.param_groups[0]["foreach"] is True
    assert plain.critic.optimizer.param_groups[0]["foreach"] is False
    plain.load_state_dict(fast.state_dict())
    generator = th.Generator().manual_seed(0)
    for _ in range(5):
        obs, actions = th.randn(64, OBS_DIM, generator=generator), th.rand(64, ACT_DIM, generator=generator) * 2 - 1
        for policy in (fast, plain):
            for module in (policy.critic, policy.actor):
                module.optimizer.zero_grad()
            loss = sum(q.square().mean() for q in policy.critic(obs, actions))
            t = th.full((64,), 2, dtype=th.long)
            loss = loss + policy.actor.noise_net(obs, actions, t).square().mean()
            loss.backward()
            policy.critic.optimizer.step()
            policy.actor.optimizer.step()
    for (name, a), b in zip(fast.state_dict().items(), plain.state_dict().values(), strict=True):
        assert th.equal(a, b), name
