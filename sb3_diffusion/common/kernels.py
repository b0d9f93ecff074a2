"""
The fast paths' building blocks (used only by :mod:`sb3_diffusion.common.hot_path`, which chooses
between them): MLPs evaluated on many rows that share a per-state part of their first layer, with
autograd off. They compute the same function as the plain networks:

- the first layer is split into a per-state part (computed once per state by the caller) and a
  per-row part (``W_a a``), so only the small action block runs per candidate;
- the rows are processed in chunks of whole states that fit in the CPU caches, through buffers
  allocated once per call (no fresh allocation per layer: a new multi-megabyte tensor costs page
  faults that can exceed the cost of the operation that fills it);
- each hidden layer is one matmul (oneDNN's fp32 linear for large chunks on CPU, MKL into a
  preallocated buffer otherwise), then one in-place pass for the bias and the activation: for Mish a
  ``torch.compile``'d kernel of :func:`~sb3_diffusion.common.networks.mish`, or that function eagerly
  with scratch buffers; a ReLU after a oneDNN matmul is a post-op of the matmul itself (no extra pass);
- rows need not be grouped by state: with a state index per row, each row's per-state part is
  gathered (used to score only the distinct candidates of a state);
- small chains and scorings (acting) as one compiled function each, and on CUDA the chain captured as
  a CUDA graph;
- optionally in bfloat16 (``dtype=th.bfloat16``): the hidden layers' matmuls and activations on
  bf16 copies of the weights (cast once per call), accumulated in fp32 by the matmul libraries; the
  per-state parts, the output layer and everything outside the MLP stay fp32 (see
  :func:`fast_bf16_available` for where it is worth it).

Compilation is controlled by the ``compile_mode`` of the policy (``"auto"``, ``"on"``, ``"off"``) and by
the environment variable ``SB3_DIFFUSION_COMPILE`` (``auto``/``on``/``off``, or ``1``/``0``), which
overrides it. Any failure to compile (no C++ compiler, unsupported platform) raises
:class:`CompileFailed` once, with a warning; compilation is then off for the process. Two more
variables exist for benchmarks: ``SB3_DIFFUSION_CHUNK_ROWS`` (rows per chunk on CPU, default 2048) and
``SB3_DIFFUSION_SIMDLEN`` (the compiled kernels' vector width, see :func:`inductor_simdlen`).
"""

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch as th
from torch import nn
from torch.nn import functional as F

from sb3_diffusion.common.diffusion import StepCoefficients, reverse_step
from sb3_diffusion.common.networks import SMALL_ACTIVATION_ELEMENTS, mish, mish_expression

COMPILE_MODES = ("auto", "on", "off")
COMPILE_ENV_VAR = "SB3_DIFFUSION_COMPILE"
# "auto" compiles a call whose hidden activations have at least this many elements
AUTO_COMPILE_MIN_ELEMENTS = 1 << 18
CHUNK_ROWS_ENV_VAR = "SB3_DIFFUSION_CHUNK_ROWS"


