"""The Stable-Baselines3 contract, in the style of sb3-contrib's tests, for every algorithm of the package."""

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.callbacks import CheckpointCallback, EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize

ENV = "Pendulum-v1"


def test_run_and_log_keys(algo):
    cls, kwargs = algo
    model = cls("MlpPolicy", ENV, seed=0, **kwargs).learn(100)
    assert model.num_timesteps == 100 and model._n_updates == 50
    logged = model.logger.name_to_value
    for key in ("train/actor_loss", "train/critic_loss", "train/learning_rate", "train/n_updates"):
        assert key in logged and np.isfinite(logged[key]), key
    assert logged["train/n_updates"] == 50
    assert logged["train/learning_rate"] == pytest.approx(model.learning_rate)
    if cls.__name__ == "SDAC":
        assert logged["train/lambda"] == pytest.approx(model.lambda_)


@pytest.mark.parametrize("vec_env_cls", [DummyVecEnv, SubprocVecEnv])
def test_multi_env(algo, vec_env_cls):
    cls, kwargs = algo
    env = make_vec_env(ENV, n_envs=2, seed=0, vec_env_cls=vec_env_cls)
    model = cls("MlpPolicy", env, seed=0, **kwargs).learn(120)
    assert model.num_timesteps == 120 and model.replay_buffer.size() == 60  # 60 rows of 2 envs
    actions, _ = model.predict(env.reset(), deterministic=False)
    assert actions.shape == (2, 1) and np.all(np.abs(actions) <= 2.0)
    env.close()


def test_predict_deterministic_is_a_pure_function_of_the_observation(algo):
    cls, kwargs = algo
    model = cls("MlpPolicy", ENV, seed=0, **kwargs).learn(80)
    rng = np.random.default_rng(0)
    observations = rng.uniform(-1, 1, size=(5, 3)).astype(np.float32)
    batch_actions, _ = model.predict(observations, deterministic=True)
    again, _ = model.predict(observations, deterministic=True)
    np.testing.assert_array_equal(batch_actions, again)
    alone, _ = model.predict(observations[2], deterministic=True)
    reordered, _ = model.predict(observations[::-1], deterministic=True)
    np.testing.assert_array_equal(alone, batch_actions[2])
    np.testing.assert_array_equal(reordered, batch_actions[::-1])
    # the behaviour policy is stochastic
    stochastic = [model.predict(observations[0], deterministic=False)[0] for _ in range(5)]
    assert len({float(a[0]) for a in stochastic}) > 1
    assert len({float(a[0]) for a in batch_actions}) > 1  # different states, different actions


def test_save_load(algo, tmp_path):
    cls, kwargs = algo
    model = cls("MlpPolicy", ENV, seed=0, **kwargs).learn(80)
    observations = np.random.default_rng(1).uniform(-1, 1, size=(4, 3)).astype(np.float32)
    actions, _ = model.predict(observations, deterministic=True)
    params = model.get_parameters()
    model.save(tmp_path / "model.zip")
    loaded = cls.load(tmp_path / "model.zip", env=make_vec_env(ENV, n_envs=1))
    loaded_params = loaded.get_parameters()
    assert params.keys() == loaded_params.keys()
    for name, state in params.items():
        for key, value in state.items():
            if isinstance(value, th.Tensor):
                assert th.equal(value, loaded_params[name][key]), f"{name}.{key}"
    np.testing.assert_array_equal(loaded.predict(observations, deterministic=True)[0], actions)
    # algorithm state survives too, and training continues
    assert loaded._n_updates == model._n_updates and loaded.num_timesteps == model.num_timesteps
    if cls.__name__ == "SDAC":
        assert loaded.lambda_ == model.lambda_
        assert float(loaded.policy.exploration_std) == float(model.policy.exploration_std)
    loaded.learn(20, reset_num_timesteps=False)
    assert loaded._n_updates == model._n_updates + 20


