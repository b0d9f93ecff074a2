"""
Networks of the diffusion policies: the exact Mish (one formula, with a fast form for tensors that need
no gradient), the sinusoidal time embedding, the noise-prediction MLP, weight initialisations, and
the minimum over the twin critics.
"""

import itertools
import math
from typing import Any

import torch as th
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

INITIALIZATIONS = ("haiku", "qvpo", "torch")
# Lower clamp of the exponent in :func:`mish`: e^-87 = 1.6e-38 is still a normal float32 number
MISH_EXP_MIN = -87.0
# Upper clamp of the exponent: tanh(softplus(x)) is 1 in float32 from about x = 9 on
MISH_EXP_MAX = 20.0
# On a CPU, up to this many elements torch's one-kernel F.mish beats the one-exp form's several cheap
# passes (the per-operation overhead dominates), with and without autograd (benchmarks/bench_small_path.py)
SMALL_ACTIVATION_ELEMENTS = 4096


def mish(x: th.Tensor, out: th.Tensor | None = None, scratch: tuple[th.Tensor, th.Tensor] | None = None) -> th.Tensor:
    """
    Exact Mish with one ``exp`` instead of exp, log1p and tanh: ``mish(x) = x tanh(softplus(x)) =
    x n / (n + 2)`` with ``n = e^x (e^x + 2)``. Clamping at 20 before the ``exp`` is exact in float32
    (the ratio is 1 there) and keeps ``n`` finite. Clamping at -87 from below keeps ``e^x`` a normal
    float32 number: below about -87.3 the CPU's vectorised ``exp`` (eager and compiled alike) leaves its
    fast path and runs 10 to 150 times slower, and trained networks do produce such pre-activations
    (docs/performance.md). For x < -87 the result is ``x e^-87`` (size ``|x| 1.6e-38``, below ``2e-34``
    for |x| < 10^4) instead of the exact value, which is a denormal or zero in float32. Not
    differentiable by design (in-place steps): use it where no gradient is needed.

    :param x: Input (not modified unless it is ``out``)
    :param out: Where to write the result (may be ``x``); a new tensor if None
    :param scratch: Two tensors of ``x``'s shape used as work space (allocated if None)
    :return: ``mish(x)``
    """
    t = _tanh_softplus(x, scratch)
    return th.mul(x, t, out=out) if out is not None else t.mul_(x)


def _tanh_softplus(x: th.Tensor, scratch: tuple[th.Tensor, th.Tensor] | None = None) -> th.Tensor:
    """
    ``tanh(softplus(x)) = n / (n + 2)`` with ``n = e^x (e^x + 2)``, the exponent clamped to [-87, 20]
    (see :func:`mish`); written into ``scratch[1]`` if given.
    """
    a, b = scratch if scratch is not None else (th.empty_like(x), th.empty_like(x))
    th.clamp(x, min=MISH_EXP_MIN, max=MISH_EXP_MAX, out=a).exp_()  # e
    th.add(a, 2.0, out=b).mul_(a)  # n = e (e + 2)
    th.add(b, 2.0, out=a)  # n + 2
    return b.div_(a)  # n / (n + 2) = tanh(softplus(x))


def mish_expression(x: th.Tensor) -> th.Tensor:
    """
    :func:`mish` as one expression of out-of-place operations, for ``torch.compile``: the same formula
    and clamps, in the same order (float32 results are identical). Compiled, it fuses into one pass that
    computes in float32 whatever the input's dtype. Compiled from :func:`mish`'s form with scratch
    buffers, the bf16 kernel ran about 4x slower (0.29 against 1.12 G elements/s on a Xeon,
    docs/performance.md); float32 ran at the same speed either way. Eagerly it allocates a tensor per
    operation: use :func:`mish` there.
    """
    e = th.clamp(x, min=MISH_EXP_MIN, max=MISH_EXP_MAX).exp()
    n = e * (e + 2.0)
    return x * (n / (n + 2.0))


class _MishFunction(th.autograd.Function):
    """
    Mish with autograd, from the one-exp form of :func:`mish`: the forward keeps ``t = tanh(softplus(x))``
    and the backward is torch's own formula ``t + x sigmoid(x) (1 - t^2)``. On a CPU in float32, forward
    and backward take 1.1-2.1x less time than ``F.mish``'s from 8,192 elements up (at 128 to 2048 rows
    of 64 and 256 rows of 256; benchmarks/bench_small_path.py); the values agree to float rounding
    (tests/test_diffusion.py).
    """

    @staticmethod
    def forward(ctx: Any, x: th.Tensor) -> th.Tensor:
        t = _tanh_softplus(x)
        ctx.save_for_backward(x, t)
        return x * t

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: th.Tensor) -> th.Tensor:
        x, t = ctx.saved_tensors
        return grad * (1.0 - t * t).mul_(th.sigmoid(x)).mul_(x).add_(t)


