"""
Slow checks of two published results (docs/results.md), so that a regression shows up as a failure:

- "Why a diffusion policy", picture (b): reverse-sampling score matching fits the 8-mode ring better
  than a Gaussian fit (``benchmarks/toy_figures.py``; about 3 CPU-minutes);
- "SDAC on small rewards": ``q_normalization`` makes SDAC's weighting independent of the reward scale
  on the 2-D bandit (``benchmarks/small_rewards.py``; about 2 CPU-minutes).

Run with ``python -m pytest -m slow -s tests/test_toy_results.py``.
"""

import pytest
import torch as th

from benchmarks import small_rewards, toy_figures


@pytest.fixture
def one_thread():
    threads = th.get_num_threads()
    th.set_num_threads(1)  # the published runs' setting (and reproducible on one machine)
    yield
    th.set_num_threads(threads)


@pytest.mark.slow
def test_score_matching_fits_the_ring_better_than_a_gaussian(one_thread, tmp_path):
    """Seed 0 at the figure's 10 000 steps: published -2.35 against -4.49 mean log density, 7 of 8 modes."""
    summary = {row["source"]: row for row in toy_figures.figure_score_matching(tmp_path, 10_000, seed=0)}
    diffusion, gaussian = summary["diffusion_rssm"], summary["gaussian_reverse_kl"]
    assert diffusion["mean_log_p"] > gaussian["mean_log_p"] + 1.0
    assert diffusion["modes_with_5pct"] >= 6  # the Gaussian covers the box, not the modes


@pytest.mark.slow
def test_q_normalization_makes_sdac_scale_free(one_thread):
    """
    Seed 0, 3000 steps, official temperature: the actor's mean sample reward was 0.085 without
    ``q_normalization`` at rewards in [0, 1], and 0.161 / 0.165 with it at rewards x1 / x100.
    """
    steps = toy_figures.BANDIT_STEPS

    def mean_sample_reward(scale: float, q_normalization: bool) -> float:
        config = {**small_rewards.BASE, "q_normalization": q_normalization}
        return toy_figures.bandit_run("sdac", 0, steps, scale=scale, **config)["summary"]["mean_sample_reward"]

    official = mean_sample_reward(1.0, False)
    normalised, normalised_x100 = mean_sample_reward(1.0, True), mean_sample_reward(100.0, True)
    print(f"mean sample reward: official {official:.3f}; q_normalization x1 {normalised:.3f}, x100 {normalised_x100:.3f}")
    assert normalised > 1.5 * official  # the weighting moves the policy where the official one barely does
    assert abs(normalised - normalised_x100) < 0.05  # and the same at both reward scales


def test_actor_isolation_script(one_thread):
    """``benchmarks/bandit_actor_isolation.py``: a perfect critic, the shares of a run, and bad configurations."""
    import argparse

    from benchmarks import bandit_actor_isolation as isolation

    critic = isolation.RewardCritic(k=10.0)
    q1, q2 = critic(th.zeros(2, 1), th.tensor([[0.55, -0.55], [-1.0, 1.0]]))
    assert th.allclose(q1[:, 0], th.tensor([10.0, 0.0]), atol=0.05) and th.equal(q1, q2)
    config = isolation.parse_config("32/4/16x16/3")
    assert config == dict(batch=32, n_reverse=4, net_arch=[16, 16], diffusion_steps=3)
    with pytest.raises(argparse.ArgumentTypeError, match="batch/reverse"):
        isolation.parse_config("32/4/16x16")
    for mode in isolation.PROPOSALS:
        result = isolation.run(mode, config, steps=3, n_samples=200)
        shares = [value for key, value in result.items() if key.startswith("share_")]
        assert len(shares) == 5 and abs(sum(shares) - 1) < 0.01
        assert 0 <= result["mean_sample_reward"] <= 1
