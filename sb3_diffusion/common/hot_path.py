"""
The seam between the plain computation and its fast paths.

Almost all of the time of an update goes to two operations, with autograd off: the **sampling chain**
(K reverse chains per state through the noise network) and the **critics' scoring of candidates**
(the minimum over the critics of Q on K candidate actions per state). Their plain computations are
:meth:`DiffusionActor.sample <sb3_diffusion.common.policies.DiffusionActor.sample>` and
:func:`~sb3_diffusion.common.networks.min_q`. :class:`HotPath` is the one entry point of each
(:meth:`HotPath.sample`, :meth:`HotPath.min_q`); :meth:`HotPath.select` is the one place where an
implementation is chosen, and every implementation returns the plain computation's numbers up to
float rounding (``tests/test_speed_equivalence.py`` compares each with it):

- ``"plain"``: the plain computation itself (networks of another structure; autograd on);
- ``"chunked"``: the first layer's per-state part (observation block, and for the noise network the
  time block of each step) computed once per state, then only the action block and the hidden layers
  per row, in cache-sized chunks of whole states through buffers allocated once
  (:class:`~sb3_diffusion.common.kernels.RowMLP`; eager activations, oneDNN for large chunks on CPU,
  with a ReLU fused into oneDNN's matmul). In large scorings, candidates exactly at a corner of the
  action box (SDAC's clamped reverse samples) are scored once per state and corner;
- ``"chunked_compiled"``: the same with ``torch.compile``'d fused bias+Mish kernels (large calls on CPU);
- ``"compiled"``: the whole chain, or the whole scoring, as one compiled function (small calls on CPU: acting);
- ``"cuda_graph"``: the chunked chain captured once per shape as a CUDA graph and replayed (CUDA).

The building blocks live in :mod:`sb3_diffusion.common.kernels`; the plain modules (``diffusion``,
``networks``, ``policies``) do not use them.

The precision of the fast paths is a property of this seam (``precision``):

- ``"fp32"`` (default): every path computes the plain computation's numbers up to float rounding;
- ``"bf16"``: the fast paths run the noise network's and the critics' first and hidden layers in
  bfloat16 (bf16 copies of the weights cast once per call; matmuls accumulate in fp32 inside oneDNN /
  cuBLAS; Mish on bf16 tensors), where the device has hardware bf16
  (:func:`~sb3_diffusion.common.kernels.fast_bf16_available`); elsewhere it warns once and runs fp32.
  The chain state ``x``, the per-state parts of the first layers, the schedule's arithmetic, the
  output layers (the predicted noise, the Q values) and everything after them (minimum over the
  critics, argmax, softmax weights) stay fp32. The ``"plain"`` path (autograd on, other network
  structures) is always fp32, and so are all gradient steps;
- ``"bf16_chains"``: the sampling chains as in ``"bf16"``, the critics' scoring in fp32 (the scoring
  is where bf16 moves what the algorithms compute most: ``benchmarks/precision_audit.py``).
"""

import functools
import warnings
from typing import Any, NamedTuple

import torch as th
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import nn
from torch.nn import functional as F

from sb3_diffusion.common import kernels
from sb3_diffusion.common.kernels import (
    COMPILE_MODES,
    COMPUTE_DTYPES,
    CompileFailed,
    RowMLP,
    chunk_rows_for,
    chunk_states,
    fast_bf16_available,
    split_mlp,
)
from sb3_diffusion.common import networks
from sb3_diffusion.common.networks import NoisePredictionNet

PATHS = ("plain", "chunked", "chunked_compiled", "compiled", "cuda_graph")
# The compute dtype of each operation ("sample": the chains, "min_q": the scoring), by precision
OPERATION_DTYPES = {
    "fp32": {"sample": "fp32", "min_q": "fp32"},
    "bf16": {"sample": "bf16", "min_q": "bf16"},
    "bf16_chains": {"sample": "bf16", "min_q": "fp32"},
}
PRECISIONS = tuple(OPERATION_DTYPES)
# Devices (by type) on which the fallback of a reduced precision has been reported in this process
_WARNED_FALLBACK: set[str] = set()

