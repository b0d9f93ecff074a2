"""
Slow learning checks on MuJoCo with the shipped RL Zoo configurations (docs/learning.md).

Run with ``python -m pytest -m slow -s -k pendulum_balances`` (about 30 minutes per case on one core).
"""

import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.env_util import make_vec_env

from torch import nn

from sb3_diffusion import QVPO, SDAC

HYPERPARAMS = Path(__file__).resolve().parents[1] / "hyperparams"


def shipped_config(algo: str, env_id: str) -> tuple[dict, int]:
    """Constructor arguments and step budget of the shipped zoo entry of ``algo`` for ``env_id``."""
    with open(HYPERPARAMS / f"{algo}.yml") as file:
        config = dict(yaml.safe_load(file)[env_id])
    n_timesteps = int(config.pop("n_timesteps"))
    config.pop("policy")
    if isinstance(config.get("policy_kwargs"), str):  # RL Zoo's string form, evaluated with torch.nn as nn
        config["policy_kwargs"] = eval(config["policy_kwargs"], {"nn": nn})
    assert int(config.pop("n_envs", 1)) == 1, "these checks run one environment"
    return config, n_timesteps


@pytest.mark.slow
@pytest.mark.parametrize(
    ("cls", "algo", "env_id", "balanced"),
    [
        (QVPO, "qvpo", "InvertedPendulum-v5", 1000),
        (QVPO, "qvpo", "InvertedDoublePendulum-v5", 9000),
        (SDAC, "sdac", "InvertedPendulum-v5", 1000),
    ],
    ids=["QVPO-inverted_pendulum", "QVPO-inverted_double_pendulum", "SDAC-inverted_pendulum"],
)
def test_pendulum_balances(cls, algo, env_id, balanced, tmp_path):
    # SDAC's entry takes critics like SAC's, sharper weights (docs/learning.md, sections 10 and 11) and
    # 26k steps. Balanced: the poles stand for all 1000
    # steps (InvertedPendulum: +1 per step; InvertedDoublePendulum: about 9.36 per step, 9360 at most,
    # SB3 SAC's score from 12k steps on)
    config, n_timesteps = shipped_config(algo, env_id)
    assert n_timesteps <= 26_000
    start = time.perf_counter()
    eval_env = make_vec_env(env_id, n_envs=1, seed=1000)
    callback = EvalCallback(eval_env, n_eval_episodes=5, eval_freq=2000, deterministic=True, log_path=str(tmp_path), verbose=0)
    model = cls("MlpPolicy", make_vec_env(env_id, n_envs=1, seed=0), seed=0, **config)
    model.learn(n_timesteps, callback=callback)
    evaluations = np.load(tmp_path / "evaluations.npz")["results"].mean(axis=1)
    print(f"{cls.__name__} {env_id} seed 0: {np.round(evaluations).tolist()} in {time.perf_counter() - start:.0f} s")
    # balanced in all 5 evaluation episodes at some evaluation within the budget
    assert evaluations.max() >= balanced, evaluations
