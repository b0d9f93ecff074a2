"""
Small configurations: the thread count of learn() (the rule: user's count or not, small or large work; the
restore; no change to results) and the cheaper Polyak update.
"""

import numpy as np
import pytest
import torch as th
import yaml
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.utils import polyak_update

from sb3_diffusion import QVPO, SDAC
from sb3_diffusion.common import threads
from sb3_diffusion.common.off_policy import polyak
from sb3_diffusion.common.threads import SMALL_WORK_ELEMENTS, choose_threads, work_elements
from sb3_diffusion.zoo import config_path

ENV = "Pendulum-v1"
CPU = th.device("cpu")
CLASSES = {"sdac": SDAC, "qvpo": QVPO}


@pytest.fixture
def default_two(monkeypatch):
    """torch at two threads, which counts as torch's default, with no user setting in the environment."""
    for name in (threads.ENV_VAR, *threads.USER_ENV_VARS):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "DEFAULT_THREADS", 2)
    th.set_num_threads(2)  # restored by conftest's fixture


class _Threads(BaseCallback):
    """Records torch's thread count at every step of learn()."""

    def __init__(self, fail_at: int | None = None):
        super().__init__()
        self.seen: set[int] = set()
        self.fail_at = fail_at

    def _on_step(self) -> bool:
        self.seen.add(th.get_num_threads())
        if self.fail_at is not None and self.num_timesteps >= self.fail_at:
            raise RuntimeError("stop")
        return True


class _Collect(KVWriter):
    def __init__(self):
        self.rows: list[dict] = []

    def write(self, key_values, key_excluded, step=0):
        self.rows.append(dict(key_values))


# ------------------------------------------------------------------ the rule


def test_small_work_runs_on_one_thread(default_two):
    choice = choose_threads(CPU, SMALL_WORK_ELEMENTS - 1)
    assert (choice.num_threads, choice.previous) == (1, 2) and "small work" in choice.reason


def test_large_work_keeps_the_default(default_two):
    assert choose_threads(CPU, SMALL_WORK_ELEMENTS).num_threads == 2


def test_a_count_set_by_the_user_is_kept(default_two):
    th.set_num_threads(3)  # differs from the default: torch.set_num_threads (RL Zoo's --num-threads 3)
    choice = choose_threads(CPU, 1)
    assert choice.num_threads == 3 and "set_num_threads(3)" in choice.reason


@pytest.mark.parametrize("name", threads.USER_ENV_VARS)
def test_a_count_in_the_environment_is_kept(default_two, monkeypatch, name):
    monkeypatch.setenv(name, "2")  # even when it equals the default
    choice = choose_threads(CPU, 1)
    assert choice.num_threads == 2 and name in choice.reason


def test_other_devices_are_left_alone(default_two):
    assert choose_threads(th.device("cuda"), 1).num_threads == 2


def test_environment_variable_of_the_package(default_two, monkeypatch):
    monkeypatch.setenv(threads.ENV_VAR, "keep")
    assert choose_threads(CPU, 1).num_threads == 2
    monkeypatch.setenv(threads.ENV_VAR, "3")
    assert choose_threads(CPU, 1).num_threads == 3  # also over a user's count and for large work
    assert choose_threads(CPU, 10 * SMALL_WORK_ELEMENTS).num_threads == 3
    monkeypatch.setenv(threads.ENV_VAR, "auto")
    assert choose_threads(CPU, 1).num_threads == 1
    for bad in ("0", "-1", "many"):
        monkeypatch.setenv(threads.ENV_VAR, bad)
        with pytest.raises(ValueError, match=threads.ENV_VAR):
            choose_threads(CPU, 1)


def test_work_elements_follow_the_chunks():
    # 2048-row chunks of whole states: 512 states x 32 candidates -> 64 states a chunk
    assert work_elements([(512, 32, 256)]) == 2048 * 256
    assert work_elements([(256, 4, 64), (128, 16, 64)]) == 2048 * 64
    assert work_elements([(3, 1000, 8)]) == 2000 * 8  # two states of 1000 rows a chunk
    assert work_elements([(3, 3000, 8)]) == 3000 * 8  # at least one state a chunk
    assert work_elements([]) == 0