def _chunk_rows_from_env(default: int) -> int:
    """Rows per chunk on CPU: ``default``, or the positive integer in ``SB3_DIFFUSION_CHUNK_ROWS`` (for benchmarks)."""
    value = os.environ.get(CHUNK_ROWS_ENV_VAR, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{CHUNK_ROWS_ENV_VAR} must be a positive integer (rows per chunk), got {value!r}")
    return int(value)


# Rows per chunk on CPU: a 2048 x 256 float32 buffer is 2 MiB, about one core's L2 cache
DEFAULT_CHUNK_ROWS = _chunk_rows_from_env(2048)
# Chains of at most this many rows (acting: one or a few states times K candidates) can run as one
# compiled function of the whole chain, which removes the per-operation overhead that dominates them
SMALL_CHAIN_ROWS = 256
# "auto" compiles those small chains only for networks at least this wide (the official 256-wide ones;
# the small networks of tests and quick starts never wait for a compilation)
AUTO_CHAIN_MIN_WIDTH = 128
# From this many rows the hidden layers use oneDNN's linear on CPU (float32, exact; faster than the MKL
# sgemm behind torch.mm for 256-wide layers where measured, see docs/performance.md); for a few rows
# (acting) its overhead loses
ONEDNN_MIN_ROWS = 256
# The critics' scoring scores a candidate at a corner of the action box once per state and corner (all
# of a state's candidates at that corner have the same Q value) when that saves at least this fraction
# of the rows of a call of at least DEDUPE_MIN_ROWS rows, on CPU (SDAC's clamped reverse samples: about half)
DEDUPE_MIN_ROWS = 4096
DEDUPE_MIN_SAVING = 0.125
# dynamo's recompile limit while a compiled function runs: a process acting with several models or
# environments needs more fixed-shape variants than dynamo's default of 8 per function
RECOMPILE_LIMIT = 64

# The compute dtypes of the fast paths, by precision name
COMPUTE_DTYPES = {"fp32": th.float32, "bf16": th.bfloat16}

_ENV_ALIASES = {"1": "on", "true": "on", "yes": "on", "0": "off", "false": "off", "no": "off"}


def resolve_compile_mode(mode: str | bool | None = "auto") -> str:
    """
    The compile mode in effect: the environment variable ``SB3_DIFFUSION_COMPILE`` if set, else ``mode``.

    :param mode: ``"auto"``, ``"on"`` or ``"off"`` (True/False mean on/off; None means auto)
    :return: One of ``COMPILE_MODES``
    """
    env = os.environ.get(COMPILE_ENV_VAR, "").strip().lower()
    if env:
        env = _ENV_ALIASES.get(env, env)
        if env not in COMPILE_MODES:
            raise ValueError(f"{COMPILE_ENV_VAR}={env!r} is not valid: expected one of {', '.join(COMPILE_MODES)}, 1 or 0")
        return env
    if mode is None:
        return "auto"
    if isinstance(mode, bool):
        return "on" if mode else "off"
    if mode not in COMPILE_MODES:
        raise ValueError(f"Unknown compile_mode {mode!r}: expected one of {', '.join(repr(m) for m in COMPILE_MODES)}")
    return mode


def fast_bf16_available(device: th.device) -> bool:
    """
    Whether ``device`` has hardware bf16 matmuls: on CPU, AVX512-BF16 or AMX (``amx_bf16``) as torch
    detects them (x86 only); on CUDA, a device that supports bf16 (compute capability 8.0 and up).
    Whether it is also *faster* than fp32 depends on the CPU (see ``docs/precision.md``): AMX is
    several times faster, AVX512-BF16 without AMX is not on every CPU.
    """
    if device.type == "cuda":
        return bool(th.cuda.is_available() and th.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    cpu = getattr(th, "cpu", None)
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    try:
        return any(bool(getattr(cpu, name)()) for name in checks if hasattr(cpu, name))
    except Exception:  # pragma: no cover - depends on the build of torch
        return False


# ---------------------------------------------------------------------------------------------------
# Functions written for torch.compile (fused into few kernels; the formulas are the plain code's)
# ---------------------------------------------------------------------------------------------------


def _bias_mish_kernel(h: th.Tensor, bias: th.Tensor) -> None:
    """h <- mish(h + bias), in place. h: (R, W), bias: (W,)."""
    h.copy_(mish_expression(h + bias))


def _mish_kernel(h: th.Tensor) -> None:
    """h <- mish(h), in place."""
    h.copy_(mish_expression(h))


def _mish_mlp(h: th.Tensor, weights: list[th.Tensor], biases: list[th.Tensor], dtype: th.dtype) -> th.Tensor:
    """
    An MLP from its first layer's pre-activation ``h``: Mish, ``mish(W h + b)`` per hidden layer, the
    output layer. The hidden layers run in ``dtype`` (weights cast here, inside the compiled graph); the
    output layer in the dtype of its weights, so a bf16 network still returns fp32 outputs.
    """
    h = mish_expression(h.to(dtype))
    for weight, bias in zip(weights[:-1], biases[:-1], strict=True):
        h = mish_expression(h @ weight.to(dtype).t() + bias.to(dtype))
    return h.to(weights[-1].dtype) @ weights[-1].t() + biases[-1]


def _chain_kernel(
    state_parts: th.Tensor,
    x_start: th.Tensor,
    noise: th.Tensor,
    coefficients: th.Tensor,
    first_weight: th.Tensor,
    weights: list[th.Tensor],
    biases: list[th.Tensor],
    dtype: th.dtype = th.float32,
) -> th.Tensor:
    """
    A whole reverse chain of a Mish noise network (the function of ``DiffusionActor.sample``), every
    step unrolled into one graph.

    :param state_parts: Features and time blocks of the first layer, bias included, (S, b, W_0)
    :param x_start: The chain's start, (b, k, d)
    :param noise: Chain noise (S, b, k, d); slice 0 is not used
    :param coefficients: The sampling schedule's :class:`StepCoefficients` per step, as an (S, 5) table
    :param first_weight: Action block of the first layer (W_0, d)
    :param weights: Weights of the following linear layers, the output layer last
    :param biases: Their biases
    :param dtype: Compute dtype of the first and hidden layers (the chain state and the output stay fp32)
    """
    x = x_start
    first_weight = first_weight.to(dtype)
    for i in range(noise.shape[0] - 1, -1, -1):
        h = state_parts[i].unsqueeze(1).to(dtype) + x.to(dtype) @ first_weight.t()
        eps = _mish_mlp(h, weights, biases, dtype)
        x = reverse_step(x, eps, StepCoefficients(*coefficients[i].unbind()), noise[i] if i > 0 else None)  # type: ignore[arg-type]
    return x


def _min_q_kernel(
    state_parts: list[th.Tensor],
    actions: th.Tensor,
    first_weights: list[th.Tensor],
    weights: list[list[th.Tensor]],
    biases: list[list[th.Tensor]],
    dtype: th.dtype = th.float32,
) -> th.Tensor:
    """
    The minimum over Mish critics of Q on k candidates per state (the function of ``min_q``).

    :param state_parts: Per critic, the observation block of its first layer, bias included, (b, W_0)
    :param actions: Candidates (b, k, d)
    :param first_weights: Per critic, the action block of its first layer (W_0, d)
    :param weights: Per critic, the weights of the following linear layers, the output layer last
    :param biases: Their biases
    :param dtype: Compute dtype of the first and hidden layers (the Q values are returned in fp32)
    :return: (b, k)
    """
    result = None
    rows = actions.to(dtype)
    for state_part, first_weight, layer_weights, layer_biases in zip(state_parts, first_weights, weights, biases, strict=True):
        h = state_part.unsqueeze(1).to(dtype) + rows @ first_weight.to(dtype).t()
        q_values = _mish_mlp(h, layer_weights, layer_biases, dtype).squeeze(-1)
        result = q_values if result is None else th.minimum(result, q_values)
    assert result is not None
    return result


SIMDLEN_ENV_VAR = "SB3_DIFFUSION_SIMDLEN"
# Key suffix of the compiled functions' bfloat16 variants
BF16_SUFFIX = ":bf16"


def _intel_avx512() -> bool:
    """True on an Intel CPU whose best vector ISA in torch is AVX-512."""
    try:
        capability = th.backends.cpu.get_cpu_capability()
        with open("/proc/cpuinfo") as file:
            intel = any(line.startswith("vendor_id") and "GenuineIntel" in line for line in file)
    except (OSError, AttributeError, RuntimeError):
        return False
    return intel and capability.startswith("AVX512")


def inductor_simdlen(dtype: th.dtype) -> int | None:
    """
    Vector width in bits for inductor's C++ code of the compiled kernels computing in ``dtype``, or None
    for inductor's own choice (the widest the CPU has).

    float32 on an Intel CPU with AVX-512: 256 (AVX2). Measured on a Xeon (lscpu model 207), one thread:
    the compiled bias+Mish ran at 0.86 G elements/s with 256-bit code against 0.57 with 512-bit code,
    and whole updates at Hopper shapes took 24-28% less time (docs/performance.md). bfloat16 keeps the
    widest (1.12 against 0.68 G/s there). ``SB3_DIFFUSION_SIMDLEN`` overrides it for both: ``auto`` for
    inductor's choice, or a width in bits (``256``, ``512``).
    """
    value = os.environ.get(SIMDLEN_ENV_VAR, "").strip().lower()
    if value == "auto":
        return None
    if value:
        if not value.isdigit() or int(value) not in (128, 256, 512):
            raise ValueError(f"{SIMDLEN_ENV_VAR} must be 'auto', 128, 256 or 512 (bits), got {value!r}")
        return int(value)
    return 256 if dtype == th.float32 and _intel_avx512() else None


# compiled for fixed shapes: one compilation per shape
FIXED_SHAPE_FUNCTIONS = ("chain", "min_q")


class CompileFailed(RuntimeError):
    """A compiled function failed to build or run; compilation is off for the rest of the process."""


@contextmanager
def _recompile_limit(limit: int) -> Iterator[None]:
    """dynamo's recompile limit raised to at least ``limit`` inside the block, and restored after it."""
    config = th._dynamo.config
    previous = config.recompile_limit
    config.recompile_limit = max(previous, limit)
    try:
        yield
    finally:
        config.recompile_limit = previous


class _CompiledKernels:
    """The ``torch.compile``'d functions, built on first use; after a failure none is used again."""

    def __init__(self) -> None:
        self.functions: dict[str, Callable[..., object]] = {}
        self.broken = False

    def _build(self) -> None:
        # dynamic shapes: one compilation serves every batch and chunk size; dynamic_threads: the
        # kernels follow torch.set_num_threads() instead of the thread count at compile time.
        # One set for float32 and one for bfloat16, each with its own vector width (inductor_simdlen).
        for suffix, dtype in (("", th.float32), (BF16_SUFFIX, th.bfloat16)):
            simdlen = inductor_simdlen(dtype)
            options: dict[str, object] = {"cpp.dynamic_threads": True}
            if simdlen is not None:
                options["cpp.simdlen"] = simdlen
            self.functions["bias_mish" + suffix] = th.compile(_bias_mish_kernel, dynamic=True, fullgraph=True, options=options)
            self.functions["mish" + suffix] = th.compile(_mish_kernel, dynamic=True, fullgraph=True, options=options)
            # fixed shapes (one compilation per acting batch shape) and a C++ wrapper: no Python per operation
            small_options = {**options, "cpp_wrapper": True}
            self.functions["chain" + suffix] = th.compile(_chain_kernel, dynamic=False, fullgraph=True, options=small_options)
            self.functions["min_q" + suffix] = th.compile(_min_q_kernel, dynamic=False, fullgraph=True, options=small_options)

    def __call__(self, name: str, *args: object) -> object:
        """
        Run the compiled function ``name`` (its bfloat16 variant when the call computes in bf16: the
        tensor of ``bias_mish`` and ``mish``, the ``dtype`` argument of ``chain`` and ``min_q``);
        :class:`CompileFailed` (with a warning, once) if it fails.
        """
        if self.broken:
            raise CompileFailed("compilation failed earlier in this process")
        if not self.functions:
            self._build()
        compute = args[-1] if name in FIXED_SHAPE_FUNCTIONS else getattr(args[0], "dtype", None)
        key = name + BF16_SUFFIX if compute == th.bfloat16 else name
        try:
            if name in FIXED_SHAPE_FUNCTIONS:  # any call may compile a new variant
                with _recompile_limit(RECOMPILE_LIMIT):
                    return self.functions[key](*args)
            return self.functions[key](*args)
        except Exception as error:  # pragma: no cover - depends on the platform's compiler
            self.broken = True
            warnings.warn(
                f"sb3_diffusion: torch.compile of the fast paths failed ({type(error).__name__}: {error}); "
                f"using the eager kernels (same results, slower). Set {COMPILE_ENV_VAR}=off to skip the attempt."
            )
            raise CompileFailed(str(error)) from error


COMPILED = _CompiledKernels()


_ZERO_BIASES: dict[tuple[int, th.dtype, th.device], th.Tensor] = {}


def _compiled_mish_(h: th.Tensor) -> None:
    """
    ``h <- mish(h)`` in place with the compiled kernels. In bf16 through the bias+Mish kernel with a
    zero bias: inductor writes the bias-free kernel as one flat loop that ran at 0.64 G elements/s on
    a Xeon, against 1.04 G/s for the row-by-row loop of the bias kernel (same values: ``x + 0 = x``).
    """
    if h.dtype != th.bfloat16:
        COMPILED("mish", h)
        return
    key = (h.shape[-1], h.dtype, h.device)
    zero = _ZERO_BIASES.get(key)
    if zero is None:
        zero = _ZERO_BIASES[key] = th.zeros(h.shape[-1], dtype=h.dtype, device=h.device)
    COMPILED("bias_mish", h, zero)


def compiled_kernels_available() -> bool:
    """False once a compilation has failed in this process."""
    return not COMPILED.broken


class _OneDNN:
    """oneDNN's fp32 and bf16 linear (``torch.ops.mkldnn._linear_pointwise``), if this build of torch has it."""

    def __init__(self) -> None:
        self.available = bool(th.backends.mkldnn.is_available() and hasattr(th.ops.mkldnn, "_linear_pointwise"))
        try:  # oneDNN's bf16 kernels need AVX512 (torch computes bf16 without them, through other kernels)
            self.bf16 = self.available and bool(th.ops.mkldnn._is_mkldnn_bf16_supported())
        except Exception:  # pragma: no cover - depends on the build of torch
            self.bf16 = False

    def usable(self, tensor: th.Tensor) -> bool:
        dtype_ok = tensor.dtype == th.float32 or (tensor.dtype == th.bfloat16 and self.bf16)
        return self.available and tensor.device.type == "cpu" and dtype_ok

    def linear(self, h: th.Tensor, weight: th.Tensor, bias: th.Tensor, activation: str = "none") -> th.Tensor | None:
        """
        ``h @ weight.T + bias`` in a new tensor, followed by ``activation`` (``"none"`` or ``"relu"``, a
        post-op fused into the matmul's output pass), or None (and never again) if oneDNN fails.
        """
        try:
            return th.ops.mkldnn._linear_pointwise(h, weight, bias, activation, [], "")
        except Exception:  # pragma: no cover - depends on the build of torch
            self.available = False
            return None


ONEDNN = _OneDNN()


def _is_mish(activation: nn.Module) -> bool:
    return isinstance(activation, nn.Mish)


def activation_(
    activation: nn.Module, h: th.Tensor, scratch: Callable[[th.Tensor], tuple[th.Tensor, th.Tensor]] | None = None
) -> None:
    """
    Apply ``activation`` to ``h`` in place (the same function; Mish, ReLU and Tanh without allocation).

    :param scratch: Gives two scratch tensors of ``h``'s shape for :func:`mish` (allocated if None)
    """
    if _is_mish(activation):
        if h.device.type == "cpu" and h.numel() > SMALL_ACTIVATION_ELEMENTS:
            mish(h, out=h, scratch=scratch(h) if scratch is not None else None)
        else:  # torch's one kernel: on accelerators, and on CPU where the per-op overhead dominates
            F.mish(h, inplace=True)
    elif isinstance(activation, nn.ReLU):
        h.relu_()
    elif isinstance(activation, nn.Tanh):
        h.tanh_()
    else:
        h.copy_(activation(h))


def split_mlp(mlp: nn.Module) -> tuple[list[nn.Linear], list[nn.Module]] | None:
    """
    The linear layers and activations of an MLP ``Linear, act, Linear, act, ..., Linear`` (as built by
    SB3's ``create_mlp`` or :class:`~sb3_diffusion.common.networks.NoisePredictionNet`'s body), or None
    if ``mlp`` has another structure.
    """
    modules = list(mlp.children()) if isinstance(mlp, nn.Sequential) else None
    if not modules or len(modules) % 2 == 0:
        return None
    linears, activations = modules[0::2], modules[1::2]
    if not all(isinstance(layer, nn.Linear) and layer.bias is not None for layer in linears):
        return None
    if any(isinstance(act, nn.Linear) for act in activations):
        return None
    return linears, activations  # type: ignore[return-value]


def _cast(tensor: th.Tensor, dtype: th.dtype) -> th.Tensor:
    """``tensor.to(dtype)`` without the call when it is already in ``dtype`` (RowMLPs are built per call)."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


class RowMLP:
    """
    An MLP evaluated on ``b`` states times ``k`` rows per state, whose first layer is split into a
    per-state part (given) and a per-row part ``x @ first_weight.T``::

        h_1 = act_0(state_part[s] + first_weight @ x[s, j])
        h_{i+1} = act_i(W_i h_i + b_i),   output = W_L h_L + b_L

    ``state_part`` already contains the first layer's bias. The activations after the first layer
    are ``activations[0]``, and so on; ``hidden`` holds the remaining linear layers (the last one is
    the output layer). Buffers for ``max_rows`` rows are allocated at construction: use one RowMLP for
    one call (or one reverse chain), not across threads.

    :param first_weight: (W_0, d) block of the first layer acting on the per-row input
    :param activations: One activation module per hidden layer
    :param hidden: The linear layers after the first one (at least the output layer)
    :param max_rows: Largest number of rows of one ``__call__``
    :param compiled: Use the compiled Mish kernels
    :param dtype: Compute dtype of the first and hidden layers (None: the weights' dtype). With
        ``th.bfloat16`` the weights are cast once here, the per-row input is cast at each call, the
        hidden activations are bf16, and the last hidden activation is widened back to the weights'
        dtype before the output layer, which runs in that dtype (its output is never rounded to bf16).
    """

    def __init__(
        self,
        first_weight: th.Tensor,
        activations: Sequence[nn.Module],
        hidden: Sequence[nn.Linear],
        max_rows: int,
        compiled: bool = False,
        dtype: th.dtype | None = None,
    ):
        assert len(activations) == len(hidden) >= 1
        self.dtype = first_weight.dtype if dtype is None else dtype
        self.output_dtype = hidden[-1].weight.dtype
        self.first_weight_t = _cast(first_weight, self.dtype).t()
        self.activations = list(activations)
        self.layers = []
        for index, layer in enumerate(hidden):
            layer_dtype = self.output_dtype if index == len(hidden) - 1 else self.dtype
            weight, bias = _cast(layer.weight, layer_dtype), _cast(layer.bias, layer_dtype)
            self.layers.append((weight, weight.t(), bias))
        widths = [first_weight.shape[0]] + [layer.out_features for layer in hidden]
        options = dict(device=first_weight.device, dtype=self.dtype)
        self.buffers = [th.empty(max_rows, width, **options) for width in widths[:-1]]  # type: ignore[arg-type]
        self.buffers.append(th.empty(max_rows, widths[-1], device=first_weight.device, dtype=self.output_dtype))
        # the last hidden activation in the output layer's dtype (reduced precision only)
        self.widened = None
        if self.dtype != self.output_dtype:
            self.widened = th.empty(max_rows, widths[-2], device=first_weight.device, dtype=self.output_dtype)
        self.max_rows = max_rows
        self.all_mish = all(_is_mish(act) for act in self.activations)
        self.compiled = compiled and self.all_mish
        self.scratch_elements = max_rows * max(widths[:-1])
        self.scratch: list[th.Tensor] = []  # for the eager Mish on CPU, allocated on first use

    def _scratch(self, h: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        if not self.scratch:
            self.scratch = [th.empty(self.scratch_elements, device=h.device, dtype=h.dtype) for _ in range(2)]
        n = h.numel()
        return self.scratch[0][:n].view_as(h), self.scratch[1][:n].view_as(h)

    def __call__(self, state_part: th.Tensor, x: th.Tensor, state_index: th.Tensor | None = None) -> th.Tensor:
        """
        :param state_part: (b, W_0) per-state part of the first layer, bias included
        :param x: (b, k, d) per-row inputs; with ``state_index``, (n, d) rows of any states
        :param state_index: For rows that are not grouped by state: the state of each row, (n,)
        :return: (b * k, out_features) (or (n, out_features)) in the output layer's dtype, a view of an
            internal buffer (valid until the next call)
        """
        if state_index is not None:
            b, k = x.shape[0], 1
        else:
            b, k, _ = x.shape
        rows = b * k
        assert rows <= self.max_rows
        h = self.buffers[0][:rows]
        inputs = _cast(x.reshape(rows, -1), self.dtype)
        if state_index is not None:  # each row's state part gathered into the first buffer
            th.index_select(_cast(state_part, self.dtype), 0, state_index, out=h)
            h.addmm_(inputs, self.first_weight_t)
        elif b == 1:  # acting on one state: the state part is the bias of one addmm
            th.addmm(_cast(state_part[0], self.dtype), inputs, self.first_weight_t, out=h)
        else:
            h.view(b, k, -1).copy_(state_part.unsqueeze(1))
            h.addmm_(inputs, self.first_weight_t)
        if self.compiled:
            _compiled_mish_(h)
        else:
            activation_(self.activations[0], h, self._scratch)
        onednn = rows >= ONEDNN_MIN_ROWS and ONEDNN.usable(h)
        for index, (weight, weight_t, bias) in enumerate(self.layers):
            if index == len(self.layers) - 1:  # output layer (a few columns): into its buffer
                if self.widened is not None:
                    h = self.widened[:rows].copy_(h)
                h = th.addmm(bias, h, weight_t, out=self.buffers[index + 1][:rows])
                break
            activation = self.activations[index + 1]
            fused_relu = isinstance(activation, nn.ReLU)  # oneDNN applies it in the matmul's output pass
            out = ONEDNN.linear(h, weight, bias, "relu" if fused_relu else "none") if onednn else None
            if out is not None:  # bias (and a ReLU) included
                if self.compiled:
                    _compiled_mish_(out)
                elif not fused_relu:
                    activation_(activation, out, self._scratch)
            elif self.compiled:
                out = th.mm(h, weight_t, out=self.buffers[index + 1][:rows])
                COMPILED("bias_mish", out, bias)
            else:
                out = th.addmm(bias, h, weight_t, out=self.buffers[index + 1][:rows])
                activation_(activation, out, self._scratch)
            h = out
        return h


def chunk_states(n_states: int, rows_per_state: int, chunk_rows: int) -> list[tuple[int, int]]:
    """Split ``n_states`` states into contiguous chunks of at most ``chunk_rows`` rows (at least one state each)."""
    per_chunk = max(1, chunk_rows // max(rows_per_state, 1))
    return [(start, min(start + per_chunk, n_states)) for start in range(0, n_states, per_chunk)]


def chunk_rows_for(device: th.device) -> int:
    """Rows per chunk: cache-sized on CPU, everything at once on accelerators."""
    return DEFAULT_CHUNK_ROWS if device.type == "cpu" else 1 << 62


# ---------------------------------------------------------------------------------------------------
# CUDA: the fixed-shape reverse chain captured as a CUDA graph
# ---------------------------------------------------------------------------------------------------


class CudaGraphCache:
    """
    Captures ``fn(*inputs)`` as a CUDA graph once per key and replays it: a reverse chain is a few
    hundred small kernels whose launch overhead, not their arithmetic, dominates on a GPU, and its
    shapes are fixed for a given batch size and number of candidates.

    The graph reads the inputs from static buffers (the call copies the new inputs into them) and the
    parameters from their current storage, so in-place updates of the parameters (optimizer steps,
    Polyak averaging, ``load_state_dict``) are seen by every replay; the key must change when a
    parameter's storage changes (include the parameters' ``data_ptr`` in it). A failed capture falls
    back to calling ``fn`` eagerly, with a warning. Only used when the device is CUDA (never in tests).

    :param max_graphs: Graphs kept (least recently used dropped first)
    """

    def __init__(self, max_graphs: int = 8):
        self.max_graphs = max_graphs
        self.graphs: dict[tuple, tuple[th.cuda.CUDAGraph, list[th.Tensor], th.Tensor]] = {}
        self.broken = False

    def __call__(self, key: tuple, fn: Callable[..., th.Tensor], inputs: list[th.Tensor]) -> th.Tensor:
        if self.broken:
            return fn(*inputs)
        entry = self.graphs.pop(key, None)
        if entry is None:
            try:
                entry = self._capture(fn, inputs)
            except Exception as error:  # pragma: no cover - needs a GPU
                self.broken = True
                warnings.warn(f"sb3_diffusion: CUDA graph capture failed ({type(error).__name__}: {error}); running eagerly.")
                return fn(*inputs)
            while len(self.graphs) >= self.max_graphs:
                self.graphs.pop(next(iter(self.graphs)))
        self.graphs[key] = entry  # most recently used last
        graph, static_inputs, static_output = entry
        for static, value in zip(static_inputs, inputs, strict=True):
            static.copy_(value)
        graph.replay()
        return static_output.clone()  # the next replay overwrites the static output

    @staticmethod
    def _capture(
        fn: Callable[..., th.Tensor], inputs: list[th.Tensor]
    ) -> tuple[th.cuda.CUDAGraph, list[th.Tensor], th.Tensor]:
        static_inputs = [value.clone() for value in inputs]
        # warm up on a side stream (lazy cuBLAS initialisation must not happen during capture)
        stream = th.cuda.Stream()
        stream.wait_stream(th.cuda.current_stream())
        with th.cuda.stream(stream):
            for _ in range(2):
                fn(*static_inputs)
        th.cuda.current_stream().wait_stream(stream)
        graph = th.cuda.CUDAGraph()
        with th.cuda.graph(graph):
            static_output = fn(*static_inputs)
        return graph, static_inputs, static_output
