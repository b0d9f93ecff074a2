"""
``precision="bf16"``: every reduced-precision path of the hot path against the plain fp32 computation
within a bf16 tolerance, the candidates it chooses, the option's round trip through save/load, and
the fallback to fp32 (with one warning) where the hardware has no bf16.

No test needs AVX512-BF16 or AMX: the capability check is monkeypatched. torch computes bf16 on any
CPU (emulated where the instructions are missing: slower, same numbers), so the bf16 paths are tested
everywhere.

The tolerance. bf16 keeps 8 significant bits: rounding a value to bf16 (to nearest) changes it by at most ``u
= 2^-8`` relative. The matmul libraries accumulate bf16 products in fp32, so each layer adds about ``u`` of
relative error (its bf16 input and its bf16 output are each rounded once) and Mish, whose slope is at most
1.1, passes it on. The output layer and everything after it are fp32. For the small networks here (3 rounded
layers) that is at most about ``3 u``, relative to the size of the outputs (rounding errors of random sign
mostly cancel): we allow ``OUTPUT_RTOL * max(1, max |output|)`` with ``OUTPUT_RTOL = 2 * 3 * u = 0.023`` on Q
values and network outputs (measured: 0.006 of the largest Q). The sampling chain feeds the predicted noise
back through ``x0 = x_t / sqrt(abar) - eps sqrt(1/abar - 1)`` (before the clamp and the contraction by the
posterior coefficients), which amplifies it by up to a few units at the noisiest steps: we allow ``SAMPLE_ATOL
= 0.05`` on actions in [-1, 1] (measured: 0.004 with the official 3 x 256 SDAC network and 20 steps). A test
also checks that bf16 really ran (the error is above fp32 rounding), so a silent fp32 fallback fails it.
"""

import shutil
import warnings

import numpy as np
import pytest
import torch as th
from gymnasium import spaces

from sb3_diffusion import QVPO, SDAC
from sb3_diffusion.common import hot_path, kernels
from sb3_diffusion.common.kernels import RowMLP
from sb3_diffusion.common.networks import Mish, min_q
from sb3_diffusion.sdac.policies import SDACPolicy

OBS_DIM, ACT_DIM = 5, 3
HAS_COMPILER = any(shutil.which(compiler) for compiler in ("g++", "c++", "clang++"))
CPU_PATHS = ["chunked", "chunked_compiled", "compiled"]
OUTPUT_RTOL = 2 * 3 * 2.0**-8
SAMPLE_ATOL = 0.05
FP32_ATOL = 1e-5  # the fp32 paths' agreement with the plain computation (tests/test_speed_equivalence.py)


@pytest.fixture
def bf16_hardware(monkeypatch):
    """Pretend the CPU has hardware bf16."""
    monkeypatch.setattr(hot_path, "fast_bf16_available", lambda device: True)


@pytest.fixture
def no_bf16_hardware(monkeypatch):
    """Pretend the CPU has no hardware bf16, with the process's warning not yet given."""
    monkeypatch.setattr(hot_path, "fast_bf16_available", lambda device: False)
    monkeypatch.setattr(hot_path, "_WARNED_FALLBACK", set())


def make_policy(**kwargs) -> SDACPolicy:
    obs_space = spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
    act_space = spaces.Box(-2.0, 2.0, (ACT_DIM,), np.float32)
    kwargs = {"net_arch": [32, 24, 16], "diffusion_steps": 6, "precision": "bf16", **kwargs}
    return SDACPolicy(obs_space, act_space, lambda _: 1e-3, **kwargs)


def output_tolerance(reference: th.Tensor) -> float:
    """The bf16 tolerance on network outputs (Q values, predicted noise), relative to their size."""
    return OUTPUT_RTOL * max(1.0, float(reference.abs().max()))


def spread_critics(policy: SDACPolicy, factor: float = 10.0) -> None:
    """Make Q depend strongly on the action (its block of the critics' first layer times ``factor``), so
    that candidates of one state have well-separated Q values."""
    with th.no_grad():
        for q_net in policy.critic.q_networks:
            q_net[0].weight[:, OBS_DIM:] *= factor


def force_path(policy: SDACPolicy, monkeypatch: pytest.MonkeyPatch, path: str) -> list[str]:
    """Make the policy's hot path take ``path`` wherever it has a fast path; returns what it would have chosen."""
    if "compiled" in path and not HAS_COMPILER:
        pytest.skip("no C++ compiler: torch.compile cannot build CPU kernels here (the eager paths run)")
    chosen: list[str] = []
    select = policy.hot_path.select

    def forced(*args):
        chosen.append(select(*args))
        return path if chosen[-1] != "plain" else "plain"

    monkeypatch.setattr(policy.hot_path, "select", forced)
    return chosen


