"""
Noise schedules and the DDPM maths shared by the diffusion policies.

Everything here works on tensors and has no learnable state. The schedule is computed in float64
(so that closed-form tests are exact) and stored as float32 buffers on the policy's device.
"""

import math
from typing import NamedTuple

import numpy as np
import torch as th
from torch import nn

BETA_SCHEDULES = ("cosine", "linear", "vp")
SAMPLERS = ("ddpm", "ddim")


class StepCoefficients(NamedTuple):
    """
    The coefficients of one reverse step (Python floats; 0-d tensors inside compiled code). Notation:
    ``abar_t = prod_{i <= t} (1 - beta_i)``.
    """

    sqrt_recip_alphas_cumprod: float  # 1 / sqrt(abar_t)
    sqrt_recipm1_alphas_cumprod: float  # sqrt(1 / abar_t - 1)
    posterior_mean_coef1: float  # c1_t, on the clamped x0 estimate
    posterior_mean_coef2: float  # c2_t, on x_t
    posterior_std: float  # sigma_t, on the step's noise


def x0_from_noise(
    x_t: th.Tensor,
    eps: th.Tensor,
    sqrt_recip_alphas_cumprod: float | th.Tensor,
    sqrt_recipm1_alphas_cumprod: float | th.Tensor,
) -> th.Tensor:
    """
    The clean sample implied by a noise prediction, ``x0 = x_t / sqrt(abar_t) - eps sqrt(1 / abar_t - 1)``
    (not clamped). The coefficients are floats, or tensors that broadcast against ``x_t``.
    """
    return x_t * sqrt_recip_alphas_cumprod - eps * sqrt_recipm1_alphas_cumprod


def reverse_step(x_t: th.Tensor, eps: th.Tensor, c: StepCoefficients, noise: th.Tensor | None) -> th.Tensor:
    """
    One reverse step: ``x_{t-1} = c1_t clamp(x0, -1, 1) + c2_t x_t + sigma_t z`` with ``x0`` from the
    predicted noise (:func:`x0_from_noise`).

    :param x_t: Current sample
    :param eps: Predicted noise, shape of ``x_t``
    :param c: The step's coefficients
    :param noise: ``z``, standard normal noise of the shape of ``x_t``; None adds no noise (the last step)
    :return: ``x_{t-1}``
    """
    x0 = x0_from_noise(x_t, eps, c.sqrt_recip_alphas_cumprod, c.sqrt_recipm1_alphas_cumprod).clamp(-1.0, 1.0)
    mean = c.posterior_mean_coef1 * x0 + c.posterior_mean_coef2 * x_t
    return mean if noise is None else mean + c.posterior_std * noise


