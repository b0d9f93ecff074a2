"""
Registration of SDAC and QVPO with RL Zoo (``rl_zoo3``), which has no plugin API.

:func:`register` mutates RL Zoo's tables in place (every RL Zoo module imported them by reference) and
wraps three methods of ``ExperimentManager``, each of them only for our algorithms:

- ``__init__``: the default config of ``sdac``/``qvpo`` is our shipped ``hyperparams/<algo>.yml``
  instead of ``rl_zoo3/hyperparams/<algo>.yml`` (which does not exist); an explicit ``-conf`` wins;
- ``objective`` (one Optuna trial): non-finite training values or evaluation returns prune the trial;
  sampled policy keyword arguments are merged into the configured ones and ``-params`` pins
  (see :mod:`sb3_diffusion.zoo.samplers`);
- ``load_trial`` (``--trial-id``): the trial's policy keyword arguments are merged into the config's;
  ``--trial-id 0`` works (RL Zoo tests the id for truth and so ignored trial 0);
- ``create_callbacks``: with ``--save-replay-buffer`` the checkpoints of ``--save-freq`` include the
  replay buffer (``rl_model_replay_buffer_<N>_steps.pkl``), so that a checkpoint can be resumed;
- ``_load_pretrained_agent`` (``-i``): a checkpoint ``rl_model_<N>_steps.zip`` is loaded with its own
  replay buffer, and a run that had not reached its total when it was written (killed, preempted) is
  continued, not restarted: counters and schedules go on and training stops at ``n_timesteps`` in
  total (RL Zoo would train ``n_timesteps`` more steps with counters and schedules reset).
"""

import copy
import functools
import importlib
import inspect
import math
import os
import re
from pathlib import Path
from typing import Any

from sb3_diffusion.zoo.callbacks import NonFiniteLossCallback
from sb3_diffusion.zoo.samplers import CONVERTERS, SAMPLERS, merge_policy_kwargs, trial_context

# The RL Zoo names of the algorithms of the package
ALGO_NAMES = ("qvpo", "sdac")

_PATCHED = "_sb3_diffusion_patched"


def config_path(algo: str) -> Path:
    """
    Path of the shipped RL Zoo config of ``algo``: ``sb3_diffusion/hyperparams/<algo>.yml`` in an
    installed package, the top-level ``hyperparams/<algo>.yml`` of a source checkout (editable install).
    """
    package = Path(__file__).resolve().parent.parent
    candidates = [folder / f"{algo}.yml" for folder in (package / "hyperparams", package.parent / "hyperparams")]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"No RL Zoo config for {algo!r}: none of {', '.join(map(str, candidates))} exists")


def register() -> list[str]:
    """
    Make RL Zoo know the algorithms of ``sb3_diffusion`` (``--algo sdac``, ``--algo qvpo``): their
    classes, Optuna samplers and converters, and our shipped configs as their default ``-conf``.
    Idempotent.

    :return: the names registered
    """
    from rl_zoo3 import exp_manager, hyperparams_opt, utils

    from sb3_diffusion import QVPO, SDAC

    algorithms = {"qvpo": QVPO, "sdac": SDAC}
    for name, cls in algorithms.items():
        utils.ALGOS[name] = cls
        hyperparams_opt.HYPERPARAMS_SAMPLER[name] = SAMPLERS[name]
        hyperparams_opt.HYPERPARAMS_CONVERTER[name] = CONVERTERS[name]
    _patch_experiment_manager(exp_manager.ExperimentManager)
    return sorted(algorithms)