__all__ = ["COMPILE_MODES", "PATHS", "PRECISIONS", "HotPath"]


class HotPath:
    """
    The entry points of the two hot operations, and the choice of their implementation.

    One per policy (not an ``nn.Module``: nothing in it is saved; copies start with empty caches).

    :param compile_mode: ``"auto"``, ``"on"`` or ``"off"``: whether the fast paths use ``torch.compile``
        (CPU) or CUDA graphs (CUDA). ``"auto"`` compiles on CPU only for large calls and for the small
        calls of networks at least ``kernels.AUTO_CHAIN_MIN_WIDTH`` wide; the environment variable
        ``SB3_DIFFUSION_COMPILE`` overrides it.
    :param precision: Arithmetic of the fast paths: ``"fp32"`` (the plain computation's numbers),
        ``"bf16"`` (bfloat16 matmuls and activations in the sampling chains and the critics' scoring of
        candidates, on devices with hardware bf16; fp32 with a warning elsewhere) or ``"bf16_chains"``
        (the chains in bf16, the scoring in fp32)
    """

    def __init__(self, compile_mode: str = "auto", precision: str = "fp32"):
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"Unknown compile_mode {compile_mode!r}: expected one of {', '.join(map(repr, COMPILE_MODES))}")
        if precision not in PRECISIONS:
            raise ValueError(f"Unknown precision {precision!r}: expected one of {', '.join(map(repr, PRECISIONS))}")
        self.compile_mode = compile_mode
        self.precision = precision
        # Graphs of the chains of every actor of the policy (their keys hold the parameters' storage)
        self.cuda_graphs = kernels.CudaGraphCache(max_graphs=16)

    def __getstate__(self) -> dict[str, Any]:
        return dict(compile_mode=self.compile_mode, precision=self.precision)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def __deepcopy__(self, memo: dict) -> "HotPath":
        return HotPath(self.compile_mode, self.precision)

    def compute_dtype(self, device: th.device, operation: str = "sample") -> th.dtype:
        """
        The dtype the fast path of ``operation`` (``"sample"`` or ``"min_q"``) computes in on ``device``:
        ``precision``'s, or float32 (with a warning, once per process and device type) where a reduced
        precision has no hardware support.
        """
        dtype = COMPUTE_DTYPES[OPERATION_DTYPES[self.precision][operation]]
        if dtype is th.float32 or fast_bf16_available(device):
            return dtype
        if device.type not in _WARNED_FALLBACK:
            _WARNED_FALLBACK.add(device.type)
            warnings.warn(
                f"sb3_diffusion: precision={self.precision!r} needs hardware bf16 (a CPU with AVX512-BF16 or AMX, "
                f"or a CUDA GPU with bf16 support), which this {device.type} device lacks: sampling and scoring "
                "run in fp32 instead (same results as precision='fp32').",
                stacklevel=3,
            )
        return th.float32

    def select(self, operation: str, device: th.device, rows: int, width: int, activations: list[nn.Module] | None) -> str:
        """
        The implementation of one call; the only place where one is chosen. It depends only on the
        settings, the shapes and the network's structure, so the same call always takes the same path.

        :param operation: ``"sample"`` (the sampling chain) or ``"min_q"`` (the scoring of candidates)
        :param device: Device of the call
        :param rows: States times candidates
        :param width: Width of the network's first hidden layer
        :param activations: The network's hidden activations, or None if its structure has no fast path
        :return: One of :data:`PATHS`
        """
        if activations is None or (operation == "min_q" and th.is_grad_enabled()):
            return "plain"
        mode = kernels.resolve_compile_mode(self.compile_mode)
        if device.type == "cuda" and operation == "sample" and mode != "off":
            return "cuda_graph"
        all_mish = all(isinstance(activation, nn.Mish) for activation in activations)
        if mode == "off" or device.type != "cpu" or not all_mish or not kernels.compiled_kernels_available():
            return "chunked"
        if rows <= kernels.SMALL_CHAIN_ROWS and (mode == "on" or width >= kernels.AUTO_CHAIN_MIN_WIDTH):
            return "compiled"
        if mode == "on" or rows * width >= kernels.AUTO_COMPILE_MIN_ELEMENTS:
            return "chunked_compiled"
        return "chunked"

    # -----------------------------------------------------------------------------------------------
    # The sampling chain
    # -----------------------------------------------------------------------------------------------

    def sample(self, actor: Any, obs: PyTorchObs, n_samples: int, noise: th.Tensor | None = None) -> th.Tensor:
        """
        :meth:`DiffusionActor.sample <sb3_diffusion.common.policies.DiffusionActor.sample>`, fast:
        ``n_samples`` actions per state, all candidates of all states in one batch.

        :param actor: A ``DiffusionActor``
        :param obs: Observations, batch of B
        :param n_samples: Samples per state K
        :param noise: Optional chain noise from ``actor.draw_chain_noise`` (drawn here if None)
        :return: Actions in [-1, 1], shape (B, K, d) (a normal tensor, not an inference one)
        """
        with th.inference_mode():
            features = actor.extract_features(obs, actor.features_extractor)
            if noise is None:
                noise = actor.draw_chain_noise(features.shape[0], n_samples)
            layers = _noise_net_layers(actor.noise_net)
            activations = None if layers is None else layers[2]
            width = 0 if layers is None else actor.noise_net.features_in.out_features
            rows = noise.shape[1] * noise.shape[2]
            select = functools.partial(self.select, "sample", noise.device, rows, width, activations)
            try:
                x = self._sample(select(), actor, obs, features, noise, layers)
            except CompileFailed:  # compilation is now off for this process: choose again
                x = self._sample(select(), actor, obs, features, noise, layers)
        return x.clone()

    def _sample(self, path: str, actor: Any, obs: PyTorchObs, features: th.Tensor, noise: th.Tensor, layers: Any) -> th.Tensor:
        if path == "plain":
            return actor.sample(obs, noise.shape[2], noise=noise)
        dtype = self.compute_dtype(noise.device, "sample")
        net: NoisePredictionNet = actor.noise_net
        features_part = net.features_in(features)  # (B, W): the observation block, with the first layer's bias
        steps = th.as_tensor(actor.sampling_timesteps, device=features_part.device)
        step_parts = net.time_part(steps)  # (S, W): the time block of each sampling step (the network sees its original step)
        if path == "cuda_graph":
            # a new graph when a shape or the storage of a parameter changes (e.g. after .to(device))
            key = (tuple(noise.shape), noise.dtype, noise.device, dtype, *(p.data_ptr() for p in net.parameters()))
            chain = functools.partial(_chunked_chain, actor, layers, compiled=False, dtype=dtype)
            return self.cuda_graphs(key, chain, [features_part, step_parts, noise])
        if path == "compiled":
            return _compiled_chain(actor, layers, features_part, step_parts, noise, dtype)
        return _chunked_chain(
            actor, layers, features_part, step_parts, noise, compiled=path == "chunked_compiled", dtype=dtype
        )

    # -----------------------------------------------------------------------------------------------
    # The critics' scoring of candidates
    # -----------------------------------------------------------------------------------------------

    def min_q(self, critic: nn.Module, obs: PyTorchObs, candidates: th.Tensor) -> th.Tensor:
        """
        :func:`~sb3_diffusion.common.networks.min_q` of K candidate actions per state, fast: each
        state's observation block of the critics' first layer computed once for its K candidates.
        With autograd on, the plain computation.

        :param critic: The critics (SB3's ``ContinuousCritic``; any other module gets the plain computation)
        :param obs: Observations, batch of B
        :param candidates: Actions, shape (B, K, d)
        :return: ``min_i Q_i``, shape (B, K)
        """
        blocks = _critic_blocks(critic)
        batch_size, n_candidates, _ = candidates.shape
        activations = None if blocks is None else [act for _, acts in blocks for act in acts]
        width = 0 if blocks is None else blocks[0][0][0].out_features
        select = functools.partial(self.select, "min_q", candidates.device, batch_size * n_candidates, width, activations)
        path = select()
        if path == "plain":
            return networks.min_q(critic, obs, candidates)
        dtype = self.compute_dtype(candidates.device, "min_q")
        with th.inference_mode():
            features = critic.extract_features(obs, critic.features_extractor)  # type: ignore[operator]
            try:
                q_values = _scoring(path, blocks, features, candidates, dtype)
            except CompileFailed:  # compilation is now off for this process: choose again
                q_values = _scoring(select(), blocks, features, candidates, dtype)
        return q_values.clone()