def mish_with_grad(x: th.Tensor) -> th.Tensor:
    """
    Mish for the gradient steps: :class:`_MishFunction` for float32 on a CPU above
    ``SMALL_ACTIVATION_ELEMENTS``, ``F.mish`` elsewhere (one fused kernel on accelerators, and fewer
    operations on small tensors).
    """
    if x.device.type == "cpu" and x.dtype == th.float32 and x.numel() > SMALL_ACTIVATION_ELEMENTS:
        return _MishFunction.apply(x)
    return F.mish(x)


class Mish(nn.Mish):
    """
    ``torch.nn.Mish`` that computes :func:`mish` when autograd is off (sampling and Q scoring, where
    almost all of the activations of an update are computed) and :func:`mish_with_grad` otherwise. Same
    function, same parameters (none), so it is a drop-in replacement.
    """

    def forward(self, x: th.Tensor) -> th.Tensor:
        if th.is_grad_enabled() and x.requires_grad:
            return mish_with_grad(x)
        return mish(x)


class SinusoidalEmbedding(nn.Module):
    """
    Sinusoidal embedding of the (integer) diffusion step: ``scale * [sin(t f_j), cos(t f_j)]`` with
    ``f_j = 10000^(-j / (dim / 2 - shift))``, j = 0 .. dim/2 - 1.

    :param dim: Embedding size (even)
    :param shift: 0 gives frequencies ``10000^(-j / (dim/2))`` (SDAC), 1 gives ``10000^(-j / (dim/2 - 1))`` (QVPO)
    :param scale: Factor on the embedding (SDAC: 1/4)
    """

    freqs: th.Tensor

    def __init__(self, dim: int, shift: int = 0, scale: float = 1.0):
        super().__init__()
        if dim < 2 or dim % 2 != 0:
            raise ValueError(f"The time embedding size must be an even integer >= 2, got {dim!r}")
        half = dim // 2
        denominator = max(half - shift, 1)
        self.register_buffer("freqs", th.exp(-math.log(10000.0) * th.arange(half, dtype=th.float32) / denominator))
        self.dim = dim
        self.scale = scale

    def forward(self, t: th.Tensor) -> th.Tensor:
        args = t.float()[:, None] * self.freqs[None]
        return th.cat([args.sin(), args.cos()], dim=-1) * self.scale


def init_linear_(layer: nn.Linear, method: str, fan_in: int | None = None) -> None:
    """
    Initialise a linear layer in place.

    :param layer: The layer
    :param method: ``"haiku"``: truncated normal on [-2, 2] standard deviations with std ``1/sqrt(fan_in)``,
        zero bias (SDAC's Haiku default); ``"qvpo"``: normal with std ``1/(2 sqrt(fan_in))``, zero bias
        (what QVPO's initialiser effectively does); ``"torch"``: PyTorch's default.
    :param fan_in: Fan-in to use (defaults to the layer's input size; the decomposed first layer of
        :class:`NoisePredictionNet` passes the size of the full concatenated input)
    """
    if method not in INITIALIZATIONS:
        raise ValueError(f"Unknown initialisation {method!r}: expected one of {', '.join(INITIALIZATIONS)}")
    fan_in = fan_in or layer.in_features
    if method == "torch":
        # PyTorch's default uses the layer's own fan-in; the bound must use the full input size
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(layer.weight, -bound, bound)
        if layer.bias is not None:
            nn.init.uniform_(layer.bias, -bound, bound)
        return
    with th.no_grad():
        if method == "haiku":
            std = 1.0 / math.sqrt(fan_in)
            nn.init.trunc_normal_(layer.weight, std=std, a=-2.0 * std, b=2.0 * std)
        else:
            nn.init.normal_(layer.weight, std=0.5 / math.sqrt(fan_in))
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


