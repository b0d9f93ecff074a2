"""
Optuna search spaces of SDAC and QVPO for RL Zoo's ``-optimize``, and the converters that turn a
trial's stored parameters back into hyperparameters (``--storage ... --study-name ... --trial-id N``).

A sampler has RL Zoo's signature ``sampler(trial, n_actions, n_envs, additional_args) -> hyperparameters``
and a converter ``converter(params) -> hyperparameters``; the sampler is the converter applied to
what it suggested, so a trial rebuilt from the storage gets exactly the hyperparameters it was run with.

Two rules of ours on top of RL Zoo's (the objective of :mod:`sb3_diffusion.zoo.registration` sets them up):

- sampled policy keyword arguments are merged into the configured ``policy_kwargs``, instead of
  replacing them (the diffusion schedule, the time embedding, ... of the config are kept);
- a hyperparameter given on the command line with ``-params`` is pinned: it is not searched. This is
  how a search is kept cheap (``-params policy_kwargs:"dict(diffusion_steps=5)" n_candidates:8``).
"""

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import optuna

from sb3_diffusion.common.hot_path import PRECISIONS

# Network sizes of the search (noise-prediction network and critics alike); "large" is the papers' 3 x 256
NET_ARCHS = {"small": [64, 64], "medium": [256, 256], "large": [256, 256, 256]}

POLICY_PREFIX = "policy_kwargs."


@dataclass(frozen=True)
class Param:
    """One searched parameter: the name Optuna stores, the hyperparameter it sets, how it is drawn and converted."""

    name: str
    target: str  # a hyperparameter, or "policy_kwargs.<key>" for a keyword argument of the policy
    suggest: Callable[[optuna.Trial, str], Any]
    convert: Callable[[Any], Any] = lambda value: value


def _log_float(low: float, high: float) -> Callable[[optuna.Trial, str], float]:
    return lambda trial, name: trial.suggest_float(name, low, high, log=True)


def _choice(*choices: Any) -> Callable[[optuna.Trial, str], Any]:
    return lambda trial, name: trial.suggest_categorical(name, list(choices))


# Shared by both algorithms: RL Zoo's conventions (1 - gamma on a log scale, powers of two for the batch)
COMMON_SPACE = (
    Param("one_minus_gamma", "gamma", _log_float(1e-4, 0.03), lambda value: 1.0 - value),
    Param("learning_rate", "learning_rate", _log_float(3e-5, 3e-3)),  # the critics' learning rate
    Param("actor_learning_rate", "actor_learning_rate", _log_float(1e-5, 3e-3)),
    Param("batch_size_pow", "batch_size", lambda trial, name: trial.suggest_int(name, 6, 9), lambda value: 2**value),
    Param("tau", "tau", _log_float(1e-3, 0.05)),
    Param("net_arch", POLICY_PREFIX + "net_arch", _choice(*NET_ARCHS), NET_ARCHS.__getitem__),
    Param("diffusion_steps", POLICY_PREFIX + "diffusion_steps", _choice(5, 10, 20)),
    # arithmetic of the sampling chains and the candidate scoring (bf16 falls back to fp32, with a
    # warning, where the hardware has no bf16; bf16_chains keeps the scoring in fp32, docs/precision.md);
    # pin it with -params policy_kwargs:"dict(precision='fp32')"
    Param("precision", POLICY_PREFIX + "precision", _choice(*PRECISIONS)),
)

SDAC_SPACE = (
    *COMMON_SPACE,
    Param("n_candidates", "n_candidates", _choice(4, 8, 16, 32)),  # best-of-K (official 32)
    Param("n_reverse_samples", "n_reverse_samples", _choice(16, 32, 64)),  # official 64
    Param("lambda_init", "lambda_init", _log_float(0.3, 10.0)),  # temperature (official 5)
    Param("exploration_scale", "exploration_scale", _log_float(0.02, 0.3)),  # noise std / lambda (official 0.1)
)

QVPO_SPACE = (
    *COMMON_SPACE,
    Param("n_policy_samples", "n_policy_samples", _choice(16, 32, 64, 128)),  # N_d (official 64)
    Param("n_behavior_candidates", "n_behavior_candidates", _choice(1, 2, 4, 8, 16)),  # K_b (official 4)
    Param("n_target_candidates", "n_target_candidates", _choice(1, 2, 4, 8, 16)),  # K_t (official 4)
    Param("entropy_weight", "entropy_weight", _log_float(1e-3, 0.1)),  # omega_ent (official 0.02)
)


def _derive_sdac(hyperparams: dict[str, Any]) -> None:
    # The official actor learning rate decays to a tenth of its initial value (3e-4 -> 3e-5)
    if "actor_learning_rate" in hyperparams:
        hyperparams["actor_lr_final"] = hyperparams["actor_learning_rate"] / 10