# ---------------------------------------------------------------------------------------------------
# Implementations of the sampling chain
# ---------------------------------------------------------------------------------------------------


def _noise_net_layers(net: nn.Module) -> tuple[th.Tensor, list[nn.Linear], list[nn.Module]] | None:
    """(action block of the first layer, the body's linear layers, its activations), or None if ``net`` has no fast path."""
    if not isinstance(net, NoisePredictionNet):
        return None
    body = list(net.body)
    activations, linears = body[0::2], body[1::2]
    plain_linears = all(isinstance(layer, nn.Linear) and layer.bias is not None for layer in linears)
    if not plain_linears or len(activations) != len(linears):
        return None
    return net.action_in.weight, linears, activations  # type: ignore[return-value]


def _chunked_chain(
    actor: Any,
    layers: Any,
    features_part: th.Tensor,
    step_parts: th.Tensor,
    noise: th.Tensor,
    compiled: bool,
    dtype: th.dtype = th.float32,
) -> th.Tensor:
    """
    The reverse chains of all candidates, chunk by chunk of whole states: every chunk runs its full
    chain in buffers that stay in the CPU caches (rows are independent, so chunking changes nothing).

    :param features_part: The observation block of the first layer, bias included, (B, W)
    :param step_parts: The time block of each sampling step, (S, W)
    :param noise: Chain noise, (S, B, K, d)
    :param dtype: Compute dtype of the network's first and hidden layers (x and the schedule stay fp32)
    :return: x_0, shape (B, K, d)
    """
    schedule = actor.sampling_schedule
    first_weight, linears, activations = layers
    _, batch_size, n_samples, action_dim = noise.shape
    device = features_part.device
    chunks = chunk_states(batch_size, n_samples, chunk_rows_for(device))
    max_rows = max(stop - start for start, stop in chunks) * n_samples
    mlp = RowMLP(first_weight, activations, linears, max_rows, compiled=compiled, dtype=dtype)
    out = None if len(chunks) == 1 else th.empty((batch_size, n_samples, action_dim), device=device, dtype=noise.dtype)
    for start, stop in chunks:
        # features and time blocks of every step of this chunk at once: (S, b, W)
        state_parts = (features_part[start:stop].unsqueeze(0) + step_parts.unsqueeze(1)).to(dtype)
        x = noise[0, start:stop] * actor.init_noise_scale
        for i in reversed(range(noise.shape[0])):
            eps = mlp(state_parts[i], x).view_as(x)
            x = schedule.reverse_step(x, i, eps, noise[i, start:stop])
        if out is None:
            return x
        out[start:stop] = x
    assert out is not None
    return out