def test_row_mlp_in_bf16_matches_the_fp32_mlp():
    th.manual_seed(0)
    linears = [th.nn.Linear(32, 24), th.nn.Linear(24, 16), th.nn.Linear(16, ACT_DIM)]
    activations = [Mish() for _ in linears]
    first_weight, state_part, x = th.randn(32, ACT_DIM), th.randn(4, 32), th.rand(4, 5, ACT_DIM) * 2 - 1
    with th.no_grad():
        expected = RowMLP(first_weight, activations, linears, max_rows=20)(state_part, x).clone()
        mlp = RowMLP(first_weight, activations, linears, max_rows=20, dtype=th.bfloat16)
        got = mlp(state_part, x)
    assert mlp.buffers[0].dtype == th.bfloat16 and mlp.layers[0][0].dtype == th.bfloat16
    assert got.dtype == th.float32  # the output layer runs in the weights' dtype
    assert FP32_ATOL < (got - expected).abs().max() < output_tolerance(expected)  # bf16 really ran


@pytest.mark.filterwarnings("error:sb3_diffusion. torch.compile")
@pytest.mark.parametrize("path", CPU_PATHS)
def test_bf16_sample_matches_the_plain_chain(path, bf16_hardware, monkeypatch):
    th.manual_seed(3)
    policy = make_policy()
    chosen = force_path(policy, monkeypatch, path)
    obs = th.randn(7, OBS_DIM)
    errors = []
    for batch_size, n_samples in [(7, 4), (1, 5)] if path != "compiled" else [(1, 5)]:
        noise = policy.actor.draw_chain_noise(batch_size, n_samples)
        got = policy.sample(obs[:batch_size], n_samples, noise=noise)
        expected = policy.actor.sample(obs[:batch_size], n_samples, noise=noise)  # the plain fp32 chain
        assert got.dtype == th.float32 and got.shape == (batch_size, n_samples, ACT_DIM)
        assert got.abs().max() <= 1.0
        errors.append(float((got - expected).abs().max()))
    assert max(errors) < SAMPLE_ATOL, errors
    assert max(errors) > FP32_ATOL, errors  # bf16 really ran
    assert chosen and "plain" not in chosen


@pytest.mark.filterwarnings("error:sb3_diffusion. torch.compile")
@pytest.mark.parametrize("path", CPU_PATHS)
def test_bf16_min_q_matches_the_plain_scoring_and_chooses_the_same(path, bf16_hardware, monkeypatch):
    th.manual_seed(4)
    policy = make_policy()
    spread_critics(policy)
    chosen = force_path(policy, monkeypatch, path)
    n_states, n_candidates = 40, 6
    obs, actions = th.randn(n_states, OBS_DIM), th.rand(n_states, n_candidates, ACT_DIM) * 2 - 1
    with th.no_grad():
        expected = min_q(policy.critic, obs, actions)  # the plain fp32 scoring
        got = policy.min_q(obs, actions)
    assert got.dtype == th.float32 and got.shape == (n_states, n_candidates)
    error, tolerance = float((got - expected).abs().max()), output_tolerance(expected)
    assert FP32_ATOL < error < tolerance
    # where the best candidate leads the second by more than twice the tolerance, bf16 chooses it too
    top2 = expected.topk(2, dim=1).values
    separated = (top2[:, 0] - top2[:, 1]) > 2 * tolerance
    assert separated.sum() >= n_states // 4, "the test needs well-separated Q values"
    assert th.equal(got.argmax(dim=1)[separated], expected.argmax(dim=1)[separated])
    assert chosen and "plain" not in chosen


def test_bf16_best_of_k_chooses_the_fp32_choice(bf16_hardware):
    th.manual_seed(5)
    fp32 = make_policy(precision="fp32")
    spread_critics(fp32)
    bf16 = make_policy()
    bf16.load_state_dict(fp32.state_dict())
    obs = th.randn(30, OBS_DIM)
    noise = fp32.actor.draw_chain_noise(30, 8)
    with th.no_grad():
        candidates = fp32.sample(obs, 8, noise=noise)
        q_values = fp32.min_q(obs, candidates)
        expected, got = fp32.best_of_k(obs, 8, noise=noise), bf16.best_of_k(obs, 8, noise=noise)
    top2 = q_values.topk(2, dim=1).values
    # a bf16 candidate moves by up to SAMPLE_ATOL, which moves its Q value by up to about the scoring's
    # own tolerance again (the critics' slope in the action is of order one here): twice that margin
    separated = (top2[:, 0] - top2[:, 1]) > 4 * output_tolerance(q_values)
    assert separated.sum() >= 5, "the test needs well-separated Q values"
    assert th.allclose(got[separated], expected[separated], atol=SAMPLE_ATOL)


def test_precision_fp32_is_unchanged(bf16_hardware):
    policy = make_policy(precision="fp32")
    obs = th.randn(3, OBS_DIM)
    noise = policy.actor.draw_chain_noise(3, 4)
    assert th.allclose(policy.sample(obs, 4, noise=noise), policy.actor.sample(obs, 4, noise=noise), atol=FP32_ATOL)
    assert policy.hot_path.compute_dtype(th.device("cpu")) == th.float32