def test_set_and_get_parameters(algo):
    cls, kwargs = algo
    first = cls("MlpPolicy", ENV, seed=0, **kwargs)
    second = cls("MlpPolicy", ENV, seed=1, **kwargs)
    observation = np.zeros(3, dtype=np.float32)

    def act(model):
        return model.predict(observation, deterministic=True)[0]

    assert not np.array_equal(act(first), act(second))
    second.set_parameters(first.get_parameters())
    np.testing.assert_array_equal(act(first), act(second))


def test_deterministic_seeding(algo):
    cls, kwargs = algo
    models = [cls("MlpPolicy", ENV, seed=3, **kwargs).learn(90) for _ in range(2)]
    for p, q in zip(models[0].policy.parameters(), models[1].policy.parameters(), strict=True):
        assert th.equal(p, q)
    third = cls("MlpPolicy", ENV, seed=4, **kwargs).learn(90)
    assert not all(th.equal(p, q) for p, q in zip(models[0].policy.parameters(), third.policy.parameters(), strict=False))


def test_replay_buffer_save_load(algo, tmp_path):
    cls, kwargs = algo
    model = cls("MlpPolicy", ENV, seed=0, **kwargs).learn(60)
    model.save_replay_buffer(tmp_path / "buffer.pkl")
    fresh = cls("MlpPolicy", ENV, seed=0, **kwargs)
    fresh.load_replay_buffer(tmp_path / "buffer.pkl")
    assert fresh.replay_buffer.size() == model.replay_buffer.size() == 60
    np.testing.assert_array_equal(fresh.replay_buffer.observations, model.replay_buffer.observations)
    np.testing.assert_array_equal(fresh.replay_buffer.actions, model.replay_buffer.actions)


def test_policy_save_load(algo, tmp_path):
    cls, kwargs = algo
    model = cls("MlpPolicy", ENV, seed=0, **kwargs).learn(70)
    observations = np.random.default_rng(2).uniform(-1, 1, size=(3, 3)).astype(np.float32)
    actions, _ = model.policy.predict(observations, deterministic=True)
    model.policy.save(tmp_path / "policy.pth")
    policy = type(model.policy).load(tmp_path / "policy.pth")
    np.testing.assert_array_equal(policy.predict(observations, deterministic=True)[0], actions)
    assert policy.n_eval_candidates == model.policy.n_eval_candidates
    assert policy.actor.diffusion_steps == model.actor.diffusion_steps


def test_critic_activation(algo, tmp_path):
    cls, kwargs = algo
    policy_kwargs = {**kwargs.get("policy_kwargs", {}), "critic_activation_fn": th.nn.ReLU}
    model = cls("MlpPolicy", ENV, seed=0, **{**kwargs, "policy_kwargs": policy_kwargs})
    # the critics (and their targets) use ReLU, the noise network keeps the algorithm's activation
    for critic in (model.critic, model.critic_target):
        assert {type(m) for m in critic.modules() if not isinstance(m, (th.nn.Linear, th.nn.Sequential))} >= {th.nn.ReLU}
        assert not any(isinstance(m, th.nn.Mish) for m in critic.modules())
    assert any(isinstance(m, th.nn.Mish) for m in model.actor.modules())
    model.learn(70)
    observations = np.random.default_rng(2).uniform(-1, 1, size=(3, 3)).astype(np.float32)
    actions, _ = model.predict(observations, deterministic=True)
    model.save(tmp_path / "model.zip")
    loaded = cls.load(tmp_path / "model.zip")
    assert loaded.policy.critic_activation_fn is th.nn.ReLU
    assert not any(isinstance(m, th.nn.Mish) for m in loaded.critic.modules())
    np.testing.assert_array_equal(loaded.predict(observations, deterministic=True)[0], actions)


def test_callbacks_nstep_vecnormalize_progress_bar(algo, tmp_path):
    cls, kwargs = algo
    env = VecNormalize(make_vec_env(ENV, n_envs=2, seed=0), norm_reward=True)
    eval_env = VecNormalize(make_vec_env(ENV, n_envs=1, seed=1), training=False, norm_reward=False)
    eval_callback = EvalCallback(eval_env, n_eval_episodes=1, eval_freq=50, log_path=str(tmp_path), warn=False)
    checkpoint = CheckpointCallback(save_freq=50, save_path=str(tmp_path / "checkpoints"), name_prefix="m")
    model = cls("MlpPolicy", env, seed=0, n_steps=3, **kwargs)
    model.learn(200, callback=[eval_callback, checkpoint], progress_bar=True)
    assert (tmp_path / "evaluations.npz").exists() and eval_callback.last_mean_reward < 0
    assert len(list((tmp_path / "checkpoints").glob("m_*.zip"))) == 2
    sample = model.replay_buffer.sample(8, env=model._vec_normalize_env)
    assert sample.discounts is not None and th.all(sample.discounts <= model.gamma)