def _compiled_chain(
    actor: Any, layers: Any, features_part: th.Tensor, step_parts: th.Tensor, noise: th.Tensor, dtype: th.dtype = th.float32
) -> th.Tensor:
    """The whole reverse chain as one compiled function (small chains of Mish networks on CPU)."""
    schedule = actor.sampling_schedule
    first_weight, linears, _ = layers
    coefficients = th.stack(
        [
            schedule.sqrt_recip_alphas_cumprod,
            schedule.sqrt_recipm1_alphas_cumprod,
            schedule.posterior_mean_coef1,
            schedule.posterior_mean_coef2,
            schedule.posterior_std,
        ],
        dim=1,
    )  # (S, 5): the fields of StepCoefficients
    return kernels.COMPILED(  # type: ignore[return-value]
        "chain",
        features_part.unsqueeze(0) + step_parts.unsqueeze(1),
        noise[0] * actor.init_noise_scale,
        noise,
        coefficients,
        first_weight,
        [layer.weight for layer in linears],
        [layer.bias for layer in linears],
        dtype,
    )


# ---------------------------------------------------------------------------------------------------
# Implementations of the scoring of candidates
# ---------------------------------------------------------------------------------------------------


def _critic_blocks(critic: nn.Module) -> list[tuple[list[nn.Linear], list[nn.Module]]] | None:
    """The layers of each Q network if all are plain MLPs with at least one hidden layer, else None."""
    q_networks = getattr(critic, "q_networks", None)
    if not isinstance(q_networks, (list, nn.ModuleList)) or not q_networks or not hasattr(critic, "extract_features"):
        return None
    blocks = []
    for q_net in q_networks:
        parts = split_mlp(q_net)
        if parts is None or len(parts[0]) < 2:
            return None
        blocks.append(parts)
    return blocks