def _patch_experiment_manager(cls: type) -> None:
    if cls.__dict__.get(_PATCHED, False):
        return
    init, objective, load_trial = cls.__init__, cls.objective, cls.load_trial  # type: ignore[misc]
    create_callbacks, load_pretrained_agent = cls.create_callbacks, cls._load_pretrained_agent  # type: ignore[attr-defined]
    init_signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        explicit_config = init_signature.bind(self, *args, **kwargs).arguments.get("config")
        init(self, *args, **kwargs)
        if self.algo in ALGO_NAMES:
            if not explicit_config:
                self.config = str(config_path(self.algo))
            if self.trial_id == 0 and not isinstance(self.trial_id, _TrialId):
                self.trial_id = _TrialId(0)

    @functools.wraps(create_callbacks)
    def create_callbacks_(self) -> None:
        create_callbacks(self)
        if self.algo in ALGO_NAMES and self.save_replay_buffer:
            _checkpoints_with_replay_buffer(self.callbacks)

    @functools.wraps(load_pretrained_agent)
    def _load_pretrained_agent_(self, hyperparams, env):  # type: ignore[no-untyped-def]
        model = load_pretrained_agent(self, hyperparams, env)
        if self.algo in ALGO_NAMES:
            _continue_checkpoint(self, model)
        return model

    @functools.wraps(objective)
    def objective_(self, trial):  # type: ignore[no-untyped-def]
        if self.algo not in ALGO_NAMES:
            return objective(self, trial)
        import optuna

        # A copy per trial, so that concurrent trials (--n-jobs) each get their own callback
        manager = copy.copy(self)
        manager.specified_callbacks = [*self.specified_callbacks, NonFiniteLossCallback()]
        with trial_context(self._hyperparams.get("policy_kwargs"), self.custom_hyperparams):
            value = objective(manager, trial)
        if not math.isfinite(value):
            print(f"Trial {trial.number}: non-finite evaluation return {value}, pruning it")
            raise optuna.TrialPruned(f"non-finite evaluation return {value}")
        return value

    @functools.wraps(load_trial)
    def load_trial_(self, storage, study_name, trial_id=None, convert=True):  # type: ignore[no-untyped-def]
        params = load_trial(self, storage, study_name, trial_id, convert)
        if convert and self.algo in ALGO_NAMES and "policy_kwargs" in params:
            configured = _configured_hyperparams(self.config, self.env_name.gym_id).get("policy_kwargs")
            params["policy_kwargs"] = merge_policy_kwargs(configured, params["policy_kwargs"])
        return params

    cls.__init__ = __init__  # type: ignore[misc]
    cls.objective = objective_  # type: ignore[attr-defined]
    cls.load_trial = load_trial_  # type: ignore[attr-defined]
    cls.create_callbacks = create_callbacks_  # type: ignore[attr-defined]
    cls._load_pretrained_agent = _load_pretrained_agent_  # type: ignore[attr-defined]
    setattr(cls, _PATCHED, True)


def _checkpoints_with_replay_buffer(callbacks: list) -> None:
    from stable_baselines3.common.callbacks import CheckpointCallback

    for callback in callbacks:
        if isinstance(callback, CheckpointCallback):
            callback.save_replay_buffer = True


class _TrialId(int):
    """A trial id that is true even when it is 0: RL Zoo rebuilds a trial only ``if self.trial_id``."""

    def __bool__(self) -> bool:
        return True


def _continue_checkpoint(manager: Any, model: Any) -> None:
    """
    ``-i <checkpoint>``: load the checkpoint's own replay buffer, and continue its run to ``n_timesteps``
    in total when it had not reached its total (a run killed or preempted between checkpoints).
    """
    folder, name = os.path.split(manager.trained_agent)
    match = re.fullmatch(r"(.+)_(\d+)_steps\.zip", name)
    if match is not None:
        buffer = os.path.join(folder, f"{match.group(1)}_replay_buffer_{match.group(2)}_steps.pkl")
        if os.path.isfile(buffer):
            print(f"Loading the replay buffer of the checkpoint: {buffer}")
            model.load_replay_buffer(buffer)
    if model.num_timesteps < getattr(model, "_total_timesteps", 0) and manager.n_timesteps > model.num_timesteps:
        print(
            f"Resuming the run of {manager.trained_agent} at step {model.num_timesteps}: training continues to "
            f"{manager.n_timesteps} steps in total (n_timesteps), counters and schedules continuing"
        )
        model._resume_to_total = manager.n_timesteps
        if model.replay_buffer is None or (model.replay_buffer.pos == 0 and not model.replay_buffer.full):
            print(
                "Warning: no replay buffer was found for this checkpoint (train with --save-replay-buffer): "
                "training continues from an empty replay buffer"
            )


def _configured_hyperparams(config: str, env_id: str) -> dict[str, Any]:
    """The entry of ``env_id`` (or ``default``) in a config, read the way RL Zoo reads it."""
    if config.endswith((".yml", ".yaml")):
        import yaml

        with open(config) as file:
            entries = yaml.safe_load(file)
    elif config.endswith(".py"):
        namespace: dict[str, Any] = {}
        exec(Path(config).read_text(), namespace)
        entries = namespace["hyperparams"]
    else:
        entries = importlib.import_module(config).hyperparams
    return dict(entries.get(env_id, entries.get("default", {})))
