"""Base class of the diffusion off-policy algorithms: what QVPO and SDAC share around ``train()``."""

import io
import os
import pathlib
from collections.abc import Iterable
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from stable_baselines3.common.base_class import maybe_make_env
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy, ContinuousCritic
from stable_baselines3.common.save_util import recursive_getattr
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, RolloutReturn, TrainFreq, TrainFrequencyUnit
from stable_baselines3.common.vec_env import VecEnv

from sb3_diffusion.common import safety, threads
from sb3_diffusion.common.policies import DiffusionActor, DiffusionActorPolicy
from sb3_diffusion.common.save_util import (
    PICKLE_ERRORS,
    atomic_write,
    check_model_file,
    final_path,
    is_path,
    load_pickle_error,
)
from sb3_diffusion.common.threads import ThreadChoice
from sb3_diffusion.common.utils import check_action_space, check_float, check_int, check_observation_space

SelfDiffusionOffPolicyAlgorithm = TypeVar("SelfDiffusionOffPolicyAlgorithm", bound="DiffusionOffPolicyAlgorithm")


def polyak(params: Iterable[th.Tensor], target_params: Iterable[th.Tensor], tau: float) -> None:
    """
    SB3's ``polyak_update``, ``target <- (1 - tau) target + tau param`` in place, with the same two
    operations per tensor in the same order (so the same numbers), as two multi-tensor calls: two
    dispatches instead of two Python-level operations per tensor, which is most of its cost for small
    networks (the quick starts average 25 tensors every update or every second one).
    """
    params, target_params = list(params), list(target_params)
    if len(params) != len(target_params):
        raise ValueError(f"polyak: {len(params)} parameters for {len(target_params)} target parameters")
    with th.no_grad():
        th._foreach_mul_(target_params, 1 - tau)
        th._foreach_add_(target_params, params, alpha=tau)


# Exceptions by which the main process sees a SubprocVecEnv worker die
_WORKER_GONE = (EOFError, BrokenPipeError, ConnectionResetError)