def _scoring(path: str, blocks: Any, features: th.Tensor, actions: th.Tensor, dtype: th.dtype = th.float32) -> th.Tensor:
    """
    min_i Q_i on (B, K) candidates with the observation block of each critic once per state; the
    hidden layers in ``dtype``, the observation block, the output layer and the minimum in fp32. A
    large call whose candidates are often at corners of the action box scores each (state, corner)
    pair once (:func:`_corner_plan`): the same values, on fewer rows.
    """
    batch_size, n_candidates, _ = actions.shape
    features_dim = features.shape[1]
    # Q(s, a) = ... act(W_s s + W_a a + b): the observation block, with the bias, once per state
    state_parts = [F.linear(features, linears[0].weight[:, :features_dim], linears[0].bias) for linears, _ in blocks]
    first_weights = [linears[0].weight[:, features_dim:] for linears, _ in blocks]
    if path == "compiled":
        return kernels.COMPILED(  # type: ignore[return-value]
            "min_q",
            state_parts,
            actions,
            first_weights,
            [[layer.weight for layer in linears[1:]] for linears, _ in blocks],
            [[layer.bias for layer in linears[1:]] for linears, _ in blocks],
            dtype,
        )
    compiled = path == "chunked_compiled"
    # CPU only: measured there; on CUDA the plan's nonzero and unique would each be a host sync
    if actions.device.type == "cpu" and batch_size * n_candidates >= kernels.DEDUPE_MIN_ROWS:
        plan = _corner_plan(actions)
        if plan is not None:
            return _scoring_distinct(plan, blocks, state_parts, first_weights, actions, compiled, dtype)
    chunks = chunk_states(batch_size, n_candidates, chunk_rows_for(actions.device))
    max_rows = max(stop - start for start, stop in chunks) * n_candidates
    mlps = [
        RowMLP(first_weight, activations, linears[1:], max_rows, compiled=compiled, dtype=dtype)
        for first_weight, (linears, activations) in zip(first_weights, blocks, strict=True)
    ]
    out = th.empty((batch_size, n_candidates), device=actions.device, dtype=actions.dtype)
    for start, stop in chunks:
        target = out[start:stop]
        for index, (mlp, state_part) in enumerate(zip(mlps, state_parts, strict=True)):
            q_values = mlp(state_part[start:stop], actions[start:stop]).view(stop - start, n_candidates)
            if index == 0:
                target.copy_(q_values)
            else:
                th.minimum(target, q_values, out=target)
    return out


class _CornerPlan(NamedTuple):
    """The distinct rows of a scoring whose candidates include many at corners of the action box."""

    rows: th.Tensor  # (n, d): every candidate not at a corner, then each (state, corner) pair once
    states: th.Tensor  # (n,): the state of each row
    other_index: th.Tensor  # flat (B * K) indices of the candidates not at a corner: the first rows
    corner_index: th.Tensor  # flat indices of the candidates at a corner
    inverse: th.Tensor  # for each of those, its row among the corner rows
    n_others: int


