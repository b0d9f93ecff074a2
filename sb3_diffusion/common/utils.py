"""Argument checks with error messages that name the argument and what is allowed, and the observation seed."""

import hashlib
import numbers

import numpy as np
from gymnasium import spaces


def check_int(name: str, value: object, minimum: int = 1) -> int:
    """Return ``value`` as an int, or raise a ValueError unless it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_float(name: str, value: object, minimum: float = 0.0, strict: bool = True, maximum: float | None = None) -> float:
    """Return ``value`` as a float, or raise a ValueError unless it is a finite number in range."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(float(value))
    if ok:
        value = float(value)  # type: ignore[arg-type]
        ok = value > minimum if strict else value >= minimum
        ok = ok and (maximum is None or value <= maximum)
    if not ok:
        bound = f"> {minimum}" if strict else f">= {minimum}"
        upper = f" and <= {maximum}" if maximum is not None else ""
        raise ValueError(f"{name} must be a finite number {bound}{upper}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """Raise a ValueError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}: expected one of {', '.join(repr(c) for c in choices)}")
    return str(value)


def check_action_space(action_space: spaces.Space) -> None:
    """Diffusion policies need a bounded continuous (Box) action space."""
    if not isinstance(action_space, spaces.Box):
        raise ValueError(
            f"Diffusion policies need a continuous Box action space, got {action_space}. "
            "Discrete, MultiDiscrete and MultiBinary action spaces are not supported."
        )
    if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
        raise ValueError(
            f"Diffusion policies need a bounded Box action space (finite low and high), got {action_space}: "
            "the policy samples in [-1, 1] and rescales to [low, high]. Give the space finite bounds, "
            "for example with gymnasium.wrappers.ClipAction or RescaleAction."
        )


def check_observation_space(observation_space: spaces.Space) -> None:
    """The policies' networks take one flat vector per state: no Dict or Tuple observations."""
    if isinstance(observation_space, (spaces.Dict, spaces.Tuple)):
        kind = type(observation_space).__name__
        raise ValueError(
            f"Diffusion policies take one flat observation vector, got a {kind} observation space "
            f"{observation_space}. Flatten it, for example with gymnasium.wrappers.FlattenObservation "
            "(there is no MultiInputPolicy)."
        )


def observation_seed(observation: np.ndarray) -> int:
    """A 64-bit seed that depends only on the bytes of one observation (float32)."""
    data = np.ascontiguousarray(observation, dtype=np.float32).tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") & ((1 << 63) - 1)
