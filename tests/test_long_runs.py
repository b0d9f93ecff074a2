"""
Long runs: kill-safe files, resuming that continues, non-finite data caught before it reaches a
parameter, failing environments named, bad input at load. (RL Zoo's kill-and-resume: tests/test_zoo.py.)
"""

import copy
import io
import os
import pathlib
import pickle
import re
import signal
import subprocess
import sys
import time

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.save_util import recursive_getattr
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from sb3_diffusion import SDAC
from sb3_diffusion.common.safety import EnvironmentWorkerError, NonFiniteError
from tests.conftest import ALGOS
from tests.envs import FaultAt, ScaleReward

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = "Pendulum-v1"


def parameters_finite(model) -> bool:
    return all(bool(th.isfinite(p).all()) for p in model.policy.parameters())


def same_parameters(first, second) -> bool:
    a, b = first.get_parameters(), second.get_parameters()
    return all(th.equal(v, b["policy"][k]) for k, v in a["policy"].items())


# ---------------------------------------------------------------------------------------- kill-safe files


def child_env() -> dict:
    # The child imports this checkout (also when the package is installed from elsewhere), on one thread
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_and_kill_mid_write(mode: str, folder: pathlib.Path, marker: pathlib.Path) -> None:
    """Run tests/kill_during_save.py and SIGKILL it while it is writing (it hangs half-way and says so)."""
    args = [sys.executable, str(ROOT / "tests" / "kill_during_save.py"), mode, str(folder), str(marker)]
    process = subprocess.Popen(args, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if process.poll() is not None or not marker.exists():
        process.kill()
        output = process.communicate()[0]
        pytest.fail(f"the training never reached the write to interrupt (exit code {process.returncode}):\n{output[-3000:]}")
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL


@pytest.mark.parametrize("mode", ["model", "replay_buffer", "overwrite"])
def test_sigkill_while_writing_leaves_only_complete_files(mode, tmp_path):
    folder = tmp_path / "checkpoints"
    run_and_kill_mid_write(mode, folder, tmp_path / "writing")
    env = make_vec_env(ENV, n_envs=1, seed=1)
    final = sorted(path for path in folder.iterdir() if not path.name.startswith("."))
    # Every file under a final name loads; the only others are hidden temporary files of the killed write
    for path in final:
        if path.suffix == ".zip":
            SDAC.load(path, device="cpu")
        else:
            assert path.suffix == ".pkl", path
            SDAC.load(folder / "rl_model_50_steps.zip", device="cpu").load_replay_buffer(path)
    leftovers = [path.name for path in folder.iterdir() if path.name.startswith(".")]
    assert all(re.fullmatch(r"\.\S+\.(zip|pkl)\.\w+\.tmp", name) for name in leftovers), leftovers
    names = {path.name for path in final}
    assert {"rl_model_50_steps.zip", "rl_model_100_steps.zip", "best_model.zip"} <= names
    assert {"rl_model_replay_buffer_50_steps.pkl", "rl_model_replay_buffer_100_steps.pkl"} <= names
    if mode == "replay_buffer":  # the model of that checkpoint was written completely before
        assert "rl_model_150_steps.zip" in names
    # The newest checkpoint with both files resumes
    steps = max(int(m.group(1)) for name in names if (m := re.fullmatch(r"rl_model_replay_buffer_(\d+)_steps\.pkl", name)))
    assert steps == 100 and f"rl_model_{steps}_steps.zip" in names
    model = SDAC.load(folder / f"rl_model_{steps}_steps.zip", env=env, device="cpu")
    model.load_replay_buffer(folder / f"rl_model_replay_buffer_{steps}_steps.pkl")
    assert model.num_timesteps == 100 and model.replay_buffer.size() == 99  # the step being saved is not stored yet
    model.learn(30, reset_num_timesteps=False)
    assert model.num_timesteps == 130 and model.replay_buffer.size() == 129
    if mode == "overwrite":  # the previous best model is still there, whole
        assert SDAC.load(folder / "best_model.zip", device="cpu").num_timesteps == 100


def test_save_to_file_like_objects_and_paths(algo, tmp_path):
    cls, kwargs = algo
    model = cls("MlpPolicy", ENV, seed=0, **kwargs).learn(60)
    buffer = io.BytesIO()
    model.save(buffer)
    buffer.seek(0)
    assert same_parameters(cls.load(buffer), model)
    with open(tmp_path / "opened.zip", "wb") as file:
        model.save(file)
    with open(tmp_path / "opened.zip", "rb") as file:
        assert same_parameters(cls.load(file), model)
    pickled = io.BytesIO()
    model.save_replay_buffer(pickled)
    pickled.seek(0)
    fresh = cls("MlpPolicy", ENV, **kwargs)
    fresh.load_replay_buffer(pickled)
    assert fresh.replay_buffer.size() == 60
    # Paths: the suffix is added as SB3 adds it, folders are created, a file is replaced, nothing else is left
    model.save(tmp_path / "sub" / "model")
    model.save(tmp_path / "sub" / "model")
    model.save_replay_buffer(str(tmp_path / "sub" / "buffer"))
    assert sorted(path.name for path in (tmp_path / "sub").iterdir()) == ["buffer.pkl", "model.zip"]
    # with the permissions that SB3's open(path, "wb") gives
    (tmp_path / "reference").write_bytes(b"")
    assert (tmp_path / "sub" / "model.zip").stat().st_mode == (tmp_path / "reference").stat().st_mode


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    from stable_baselines3.common import save_util

    cls, kwargs = ALGOS["sdac"]
    model = cls("MlpPolicy", ENV, seed=0, **kwargs).learn(60)
    model.save(tmp_path / "model.zip")
    model.save_replay_buffer(tmp_path / "buffer.pkl")
    before = (tmp_path / "model.zip").read_bytes(), (tmp_path / "buffer.pkl").read_bytes()
    model.replay_buffer.unpicklable = lambda: None  # pickling fails after the arrays were written
    with pytest.raises((AttributeError, pickle.PicklingError)):
        model.save_replay_buffer(tmp_path / "buffer.pkl")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(save_util, "get_system_info", fail)  # called after the parameters were written
    with pytest.raises(OSError, match="disk full"):
        model.save(tmp_path / "model.zip")
    assert ((tmp_path / "model.zip").read_bytes(), (tmp_path / "buffer.pkl").read_bytes()) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["buffer.pkl", "model.zip"]


# ---------------------------------------------------------------------------------------- resume


class Record(BaseCallback):
    """What must continue across a resume, at the start of every rollout (after the updates of the previous one)."""

    def __init__(self):
        super().__init__()
        self.rows: dict[int, tuple] = {}

    def _state(self, optimizer) -> int:
        states = list(optimizer.state.values())
        return int(states[0]["step"]) if states else 0

    def _on_rollout_start(self) -> None:
        model = self.model
        row = [model._n_updates, self._state(model.critic.optimizer), self._state(model.actor.optimizer)]
        row += [model.actor.optimizer.param_groups[0]["lr"], float(model.policy.exploration_std)]
        if isinstance(model, SDAC):
            row += [model.lambda_, self._state(model.lambda_optimizer)]
        else:
            row += [model.entropy_weight_at(model._current_progress_remaining)]
        self.rows[model.num_timesteps] = tuple(row)

    def _on_step(self) -> bool:
        return True


class Snapshot(BaseCallback):
    """The optimizer states at step ``at``, when the checkpoint is written."""

    def __init__(self, at: int):
        super().__init__()
        self.at, self.states = at, None

    def _on_step(self) -> bool:
        if self.num_timesteps == self.at:
            self.states = {name: _copy(self.model, name) for name in self.model._get_torch_save_params()[0] if "optim" in name}
        return True


def _copy(model, name):
    return copy.deepcopy(recursive_getattr(model, name).state_dict())


def assert_states_equal(first, second, where):
    if isinstance(first, dict):
        assert first.keys() == second.keys(), where
        for key in first:
            assert_states_equal(first[key], second[key], f"{where}.{key}")
    elif isinstance(first, (list, tuple)):
        assert len(first) == len(second), where
        for index, (a, b) in enumerate(zip(first, second, strict=True)):
            assert_states_equal(a, b, f"{where}[{index}]")
    elif isinstance(first, th.Tensor):
        assert th.equal(first, second), where
    else:
        assert first == second, where


def test_resume_continues(algo, tmp_path):
    """A run resumed from a checkpoint (with its replay buffer) continues every counter and schedule."""
    cls, kwargs = algo
    if cls is SDAC:  # schedules that move during this short run: the actor lr decays, lambda steps every 4 updates
        kwargs = {**kwargs, "actor_lr_decay_start": 5, "actor_lr_decay_steps": 60, "lambda_update_interval": 4}
    else:  # the entropy weight decays over the run; behaviour actions get exploration noise
        kwargs = {**kwargs, "exploration_std": 0.2}
    total, at = 200, 120
    folder = tmp_path / "checkpoints"
    checkpoint = CheckpointCallback(save_freq=at, save_path=str(folder), save_replay_buffer=True)
    uninterrupted, snapshot = Record(), Snapshot(at)
    first = cls("MlpPolicy", ENV, seed=0, **kwargs).learn(total, callback=[checkpoint, snapshot, uninterrupted])

    model = cls.load(folder / f"rl_model_{at}_steps.zip", env=make_vec_env(ENV, n_envs=1, seed=1), device="cpu")
    model.load_replay_buffer(folder / f"rl_model_replay_buffer_{at}_steps.pkl")
    # optimizer states (critic, actor, SDAC's temperature) as they were when the checkpoint was written
    for name, state in snapshot.states.items():
        assert_states_equal(state, _copy(model, name), name)
    if cls is SDAC:
        assert model.lambda_ != model.lambda_init and float(model.policy.exploration_std) == pytest.approx(0.1 * model.lambda_)
    resumed = Record()
    model.learn(total - model.num_timesteps, reset_num_timesteps=False, callback=resumed)

    assert model.num_timesteps == first.num_timesteps == total
    assert model._n_updates == first._n_updates == total - kwargs["learning_starts"]
    assert min(resumed.rows) == at and set(resumed.rows) <= set(uninterrupted.rows)
    for step, row in resumed.rows.items():
        assert row == pytest.approx(uninterrupted.rows[step]), f"step {step}"
    assert model.replay_buffer.size() == total - 1  # the transition of the checkpoint's step was never stored


# ---------------------------------------------------------------------------------------- non-finite data


def faulty_env(fault: str, at: int = 60) -> DummyVecEnv:
    """Two Pendulums; environment 1 goes wrong at its step ``at``."""
    return DummyVecEnv([lambda: Monitor(gym.make(ENV)), lambda: Monitor(FaultAt(gym.make(ENV), at, fault))])


@pytest.mark.parametrize(
    "fault,what",
    [
        ("nan_reward", "reward (nan)"),
        ("inf_reward", "reward (inf)"),
        ("nan_observation", "observation entry [1] (nan)"),
        ("nan_terminal_observation", "terminal observation (infos[1]['terminal_observation']) entry [1] (nan)"),
        ("nan_reset", "observation returned by reset() or by the previous step entry [1] (nan)"),
    ],
)
def test_non_finite_transition_is_caught(algo, fault, what, tmp_path):
    cls, kwargs = algo
    model = cls("MlpPolicy", faulty_env(fault), seed=0, **kwargs)
    with pytest.raises(NonFiniteError) as error:
        model.learn(400)
    message = str(error.value)
    step = 2 if fault == "nan_reset" else 120  # the first transition, or environment 1's 60th step
    assert f"Non-finite {what} from environment 1 of 2 (Pendulum-v1) at step {step}" in message, message
    assert f"{model._n_updates} gradient updates done" in message and (model._n_updates > 0 or step == 2)
    assert "VecCheckNan" in message
    # Nothing non-finite reached the buffer or a parameter; the model saves and loads
    buffer = model.replay_buffer
    for values in (buffer.observations, buffer.next_observations, buffer.rewards):
        assert np.isfinite(values[: buffer.pos]).all()
    assert parameters_finite(model)
    model.save(tmp_path / "model.zip")
    assert parameters_finite(cls.load(tmp_path / "model.zip"))


def test_non_finite_loss_is_caught(algo):
    cls, kwargs = algo
    # Rewards of 1e30 are finite, but their squared TD error overflows float32
    env = make_vec_env(ENV, n_envs=1, seed=0, wrapper_class=ScaleReward, wrapper_kwargs=dict(scale=1e30))
    model = cls("MlpPolicy", env, seed=0, **kwargs)
    before = [p.detach().clone() for p in model.critic.parameters()]
    with pytest.raises(NonFiniteError, match=r"Non-finite critic loss \(inf\) in gradient update 1 \(at step 51"):
        model.learn(200)
    assert parameters_finite(model)
    assert all(th.equal(p, q) for p, q in zip(before, model.critic.parameters(), strict=True))


def test_non_finite_gradient_stops_the_optimizer_step(algo):
    cls, kwargs = algo
    model = cls("MlpPolicy", ENV, seed=0, **kwargs).learn(60)
    before = [p.detach().clone() for p in model.actor.parameters()]
    for p in model.actor.parameters():
        p.grad = th.zeros_like(p)
    next(model.actor.parameters()).grad[0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"Non-finite gradient of the actor .* in gradient update 10 "):
        model.actor.optimizer.step()
    assert all(th.equal(p, q) for p, q in zip(before, model.actor.parameters(), strict=True))


def test_non_finite_replay_buffer_is_refused(tmp_path):
    cls, kwargs = ALGOS["sdac"]
    model = cls("MlpPolicy", ENV, seed=0, **kwargs).learn(60)
    model.replay_buffer.rewards[7, 0] = np.nan
    model.save_replay_buffer(tmp_path / "buffer.pkl")
    with pytest.raises(NonFiniteError, match=r"buffer.pkl' holds a non-finite value in rewards at row 7, environment 0"):
        cls("MlpPolicy", ENV, **kwargs).load_replay_buffer(tmp_path / "buffer.pkl")


# ---------------------------------------------------------------------------------------- failing environments


def crashing_env(index: int):
    def make():
        env = gym.make(ENV)
        return Monitor(FaultAt(env, 80, "raise") if index == 1 else env)

    return make


def test_environment_raising_in_a_subprocess_worker(tmp_path):
    cls, kwargs = ALGOS["sdac"]
    env = SubprocVecEnv([crashing_env(0), crashing_env(1)])
    checkpoints = CheckpointCallback(save_freq=25, save_path=str(tmp_path), save_replay_buffer=True)
    model = cls("MlpPolicy", env, seed=0, **kwargs)
    try:
        with pytest.raises(EnvironmentWorkerError) as error:
            model.learn(1000, callback=checkpoints)
    finally:
        for process in env.processes:
            process.kill()
    message = str(error.value)
    # Environment 1 raised during its 80th step: the vector step that takes num_timesteps from 158 to 160
    assert "environment 1 of 2 (Pendulum-v1), exit code 1" in message and "while taking step 160" in message, message
    assert isinstance(error.value, EOFError) and "CheckpointCallback" in message
    # The last checkpoint (step 150) loads, with its replay buffer, and resumes
    model = cls.load(tmp_path / "rl_model_150_steps.zip", env=make_vec_env(ENV, n_envs=2), device="cpu")
    model.load_replay_buffer(tmp_path / "rl_model_replay_buffer_150_steps.pkl")
    model.learn(20, reset_num_timesteps=False)
    assert model.num_timesteps == 170


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes need Python 3.11")
def test_environment_raising_in_process_is_named():
    cls, kwargs = ALGOS["sdac"]
    model = cls("MlpPolicy", DummyVecEnv([crashing_env(0), crashing_env(1)]), seed=0, **kwargs)
    with pytest.raises(RuntimeError, match="failed at its step 80") as error:
        model.learn(1000)
    assert "Raised by environment 1 of 2 (Pendulum-v1) while taking step 160" in "\n".join(error.value.__notes__)


# ---------------------------------------------------------------------------------------- bad input at load


def test_load_and_set_env_take_an_env_id(algo, tmp_path):
    cls, kwargs = algo
    cls("MlpPolicy", ENV, seed=0, **kwargs).learn(60).save(tmp_path / "model.zip")
    model = cls.load(tmp_path / "model.zip", env=ENV)
    assert model.get_env().num_envs == 1 and model.observation_space == gym.make(ENV).observation_space
    model.set_env("Pendulum-v1")
    model.learn(20, reset_num_timesteps=False)
    assert model.num_timesteps == 80
    with pytest.raises(ValueError, match="Observation spaces do not match"):
        model.set_env("MountainCarContinuous-v0")
    with pytest.raises(ValueError, match="env must be a Gymnasium environment, a VecEnv or the id"):
        cls.load(tmp_path / "model.zip", env=3)


def test_damaged_model_file_is_named(tmp_path):
    cls, kwargs = ALGOS["sdac"]
    model = cls("MlpPolicy", ENV, seed=0, **kwargs).learn(60)
    model.save(tmp_path / "model.zip")
    model.save_replay_buffer(tmp_path / "buffer.pkl")
    data = (tmp_path / "model.zip").read_bytes()
    damaged = tmp_path / "damaged.zip"
    for fraction in (0.0, 0.1, 0.5, 0.9, 0.999):  # truncated, as by a kill while writing
        damaged.write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(ValueError, match=re.escape(f"'{damaged}'")):
            cls.load(damaged)
    for position in range(0, len(data), max(1, len(data) // 60)):  # one flipped bit
        flipped = bytearray(data)
        flipped[position] ^= 0x08
        damaged.write_bytes(bytes(flipped))
        try:
            loaded = cls.load(damaged)
        except ValueError as error:
            assert f"'{damaged}'" in str(error), (position, error)
        else:  # a bit of a header field that loading does not use: the content is intact
            assert same_parameters(loaded, model), position
    pickled = (tmp_path / "buffer.pkl").read_bytes()
    (tmp_path / "cut.pkl").write_bytes(pickled[: len(pickled) // 2])
    with pytest.raises(ValueError, match=re.escape(f"'{tmp_path / 'cut.pkl'}'")):
        model.load_replay_buffer(tmp_path / "cut.pkl")