def _corner_plan(actions: th.Tensor) -> _CornerPlan | None:
    """
    Candidates exactly at a corner of [-1, 1]^d (every coordinate -1 or 1: clamped samples, such as
    SDAC's reverse samples at large t, about half of them) have the same Q value whenever they share
    a state and a corner: the plan scores each (state, corner) pair once. None if that saves less than
    ``kernels.DEDUPE_MIN_SAVING`` of the rows.
    """
    batch_size, n_candidates, action_dim = actions.shape
    total = batch_size * n_candidates
    if action_dim > 62 - batch_size.bit_length():  # (state, corner) codes must fit in an int64
        return None
    flat = actions.reshape(total, action_dim)
    at_corner = (flat.abs() == 1.0).all(dim=1)
    corner_index = at_corner.nonzero().squeeze(1)
    n_corner = corner_index.numel()
    if n_corner < kernels.DEDUPE_MIN_SAVING * total:
        return None
    device = actions.device
    bit_positions = th.arange(action_dim, device=device)
    corner_bits = (flat.index_select(0, corner_index) > 0).long()
    codes = th.bitwise_left_shift(corner_bits, bit_positions).sum(dim=1)
    codes += th.bitwise_left_shift(th.div(corner_index, n_candidates, rounding_mode="floor"), action_dim)
    unique_codes, inverse = th.unique(codes, sorted=True, return_inverse=True)
    if n_corner - unique_codes.numel() < kernels.DEDUPE_MIN_SAVING * total:
        return None
    bits = th.bitwise_and(th.bitwise_right_shift(unique_codes.unsqueeze(1), bit_positions), 1)
    corners = bits.to(actions.dtype) * 2.0 - 1.0  # exactly the candidates' -1 and 1
    other_index = (~at_corner).nonzero().squeeze(1)
    rows = th.cat([flat.index_select(0, other_index), corners])
    other_states = th.div(other_index, n_candidates, rounding_mode="floor")
    states = th.cat([other_states, th.bitwise_right_shift(unique_codes, action_dim)])
    return _CornerPlan(rows, states, other_index, corner_index, inverse, other_index.numel())


def _scoring_distinct(
    plan: _CornerPlan,
    blocks: Any,
    state_parts: list[th.Tensor],
    first_weights: list[th.Tensor],
    actions: th.Tensor,
    compiled: bool,
    dtype: th.dtype,
) -> th.Tensor:
    """min_i Q_i of the plan's rows, chunk by chunk (each row's state part gathered), spread back to (B, K)."""
    state_parts = [state_part.to(dtype) for state_part in state_parts]  # cast once, gathered per chunk
    n_rows = plan.rows.shape[0]
    chunk_rows = min(chunk_rows_for(actions.device), n_rows)
    mlps = [
        RowMLP(first_weight, activations, linears[1:], chunk_rows, compiled=compiled, dtype=dtype)
        for first_weight, (linears, activations) in zip(first_weights, blocks, strict=True)
    ]
    row_q = th.empty(n_rows, device=actions.device, dtype=actions.dtype)
    for start in range(0, n_rows, chunk_rows):
        stop = min(start + chunk_rows, n_rows)
        target = row_q[start:stop]
        for index, (mlp, state_part) in enumerate(zip(mlps, state_parts, strict=True)):
            q_values = mlp(state_part, plan.rows[start:stop], state_index=plan.states[start:stop]).view(stop - start)
            if index == 0:
                target.copy_(q_values)
            else:
                th.minimum(target, q_values, out=target)
    out = th.empty(actions.shape[0] * actions.shape[1], device=actions.device, dtype=actions.dtype)
    out.index_copy_(0, plan.other_index, row_q[: plan.n_others])
    out.index_copy_(0, plan.corner_index, row_q[plan.n_others :].index_select(0, plan.inverse))
    return out.view(actions.shape[:2])
