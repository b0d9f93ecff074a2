"""Shared fixtures: the algorithms under test and cheap configurations of them."""

import pytest
import torch as th

from sb3_diffusion import QVPO, SDAC

# Small networks and short chains: the SB3 contract does not depend on the sizes.
TINY_POLICY = dict(net_arch=[16, 16], diffusion_steps=3, time_embed_dim=4, time_hidden_dim=8)

# (algorithm class, constructor kwargs that make it cheap) for every algorithm of the package
ALGOS = {
    "qvpo": (
        QVPO,
        dict(
            n_behavior_candidates=4,
            n_target_candidates=2,
            n_eval_candidates=4,
            n_policy_samples=8,
            n_uniform_samples=2,
            learning_starts=50,
            batch_size=16,
            policy_kwargs=TINY_POLICY,
        ),
    ),
    "sdac": (SDAC, dict(n_candidates=4, n_reverse_samples=8, learning_starts=50, batch_size=16, policy_kwargs=TINY_POLICY)),
}


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny networks: more threads only add overhead, and pytest-xdist already runs one worker per core
    previous = th.get_num_threads()
    th.set_num_threads(1)
    yield
    th.set_num_threads(previous)


@pytest.fixture(params=sorted(ALGOS))
def algo(request):
    """(class, cheap kwargs) of each algorithm."""
    cls, kwargs = ALGOS[request.param]
    return cls, {**kwargs, "policy_kwargs": dict(kwargs["policy_kwargs"])}
