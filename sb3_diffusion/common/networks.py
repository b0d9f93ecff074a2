"""
Networks of the diffusion policies: sinusoidal time embedding, an exact Mish with a fast inference
path, the noise-prediction MLP with a decomposed first layer, and weight initialisations.
"""

import itertools
import math

import torch as th
from torch import nn
from torch.nn import functional as F

from sb3_diffusion.common.kernels import RowMLP

INITIALIZATIONS = ("haiku", "qvpo", "torch")


def mish_inference(x: th.Tensor) -> th.Tensor:
    """
    Exact Mish for tensors that need no gradient, with one ``exp`` instead of exp, log1p and tanh:
    ``tanh(softplus(x)) = n / (n + 2)`` with ``n = e^x (e^x + 2)``. Clamping at 20 is exact in
    float32 (the ratio is 1 there) and keeps ``n`` finite.
    """
    e = x.clamp(max=20.0).exp_()
    n = (e + 2.0).mul_(e)
    return n.div_(n + 2.0).mul_(x)


class Mish(nn.Mish):
    """
    ``torch.nn.Mish`` that switches to :func:`mish_inference` when autograd is off (sampling and
    Q scoring, where almost all of the activations of an update are computed). Same function,
    same parameters (none), so it is a drop-in replacement.
    """

    def forward(self, x: th.Tensor) -> th.Tensor:
        if th.is_grad_enabled() and x.requires_grad:
            return F.mish(x)
        return mish_inference(x)


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

    def time_table(self, n_steps: int) -> th.Tensor:
        """The time block's contribution to the first layer for t = 0 .. n_steps-1, shape (n_steps, width)."""
        steps = th.arange(n_steps, device=self.features_in.weight.device)
        return self.time_in(self.time_mlp(self.time_embedding(steps)))

    def row_mlp(self, max_rows: int, compiled: bool = False) -> RowMLP:
        """
        The network after its first layer's features and time blocks, as a :class:`RowMLP` for
        ``max_rows`` rows: ``row_mlp(features_part + time_part, x_t)`` is the predicted noise.

        :param max_rows: Largest number of rows of one call
        :param compiled: Use the compiled Mish kernels
        """
        modules = list(self.body)
        return RowMLP(self.action_in.weight, modules[0::2], modules[1::2], max_rows, compiled=compiled)

    def forward(self, features: th.Tensor, x_t: th.Tensor, t: th.Tensor) -> th.Tensor:
        """
        Predict the noise of a batch of rows, each with its own step.

        :param features: Observation features, shape (N, features_dim)
        :param x_t: Noisy actions, shape (N, d)
        :param t: Integer steps, shape (N,)
        :return: Predicted noise, shape (N, d)
        """
        time_part = self.time_in(self.time_mlp(self.time_embedding(t)))
        return self.body(self.features_in(features) + self.action_in(x_t) + time_part)

    def forward_shared(self, features_part: th.Tensor, x_t: th.Tensor, time_part: th.Tensor) -> th.Tensor:
        """
        Predict the noise of ``n`` candidates per state at one shared step, reusing precomputed blocks.

        :param features_part: ``features_in(features)``, shape (B, width)
        :param x_t: Noisy candidates, shape (B, n, d)
        :param time_part: The time block of this step, shape (width,)
        :return: Predicted noise, shape (B, n, d)
        """
        hidden = self.action_in(x_t)
        hidden += features_part[:, None, :]
        hidden += time_part
        return self.body(hidden)
