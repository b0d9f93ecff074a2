"""
Non-finite data and failing environments: errors that say what happened, where, and what to do.

- Every transition is checked before it is stored: a NaN or infinite reward or observation (terminal
  observations included) raises :class:`NonFiniteError`, so it never reaches the replay buffer, the
  critic targets or any parameter.
- Every loss is checked before its backward pass, and every gradient before its optimizer step: a
  non-finite one raises :class:`NonFiniteError` and no parameter is changed by it.
- An environment that crashes in a ``SubprocVecEnv`` worker raises :class:`EnvironmentWorkerError`,
  which names the environment and the step (SB3 itself raises a bare ``EOFError``).
"""

import math
import re
import time
import types
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecEnvWrapper


class NonFiniteError(ValueError):
    """
    A NaN or infinite reward, observation, loss or gradient, caught before it changed any parameter.
    A ``ValueError``, so that RL Zoo's Optuna objective prunes the trial.
    """


class EnvironmentWorkerError(EOFError):
    """
    An environment crashed inside a ``SubprocVecEnv`` worker process. An ``EOFError`` (what SB3 raises
    when a worker dies), so that code handling that keeps working, RL Zoo's Optuna objective included.
    """


CHECK_NAN_ADVICE = (
    "Find where the environment produces it, for example with "
    "stable_baselines3.common.vec_env.VecCheckNan(env, raise_exception=True), which names the action "
    "that led to it; then fix the environment or filter its output with a wrapper. The transition was "
    "not stored and no parameter was updated with it: the model in memory is the last good one and can "
    "be saved (model.save), and training can resume from it."
)

DIVERGENCE_ADVICE = (
    "Every stored transition passed the finiteness check, so training itself diverged: lower the "
    "learning rates, scale the rewards down (reward_scale, or VecNormalize(norm_reward=True)), or resume "
    "from an earlier checkpoint. No parameter was updated with it: the model in memory is the last good "
    "one (all finite) and can be saved (model.save)."
)


def base_vec_env(env: VecEnv) -> VecEnv:
    """The VecEnv under all VecEnvWrappers (VecNormalize, VecMonitor, ...)."""
    while isinstance(env, VecEnvWrapper):
        env = env.venv
    return env


def env_ids(env: VecEnv) -> list[str | None]:
    """The registered id of each environment of ``env`` (None where unknown), asked once per ``learn``."""
    base = base_vec_env(env)
    try:
        if isinstance(base, DummyVecEnv):
            return [getattr(sub_env.spec, "id", None) for sub_env in base.envs]
        # Another process: ask for str(env), always picklable ("<Monitor<TimeLimit<...<PendulumEnv<Pendulum-v1>>>>>"),
        # not for the spec, whose pickling could fail and kill the worker
        names = base.env_method("__str__")
        found = [re.search(r"<([^<>]+)>+$", name) if isinstance(name, str) else None for name in names]
        return [match.group(1) if match else None for match in found]
    except Exception:  # a VecEnv without env_method: no ids, not an error
        return [None] * env.num_envs


def env_name(index: int, n_envs: int, ids: Sequence[str | None] | None) -> str:
    name = f"environment {index} of {n_envs}"
    env_id = ids[index] if ids is not None and index < len(ids) else None
    return f"{name} ({env_id})" if env_id else name


def _first_bad(values: Any) -> tuple[int, str, float] | None:
    """(environment index, position, value) of the first non-finite entry of a (n_envs, ...) array or dict."""
    if isinstance(values, dict):
        for key, value in values.items():
            found = _first_bad(value)
            if found is not None:
                return found[0], f"[{key!r}]{found[1]}", found[2]
        return None
    array = np.asarray(values)
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.complexfloating):
        return None
    bad = np.argwhere(~np.isfinite(array))
    if len(bad) == 0:
        return None
    position = tuple(int(i) for i in bad[0])
    where = f"[{', '.join(map(str, position[1:]))}]" if len(position) > 1 else ""
    return position[0], where, float(array[position])