def cosine_betas(n_steps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """
    Cosine schedule of Nichol & Dhariwal (2021): ``abar(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2)``,
    normalised so that ``abar(0) = 1``, with betas clipped at ``max_beta``.

    :param n_steps: Number of diffusion steps T
    :param s: Small offset that keeps the first betas away from zero
    :param max_beta: Upper clip of the betas
    :return: betas, shape (T,)
    """
    x = np.linspace(0, n_steps, n_steps + 1, dtype=np.float64)
    alphas_cumprod = np.cos(((x / n_steps) + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = 1.0 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return np.clip(betas, 0.0, max_beta)


def linear_betas(n_steps: int, beta_start: float = 1e-4, beta_end: float = 0.999, scale: float = 0.8) -> np.ndarray:
    """
    Linear schedule ``scale * linspace(beta_start, beta_end, T)`` (SDAC's official schedule uses
    ``scale=0.8``, ``beta_start=1e-4``, ``beta_end=0.999``).

    :param n_steps: Number of diffusion steps T
    :param beta_start: First beta before scaling
    :param beta_end: Last beta before scaling
    :param scale: Factor applied to all betas
    :return: betas, shape (T,)
    """
    return scale * np.linspace(beta_start, beta_end, n_steps, dtype=np.float64)


def vp_betas(n_steps: int, beta_min: float = 0.1, beta_max: float = 10.0) -> np.ndarray:
    """
    Discretised variance-preserving SDE schedule (as in Diffusion-QL):
    ``alpha_t = exp(-beta_min / T - (beta_max - beta_min) (2t - 1) / (2 T^2))`` for t = 1..T.

    :param n_steps: Number of diffusion steps T
    :param beta_min: beta(0) of the continuous VP SDE
    :param beta_max: beta(1) of the continuous VP SDE
    :return: betas, shape (T,)
    """
    t = np.arange(1, n_steps + 1, dtype=np.float64)
    alphas = np.exp(-beta_min / n_steps - 0.5 * (beta_max - beta_min) * (2 * t - 1) / n_steps**2)
    return 1.0 - alphas


def make_betas(schedule: str, n_steps: int, **kwargs: float) -> np.ndarray:
    """
    Build a beta schedule by name.

    :param schedule: One of ``"cosine"``, ``"linear"``, ``"vp"``
    :param n_steps: Number of diffusion steps T (>= 1)
    :param kwargs: Keyword arguments of the chosen schedule function
    :return: betas, shape (T,), float64
    """
    if not isinstance(n_steps, (int, np.integer)) or isinstance(n_steps, bool) or n_steps < 1:
        raise ValueError(f"The number of diffusion steps must be an integer >= 1, got {n_steps!r}")
    builders = {"cosine": cosine_betas, "linear": linear_betas, "vp": vp_betas}
    if schedule not in builders:
        raise ValueError(f"Unknown beta schedule {schedule!r}: expected one of {', '.join(BETA_SCHEDULES)}")
    betas = builders[schedule](int(n_steps), **kwargs)
    if not (np.all(betas > 0) and np.all(betas < 1)):
        raise ValueError(f"The {schedule!r} schedule with {kwargs} gives betas outside (0, 1): {betas}")
    return betas


def respaced_timesteps(n_steps: int, sampling_steps: int) -> list[int]:
    """
    The steps kept when sampling with ``sampling_steps`` of a T-step schedule: evenly spaced from
    0 to T-1 (both included; a single step keeps T-1, the chain's start), increasing.

    :param n_steps: T
    :param sampling_steps: S, 1 <= S <= T
    :return: S increasing step indices of the original schedule
    """
    if not 1 <= sampling_steps <= n_steps:
        raise ValueError(f"sampling_steps must be an integer in [1, {n_steps}] (the diffusion steps), got {sampling_steps!r}")
    if sampling_steps == 1:
        return [n_steps - 1]
    return [int(step) for step in np.round(np.linspace(0, n_steps - 1, sampling_steps))]


def respace_betas(betas: np.ndarray, timesteps: list[int]) -> np.ndarray:
    """
    DDPM respacing (Nichol & Dhariwal, 2021): the betas of the chain that visits only ``timesteps``,
    ``beta'_i = 1 - abar_{s_i} / abar_{s_{i-1}}`` (``abar_{s_{-1}} = 1``), so that the respaced
    ``abar'_i`` equals the original ``abar`` at every kept step.

    :param betas: The original betas, shape (T,)
    :param timesteps: Kept steps, increasing
    :return: The respaced betas, shape (len(timesteps),)
    """
    alphas_cumprod = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))
    kept = alphas_cumprod[np.asarray(timesteps)]
    return 1.0 - kept / np.append(1.0, kept[:-1])


class DiffusionSchedule(nn.Module):
    """
    DDPM coefficients of a beta schedule, as float32 buffers named as in DDPM (they follow
    ``.to(device)``; saved in the state dict if ``persistent``), and per step as Python floats in
    :attr:`steps` (the sampling loop reads them without touching the device).

    Notation: ``alpha_t = 1 - beta_t``, ``abar_t = prod_{i <= t} alpha_i`` for t = 0..T-1.

    The reverse step is ``x_{t-1} = c1_t clamp(x0_hat) + c2_t x_t + sigma_t z``. With ``sampler="ddpm"``
    the coefficients are the DDPM posterior's; with ``sampler="ddim"`` they are those of deterministic
    DDIM (eta = 0): ``x_{t-1} = sqrt(abar_{t-1}) x0 + sqrt(1 - abar_{t-1}) eps'`` with ``eps'`` the noise
    implied by the clamped ``x0`` (the model's noise when the clamp is inactive), i.e.
    ``c2_t = sqrt((1 - abar_{t-1}) / (1 - abar_t))``, ``c1_t = sqrt(abar_{t-1}) - c2_t sqrt(abar_t)``, sigma = 0.

    :param betas: The betas, shape (T,)
    :param sampler: ``"ddpm"`` or ``"ddim"`` (the coefficients of the reverse step)
    :param persistent: Whether the buffers are part of the state dict
    """

    betas: th.Tensor
    alphas_cumprod: th.Tensor
    sqrt_alphas_cumprod: th.Tensor
    sqrt_one_minus_alphas_cumprod: th.Tensor
    sqrt_recip_alphas_cumprod: th.Tensor
    sqrt_recipm1_alphas_cumprod: th.Tensor
    posterior_mean_coef1: th.Tensor
    posterior_mean_coef2: th.Tensor
    posterior_std: th.Tensor

    def __init__(self, betas: np.ndarray, sampler: str = "ddpm", persistent: bool = True):
        super().__init__()
        if sampler not in SAMPLERS:
            raise ValueError(f"Unknown sampler {sampler!r}: expected one of {', '.join(SAMPLERS)}")
        self.sampler = sampler
        betas = np.asarray(betas, dtype=np.float64)
        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        if sampler == "ddpm":
            posterior_mean_coef1 = betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod)
            posterior_mean_coef2 = (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod)
            # log-variance clipped at 1e-20 as in DDPM; the noise at t = 0 is masked anyway
            posterior_std = np.exp(0.5 * np.log(np.maximum(posterior_variance, 1e-20)))
        else:
            posterior_mean_coef2 = np.sqrt((1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod))
            posterior_mean_coef1 = np.sqrt(alphas_cumprod_prev) - posterior_mean_coef2 * np.sqrt(alphas_cumprod)
            posterior_std = np.zeros_like(betas)
        buffers = dict(
            betas=betas,
            alphas_cumprod=alphas_cumprod,
            sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
            sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
            sqrt_recip_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod),
            sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod - 1.0),
            posterior_mean_coef1=posterior_mean_coef1,
            posterior_mean_coef2=posterior_mean_coef2,
            posterior_std=posterior_std,
        )
        for name, value in buffers.items():
            self.register_buffer(name, th.as_tensor(value, dtype=th.float32), persistent=persistent)
        # Python floats for the sampling loop: reading them costs no tensor op and no host-device sync
        self.steps = [
            StepCoefficients(*map(float, step))
            for step in zip(
                buffers["sqrt_recip_alphas_cumprod"],
                buffers["sqrt_recipm1_alphas_cumprod"],
                posterior_mean_coef1,
                posterior_mean_coef2,
                posterior_std,
                strict=True,
            )
        ]

    @property
    def n_steps(self) -> int:
        return self.betas.shape[0]

    def q_sample(self, x0: th.Tensor, t: th.Tensor, noise: th.Tensor) -> th.Tensor:
        """
        Forward noising ``a_t = sqrt(abar_t) a_0 + sqrt(1 - abar_t) eps``.

        :param x0: Clean actions, shape (N, d)
        :param t: Integer steps, shape (N,)
        :param noise: eps, shape (N, d)
        """
        return self.sqrt_alphas_cumprod[t, None] * x0 + self.sqrt_one_minus_alphas_cumprod[t, None] * noise

    def predict_x0(self, x_t: th.Tensor, t: th.Tensor, eps: th.Tensor) -> th.Tensor:
        """
        :func:`x0_from_noise` at a step per row (not clamped).

        :param x_t: Noisy samples, shape (N, ...)
        :param t: Integer steps, shape (N,)
        :param eps: Noise, broadcastable with ``x_t`` (shape (N, ...))
        """
        shape = (-1,) + (1,) * (max(x_t.dim(), eps.dim()) - 1)  # one coefficient per row
        scale_x, scale_eps = self.sqrt_recip_alphas_cumprod[t].view(shape), self.sqrt_recipm1_alphas_cumprod[t].view(shape)
        return x0_from_noise(x_t, eps, scale_x, scale_eps)

    def reverse_step(self, x_t: th.Tensor, t: int, eps: th.Tensor, noise: th.Tensor | None) -> th.Tensor:
        """
        :func:`reverse_step` at integer step ``t`` (the same for all rows).

        :param x_t: Current sample
        :param t: Step index in this schedule
        :param eps: Predicted noise
        :param noise: Standard normal noise of the shape of ``x_t`` (not used, and may be None, at t = 0
            and for a deterministic sampler)
        """
        c = self.steps[t]
        return reverse_step(x_t, eps, c, noise if t > 0 and c.posterior_std != 0.0 else None)
