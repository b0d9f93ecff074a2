from typing import Any, ClassVar, TypeVar

import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from torch.nn import functional as F

from sb3_diffusion.common.off_policy import DiffusionOffPolicyAlgorithm
from sb3_diffusion.common.networks import min_q, repeat_obs
from sb3_diffusion.common.utils import check_choice, check_float, check_int
from sb3_diffusion.qvpo.policies import MlpPolicy, QVPOPolicy

SelfQVPO = TypeVar("SelfQVPO", bound="QVPO")

WEIGHT_TRANSFORMS = ("qadv", "qcut")


class QVPO(DiffusionOffPolicyAlgorithm):
    """
    Q-weighted Variational Policy Optimization (QVPO).

    Paper: "Diffusion-based Reinforcement Learning via Q-weighted Variational Policy Optimization",
    Ding et al., NeurIPS 2024, https://arxiv.org/abs/2405.16173.
    Reference implementation (PyTorch): https://github.com/wadx2019/qvpo (commit 40a1974, run with
    ``--weighted --aug``). The defaults are the official ones.

    One update: the critics regress on ``r + gamma * min Q_target(s', a')`` with ``a'`` the best of
    ``n_target_candidates`` samples of the EMA actor, scored by the target critics. The actor then
    takes one step on a second, independent replay batch of states: ``n_policy_samples`` actions per
    state are drawn from the current actor and scored by the just-updated critics (``q = min(Q1, Q2)``);
    the best one is regressed on (noise-prediction loss) with the weight ``w(s) = max(q* - mean q, 0)``
    (``"qadv"``) or ``max(q*, q_cut)`` (``"qcut"``). Diffusion entropy regularisation adds
    ``n_uniform_samples`` uniform actions per state with weight ``omega_ent * w(s)``, where ``omega_ent``
    decays linearly with the training progress from ``entropy_weight`` to ``entropy_weight_final``
    (reached at ``entropy_decay_fraction`` of training). Both networks clip their gradient norm at
    ``max_grad_norm``; the critic targets and the EMA actor follow by Polyak averaging every update.
    Acting: best of ``n_behavior_candidates`` samples of the online actor (no added noise by default);
    ``predict(deterministic=True)``: best of ``n_eval_candidates``.

    Deliberate differences from the official code:

    - Truncated episodes bootstrap (SB3's ``handle_timeout_termination=True``); the official code
      treats time-limit truncation as terminal. For the official behaviour pass
      ``replay_buffer_kwargs=dict(handle_timeout_termination=False)``.
    - Executed actions are clipped to the action space and the clipped action is stored in the replay
      buffer (this only matters when ``exploration_std`` or ``action_noise`` is set: diffusion samples
      already lie in [-1, 1]).
    - SB3 counts ``learning_starts`` (uniform random actions) in environment steps over all
      environments and includes them in ``total_timesteps``; the entropy-weight schedule follows SB3's
      training progress ``num_timesteps / total_timesteps``, warm-up included.
    - Deterministic actions (the paper evaluates best-of-32 with random chains) derive their chain
      noise from the observation's bytes, so they are reproducible across calls, batches and save/load.

    :param policy: The policy model to use (MlpPolicy)
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param learning_rate: Learning rate of the critics' Adam optimizer (constant 3e-4 officially);
        it can be a function of the current progress remaining (from 1 to 0)
    :param buffer_size: size of the replay buffer
    :param learning_starts: how many steps of the model to collect transitions for before learning starts
        (uniform random actions; counted over all environments)
    :param batch_size: Minibatch size of each gradient update (of the critic batch and of the actor's
        independent batch of states)
    :param tau: the soft update coefficient ("Polyak update", between 0 and 1) of the critic targets and
        of the EMA actor
    :param gamma: the discount factor
    :param train_freq: Update the model every ``train_freq`` steps. Alternatively pass a tuple of frequency and unit
        like ``(5, "step")`` or ``(2, "episode")``.
    :param gradient_steps: How many gradient steps to do after each rollout (see ``train_freq``)
        Set to ``-1`` means to do as many gradient steps as steps done in the environment
        during the rollout.
    :param action_noise: the action noise type (None by default); added on top of the policy's own
        exploration noise. Cf common.noise for the different action noise type.
    :param replay_buffer_class: Replay buffer class to use (for instance ``HerReplayBuffer``).
        If ``None``, it will be automatically selected.
    :param replay_buffer_kwargs: Keyword arguments to pass to the replay buffer on creation.
    :param optimize_memory_usage: Enable a memory efficient variant of the replay buffer
        at a cost of more complexity.
    :param n_steps: When n_step > 1, uses n-step return (with the NStepReplayBuffer) when updating the Q-value network.
    :param actor_learning_rate: Learning rate of the actor's Adam optimizer (constant)
    :param n_behavior_candidates: K_b of the behaviour policy (``predict(deterministic=False)``), unless
        set in ``policy_kwargs``
    :param n_target_candidates: K_t of the best-of-K choice of the TD target
    :param n_eval_candidates: K of the deterministic policy (``predict(deterministic=True)``), unless set
        in ``policy_kwargs``
    :param n_policy_samples: N_d, actions drawn per state from the actor in the actor update
    :param n_uniform_samples: N_e, uniform actions per state of the entropy regularisation (0 turns it off)
    :param entropy_weight: Initial entropy weight ``omega_ent``
    :param entropy_weight_final: Entropy weight at the end of its linear decay
    :param entropy_decay_fraction: Fraction of the training (``total_timesteps``) after which the entropy
        weight stays at ``entropy_weight_final``
    :param weight_transform: Weight of the best sample: ``"qadv"`` (``max(Q - V, 0)``, with V the mean Q
        of the samples) or ``"qcut"`` (``Q`` if ``Q >= q_cut`` else ``q_cut``)
    :param q_cut: Floor of the ``"qcut"`` weight (>= 0, so that weights are never negative)
    :param max_grad_norm: The maximum gradient norm of the actor and of the critics (clipped separately)
    :param exploration_std: Standard deviation of Gaussian noise added to behaviour actions (in the
        [-1, 1] action scale; 0, none, officially), unless set in ``policy_kwargs``
    :param stats_window_size: Window size for the rollout logging, specifying the number of episodes to average
        the reported success rate, mean episode length, and mean reward over
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: additional arguments to be passed to the policy on creation (network sizes,
        diffusion steps, schedule, ...; see :class:`~sb3_diffusion.qvpo.policies.QVPOPolicy`)
    :param verbose: Verbosity level: 0 for no output, 1 for info messages (such as device or wrappers used), 2 for
        debug messages
    :param seed: Seed for the pseudo random generators
    :param device: Device (cpu, cuda, ...) on which the code should be run.
        Setting it to auto, the code will be run on the GPU if possible.
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {"MlpPolicy": MlpPolicy}
    policy: QVPOPolicy

    def __init__(
        self,
        policy: str | type[QVPOPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        buffer_size: int = 1_000_000,
        learning_starts: int = 10_000,
        batch_size: int = 256,
        tau: float = 0.005,
        gamma: float = 0.99,
        train_freq: int | tuple[int, str] = 1,
        gradient_steps: int = 1,
        action_noise: ActionNoise | None = None,
        replay_buffer_class: type[ReplayBuffer] | None = None,
        replay_buffer_kwargs: dict[str, Any] | None = None,
        optimize_memory_usage: bool = False,
        n_steps: int = 1,
        actor_learning_rate: float = 1e-4,
        n_behavior_candidates: int = 4,
        n_target_candidates: int = 4,
        n_eval_candidates: int = 32,
        n_policy_samples: int = 64,
        n_uniform_samples: int = 10,
        entropy_weight: float = 0.02,
        entropy_weight_final: float = 0.002,
        entropy_decay_fraction: float = 0.9,
        weight_transform: str = "qadv",
        q_cut: float = 1.0,
        max_grad_norm: float = 2.0,
        exploration_std: float = 0.0,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ):
        self._check_common_args(batch_size, tau, gamma, buffer_size, learning_starts)
        self.actor_learning_rate = check_float("actor_learning_rate", actor_learning_rate)
        self.n_behavior_candidates = check_int("n_behavior_candidates", n_behavior_candidates)
        self.n_target_candidates = check_int("n_target_candidates", n_target_candidates)
        self.n_eval_candidates = check_int("n_eval_candidates", n_eval_candidates)
        self.n_policy_samples = check_int("n_policy_samples", n_policy_samples)
        self.n_uniform_samples = check_int("n_uniform_samples", n_uniform_samples, minimum=0)
        self.entropy_weight = check_float("entropy_weight", entropy_weight, strict=False)
        self.entropy_weight_final = check_float("entropy_weight_final", entropy_weight_final, strict=False)
        self.entropy_decay_fraction = check_float("entropy_decay_fraction", entropy_decay_fraction, maximum=1.0)
        self.weight_transform = check_choice("weight_transform", weight_transform, WEIGHT_TRANSFORMS)
        self.q_cut = check_float("q_cut", q_cut, strict=False)
        self.max_grad_norm = check_float("max_grad_norm", max_grad_norm)
        self.exploration_std = check_float("exploration_std", exploration_std, strict=False)
        policy_kwargs = self._forward_to_policy(
            policy_kwargs,
            n_behavior_candidates=self.n_behavior_candidates,
            n_eval_candidates=self.n_eval_candidates,
            exploration_std=self.exploration_std,
        )
        super().__init__(
            policy,
            env,
            learning_rate,
            buffer_size,
            learning_starts,
            batch_size,
            tau,
            gamma,
            train_freq,
            gradient_steps,
            action_noise,
            replay_buffer_class=replay_buffer_class,
            replay_buffer_kwargs=replay_buffer_kwargs,
            optimize_memory_usage=optimize_memory_usage,
            n_steps=n_steps,
            policy_kwargs=policy_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            verbose=verbose,
            device=device,
            seed=seed,
            sde_support=False,
            supported_action_spaces=(spaces.Box,),
            support_multi_env=True,
        )
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        super()._setup_model()
        self._create_aliases()
        self._set_lr(self.actor.optimizer, self.actor_learning_rate)

    def entropy_weight_at(self, progress_remaining: float) -> float:
        """
        The entropy weight ``omega_ent``: linear from ``entropy_weight`` (start of training) to
        ``entropy_weight_final`` (reached at ``entropy_decay_fraction`` of training), constant after.

        :param progress_remaining: SB3's progress remaining, from 1 (start) to 0 (end of training)
        """
        fraction = min((1.0 - progress_remaining) / self.entropy_decay_fraction, 1.0)
        return self.entropy_weight + fraction * (self.entropy_weight_final - self.entropy_weight)

    def policy_weights(self, q_values: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """
        The Q weights of the actor update.

        :param q_values: ``min(Q1, Q2)`` of the actor's samples, shape (B, N_d)
        :return: ``(weights, best_index)``: the weight ``w(s)`` of each state's best sample, shape (B,),
            and the index of that sample (the argmax of ``q_values``), shape (B,)
        """
        best_q, best_index = q_values.max(dim=1)
        if self.weight_transform == "qadv":
            weights = (best_q - q_values.mean(dim=1)).clamp(min=0.0)
        else:
            weights = best_q.clamp(min=self.q_cut)
        return weights, best_index

    def actor_regression_rows(
        self, obs: th.Tensor, samples: th.Tensor, entropy_weight: float
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor]:
        """
        The clean actions and weights that the actor's noise-prediction loss regresses on.

        The samples are scored with ``min(Q1, Q2)`` of the (online) critics. Each state contributes
        ``1 + n_uniform_samples`` consecutive rows: its best sample with weight ``w(s)``, then
        ``n_uniform_samples`` uniform actions in [-1, 1]^d with weight ``entropy_weight * w(s)``.

        :param obs: States, batch of B
        :param samples: The actor's samples at those states, shape (B, N_d, d)
        :param entropy_weight: ``omega_ent``
        :return: ``(obs_rows, actions, row_weights, weights)``: B * (1 + n_uniform_samples) rows of
            observations, actions (d columns) and weights, and the weights ``w(s)`` of the B states
        """
        batch_size, _, action_dim = samples.shape
        with th.no_grad():
            # (B, N_d): each state's observation block of the critics computed once for its samples
            q_values = self.policy.min_q(obs, samples, critic=self.critic)
            weights, best_index = self.policy_weights(q_values)
            best_actions = samples[th.arange(batch_size, device=samples.device), best_index]
            uniform = th.rand(batch_size, self.n_uniform_samples, action_dim, device=samples.device) * 2.0 - 1.0
            actions = th.cat([best_actions[:, None, :], uniform], dim=1).view(-1, action_dim)
            factors = th.full((1 + self.n_uniform_samples,), entropy_weight, device=samples.device)
            factors[0] = 1.0
            row_weights = (weights[:, None] * factors).view(-1)
        return repeat_obs(obs, 1 + self.n_uniform_samples), actions, row_weights, weights

    def weighted_noise_loss(self, obs_rows: th.Tensor, actions: th.Tensor, row_weights: th.Tensor) -> th.Tensor:
        """
        The actor's loss: mean over rows and action dimensions of
        ``weight * (eps - eps_theta(sqrt(abar_t) a + sqrt(1 - abar_t) eps, s, t))^2``,
        with ``t ~ U{0 .. T-1}`` and ``eps ~ N(0, I)`` drawn per row.

        :param obs_rows: Observations, one per row
        :param actions: Clean actions in [-1, 1], shape (N, d)
        :param row_weights: Weights, shape (N,)
        """
        schedule = self.actor.schedule
        t = th.randint(schedule.n_steps, (actions.shape[0],), device=actions.device)
        noise = th.randn_like(actions)
        noisy_actions = schedule.q_sample(actions, t, noise)
        predicted_noise = self.actor.predict_noise(obs_rows, noisy_actions, t)
        return (row_weights[:, None] * (predicted_noise - noise).square()).mean()

    def _batched_calls(self) -> list[tuple[int, int, str]]:
        batch_size = self.batch_size
        return [
            (batch_size, self.n_target_candidates, "actor"),  # TD target: best-of-K_t chains
            (batch_size, self.n_target_candidates, "critic"),  # and their scoring
            (batch_size, self.n_policy_samples, "actor"),  # the actor's N_d samples
            (batch_size, self.n_policy_samples, "critic"),  # and their scoring
            (batch_size, 1 + self.n_uniform_samples, "actor"),  # the actor's gradient pass
        ]

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        # Switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)
        # Critic learning rate from SB3's schedule; the actor's is constant
        self._update_learning_rate([self.critic.optimizer])
        self._set_lr(self.actor.optimizer, self.actor_learning_rate)
        entropy_weight = self.entropy_weight_at(self._current_progress_remaining)

        actor_losses, critic_losses, max_weights, mean_weights = [], [], [], []
        for _ in range(gradient_steps):
            self._n_updates += 1
            replay_data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma

            # TD target: best-of-K_t of the EMA actor, scored by the target critics
            with th.no_grad():
                next_obs = replay_data.next_observations
                next_actions = self.policy.best_of_k(
                    next_obs, self.n_target_candidates, actor=self.actor_target, critic=self.critic_target
                )
                next_q_values = min_q(self.critic_target, next_obs, next_actions)[:, None]
                target_q_values = replay_data.rewards + (1 - replay_data.dones) * discounts * next_q_values

            current_q_values = self.critic(replay_data.observations, replay_data.actions)
            critic_loss = sum(F.mse_loss(current_q, target_q_values) for current_q in current_q_values)
            assert isinstance(critic_loss, th.Tensor)
            critic_losses.append(critic_loss.detach())
            self._check_finite_loss("critic loss", critic_loss)
            self.critic.optimizer.zero_grad()
            critic_loss.backward()
            th.nn.utils.clip_grad_norm_(self.critic.parameters(), self.max_grad_norm)
            self.critic.optimizer.step()

            # Actor, on an independent batch of states (its actions are not used), scored by the
            # critics just updated
            obs = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env).observations  # type: ignore[union-attr]
            samples = self.policy.sample(obs, self.n_policy_samples)
            obs_rows, actions, row_weights, weights = self.actor_regression_rows(obs, samples, entropy_weight)
            max_weights.append(weights.max())
            mean_weights.append(weights.mean())
            actor_loss = self.weighted_noise_loss(obs_rows, actions, row_weights)
            actor_losses.append(actor_loss.detach())
            self._check_finite_loss("actor loss", actor_loss)
            self.actor.optimizer.zero_grad()
            actor_loss.backward()
            th.nn.utils.clip_grad_norm_(self.actor.parameters(), self.max_grad_norm)
            self.actor.optimizer.step()

            self._polyak_critic()
            self._polyak_actor()

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/critic_loss", th.stack(critic_losses).mean().item())
        self.logger.record("train/actor_loss", th.stack(actor_losses).mean().item())
        self.logger.record("train/actor_learning_rate", self.actor.optimizer.param_groups[0]["lr"])
        self.logger.record("train/entropy_weight", entropy_weight)
        self.logger.record("train/weight_max", th.stack(max_weights).mean().item())
        self.logger.record("train/weight_mean", th.stack(mean_weights).mean().item())

    def learn(
        self: SelfQVPO,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 4,
        tb_log_name: str = "QVPO",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfQVPO:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts = ["policy", "actor.optimizer", "critic.optimizer"]
        return state_dicts, []
