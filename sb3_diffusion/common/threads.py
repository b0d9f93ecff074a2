"""
The number of CPU threads that ``learn()`` runs on.

Small configurations (the Pendulum quick start: [64, 64] networks, batches of 64-128, a few candidates)
run thousands of small eager operations per second on tensors of a few ten thousand elements. torch
splits each of them over all its threads, which on an idle machine gains nothing at these sizes, and on
a busy one (two runs at once on two cores: two seeds, the most ordinary thing an RL user does) makes
every operation wait for a thread that the other process holds: two quick starts at once took 9x as
long as one alone with torch's default thread count, and no longer than one alone on one thread each.
Large configurations (the official settings: 256-wide networks, chunks of 2048 rows) do gain from more
threads (1.7-2.0x from two, ``docs/performance.md``).

So, unless the user chose a thread count, :meth:`DiffusionOffPolicyAlgorithm.learn
<sb3_diffusion.common.off_policy.DiffusionOffPolicyAlgorithm.learn>` runs small work on one thread and
restores the caller's count when it returns (also on an exception). The rule, :func:`choose_threads`:

1. ``SB3_DIFFUSION_THREADS`` (environment): ``keep`` (or ``off``) leaves torch's thread count alone; a positive
   integer N runs ``learn()`` on N threads whatever the work; ``auto`` or unset: the rules below.
2. The device is not the CPU: left alone (the work runs on the accelerator).
3. ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` is set: the user's choice, left alone.
4. ``torch.get_num_threads()`` differs from torch's default, taken as the count torch had when
   ``sb3_diffusion`` was first imported: the user called ``torch.set_num_threads`` (RL Zoo's
   ``--num-threads N`` does), left alone.
5. The largest batched operation of one update (rows of one cache-sized chunk times the width of the
   network, see :func:`work_elements`) has fewer than :data:`SMALL_WORK_ELEMENTS` elements: one thread.
6. Otherwise: left alone (torch's default, all cores).

Edge cases: a count set explicitly to the same number as torch's default (``--num-threads 2`` on two
cores) cannot be told from the default and counts as not set; a count set *before* ``sb3_diffusion``
was first imported is taken for the default (RL Zoo imports it before it reads ``--num-threads``, so
the zoo's option is always seen). In both cases small work runs on one thread; set
``SB3_DIFFUSION_THREADS=keep`` (or ``OMP_NUM_THREADS``) to keep the count. The choice changes no
result: the same seed gives the same actions on any thread count (tested on small networks, whose
operations torch does not split; large reductions may differ in the last bits between thread counts,
as in any torch program).
"""

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch as th
from torch import nn

from sb3_diffusion.common.kernels import DEFAULT_CHUNK_ROWS, chunk_states

ENV_VAR = "SB3_DIFFUSION_THREADS"
# Environment variables by which torch's thread count is the user's (torch reads them at start-up)
USER_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# torch's thread count when this module was first imported: its default, unless set before that
DEFAULT_THREADS = th.get_num_threads()
# Below this many elements in the largest batched operation of an update, one thread. Measured on
# 2-core Xeon and EPYC VMs: the quick starts (65k-131k elements: 1024 rows x 64 for the chains, 2048 x 64
# for SDAC's scoring) run no faster on two threads than on one alone, and 9x slower on two threads with
# a second run beside them; the official settings (2048 x 256 = 524k) run 1.7-2.0x faster on two. The
# threshold sits between them, at the size from which the fast paths compile their kernels
# (``kernels.AUTO_COMPILE_MIN_ELEMENTS``): below it every operation is a few eager passes of tens of
# microseconds, where splitting costs about what it saves. `benchmarks/bench_threads.py --sweep`
# measures the crossing on the machine it runs on.
SMALL_WORK_ELEMENTS = 1 << 18


class ThreadChoice(NamedTuple):
    """What ``learn()`` did with torch's thread count (``model.thread_choice``)."""

    num_threads: int  # the count learn() ran on
    previous: int  # the caller's count, restored after learn()
    reason: str  # why, in words


def work_elements(calls: Iterable[tuple[int, int, int]], chunk_rows: int = DEFAULT_CHUNK_ROWS) -> int:
    """
    Elements of the largest batched operation among ``calls``: for each, the rows of its largest
    cache-sized chunk of whole states (as the fast paths split it) times the network's width.

    :param calls: ``(states, rows per state, width)`` of each batched call of one update
    :param chunk_rows: Rows per chunk of the fast paths on CPU
    """
    largest = 0
    for states, per_state, width in calls:
        if states < 1 or per_state < 1:
            continue
        rows = max(stop - start for start, stop in chunk_states(states, per_state, chunk_rows)) * per_state
        largest = max(largest, rows * width)
    return largest


def network_width(module: nn.Module) -> int:
    """
    The largest output size of the linear layers that run per candidate row in ``module`` (the width of
    an MLP's hidden layers). A noise network's time MLP runs once per diffusion step, not per row, and
    is left out.
    """
    return max(
        (
            layer.out_features
            for name, layer in module.named_modules()
            if isinstance(layer, nn.Linear) and "time_mlp" not in name.split(".")
        ),
        default=0,
    )


def _user_env() -> str | None:
    for name in USER_ENV_VARS:
        if os.environ.get(name, "").strip():
            return f"{name}={os.environ[name].strip()}"
    return None


def choose_threads(device: th.device, elements: int) -> ThreadChoice:
    """
    The thread count for ``learn()`` (the rule is in this module's docstring).

    :param device: The model's device
    :param elements: Elements of the largest batched operation of one update (:func:`work_elements`)
    """
    current = th.get_num_threads()
    setting = os.environ.get(ENV_VAR, "").strip().lower()
    if setting in ("keep", "off"):
        return ThreadChoice(current, current, f"{ENV_VAR}={setting}: torch's count kept")
    if setting not in ("", "auto"):
        if not setting.isdigit() or int(setting) < 1:
            raise ValueError(f"{ENV_VAR}={setting!r} is not valid: expected auto, keep or a positive integer")
        return ThreadChoice(int(setting), current, f"{ENV_VAR}={setting}")
    if device.type != "cpu":
        return ThreadChoice(current, current, f"device {device.type}: torch's count kept")
    user_env = _user_env()
    if user_env is not None:
        return ThreadChoice(current, current, f"{user_env} (the user's count, kept)")
    if current != DEFAULT_THREADS:
        return ThreadChoice(current, current, f"torch.set_num_threads({current}) (the user's count, kept)")
    if current == 1:
        return ThreadChoice(1, 1, "torch's default is one thread")
    if elements < SMALL_WORK_ELEMENTS:
        reason = (
            f"small work ({elements:,} elements in the largest batched operation, below {SMALL_WORK_ELEMENTS:,}): "
            f"one thread instead of torch's default {current}; set {ENV_VAR}=keep or torch.set_num_threads() to choose"
        )
        return ThreadChoice(1, current, reason)
    reason = f"large work ({elements:,} elements in the largest batched operation): torch's default {current} threads"
    return ThreadChoice(current, current, reason)


@contextmanager
def thread_scope(num_threads: int) -> Iterator[None]:
    """torch's thread count set to ``num_threads`` inside the block and restored after it (also on an exception)."""
    previous = th.get_num_threads()
    if num_threads == previous:
        yield
        return
    th.set_num_threads(num_threads)
    try:
        yield
    finally:
        th.set_num_threads(previous)