def all_finite(values: Any) -> bool:
    """Fast path: whether every entry of an array (or of every array of a dict) is finite."""
    if isinstance(values, dict):
        return all(all_finite(value) for value in values.values())
    array = np.asarray(values)
    if array.dtype.kind not in "fc":
        return True
    return bool(np.isfinite(array).all())


def check_transition(
    previous_observations: Any,
    observations: Any,
    rewards: np.ndarray,
    dones: np.ndarray,
    infos: Sequence[dict[str, Any]],
    step: int,
    n_updates: int,
    ids: Sequence[str | None] | None,
) -> None:
    """
    Raise :class:`NonFiniteError` unless the observations, rewards, next observations and terminal
    observations of one vector step are all finite. Costs a few microseconds when they are.

    :param previous_observations: Observations the actions were chosen at, (n_envs, ...) or a dict of them
        (None: already checked)
    :param observations: Next observations, same shape (unnormalized, as the buffer stores them)
    :param rewards: Rewards, (n_envs,) (unnormalized)
    :param dones: Episode ends, (n_envs,)
    :param infos: The environments' infos (``terminal_observation`` of the environments that are done)
    :param step: The step counter (``num_timesteps``, over all environments) of this transition
    :param n_updates: Gradient updates done so far
    :param ids: Environment ids, for the message
    """
    terminal = [info.get("terminal_observation") for done, info in zip(dones, infos, strict=False) if done]
    if (
        all_finite(rewards)
        and all_finite(observations)
        and (previous_observations is None or all_finite(previous_observations))
        and all(value is None or all_finite(value) for value in terminal)
    ):
        return
    n_envs = len(rewards)
    candidates = [
        (
            "observation returned by reset() or by the previous step",
            {} if previous_observations is None else previous_observations,
        ),
        ("reward", np.asarray(rewards).reshape(n_envs, -1)),
        ("observation", observations),
    ]
    for index, (done, info) in enumerate(zip(dones, infos, strict=False)):
        value = info.get("terminal_observation") if done else None
        if value is not None:
            batch = (
                {key: np.asarray(v)[None] for key, v in value.items()} if isinstance(value, dict) else np.asarray(value)[None]
            )
            candidates.append((f"terminal observation (infos[{index}]['terminal_observation'])", (index, batch)))
    for what, values in candidates:
        offset = 0
        if isinstance(values, tuple):
            offset, values = values
        found = _first_bad(values)
        if found is not None:
            env_index, position, value = found
            entry = f" entry {position}" if position and what != "reward" else ""
            raise NonFiniteError(
                f"Non-finite {what}{entry} ({value}) from {env_name(env_index + offset, n_envs, ids)} at step {step} "
                f"(num_timesteps, counted over all environments; {n_updates} gradient updates done). {CHECK_NAN_ADVICE}"
            )
    raise NonFiniteError(f"Non-finite value in the transition at step {step}. {CHECK_NAN_ADVICE}")  # pragma: no cover


def check_buffer(buffer: Any, source: str) -> None:
    """Raise :class:`NonFiniteError` if a replay buffer holds a non-finite reward or observation."""
    size = buffer.buffer_size if buffer.full else buffer.pos
    for field in ("rewards", "observations", "next_observations"):
        values = getattr(buffer, field, None)
        if values is None:
            continue
        arrays = values.items() if isinstance(values, dict) else [("", values)]
        for key, array in arrays:
            rows = np.asarray(array[:size])
            if rows.dtype.kind in "fc" and not np.isfinite(rows).all():
                row, env_index = (int(i) for i in np.argwhere(~np.isfinite(rows))[0][:2])
                name = f"{field}[{key!r}]" if key else field
                raise NonFiniteError(
                    f"The replay buffer {source} holds a non-finite value in {name} at row {row}, environment "
                    f"{env_index}: it was stored without the finiteness check (an older version, or written "
                    "directly). Remove those rows or use another buffer; training on it would make every "
                    "parameter non-finite."
                )


def check_loss(name: str, loss: th.Tensor, n_updates: int, step: int) -> None:
    """Raise :class:`NonFiniteError` if the scalar ``loss`` is NaN or infinite (one device sync)."""
    if math.isfinite(loss.item() if loss.numel() == 1 else loss.detach().sum().item()):
        return
    raise NonFiniteError(
        f"Non-finite {name} ({loss.detach().float().cpu().numpy().tolist()}) in gradient update {n_updates} "
        f"(at step {step}, num_timesteps). {DIVERGENCE_ADVICE}"
    )