def test_fallback_warns_once_and_runs_fp32(no_bf16_hardware):
    th.manual_seed(6)
    bf16 = make_policy()
    fp32 = make_policy(precision="fp32")
    fp32.load_state_dict(bf16.state_dict())
    obs = th.randn(4, OBS_DIM)
    noise = bf16.actor.draw_chain_noise(4, 3)
    with pytest.warns(UserWarning, match="precision='bf16' needs hardware bf16"):
        got = bf16.sample(obs, 3, noise=noise)
    assert th.equal(got, fp32.sample(obs, 3, noise=noise))  # the fp32 path itself
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process and device type
        with th.no_grad():
            assert th.equal(bf16.min_q(obs, got), fp32.min_q(obs, got))
        bf16.sample(obs, 3, noise=noise)
    assert bf16.precision == "bf16"  # the setting is kept (it is saved, and used on a capable machine)


def test_capability_check():
    assert isinstance(kernels.fast_bf16_available(th.device("cpu")), bool)
    assert kernels.fast_bf16_available(th.device("meta")) is False


def test_unknown_precision_is_an_error():
    with pytest.raises(ValueError, match="precision"):
        make_policy(precision="fp16")


@pytest.mark.parametrize("precision", ["bf16", "bf16_chains"])
@pytest.mark.parametrize("cls", [SDAC, QVPO], ids=lambda cls: cls.__name__)
def test_precision_round_trips_through_save_and_load(cls, precision, tmp_path, bf16_hardware):
    policy_kwargs = dict(net_arch=[16, 16], diffusion_steps=3, precision=precision)
    model = cls("MlpPolicy", "Pendulum-v1", policy_kwargs=policy_kwargs, learning_starts=0, seed=0, device="cpu")
    assert model.policy.precision == precision
    obs = np.array([0.3, -0.2, 0.5], dtype=np.float32)
    action = model.predict(obs, deterministic=True)[0]
    model.save(tmp_path / "model")
    loaded = cls.load(tmp_path / "model", device="cpu")
    assert loaded.policy.precision == precision
    assert np.array_equal(loaded.predict(obs, deterministic=True)[0], action)
    model.policy.save(tmp_path / "policy")
    assert type(model.policy).load(tmp_path / "policy").precision == precision


@pytest.mark.parametrize("path", CPU_PATHS)
def test_bf16_chains_samples_as_bf16_and_scores_as_fp32(path, bf16_hardware, monkeypatch):
    """``precision="bf16_chains"``: the chains are bf16's, bit for bit, and the scoring fp32's."""
    th.manual_seed(7)
    chains = make_policy(precision="bf16_chains")
    spread_critics(chains)
    bf16, fp32 = make_policy(precision="bf16"), make_policy(precision="fp32")
    for other in (bf16, fp32):
        other.load_state_dict(chains.state_dict())
    for policy in (chains, bf16, fp32):
        force_path(policy, monkeypatch, path)
    batch_size, n_samples = (1, 5) if path == "compiled" else (6, 4)
    obs = th.randn(batch_size, OBS_DIM)
    noise = chains.actor.draw_chain_noise(batch_size, n_samples)
    with th.no_grad():
        samples = chains.sample(obs, n_samples, noise=noise)
        assert th.equal(samples, bf16.sample(obs, n_samples, noise=noise))
        assert (samples - fp32.sample(obs, n_samples, noise=noise)).abs().max() > FP32_ATOL  # bf16 really ran
        assert th.equal(chains.min_q(obs, samples), fp32.min_q(obs, samples))
        assert not th.equal(chains.min_q(obs, samples), bf16.min_q(obs, samples))
    assert chains.hot_path.compute_dtype(th.device("cpu"), "min_q") == th.float32
    assert chains.hot_path.compute_dtype(th.device("cpu"), "sample") == th.bfloat16


def test_bf16_chains_falls_back_with_the_warning(no_bf16_hardware):
    policy = make_policy(precision="bf16_chains")
    with pytest.warns(UserWarning, match="precision='bf16_chains' needs hardware bf16"):
        assert policy.hot_path.compute_dtype(th.device("cpu"), "sample") == th.float32


@pytest.mark.parametrize("algo", ["sdac", "qvpo"])
def test_precision_is_searched_by_optuna(algo):
    import optuna

    from sb3_diffusion.zoo.samplers import CONVERTERS, SAMPLERS

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(8):
        trial = study.ask()
        hyperparams = SAMPLERS[algo](trial, 1, 1, {})
        seen.add(hyperparams["policy_kwargs"]["precision"])
        assert CONVERTERS[algo](trial.params)["policy_kwargs"]["precision"] == trial.params["precision"]
        study.tell(trial, 0.0)
    assert seen == {"fp32", "bf16", "bf16_chains"}  # every precision is in the search