def test_set_env(algo):
    cls, kwargs = algo
    model = cls("MlpPolicy", ENV, seed=0, **kwargs).learn(60)
    new_env = make_vec_env(ENV, n_envs=1, seed=5)
    model.set_env(new_env)
    model.learn(40, reset_num_timesteps=False)
    assert model.num_timesteps == 100 and model.get_env() is new_env
    with pytest.raises(ValueError, match="Observation spaces do not match"):
        model.set_env(make_vec_env("MountainCarContinuous-v0", n_envs=1))


def test_rescales_to_any_bounded_box(algo):
    cls, kwargs = algo
    model = cls("MlpPolicy", "MountainCarContinuous-v0", seed=0, **kwargs)  # actions in [-1, 1]
    assert model.policy.squash_output
    low, high = model.action_space.low, model.action_space.high
    actions, _ = model.predict(np.zeros((16, 2), dtype=np.float32))
    assert np.all(actions >= low) and np.all(actions <= high)
    pendulum = cls("MlpPolicy", ENV, seed=0, **kwargs)  # actions in [-2, 2]
    scaled = pendulum.policy.unscale_action(np.array([[-1.0], [1.0]], dtype=np.float32))
    np.testing.assert_allclose(scaled, [[-2.0], [2.0]])


@pytest.mark.skipif(not th.cuda.is_available(), reason="needs a CUDA device")
def test_cuda(algo):
    cls, kwargs = algo
    model = cls("MlpPolicy", ENV, seed=0, device="cuda", **kwargs).learn(80)
    assert next(model.policy.parameters()).is_cuda
    model.predict(np.zeros(3, dtype=np.float32), deterministic=True)


def test_the_shared_policy_has_no_algorithms_defaults():
    import inspect
    from typing import Any, ClassVar

    from gymnasium import spaces

    from sb3_diffusion.common.policies import DiffusionActorPolicy
    from sb3_diffusion.qvpo.policies import QVPOPolicy
    from sb3_diffusion.sdac.policies import SDACPolicy

    obs_space, act_space = spaces.Box(-1, 1, (3,), np.float32), spaces.Box(-1, 1, (1,), np.float32)
    with pytest.raises(TypeError, match="beta_schedule"):
        DiffusionActorPolicy(obs_space, act_space, lambda _: 1e-3)
    # each algorithm's policy declares its defaults once; its signature shows them
    for cls in (SDACPolicy, QVPOPolicy):
        parameters = inspect.signature(cls).parameters
        assert {name: parameters[name].default for name in cls.defaults} == cls.defaults
    assert SDACPolicy.defaults["beta_schedule"] == "linear" and QVPOPolicy.defaults["beta_schedule"] == "cosine"
    # None means the policy's default; mutable defaults are not shared between policies
    policy = QVPOPolicy(obs_space, act_space, lambda _: 1e-3, net_arch=[8], diffusion_steps=3, optimizer_kwargs=None)
    assert policy.optimizer_kwargs == {"eps": 1e-5} and policy.optimizer_kwargs is not QVPOPolicy.defaults["optimizer_kwargs"]
    assert policy.actor.schedule.n_steps == 3 and policy.n_behavior_candidates == 4

    # a policy of one's own changes one default and keeps the others
    class WiderStart(SDACPolicy):
        defaults: ClassVar[dict[str, Any]] = {**SDACPolicy.defaults, "init_noise_scale": 0.8}

    policy = WiderStart(obs_space, act_space, lambda _: 1e-3, net_arch=[8], diffusion_steps=3)
    assert policy.actor.init_noise_scale == 0.8 and policy.behavior_actor == "ema"