def install_gradient_check(optimizer: th.optim.Optimizer, name: str, algorithm: Any) -> None:
    """
    Check the gradients before every step of ``optimizer``: a NaN or infinite gradient raises
    :class:`NonFiniteError` before the step changes any parameter. Idempotent; one device sync per step.
    """
    if getattr(optimizer, "_sb3_diffusion_gradient_check", False):
        return

    def hook(optimizer: th.optim.Optimizer, args: Any, kwargs: Any) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        # The sum of each gradient: NaN or infinite as soon as one entry is (or if they overflow, which
        # Adam's squared gradients would do too)
        if math.isfinite(th.stack([grad.sum() for grad in grads]).sum().item()):
            return
        bad = sum(int((~th.isfinite(grad)).sum()) for grad in grads)
        what = f"{bad} non-finite entries" if bad else "finite entries so large that their sum overflows"
        raise NonFiniteError(
            f"Non-finite gradient of the {name} ({what}) in gradient update {algorithm._n_updates} "
            f"(at step {algorithm.num_timesteps}, num_timesteps); the {name} optimizer did not step. {DIVERGENCE_ADVICE}"
        )

    optimizer.register_step_pre_hook(hook)
    optimizer._sb3_diffusion_gradient_check = True  # type: ignore[attr-defined]


def _dummy_env_index(error: BaseException) -> int | None:
    """The index of the environment of a DummyVecEnv whose step raised ``error`` (from its traceback)."""
    traceback: types.TracebackType | None = error.__traceback__
    while traceback is not None:
        frame = traceback.tb_frame
        if frame.f_code.co_name == "step_wait" and isinstance(frame.f_locals.get("self"), DummyVecEnv):
            index = frame.f_locals.get("env_idx")
            return index if isinstance(index, int) else None
        traceback = traceback.tb_next
    return None


def note_environment_error(
    error: BaseException, env: VecEnv, step: int, n_updates: int, ids: Sequence[str | None] | None
) -> None:
    """Add a note naming the environment and the step to an exception raised by an in-process environment."""
    index = _dummy_env_index(error)
    if index is None or not hasattr(error, "add_note"):  # add_note: Python >= 3.11
        return
    error.add_note(
        f"Raised by {env_name(index, env.num_envs, ids)} while taking step {step} (num_timesteps, counted over all "
        f"environments; {n_updates} gradient updates done). The model in memory is intact and can be saved."
    )


def worker_error(env: VecEnv, step: int, n_updates: int, ids: Sequence[str | None] | None) -> EnvironmentWorkerError:
    """The error for a ``SubprocVecEnv`` worker that died (its pipe closed) during a step."""
    base = base_vec_env(env)
    dead: list[tuple[int, int | None]] = []
    processes = getattr(base, "processes", []) if isinstance(base, SubprocVecEnv) else []
    deadline = time.monotonic() + 2.0  # the pipe closes as the worker exits: give it a moment to be reaped
    while processes and not dead:
        dead = [(index, process.exitcode) for index, process in enumerate(processes) if not process.is_alive()]
        if dead or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    if dead:
        which = ", ".join(f"{env_name(index, env.num_envs, ids)}, exit code {code}" for index, code in dead)
        head = f"The SubprocVecEnv worker process of {which} died"
    else:
        head = f"A worker process of the {type(base).__name__} ({env.num_envs} environments) stopped answering"
    return EnvironmentWorkerError(
        f"{head} while taking step {step} (num_timesteps, counted over all environments; {n_updates} gradient "
        "updates done): the environment raised an exception or crashed; the worker printed its traceback "
        "to stderr, above. Training stopped. The model in memory is intact and can be saved (model.save), "
        "and the last checkpoint written (CheckpointCallback) is complete: fix the environment, then load "
        "the checkpoint and its replay buffer and continue with learn(..., reset_num_timesteps=False)."
    )
