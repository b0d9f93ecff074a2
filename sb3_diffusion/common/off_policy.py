"""Base class of the diffusion off-policy algorithms: what QVPO and SDAC share around ``train()``."""

from typing import Any

import torch as th
from stable_baselines3.common.type_aliases import GymEnv
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.policies import ContinuousCritic
from stable_baselines3.common.utils import polyak_update

from sb3_diffusion.common.policies import DiffusionActor, DiffusionActorPolicy
from sb3_diffusion.common.utils import check_action_space, check_float, check_int


class DiffusionOffPolicyAlgorithm(OffPolicyAlgorithm):
    """
    Shared plumbing of :class:`~sb3_diffusion.QVPO` and :class:`~sb3_diffusion.SDAC`: argument checks,
    aliases of the policy's networks, the acting candidate counts forwarded to the policy, Polyak updates
    and what is saved. Not an algorithm by itself (``train`` is the subclass's).
    """

    policy: DiffusionActorPolicy
    actor: DiffusionActor
    actor_target: DiffusionActor
    critic: ContinuousCritic
    critic_target: ContinuousCritic

    @staticmethod
    def _check_common_args(batch_size: int, tau: float, gamma: float, buffer_size: int, learning_starts: int) -> None:
        check_int("batch_size", batch_size)
        check_int("buffer_size", buffer_size)
        check_int("learning_starts", learning_starts, minimum=0)
        check_float("tau", tau, minimum=0.0, strict=False, maximum=1.0)
        check_float("gamma", gamma, minimum=0.0, strict=False, maximum=1.0)

    @staticmethod
    def _wrap_env(env: GymEnv, verbose: int = 0, monitor_wrapper: bool = True) -> VecEnv:
        # Every way an environment enters (constructor, set_env, load) goes through here: check the
        # action space before SB3's generic assertions so that the error says what a diffusion policy needs.
        check_action_space(env.action_space)
        return OffPolicyAlgorithm._wrap_env(env, verbose, monitor_wrapper)

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
        polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)

    def _polyak_actor(self) -> None:
        polyak_update(self.actor.parameters(), self.actor_target.parameters(), self.tau)

    @staticmethod
    def _set_lr(optimizer: th.optim.Optimizer, learning_rate: float) -> None:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "actor", "actor_target", "critic", "critic_target"]