def _derive_qvpo(hyperparams: dict[str, Any]) -> None:
    # The official entropy weight decays to a tenth of its initial value (0.02 -> 0.002)
    if "entropy_weight" in hyperparams:
        hyperparams["entropy_weight_final"] = hyperparams["entropy_weight"] / 10


def _convert(space: tuple[Param, ...], derive: Callable[[dict[str, Any]], None], params: Mapping[str, Any]) -> dict[str, Any]:
    by_name = {param.name: param for param in space}
    hyperparams: dict[str, Any] = {}
    policy_kwargs: dict[str, Any] = {}
    for name, value in params.items():
        param = by_name.get(name)
        target, value = (param.target, param.convert(value)) if param is not None else (name, value)
        if target.startswith(POLICY_PREFIX):
            policy_kwargs[target[len(POLICY_PREFIX) :]] = value
        else:
            hyperparams[target] = value
    derive(hyperparams)
    if policy_kwargs:
        hyperparams["policy_kwargs"] = policy_kwargs
    return hyperparams


def convert_sdac_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Hyperparameters of SDAC from the parameters an Optuna trial stored (see ``SDAC_SPACE``)."""
    return _convert(SDAC_SPACE, _derive_sdac, params)


def convert_qvpo_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Hyperparameters of QVPO from the parameters an Optuna trial stored (see ``QVPO_SPACE``)."""
    return _convert(QVPO_SPACE, _derive_qvpo, params)


# What the objective of the running trial knows and the sampler needs; one per thread (``--n-jobs``)
_context = threading.local()


@contextmanager
def trial_context(policy_kwargs: Any, pinned: Mapping[str, Any] | None) -> Iterator[None]:
    """
    Within this context, samplers of this thread merge their policy keyword arguments into
    ``policy_kwargs`` (those of the config) and leave the hyperparameters of ``pinned`` alone.
    """
    previous = getattr(_context, "value", None)
    _context.value = (policy_kwargs, dict(pinned or {}))
    try:
        yield
    finally:
        _context.value = previous


def merge_policy_kwargs(base: Any, update: Mapping[str, Any]) -> Any:
    """
    ``base`` (a dict, RL Zoo's string form ``"dict(...)"`` or None) updated with ``update``; a string
    stays a string that RL Zoo evaluates later.
    """
    if base is None:
        return dict(update)
    if isinstance(base, str):
        return f"dict({base}, **{dict(update)!r})"
    return {**base, **update}


def _is_pinned(target: str, pinned: Mapping[str, Any]) -> bool:
    if not target.startswith(POLICY_PREFIX):
        return target in pinned
    if "policy_kwargs" not in pinned:
        return False
    pinned_policy = pinned["policy_kwargs"]
    # A policy_kwargs string is evaluated by RL Zoo later: all of it counts as pinned
    return not isinstance(pinned_policy, Mapping) or target[len(POLICY_PREFIX) :] in pinned_policy


def _sample(
    space: tuple[Param, ...], converter: Callable[[Mapping[str, Any]], dict[str, Any]], trial: optuna.Trial
) -> dict[str, Any]:
    base_policy_kwargs, pinned = getattr(_context, "value", None) or (None, {})
    params = {param.name: param.suggest(trial, param.name) for param in space if not _is_pinned(param.target, pinned)}
    hyperparams = converter(params)
    # Derived values (e.g. the final learning rate) must not override pinned ones either
    for key in [key for key in hyperparams if key != "policy_kwargs" and key in pinned]:
        del hyperparams[key]
    if "gamma" in hyperparams:
        trial.set_user_attr("gamma", hyperparams["gamma"])
    if "batch_size" in hyperparams:
        trial.set_user_attr("batch_size", hyperparams["batch_size"])
    if "policy_kwargs" in hyperparams:
        hyperparams["policy_kwargs"] = merge_policy_kwargs(base_policy_kwargs, hyperparams["policy_kwargs"])
    return hyperparams


def sample_sdac_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    Sampler for SDAC: learning rates, batch size, gamma, tau, network size, diffusion steps, precision,
    number of candidates and of reverse samples, initial temperature ``lambda_init`` and ``exploration_scale``.
    """
    return _sample(SDAC_SPACE, convert_sdac_params, trial)


def sample_qvpo_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    Sampler for QVPO: learning rates, batch size, gamma, tau, network size, diffusion steps, precision, training
    samples per state N_d (``n_policy_samples``), candidates K_b / K_t and the entropy weight.
    """
    return _sample(QVPO_SPACE, convert_qvpo_params, trial)


SAMPLERS = {"sdac": sample_sdac_params, "qvpo": sample_qvpo_params}
CONVERTERS = {"sdac": convert_sdac_params, "qvpo": convert_qvpo_params}
