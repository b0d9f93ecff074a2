"""
Checkpoint resume for RL Zoo's own off-policy algorithms (SAC, TD3, TQC, CrossQ, ...), as
``sb3_diffusion``'s zoo registration already does for SDAC and QVPO.

RL Zoo alone, given ``-i rl_model_<N>_steps.zip``, loads the model but not the checkpoint's replay
buffer (it only looks for ``replay_buffer.pkl``) and trains ``n_timesteps`` more steps with the step
counter reset (so the warm-up is repeated and the evaluations restart at 0). Importing this module
before training changes, for algorithms other than ours only:

- ``--save-replay-buffer`` also puts the replay buffer into every ``--save-freq`` checkpoint
  (``rl_model_replay_buffer_<N>_steps.pkl``);
- ``-i rl_model_<N>_steps.zip`` loads that checkpoint's buffer and, if the run had not reached its
  total, trains on to ``n_timesteps`` in total with the counters continuing
  (``learn(n_timesteps - num_timesteps, reset_num_timesteps=False)``).

It is loaded through RL Zoo's own extension point for modules to import before training,
``python -m rl_zoo3.train ... --gym-packages benchmarks.zoo_resume`` (``benchmarks/run_results.py``
does this; the repository root must be importable). Not carried over, as for SDAC and QVPO: random
generator states and the environments' states; unlike SDAC and QVPO, the gradient steps that followed
the checkpoint's step in the killed run are not redone (one step's updates, ``gradient_steps``).
"""

import functools
import os
import re
from typing import Any

_PATCHED = "_results_resume_patched"


def _ours(algo: str) -> bool:
    try:
        from sb3_diffusion.zoo.registration import ALGO_NAMES
    except ImportError:  # pragma: no cover
        return False
    return algo in ALGO_NAMES


def checkpoint_buffer(path: str) -> str | None:
    """The replay buffer file that belongs to checkpoint ``path`` (``rl_model_<N>_steps.zip``), or None."""
    folder, name = os.path.split(path)
    match = re.fullmatch(r"(.+)_(\d+)_steps\.zip", name)
    if match is None:
        return None
    return os.path.join(folder, f"{match.group(1)}_replay_buffer_{match.group(2)}_steps.pkl")


def patch() -> None:
    from rl_zoo3.exp_manager import ExperimentManager
    from stable_baselines3.common.callbacks import CheckpointCallback

    cls = ExperimentManager
    if cls.__dict__.get(_PATCHED, False):
        return
    create_callbacks, load_pretrained, learn = cls.create_callbacks, cls._load_pretrained_agent, cls.learn

    @functools.wraps(create_callbacks)
    def create_callbacks_(self) -> None:
        create_callbacks(self)
        if not _ours(self.algo) and self.save_replay_buffer:
            for callback in self.callbacks:
                if isinstance(callback, CheckpointCallback):
                    callback.save_replay_buffer = True

    @functools.wraps(load_pretrained)
    def load_pretrained_(self, hyperparams: dict[str, Any], env: Any) -> Any:
        model = load_pretrained(self, hyperparams, env)
        if _ours(self.algo):
            return model
        buffer = checkpoint_buffer(self.trained_agent)
        if buffer is not None and os.path.isfile(buffer) and hasattr(model, "load_replay_buffer"):
            print(f"Loading the replay buffer of the checkpoint: {buffer}")
            model.load_replay_buffer(buffer)
        if model.num_timesteps < getattr(model, "_total_timesteps", 0) and self.n_timesteps > model.num_timesteps:
            print(f"Resuming at step {model.num_timesteps}: training continues to {self.n_timesteps} steps in total")
            self._resume_total = self.n_timesteps
        return model

    @functools.wraps(learn)
    def learn_(self, model: Any) -> None:
        total = self.__dict__.pop("_resume_total", None)
        if total is None:
            return learn(self, model)
        # RL Zoo calls model.learn(n_timesteps); the model's class is swapped for the duration of
        # training (not the instance's attributes, which every checkpoint would save)
        base = type(model)

        class Continued(base):  # type: ignore[misc, valid-type]
            def learn(self_, total_timesteps: int, **kwargs: Any) -> Any:
                kwargs["reset_num_timesteps"] = False
                return base.learn(self_, total - self_.num_timesteps, **kwargs)

        model.__class__ = Continued
        try:
            return learn(self, model)
        finally:
            model.__class__ = base

    cls.create_callbacks = create_callbacks_  # type: ignore[method-assign]
    cls._load_pretrained_agent = load_pretrained_  # type: ignore[method-assign]
    cls.learn = learn_  # type: ignore[method-assign]
    setattr(cls, _PATCHED, True)


patch()