class DiffusionOffPolicyAlgorithm(OffPolicyAlgorithm):
    """
    Shared plumbing of :class:`~sb3_diffusion.QVPO` and :class:`~sb3_diffusion.SDAC`: argument checks,
    aliases of the policy's networks, the acting candidate counts forwarded to the policy, Polyak updates
    and what is saved. Not an algorithm by itself (``train`` is the subclass's).

    Long runs (see the README's "Long runs"):

    - ``save`` and ``save_replay_buffer`` write kill-safe files (temporary file, fsync, rename);
      ``load`` names the file when it is truncated or corrupted; ``load``/``set_env`` take an env id.
    - Resuming continues: a checkpoint written during ``learn`` (``CheckpointCallback``) records the
      gradient steps that were due right after the step at which it was written, and
      ``learn(..., reset_num_timesteps=False)`` on the loaded model does them first, so that the step and
      update counters, and every schedule that follows them, continue as in an uninterrupted run.
    - Rewards and observations are checked before they are stored, losses before their backward pass and
      gradients before every optimizer step: a NaN or infinite value raises
      :class:`~sb3_diffusion.common.safety.NonFiniteError` before any parameter becomes non-finite.
    - An environment that crashes in a ``SubprocVecEnv`` worker raises
      :class:`~sb3_diffusion.common.safety.EnvironmentWorkerError` naming the environment and the step.

    Threads: ``learn`` runs small configurations on one CPU thread unless the user chose a thread count,
    and restores the caller's count when it returns (the rule: :mod:`sb3_diffusion.common.threads`).
    The choice is in ``model.thread_choice``, logged as ``time/num_threads`` and printed once at
    ``verbose >= 1``.
    """

    policy: DiffusionActorPolicy
    actor: DiffusionActor
    actor_target: DiffusionActor
    critic: ContinuousCritic
    critic_target: ContinuousCritic

    # Bookkeeping of the vector step in progress (class defaults: models saved before these existed load)
    _step_in_progress: bool = False  # between choosing the actions and storing the transition
    _rollout_steps: int = 0  # vector steps stored in the current rollout
    _owed_gradient_steps: int = 0  # saved: gradient steps due after the step at which a checkpoint was written
    _env_ids: list[str | None] | None = None
    _reset_observations_unchecked: bool = True
    thread_choice: ThreadChoice | None = None  # what the last learn() did with torch's thread count
    _printed_thread_choice: ThreadChoice | None = None
    # Not saved: what exists only while one process runs
    _runtime_attributes: ClassVar[tuple[str, ...]] = (
        "_step_in_progress",
        "_rollout_steps",
        "_env_ids",
        "_reset_observations_unchecked",
        "_resume_to_total",
        "thread_choice",
        "_printed_thread_choice",
    )

    @staticmethod
    def _check_common_args(batch_size: int, tau: float, gamma: float, buffer_size: int, learning_starts: int) -> None:
        check_int("batch_size", batch_size)
        check_int("buffer_size", buffer_size)
        check_int("learning_starts", learning_starts, minimum=0)
        check_float("tau", tau, minimum=0.0, strict=False, maximum=1.0)
        check_float("gamma", gamma, minimum=0.0, strict=False, maximum=1.0)

    @staticmethod
    def _wrap_env(env: GymEnv | str, verbose: int = 0, monitor_wrapper: bool = True) -> VecEnv:
        # Every way an environment enters (constructor, set_env, load) goes through here: an environment id
        # is made as the constructor makes it, and the action space is checked before SB3's generic
        # assertions so that the error says what a diffusion policy needs.
        if isinstance(env, str):
            env = maybe_make_env(env, verbose)
        elif not hasattr(env, "action_space") or not hasattr(env, "observation_space"):
            raise ValueError(
                f"env must be a Gymnasium environment, a VecEnv or the id of a registered environment (a string), got {env!r}"
            )
        check_action_space(env.action_space)
        check_observation_space(env.observation_space)
        return OffPolicyAlgorithm._wrap_env(env, verbose, monitor_wrapper)

    def _get_policy_from_name(self, policy_name: str) -> type[BasePolicy]:
        # SB3's own message ("Policy X unknown") leaves a user who followed its advice to use
        # MultiInputPolicy or CnnPolicy at a dead end: say what is offered instead
        if policy_name not in self.policy_aliases:
            offered = ", ".join(repr(name) for name in self.policy_aliases)
            raise ValueError(
                f"Policy {policy_name!r} unknown: {type(self).__name__} offers {offered} (or a policy class). "
                "Observations of any Box shape are flattened into its networks' input; Dict observations "
                "need flattening first (gymnasium.wrappers.FlattenObservation)."
            )
        return self.policy_aliases[policy_name]

    @staticmethod
    def _forward_to_policy(policy_kwargs: dict[str, Any] | None, **values: int) -> dict[str, Any]:
        """Copy of ``policy_kwargs`` with ``values`` as defaults (an explicit policy_kwargs entry wins)."""
        merged = dict(policy_kwargs or {})
        for key, value in values.items():
            merged.setdefault(key, value)
        return merged

    def _create_aliases(self) -> None:
        self.actor = self.policy.actor
        self.actor_target = self.policy.actor_target
        self.critic = self.policy.critic
        self.critic_target = self.policy.critic_target

    def _polyak_critic(self) -> None:
        polyak(self.critic.parameters(), self.critic_target.parameters(), self.tau)

    def _polyak_actor(self) -> None:
        polyak(self.actor.parameters(), self.actor_target.parameters(), self.tau)

    @staticmethod
    def _set_lr(optimizer: th.optim.Optimizer, learning_rate: float) -> None:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate

    def _excluded_save_params(self) -> list[str]:
        return [
            *super()._excluded_save_params(),
            "actor",
            "actor_target",
            "critic",
            "critic_target",
            *self._runtime_attributes,
        ]

    # ------------------------------------------------------------------ files

    def save(
        self,
        path: str | pathlib.Path | io.BufferedIOBase,
        exclude: Any = None,
        include: Any = None,
    ) -> None:
        """
        Save the model as SB3 does, kill-safe: a path is written to a temporary file in the same folder,
        fsynced and renamed over the final name (``.zip`` is appended to a name without suffix), so that
        a file under the final name is always complete. A file-like object is written to as it is.

        :param path: Where to save: a path, or a writable binary file-like object
        :param exclude: Names of parameters to exclude in addition to the default ones
        :param include: Names of parameters that might be excluded but should be included anyway
        """
        previous = self._owed_gradient_steps
        # A checkpoint written during a step (by a callback) records the gradient steps due after that step
        self._owed_gradient_steps = previous + self._gradient_steps_due_after_current_step()
        try:
            if is_path(path):
                with atomic_write(final_path(path, "zip")) as file:  # type: ignore[arg-type]
                    super().save(file, exclude, include)  # type: ignore[arg-type]
            else:
                super().save(path, exclude, include)
        finally:
            self._owed_gradient_steps = previous

    def save_replay_buffer(self, path: str | pathlib.Path | io.BufferedIOBase) -> None:
        """
        Save the replay buffer as a pickle file, kill-safe like :meth:`save` (``.pkl`` is appended to a
        name without suffix). A file-like object is written to as it is.

        :param path: Where to save: a path, or a writable binary file-like object
        """
        if is_path(path):
            with atomic_write(final_path(path, "pkl")) as file:  # type: ignore[arg-type]
                super().save_replay_buffer(file)  # type: ignore[arg-type]
        else:
            super().save_replay_buffer(path)

    def load_replay_buffer(self, path: str | pathlib.Path | io.BufferedIOBase, truncate_last_traj: bool = True) -> None:
        """
        Load a replay buffer from a pickle file. A truncated or corrupted file raises a ``ValueError``
        that names it; a buffer holding a non-finite reward or observation raises
        :class:`~sb3_diffusion.common.safety.NonFiniteError`.

        :param path: Path to the pickled replay buffer, or a readable binary file-like object
        :param truncate_last_traj: See SB3's ``OffPolicyAlgorithm.load_replay_buffer`` (``HerReplayBuffer`` only)
        """
        try:
            super().load_replay_buffer(path, truncate_last_traj)
        except PICKLE_ERRORS as error:
            raise load_pickle_error(path, error) from error
        assert self.replay_buffer is not None
        safety.check_buffer(self.replay_buffer, f"'{os.fspath(path)}'" if is_path(path) else repr(path))  # type: ignore[arg-type]

    @classmethod
    def load(  # type: ignore[override]
        cls: type[SelfDiffusionOffPolicyAlgorithm],
        path: str | pathlib.Path | io.BufferedIOBase,
        env: GymEnv | str | None = None,
        device: th.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        **kwargs: Any,
    ) -> SelfDiffusionOffPolicyAlgorithm:
        """
        Load a model saved with :meth:`save` (see SB3's ``BaseAlgorithm.load``). ``env`` may also be the
        id of a registered environment, as in the constructor. A truncated or corrupted file raises a
        ``ValueError`` that names it.
        """
        check_model_file(path)
        return super().load(  # type: ignore[return-value]
            path,
            env=env,  # type: ignore[arg-type]
            device=device,
            custom_objects=custom_objects,
            print_system_info=print_system_info,
            force_reset=force_reset,
            **kwargs,
        )

    # ------------------------------------------------------------------ resuming

    def _gradient_steps_due_after_current_step(self) -> int:
        """
        The gradient steps that SB3's ``learn`` does right after the vector step in progress (0 outside a
        step). Callbacks such as ``CheckpointCallback`` save during a step, after it was counted in
        ``num_timesteps`` and before the updates that follow it.
        """
        train_freq = self.train_freq
        if not self._step_in_progress or not isinstance(train_freq, TrainFreq) or train_freq.unit != TrainFrequencyUnit.STEP:
            return 0
        steps = self._rollout_steps + 1
        if steps < train_freq.frequency or self.num_timesteps <= self.learning_starts:
            return 0
        return self.gradient_steps if self.gradient_steps >= 0 else steps * self.n_envs

    def _setup_learn(
        self,
        total_timesteps: int,
        callback: MaybeCallback = None,
        reset_num_timesteps: bool = True,
        tb_log_name: str = "run",
        progress_bar: bool = False,
    ) -> tuple[int, BaseCallback]:
        resume_to = self.__dict__.pop("_resume_to_total", None)  # set by the RL Zoo glue for `-i <checkpoint>`
        if resume_to is not None:
            reset_num_timesteps, total_timesteps = False, resume_to - self.num_timesteps
        owed, self._owed_gradient_steps = self._owed_gradient_steps, 0
        self._step_in_progress, self._rollout_steps = False, 0
        total_timesteps, callback = super()._setup_learn(
            total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar
        )
        assert self.env is not None
        self._env_ids = safety.env_ids(self.env)
        self._reset_observations_unchecked = True
        self._install_gradient_checks()
        buffer = self.replay_buffer
        if owed > 0 and not reset_num_timesteps and buffer is not None and (buffer.full or buffer.pos > 0):
            # The updates that followed the step at which the loaded checkpoint was written (SB3 updates the
            # progress after the callbacks, so the checkpoint holds that of the step before)
            self._update_current_progress_remaining(self.num_timesteps, self._total_timesteps)
            self.train(gradient_steps=owed, batch_size=self.batch_size)
        return total_timesteps, callback

    # ------------------------------------------------------------------ threads

    def learn(
        self: SelfDiffusionOffPolicyAlgorithm,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 4,
        tb_log_name: str = "run",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfDiffusionOffPolicyAlgorithm:
        """
        SB3's ``learn``, on the number of CPU threads of :meth:`choose_threads` (one for small
        configurations unless the user chose a count); the caller's count is restored when it returns.
        """
        choice = self.choose_threads()
        self.thread_choice = choice
        if self.verbose >= 1 and choice != self._printed_thread_choice:
            print(f"sb3_diffusion: learn() runs on {choice.num_threads} thread(s): {choice.reason}")
            self._printed_thread_choice = choice
        with threads.thread_scope(choice.num_threads):
            return super().learn(  # type: ignore[return-value]
                total_timesteps=total_timesteps,
                callback=callback,
                log_interval=log_interval,
                tb_log_name=tb_log_name,
                reset_num_timesteps=reset_num_timesteps,
                progress_bar=progress_bar,
            )

    def choose_threads(self) -> ThreadChoice:
        """The thread count for ``learn()`` (the rule: :func:`sb3_diffusion.common.threads.choose_threads`)."""
        return threads.choose_threads(self.device, self.update_work_elements())

    def update_work_elements(self) -> int:
        """Elements of the largest batched operation of one update (:func:`sb3_diffusion.common.threads.work_elements`)."""
        widths = {"actor": threads.network_width(self.actor), "critic": threads.network_width(self.critic)}
        return threads.work_elements((states, per_state, widths[net]) for states, per_state, net in self._batched_calls())

    def _batched_calls(self) -> list[tuple[int, int, str]]:
        """
        ``(states, rows per state, "actor" or "critic")`` of the batched calls of one update (the
        sampling chains, the scoring of candidates, the largest gradient pass): the subclass's.
        """
        raise NotImplementedError

    def dump_logs(self) -> None:
        if self.thread_choice is not None:
            self.logger.record("time/num_threads", self.thread_choice.num_threads, exclude="tensorboard")
        super().dump_logs()

    # ------------------------------------------------------------------ checks

    def _install_gradient_checks(self) -> None:
        for name in self._get_torch_save_params()[0]:
            optimizer = recursive_getattr(self, name)
            if isinstance(optimizer, th.optim.Optimizer):
                label = name.replace(".optimizer", "").replace("_optimizer", "")
                safety.install_gradient_check(optimizer, {"lambda": "temperature (log lambda)"}.get(label, label), self)

    def _check_finite_loss(self, name: str, loss: th.Tensor) -> None:
        """Raise :class:`~sb3_diffusion.common.safety.NonFiniteError` if ``loss`` is NaN or infinite (before its backward)."""
        safety.check_loss(name, loss, self._n_updates, self.num_timesteps)

    def _sample_action(
        self, learning_starts: int, action_noise: ActionNoise | None = None, n_envs: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        self._step_in_progress = True
        return super()._sample_action(learning_starts, action_noise, n_envs)

    def _store_transition(
        self,
        replay_buffer: ReplayBuffer,
        buffer_action: np.ndarray,
        new_obs: np.ndarray | dict[str, np.ndarray],
        reward: np.ndarray,
        dones: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        # The unnormalized values, which are what the buffer stores (VecNormalize would clip an infinite
        # value to a finite one, after its running statistics had become NaN)
        if self._vec_normalize_env is not None:
            last_obs, next_obs = self._last_original_obs, self._vec_normalize_env.get_original_obs()
            rewards = self._vec_normalize_env.get_original_reward()
        else:
            last_obs, next_obs, rewards = self._last_obs, new_obs, reward
        # The observations the actions were chosen at were checked as the next observations of the step
        # before (auto-reset ones included), except the first ones, from the reset in _setup_learn
        previous, self._reset_observations_unchecked = (last_obs if self._reset_observations_unchecked else None), False
        safety.check_transition(previous, next_obs, rewards, dones, infos, self.num_timesteps, self._n_updates, self._env_ids)
        super()._store_transition(replay_buffer, buffer_action, new_obs, reward, dones, infos)
        self._step_in_progress = False
        self._rollout_steps += 1

    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        train_freq: TrainFreq,
        replay_buffer: ReplayBuffer,
        action_noise: ActionNoise | None = None,
        learning_starts: int = 0,
        log_interval: int | None = None,
    ) -> RolloutReturn:
        self._rollout_steps = 0
        try:
            return super().collect_rollouts(
                env, callback, train_freq, replay_buffer, action_noise, learning_starts, log_interval
            )
        except _WORKER_GONE as error:
            if not self._step_in_progress or isinstance(error, safety.EnvironmentWorkerError):
                raise
            step = self.num_timesteps + env.num_envs
            raise safety.worker_error(env, step, self._n_updates, self._env_ids) from error
        except Exception as error:
            if self._step_in_progress and not isinstance(error, safety.NonFiniteError):
                safety.note_environment_error(error, env, self.num_timesteps + env.num_envs, self._n_updates, self._env_ids)
            raise