def init_mlp_(module: nn.Module, method: str) -> None:
    """Initialise every ``nn.Linear`` of ``module`` with :func:`init_linear_`."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            init_linear_(layer, method)


class NoisePredictionNet(nn.Module):
    """
    Noise-prediction network ``eps_theta(s, a_t, t)``: an MLP on ``concat(features, a_t, time_mlp(emb(t)))``
    with a linear output of the action size.

    The first layer is stored as three blocks (features, action, time), which is the same function as
    one layer on the concatenation. Sampling uses this: the features block is computed once per state
    and the time block once per step (``t`` is shared by all rows of a step), so only the action block
    and the hidden layers run per candidate and step.

    :param features_dim: Size of the observation features
    :param action_dim: Action size d
    :param net_arch: Hidden layer sizes (at least one layer)
    :param activation_fn: Activation class (hidden layers and the time MLP)
    :param time_embed_dim: Size of the sinusoidal embedding and of the time MLP's output
    :param time_hidden_dim: Hidden size of the time MLP
    :param time_embed_shift: Frequency convention of :class:`SinusoidalEmbedding`
    :param time_embed_scale: Scale of :class:`SinusoidalEmbedding`
    :param init: Initialisation, see :func:`init_linear_`
    """

    def __init__(
        self,
        features_dim: int,
        action_dim: int,
        net_arch: list[int],
        activation_fn: type[nn.Module] = Mish,
        time_embed_dim: int = 16,
        time_hidden_dim: int = 32,
        time_embed_shift: int = 0,
        time_embed_scale: float = 1.0,
        init: str = "haiku",
    ):
        super().__init__()
        if len(net_arch) < 1 or any(int(size) < 1 for size in net_arch):
            raise ValueError(f"The noise network needs at least one hidden layer of positive size, got net_arch={net_arch}")
        self.features_dim = features_dim
        self.action_dim = action_dim
        self.time_embedding = SinusoidalEmbedding(time_embed_dim, shift=time_embed_shift, scale=time_embed_scale)
        self.time_mlp = nn.Sequential(
            nn.Linear(time_embed_dim, time_hidden_dim), activation_fn(), nn.Linear(time_hidden_dim, time_embed_dim)
        )
        width = net_arch[0]
        self.features_in = nn.Linear(features_dim, width)  # carries the first layer's bias
        self.action_in = nn.Linear(action_dim, width, bias=False)
        self.time_in = nn.Linear(time_embed_dim, width, bias=False)
        layers: list[nn.Module] = [activation_fn()]
        for size_in, size_out in itertools.pairwise(net_arch):
            layers += [nn.Linear(size_in, size_out), activation_fn()]
        layers.append(nn.Linear(net_arch[-1], action_dim))
        self.body = nn.Sequential(*layers)

        init_mlp_(self.time_mlp, init)
        init_mlp_(self.body, init)
        first_fan_in = features_dim + action_dim + time_embed_dim
        for block in (self.features_in, self.action_in, self.time_in):
            init_linear_(block, init, fan_in=first_fan_in)

    def time_part(self, t: th.Tensor) -> th.Tensor:
        """The time block's contribution to the first layer at integer steps ``t`` (shape (N,)): shape (N, width)."""
        return self.time_in(self.time_mlp(self.time_embedding(t)))

    def forward(self, features: th.Tensor, x_t: th.Tensor, t: th.Tensor, n_steps: int | None = None) -> th.Tensor:
        """
        Predict the noise of a batch of rows, each with its own step.

        :param features: Observation features, shape (N, features_dim)
        :param x_t: Noisy actions, shape (N, d)
        :param t: Integer steps, shape (N,)
        :param n_steps: If given, every step is in ``[0, n_steps)``, and with more rows than steps the
            time block is computed once per step and gathered for the rows (the same function, and the
            same gradient up to float rounding): a training batch of N rows then runs the time MLP on
            ``n_steps`` rows instead of N (QVPO's is 256 wide)
        :return: Predicted noise, shape (N, d)
        """
        if n_steps is not None and t.shape[0] > n_steps:
            time_part = self.time_part(th.arange(n_steps, device=t.device))[t]
        else:
            time_part = self.time_part(t)
        return self.body(self.features_in(features) + self.action_in(x_t) + time_part)


def min_q(critic: nn.Module, obs: PyTorchObs, actions: th.Tensor) -> th.Tensor:
    """
    Both critics, take the minimum: ``min_i Q_i(obs, actions)``.

    :param critic: The critics: ``critic(obs, actions)`` gives one (N, 1) tensor per critic
    :param obs: Observations, batch of N; or of B with K candidates per state
    :param actions: Actions, (N, d); or (B, K, d), K candidate actions per state
    :return: (N,), or (B, K)
    """
    if actions.dim() == 3:
        batch_size, n_candidates, action_dim = actions.shape
        flat = actions.reshape(batch_size * n_candidates, action_dim)
        return min_q(critic, repeat_obs(obs, n_candidates), flat).view(batch_size, n_candidates)
    return th.cat(critic(obs, actions), dim=1).min(dim=1).values


def repeat_obs(obs: PyTorchObs, n: int) -> PyTorchObs:
    """Repeat each observation ``n`` times along the batch (row b*n + j is state b)."""
    if isinstance(obs, dict):
        return {key: value.repeat_interleave(n, dim=0) for key, value in obs.items()}
    return obs.repeat_interleave(n, dim=0)