def test_network_width_is_the_per_row_width():
    model = QVPO("MlpPolicy", ENV, buffer_size=1000, policy_kwargs=dict(net_arch=dict(pi=[32, 48], qf=[40, 24])))
    # not QVPO's 256-wide time MLP, which runs once per step
    assert threads.network_width(model.actor.noise_net) == 48 and threads.network_width(model.critic) == 40


def _zoo_kwargs(algo: str) -> dict:
    config = yaml.safe_load(config_path(algo).read_text())["Pendulum-v1"]
    return {key: value for key, value in config.items() if key not in ("policy", "n_timesteps")}


@pytest.mark.parametrize("algo", sorted(CLASSES))
def test_quick_start_is_small_and_official_settings_are_large(algo):
    quick = CLASSES[algo]("MlpPolicy", ENV, buffer_size=1000, **_zoo_kwargs(algo))
    official = CLASSES[algo]("MlpPolicy", ENV, buffer_size=1000)
    assert quick.update_work_elements() < SMALL_WORK_ELEMENTS <= official.update_work_elements()


# ------------------------------------------------------------------ learn()


def test_learn_runs_small_work_on_one_thread_and_restores(default_two, algo, capsys):
    cls, kwargs = algo
    model = cls("MlpPolicy", ENV, seed=0, verbose=1, **kwargs)
    collect = _Collect()
    model.set_logger(Logger(folder=None, output_formats=[collect]))
    callback = _Threads()
    model.learn(250, callback=callback, log_interval=1)  # one episode of 200 steps: one dump
    assert callback.seen == {1}
    assert th.get_num_threads() == 2
    assert model.thread_choice == (1, 2, model.thread_choice.reason)
    assert collect.rows and collect.rows[-1]["time/num_threads"] == 1
    model.learn(50, reset_num_timesteps=False)
    assert th.get_num_threads() == 2
    assert capsys.readouterr().out.count("learn() runs on 1 thread(s)") == 1  # printed once


def test_learn_keeps_the_users_count(default_two, algo):
    cls, kwargs = algo
    th.set_num_threads(3)
    callback = _Threads()
    model = cls("MlpPolicy", ENV, seed=0, **kwargs).learn(60, callback=callback)
    assert callback.seen == {3} and th.get_num_threads() == 3 and model.thread_choice.num_threads == 3


def test_learn_restores_after_an_exception(default_two, algo):
    cls, kwargs = algo
    callback = _Threads(fail_at=70)
    with pytest.raises(RuntimeError, match="stop"):
        cls("MlpPolicy", ENV, seed=0, **kwargs).learn(100, callback=callback)
    assert callback.seen == {1} and th.get_num_threads() == 2


def test_the_thread_choice_changes_no_result(default_two, algo, monkeypatch):
    """Same seed, same actions and parameters, on the one thread of the automatic choice and on two."""
    cls, kwargs = algo
    observations = np.random.default_rng(0).uniform(-1, 1, size=(6, 3)).astype(np.float32)
    results = []
    for setting in ("auto", "2"):
        monkeypatch.setenv(threads.ENV_VAR, setting)
        callback = _Threads()
        model = cls("MlpPolicy", ENV, seed=0, **kwargs).learn(120, callback=callback)
        assert callback.seen == {1 if setting == "auto" else 2}
        actions = [model.predict(observations, deterministic=det)[0] for det in (True, False)]
        results.append((actions, model.policy.state_dict()))
    (actions_a, params_a), (actions_b, params_b) = results
    for a, b in zip(actions_a, actions_b, strict=True):
        np.testing.assert_array_equal(a, b)
    for name, value in params_a.items():
        assert th.equal(value, params_b[name]), name


# ------------------------------------------------------------------ the Polyak update


@pytest.mark.parametrize("tau", [0.005, 0.0, 1.0])
def test_polyak_gives_sb3s_numbers(tau):
    generator = th.Generator().manual_seed(0)
    shapes = [(64, 3), (64,), (64, 64), (1, 64), (1,)]
    params = [th.randn(shape, generator=generator, requires_grad=True) for shape in shapes]
    targets = [th.randn(shape, generator=generator) for shape in shapes]
    expected = [t.clone() for t in targets]
    polyak_update(params, expected, tau)
    polyak(params, targets, tau)
    assert all(th.equal(a, b) for a, b in zip(targets, expected, strict=True))
    with pytest.raises(ValueError, match="polyak"):
        polyak(params, targets[:-1], tau)
