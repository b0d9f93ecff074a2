"""Callbacks of the RL Zoo integration."""

import math
import numbers

from stable_baselines3.common.callbacks import BaseCallback


class NonFiniteLossError(ValueError):
    """A training value (loss, temperature, ...) became NaN or infinite."""


class NonFiniteLossCallback(BaseCallback):
    """
    Stop training with :class:`NonFiniteLossError` as soon as a ``train/`` value that the algorithm
    logged (``train/critic_loss``, ``train/actor_loss``, ...) is NaN or infinite.

    It is a ``ValueError``, which RL Zoo's Optuna objective turns into a pruned trial. The check reads
    the values the algorithm has already logged (no extra work, no device sync) at the start of each
    rollout, that is right after ``train()`` and before the next action is drawn, and after each step.
    """

    def _check(self) -> None:
        for key, value in self.logger.name_to_value.items():
            if key.startswith("train/") and isinstance(value, numbers.Real) and not math.isfinite(value):
                raise NonFiniteLossError(
                    f"{key} = {value} after {self.num_timesteps} timesteps: training diverged (the Optuna trial is pruned)"
                )

    def _on_rollout_start(self) -> None:
        self._check()

    def _on_step(self) -> bool:
        self._check()
        return True
