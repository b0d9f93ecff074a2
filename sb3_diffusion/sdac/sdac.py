from typing import Any, ClassVar, NamedTuple, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from torch.nn import functional as F

from sb3_diffusion.common.off_policy import DiffusionOffPolicyAlgorithm
from sb3_diffusion.common.networks import min_q
from sb3_diffusion.common.utils import check_float, check_int
from sb3_diffusion.sdac.policies import MlpPolicy, SDACPolicy

SelfSDAC = TypeVar("SelfSDAC", bound="SDAC")


class SDAC(DiffusionOffPolicyAlgorithm):
    """
    Soft Diffusion Actor-Critic (SDAC) with reverse-sampling score matching.

    Paper: "Efficient Online Reinforcement Learning for Diffusion Policy", Ma et al., ICML 2025,
    https://arxiv.org/abs/2502.00361 (v1: "Soft Diffusion Actor-Critic").
    Reference implementation (JAX): https://github.com/mahaitongdae/diffusion_policy_online_rl
    (commit a50cf41, ``relax/algorithm/sdac.py``). The defaults are the official camera-ready ones;
    the official run also uses 5 environments with one update per vector step
    (``make_vec_env(env_id, n_envs=5)``; with one environment every env step makes an update, 5x the
    official number of updates per env step).

    One update: the critics regress on ``reward_scale * r + gamma * min Q_target(s', a')`` with ``a'``
    the best of ``n_candidates`` online-actor samples plus exploration noise. Every ``policy_delay``
    updates the actor takes one step of reverse-sampling score matching: a policy action ``a`` is
    forward-noised to ``a_t``; ``n_reverse_samples`` draws ``a0_k`` of ``N(a_t / sqrt(abar_t), (1/abar_t - 1) I)``
    (clamped to [-1, 1]) are weighted by ``softmax_k(q_weight_scale * min Q(s, a0_k) / lambda)``, and
    the noise network regresses on the weighted mean of their noises (the same gradient as the
    per-sample weighted loss, with one network pass per state instead of ``n_reverse_samples``).
    The temperature ``lambda`` also sets the exploration noise std ``exploration_scale * lambda``; it is
    adjusted every ``lambda_update_interval`` updates so that the entropy of that noise approaches
    ``target_entropy``. As in the official code, the first update is an actor step and a temperature
    step. All sampled quantities of an update use the parameters from before it.

    Deliberate differences from the official code:

    - Executed actions are clipped to [-1, 1] and the clipped action is stored in the replay buffer
      (the official code stores the unclipped noisy action); noisy actions used in the update are
      clipped the same way, so the critic is only ever queried inside the action box.
    - SB3 counts ``learning_starts`` in environment steps over all environments and includes them
      in ``total_timesteps``: the official 1M steps after 30 000 warm-up steps is ``learn(1_030_000)``.
    - Truncated episodes bootstrap (SB3's ``handle_timeout_termination=True``), as in the official code.
    - Deterministic actions derive their chain noise from the observation's bytes (the official code
      also derives it from the observation), so they are reproducible across calls, batches and save/load.

    :param policy: The policy model to use (MlpPolicy)
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param learning_rate: Learning rate of the critics' Adam optimizer (constant 3e-4 officially);
        it can be a function of the current progress remaining (from 1 to 0)
    :param buffer_size: size of the replay buffer
    :param learning_starts: how many steps of the model to collect transitions for before learning starts
        (uniform random actions; counted over all environments)
    :param batch_size: Minibatch size for each gradient update
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
    :param n_candidates: Candidates K of every best-of-K choice (TD target, the policy action of the actor
        update, and, unless set in ``policy_kwargs``, acting and evaluation)
    :param n_target_candidates: An option: candidates of the best-of-K choice of the TD target's ``a'``
        only. ``None`` (default, the official setting) uses ``n_candidates``. A smaller K_t (1: one
        actor sample) lowers the overestimation that the maximum over candidates scored by noisy critics
        adds to the target (docs/learning.md)
    :param n_reverse_samples: Samples of ``a_0`` per state drawn from the reverse kernel in the actor update
    :param reward_scale: Factor on the rewards in the TD target
    :param policy_delay: The actor, the EMA actor and the critic targets are updated every ``policy_delay`` updates
    :param lambda_init: Initial temperature ``lambda``
    :param lambda_lr: Adam learning rate on ``log(lambda)`` (0 keeps lambda fixed)
    :param lambda_update_interval: Updates between two steps on ``log(lambda)``
    :param target_entropy: Target entropy of the exploration noise; ``"auto"`` gives ``-0.9 * action_dim``
    :param exploration_scale: The exploration noise std is ``exploration_scale * lambda``
    :param q_weight_scale: The score-matching weights are ``softmax(q_weight_scale * Q / lambda)``
        (5 in the official code)
    :param q_normalization: An option, off by default (the official weighting): divide the reverse
        samples' Q values by a running estimate of their spread (the batch mean of each state's standard
        deviation over its reverse samples, averaged with rate ``q_normalization_rate``) before the
        softmax, so that ``q_weight_scale / lambda`` is measured in units of that spread instead of units of
        reward. The weights are then the same for any reward scale; on tasks whose Q values differ little
        between actions (small rewards, long horizons) they stop being almost uniform.
    :param q_normalization_rate: Averaging rate of the running spread (used with ``q_normalization``)
    :param actor_learning_rate: Initial learning rate of the actor's Adam optimizer
    :param actor_lr_final: Actor learning rate at the end of its linear decay
    :param actor_lr_decay_start: Actor steps before the decay starts
    :param actor_lr_decay_steps: Length of the linear decay in actor steps (0: no decay)
    :param stats_window_size: Window size for the rollout logging, specifying the number of episodes to average
        the reported success rate, mean episode length, and mean reward over
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: additional arguments to be passed to the policy on creation (network sizes,
        diffusion steps, schedule, ...; see :class:`~sb3_diffusion.sdac.policies.SDACPolicy`)
    :param verbose: Verbosity level: 0 for no output, 1 for info messages (such as device or wrappers used), 2 for
        debug messages
    :param seed: Seed for the pseudo random generators
    :param device: Device (cpu, cuda, ...) on which the code should be run.
        Setting it to auto, the code will be run on the GPU if possible.
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {"MlpPolicy": MlpPolicy}
    policy: SDACPolicy

    def __init__(
        self,
        policy: str | type[SDACPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        buffer_size: int = 1_000_000,
        learning_starts: int = 30_000,
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
        n_candidates: int = 32,
        n_target_candidates: int | None = None,
        n_reverse_samples: int = 64,
        reward_scale: float = 0.2,
        policy_delay: int = 2,
        lambda_init: float = 5.0,
        lambda_lr: float = 7e-3,
        lambda_update_interval: int = 250,
        target_entropy: str | float = "auto",
        exploration_scale: float = 0.1,
        q_weight_scale: float = 5.0,
        q_normalization: bool = False,
        q_normalization_rate: float = 0.01,
        actor_learning_rate: float = 3e-4,
        actor_lr_final: float = 3e-5,
        actor_lr_decay_start: int = 25_000,
        actor_lr_decay_steps: int = 50_000,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ):
        self._check_common_args(batch_size, tau, gamma, buffer_size, learning_starts)
        self.n_candidates = check_int("n_candidates", n_candidates)
        if n_target_candidates is not None:
            n_target_candidates = check_int("n_target_candidates", n_target_candidates)
        self.n_target_candidates = n_target_candidates
        self.n_reverse_samples = check_int("n_reverse_samples", n_reverse_samples)
        self.reward_scale = check_float("reward_scale", reward_scale)
        self.policy_delay = check_int("policy_delay", policy_delay)
        self.lambda_init = check_float("lambda_init", lambda_init)
        self.lambda_lr = check_float("lambda_lr", lambda_lr, strict=False)
        self.lambda_update_interval = check_int("lambda_update_interval", lambda_update_interval)
        if target_entropy != "auto":
            target_entropy = check_float("target_entropy", target_entropy, minimum=-np.inf)
        self.target_entropy = target_entropy
        self.exploration_scale = check_float("exploration_scale", exploration_scale)
        self.q_weight_scale = check_float("q_weight_scale", q_weight_scale)
        if not isinstance(q_normalization, bool):
            raise ValueError(f"q_normalization must be True or False, got {q_normalization!r}")
        self.q_normalization = q_normalization
        self.q_normalization_rate = check_float("q_normalization_rate", q_normalization_rate, maximum=1.0)
        # running spread of the reverse samples' Q values (q_normalization); NaN until the first actor step
        self.q_spread = float("nan")
        self.actor_learning_rate = check_float("actor_learning_rate", actor_learning_rate)
        self.actor_lr_final = check_float("actor_lr_final", actor_lr_final, strict=False)
        self.actor_lr_decay_start = check_int("actor_lr_decay_start", actor_lr_decay_start, minimum=0)
        self.actor_lr_decay_steps = check_int("actor_lr_decay_steps", actor_lr_decay_steps, minimum=0)
        policy_kwargs = self._forward_to_policy(
            policy_kwargs, n_behavior_candidates=self.n_candidates, n_eval_candidates=self.n_candidates
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
        self.log_lambda: th.Tensor
        self.lambda_optimizer: th.optim.Adam | None = None
        # Actor steps taken (saved with the model; None until _setup_model, see there)
        self._n_actor_steps: int | None = None
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        super()._setup_model()
        self._create_aliases()
        action_dim = int(np.prod(self.action_space.shape))  # type: ignore[misc]
        if self.target_entropy == "auto":
            self.target_entropy = -0.9 * action_dim
        self.log_lambda = th.tensor([np.log(self.lambda_init)], device=self.device, requires_grad=self.lambda_lr > 0)
        if self.lambda_lr > 0:
            self.lambda_optimizer = th.optim.Adam([self.log_lambda], lr=self.lambda_lr)
        self._sync_exploration_std()
        self.actor.optimizer.param_groups[0]["lr"] = self.actor_learning_rate
        if self._n_actor_steps is None:  # a new model, or one saved before the count was kept (which
            self._n_actor_steps = self._n_updates // self.policy_delay  # stepped the actor every policy_delay-th update)

    @property
    def lambda_(self) -> float:
        """The current temperature lambda."""
        return float(self.log_lambda.detach().exp())

    def _sync_exploration_std(self) -> None:
        self.policy.exploration_std.fill_(self.exploration_scale * self.lambda_)

    def exploration_entropy(self, lambda_: float | th.Tensor) -> float:
        """Entropy of the exploration noise N(0, (exploration_scale * lambda)^2 I)."""
        action_dim = int(np.prod(self.action_space.shape))  # type: ignore[misc]
        return action_dim * (0.5 * np.log(2 * np.pi * np.e) + float(np.log(self.exploration_scale * float(lambda_))))

    def actor_lr_at(self, actor_step: int) -> float:
        """Actor learning rate after ``actor_step`` actor updates: constant, then a linear decay."""
        if self.actor_lr_decay_steps == 0 or actor_step < self.actor_lr_decay_start:
            return self.actor_learning_rate
        fraction = min((actor_step - self.actor_lr_decay_start) / self.actor_lr_decay_steps, 1.0)
        return self.actor_learning_rate + fraction * (self.actor_lr_final - self.actor_learning_rate)

    def reverse_sampling_target(
        self, obs: th.Tensor, actions: th.Tensor, lambda_: float, update_q_spread: bool = False
    ) -> "ScoreMatchingTarget":
        """
        The regression problem of one actor step (reverse-sampling score matching), scored by the
        online critics: ``a`` forward-noised to ``a_t`` at a random step ``t``; ``n_reverse_samples``
        draws ``a0_k = clamp(x0_from_noise(a_t, eps_k), -1, 1)``, i.e. samples of
        ``N(a_t / sqrt(abar_t), (1/abar_t - 1) I)``; weights ``softmax_k(q_weight_scale * min Q(s, a0_k) / lambda)``.

        :param obs: States, batch of B
        :param actions: Policy actions at those states, shape (B, d)
        :param lambda_: Temperature
        :param update_q_spread: Fold this batch into the running spread of ``q_normalization`` (training
            does; analyses should not)
        """
        schedule = self.actor.schedule
        batch_size, action_dim = actions.shape
        t = th.randint(schedule.n_steps, (batch_size,), device=self.device)
        a_t = schedule.q_sample(actions, t, th.randn_like(actions))
        eps = th.randn(batch_size, self.n_reverse_samples, action_dim, device=self.device)
        a_0 = schedule.predict_x0(a_t[:, None, :], t, eps).clamp_(-1.0, 1.0)
        # (B, n_reverse_samples): each state's observation block of the critics computed once
        q_values = self.policy.min_q(obs, a_0, critic=self.critic)
        if self.q_normalization:
            q_values = q_values / self._q_spread(q_values, update_q_spread)
        weights = th.softmax(q_values * (self.q_weight_scale / lambda_), dim=1)
        return ScoreMatchingTarget(a_t, t, eps, weights)

    def _q_spread(self, q_values: th.Tensor, update: bool) -> float:
        """The running spread of ``q_normalization``, first folding in ``q_values`` (B, K) if ``update``."""
        if update or np.isnan(self.q_spread):
            spread = float(q_values.std(dim=1).mean())
            first = np.isnan(self.q_spread)
            self.q_spread = spread if first else self.q_spread + self.q_normalization_rate * (spread - self.q_spread)
        return max(self.q_spread, 1e-8)

    def score_matching_loss(self, obs: th.Tensor, target: "ScoreMatchingTarget") -> th.Tensor:
        """
        The actor's loss, ``mean_{b,k,dim} w_k (eps_theta(s, a_t, t) - eps_k)^2`` up to a constant that
        has no gradient: the network runs once per state and regresses on the weighted mean noise,
        ``MSE(eps_theta, sum_k w_k eps_k) / n_reverse_samples`` (the weights of a state sum to 1).
        """
        predicted_noise = self.actor.predict_noise(obs, target.a_t, target.t)
        return F.mse_loss(predicted_noise, target.mean_noise) / target.noise.shape[1]

    def _best_actions(self, replay_data: Any, actor_step: bool, noise_std: float) -> tuple[th.Tensor, th.Tensor | None]:
        """
        The best-of-K choices of one update, from the online actor and critics with exploration noise:
        ``a'`` at the next states (TD target) and, on an actor step, the policy actions ``a`` at the
        states (the actor's regression). When both use K candidates, one merged chain of 2B states, faster
        than two of B.

        :return: ``(next_actions, policy_actions)``; ``policy_actions`` is None unless ``actor_step``
        """
        n_target = self.n_candidates if self.n_target_candidates is None else self.n_target_candidates
        if not actor_step or n_target != self.n_candidates:
            next_actions = self.policy.best_of_k(replay_data.next_observations, n_target)
            next_actions = self.policy.add_exploration_noise(next_actions, noise_std)
            if not actor_step:
                return next_actions, None
            best = self.policy.best_of_k(replay_data.observations, self.n_candidates)
            return next_actions, self.policy.add_exploration_noise(best, noise_std)
        states = th.cat([replay_data.next_observations, replay_data.observations])
        best = self.policy.add_exploration_noise(self.policy.best_of_k(states, self.n_candidates), noise_std)
        next_actions, policy_actions = best.split(replay_data.observations.shape[0])
        return next_actions, policy_actions

    def _temperature_step(self, lambda_: float) -> th.Tensor:
        """One Adam step on ``log(lambda)`` towards an exploration-noise entropy of ``target_entropy``."""
        assert self.lambda_optimizer is not None
        entropy_gap = self.target_entropy - self.exploration_entropy(lambda_)  # type: ignore[operator]
        lambda_loss = -(self.log_lambda * entropy_gap).sum()
        self.lambda_optimizer.zero_grad()
        lambda_loss.backward()
        self.lambda_optimizer.step()
        self._sync_exploration_std()
        return lambda_loss.detach()

    def _batched_calls(self) -> list[tuple[int, int, str]]:
        batch_size = self.batch_size
        n_target = self.n_candidates if self.n_target_candidates is None else self.n_target_candidates
        merged = 2 * batch_size if n_target == self.n_candidates else batch_size  # see _best_actions
        return [
            (merged, self.n_candidates, "actor"),  # best-of-K chains (TD target, with the actor's on actor steps)
            (merged, self.n_candidates, "critic"),  # and their scoring
            (batch_size, n_target, "actor"),
            (batch_size, n_target, "critic"),
            (batch_size, self.n_reverse_samples, "critic"),  # scoring of the reverse samples
        ]

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        # Switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)
        # Critic learning rate from SB3's schedule; the actor's follows its own schedule in actor steps
        self._update_learning_rate([self.critic.optimizer])
        assert self._n_actor_steps is not None

        actor_losses, critic_losses, lambda_losses, max_weights = [], [], [], []
        for _ in range(gradient_steps):
            # As in the official code, update 0 (the first) steps the actor and the temperature
            actor_step = self._n_updates % self.policy_delay == 0
            temperature_step = self.lambda_optimizer is not None and self._n_updates % self.lambda_update_interval == 0
            self._n_updates += 1
            replay_data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma
            lambda_ = self.lambda_

            # 1. TD target, with a' the best of K online-actor samples plus exploration noise. Everything
            #    sampled in an update uses the parameters from before it: the actor's regression target
            #    (with its own best-of-K, from the same merged chain) is drawn here too.
            with th.no_grad():
                next_actions, policy_actions = self._best_actions(replay_data, actor_step, self.exploration_scale * lambda_)
                next_q_values = min_q(self.critic_target, replay_data.next_observations, next_actions)[:, None]
                target_q_values = self.reward_scale * replay_data.rewards + (1 - replay_data.dones) * discounts * next_q_values
                if policy_actions is None:
                    regression = None
                else:  # the actor's regression target, scored by the critics before their step
                    regression = self.reverse_sampling_target(
                        replay_data.observations, policy_actions, lambda_, update_q_spread=True
                    )

            # 2. Critic step
            current_q_values = self.critic(replay_data.observations, replay_data.actions)
            critic_loss = sum(F.mse_loss(current_q, target_q_values) for current_q in current_q_values)
            assert isinstance(critic_loss, th.Tensor)
            critic_losses.append(critic_loss.detach())
            self._check_finite_loss("critic loss", critic_loss)
            self.critic.optimizer.zero_grad()
            critic_loss.backward()
            self.critic.optimizer.step()

            # 3. Actor step, every policy_delay updates, at the learning rate of its actor-step count
            if regression is not None:
                self._set_lr(self.actor.optimizer, self.actor_lr_at(self._n_actor_steps))
                actor_loss = self.score_matching_loss(replay_data.observations, regression)
                actor_losses.append(actor_loss.detach())
                self._check_finite_loss("actor loss", actor_loss)
                max_weights.append(regression.weights.max(dim=1).values.mean())
                self.actor.optimizer.zero_grad()
                actor_loss.backward()
                self.actor.optimizer.step()
                self._n_actor_steps += 1

            # 4. Temperature step, every lambda_update_interval updates
            if temperature_step:
                lambda_losses.append(self._temperature_step(lambda_))

            # 5. Polyak averaging of the critic targets and of the EMA actor, with each actor step
            if actor_step:
                self._polyak_critic()
                self._polyak_actor()

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/critic_loss", th.stack(critic_losses).mean().item())
        if actor_losses:
            self.logger.record("train/actor_loss", th.stack(actor_losses).mean().item())
            self.logger.record("train/weight_max", th.stack(max_weights).mean().item())
        self.logger.record("train/actor_learning_rate", self.actor.optimizer.param_groups[0]["lr"])
        self.logger.record("train/lambda", self.lambda_)
        self.logger.record("train/exploration_std", float(self.policy.exploration_std))
        if lambda_losses:
            self.logger.record("train/lambda_loss", th.stack(lambda_losses).mean().item())

    def learn(
        self: SelfSDAC,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 4,
        tb_log_name: str = "SDAC",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfSDAC:
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
        if self.lambda_optimizer is not None:
            state_dicts.append("lambda_optimizer")
        return state_dicts, ["log_lambda"]


class ScoreMatchingTarget(NamedTuple):
    """The regression problem of one SDAC actor step (see :meth:`SDAC.reverse_sampling_target`)."""

    a_t: th.Tensor  # forward-noised policy actions, (B, d)
    t: th.Tensor  # their steps, (B,)
    noise: th.Tensor  # eps_k of the reverse samples, (B, n_reverse_samples, d)
    weights: th.Tensor  # softmax weights of the reverse samples, (B, n_reverse_samples)

    @property
    def mean_noise(self) -> th.Tensor:
        """``sum_k w_k eps_k``, (B, d): the regression target of the noise network."""
        return th.einsum("bk,bkd->bd", self.weights, self.noise)
