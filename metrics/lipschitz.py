"""Lipschitz constants of a classifier's logit map (l2 -> l2, pixels in [0, 1] to logits):
a certified upper bound and empirical lower bounds.

**Upper bound** (:func:`upper_bound`): the model's forward is traced with ``torch.fx`` and run
once on an example (for the shapes and the values of constants); each node's bound is composed
from its inputs' bounds by a rule:

* linear layers: their operator norm (:mod:`metrics.operator_norms`: dense, the exact largest
  singular value; convolutions, the zero-padded strided operator on the layer's actual input
  size, exact when small, else its circular-embedding upper bound); an eval-mode BatchNorm
  that is a convolution's only user is folded into it (the norm of the product, often far
  below the product of the norms); a lone eval BatchNorm contributes max |gamma / sigma|;
* activations: their largest slope (ReLU 1, GELU 1.1290, SiLU 1.0999, ...);
* sums (residual blocks): L(a) + L(b), so an identity shortcut gives 1 + L(branch);
  multiplication or division by a constant: its largest |value| (the input normalisation);
  a convex combination ``lerp``; concatenation sqrt(sum L^2); means, pooling, reshapes;
* modules that know their own constant declare it (the protocol below);
* anything else (an unknown module or operation, a subclass of a known layer, data-dependent
  control flow that cannot be traced, a value that leaves the tensor graph, an in-place
  operation on a value used elsewhere, forward hooks, any submodule in training mode) makes
  the result "no bound" with the reason, rather than a guess.

Protocol (duck-typed, so ``metrics`` never imports ``models``): a module with a method
``certified_lipschitz(x) -> float`` (``x``: an example input of the module, for shapes) is not
traced into; the float bounds its own map. It raises :class:`NoBound` with a reason when it
has none. A composite module may call :func:`upper_bound` on its parts.

**Lower bounds** (valid for any model whose autograd gives the derivative of its forward; see
``gradient`` below):

* :func:`jacobian_norms`: per example, the input-Jacobian's spectral norm by power iteration
  on J^T J (``torch.func.jvp`` / ``vjp``); every iterate ||J v|| / ||v|| is a lower bound on
  ||J||, hence on the Lipschitz constant (autograd's chain rule at an exact kink, e.g.
  ReLU at 0, is a measure-zero exception the random data never hits);
* :func:`pair_ratios`: ||f(x) - f(x')|| / ||x - x'|| for given pairs (e.g. PGD's adversarial
  examples), and :func:`ascend_pairs`: projected gradient ascent on that ratio over x' in an
  l2 ball around x, started along the top Jacobian direction. Every ratio is a lower bound
  whatever gradient found it.

``gradient``: where a model's backward is not the derivative of its forward (SUGAR's
surrogates), a Jacobian computed by autograd is not the model's; the caller passes a context
factory (e.g. ``lambda: attacks.gradients.use_gradient(model, "exact")``) under which autograd
is the derivative.
"""

from __future__ import annotations

import contextlib
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from metrics.operator_norms import conv2d_norm_bound, matrix_norm, pool_norm


class NoBound(Exception):
    """A module or operation has no known Lipschitz bound; the message says why."""


# Largest |slope| of elementwise activations, rounded up (a test checks each against the
# largest |autograd derivative| on a fine grid).
ACTIVATION_CONSTANTS: dict[type, float] = {
    nn.ReLU: 1.0, nn.ReLU6: 1.0, nn.Hardtanh: 1.0, nn.Tanh: 1.0, nn.Softsign: 1.0,
    nn.Softplus: 1.0, nn.Sigmoid: 0.25, nn.Hardsigmoid: 1 / 6, nn.Hardswish: 1.5,
    nn.SiLU: 1.0999, nn.Mish: 1.0885, nn.SELU: 1.7581, nn.Identity: 1.0, nn.Dropout: 1.0,
    nn.Flatten: 1.0,
}
GELU_CONSTANT = 1.1290        # exact erf form 1.12890, tanh form 1.12899
FUNCTION_CONSTANTS: dict[Callable, float] = {
    F.relu: 1.0, torch.relu: 1.0, F.relu6: 1.0, F.hardtanh: 1.0, torch.tanh: 1.0, F.tanh: 1.0,
    F.softplus: 1.0, torch.sigmoid: 0.25, F.sigmoid: 0.25, F.silu: 1.0999, F.mish: 1.0885,
    F.gelu: GELU_CONSTANT, F.hardswish: 1.5, F.dropout: 1.0, torch.flatten: 1.0,
}
SHAPE_METHODS = {"view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze",
                 "unsqueeze", "float", "double", "half", "to", "clone", "detach", "type_as"}
SHAPE_FUNCTIONS = {torch.reshape, torch.permute, torch.transpose, torch.squeeze,
                   torch.unsqueeze, torch.clone}


@dataclass
class UpperBound:
    """A certified upper bound (``value``; None when there is none, ``reason`` says why) and
    its factors: one row per node of the traced graph that changes the bound (``node``,
    ``op``: what it is, ``factor``: its own constant, ``bound``: the bound of the map from the
    input to this node)."""

    value: float | None
    reason: str = ""
    factors: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=["node", "op", "factor", "bound"]))

    @property
    def bounded(self) -> bool:
        return self.value is not None


class _Tracer(fx.Tracer):
    """Stops at modules with a known constant (or that declare their own) and torch.nn
    layers the rules cover."""

    LEAVES = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.AvgPool2d, nn.MaxPool2d,
              nn.AdaptiveAvgPool2d, nn.GELU, nn.ELU, nn.LeakyReLU, nn.PReLU,
              *ACTIVATION_CONSTANTS)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if callable(getattr(m, "certified_lipschitz", None)) and qualname:
            return True
        # Exact types only: a subclass may override forward (a scaled or standardised conv),
        # so it is traced into, and its rule is never assumed.
        return type(m) in self.LEAVES or super().is_leaf_module(m, qualname)


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[fx.Node, object] = {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        self.values[n] = out
        return out


def _maxabs(v) -> float:
    if isinstance(v, torch.Tensor):
        return v.detach().abs().max().item() if v.numel() else 0.0
    return abs(float(v))


def upper_bound(model: nn.Module, example: torch.Tensor) -> UpperBound:
    """Certified l2 Lipschitz upper bound of ``model``'s output as a function of one input
    example (``example``: a batch of one, e.g. ``x[:1]``; the model in eval mode)."""
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        return UpperBound(None, f"{training[0]} is in training mode (BatchNorm and dropout "
                                "depend on the batch); call model.eval()")
    hooked = [name or type(model).__name__ for name, m in model.named_modules()
              if m._forward_hooks or m._forward_pre_hooks]
    if hooked:
        return UpperBound(None, f"{hooked[0]} has forward hooks, which may change its output")
    if callable(getattr(model, "certified_lipschitz", None)):
        try:
            value = float(model.certified_lipschitz(example))
        except NoBound as exc:
            return UpperBound(None, str(exc))
        return UpperBound(value, "", pd.DataFrame([{"node": type(model).__name__,
                                                    "op": "declared", "factor": value,
                                                    "bound": value}]))
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # noqa: BLE001  (any tracing failure means: no bound)
        return UpperBound(None, f"cannot trace the model with torch.fx ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''})")
    gm = fx.GraphModule(model, graph)
    rec = _Recorder(gm)
    with torch.no_grad():
        traced = rec.run(example)
        # The traced graph must be the model: tracing can silently change semantics (an
        # in-place `y += x` on a Proxy becomes an out-of-place add, aliases lost).
        gen = torch.Generator(device="cpu").manual_seed(0)
        probe = (example + 0.01 * torch.randn(example.shape, generator=gen).to(example)
                 ).clamp(0, 1)
        same = all(_same(model(v), gm(v) if v is probe else traced) for v in (example, probe))
    if not same:
        return UpperBound(None, "the traced graph does not reproduce the model's output "
                                "(in-place operations on aliased values?)")
    try:
        return _propagate(gm, rec.values)
    except NoBound as exc:
        return UpperBound(None, str(exc))
    except Exception as exc:  # noqa: BLE001  (a rule that cannot read a node: no bound)
        return UpperBound(None, f"no rule could bound the graph ({type(exc).__name__}: {exc})")


def _propagate(gm: fx.GraphModule, values: dict) -> UpperBound:
    lip: dict[fx.Node, float | None] = {}        # None: a constant (does not depend on x)
    rows: list[dict] = []
    folded: set[fx.Node] = set()
    modules = dict(gm.named_modules())

    def arg_lip(a) -> float | None:
        if isinstance(a, fx.Node):
            return lip.get(a)
        if isinstance(a, (list, tuple)):
            parts = [arg_lip(x) for x in a]
            parts = [p for p in parts if p is not None]
            return math.sqrt(sum(p * p for p in parts)) if parts else None
        return None

    def val(a):
        return values[a] if isinstance(a, fx.Node) else a

    def record(node, what, factor, bound):
        rows.append({"node": node.name if isinstance(node, fx.Node) else str(node), "op": what,
                     "factor": float(factor), "bound": float(bound)})
        return bound

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            lip[node] = 1.0
            continue
        if node.op == "get_attr":
            lip[node] = None
            continue
        if node.op == "output":
            if not isinstance(values.get(node.args[0]) if isinstance(node.args[0], fx.Node)
                              else node.args[0], torch.Tensor | tuple | list):
                raise NoBound("the model's output is not a tensor, tuple or list")
            out = arg_lip(node.args[0])
            value = 0.0 if out is None else out
            return UpperBound(value, "", pd.DataFrame(rows, columns=["node", "op", "factor",
                                                                     "bound"]))
        ins = [arg_lip(a) for a in (*node.args, *node.kwargs.values())]
        dep = [x for x in ins if x is not None]
        if not dep:
            lip[node] = None                    # a constant
            continue
        if not _has_tensor(values.get(node)):
            if not _is_metadata(node):
                raise NoBound(f"{node.name}: a value computed from the input leaves the "
                              f"tensor graph ({node.op} {_target_name(node)})")
            lip[node] = None                    # a shape, size or dtype
            continue
        if _in_place(node, modules) and len(node.args[0].users) > 1:
            raise NoBound(f"{node.name}: in-place {_target_name(node)} changes a value that "
                          "is used elsewhere")
        if node.op == "call_module" and len(dep) > 1:
            raise NoBound(f"{node.name}: module {node.target} takes several input-dependent "
                          "arguments")
        x = node.args[0] if node.args else None
        l_in = arg_lip(x)
        if node.op == "call_module":
            m = modules[node.target]
            factor = _module_factor(m, node, values, folded, modules)
            lip[node] = record(node, f"{type(m).__name__} {node.target}", factor, factor * l_in)
        elif node.op == "call_function":
            lip[node] = _function_rule(node, values, arg_lip, val, record)
        elif node.op == "call_method":
            lip[node] = _method_rule(node, values, arg_lip, val, record)
        else:
            raise NoBound(f"unsupported graph node {node.op} {node.target}")
    raise NoBound("the traced graph has no output")


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    if isinstance(a, tuple | list) and isinstance(b, tuple | list) and len(a) == len(b):
        return all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b)


def _target_name(node: fx.Node) -> str:
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__",
                                                                     str(node.target))


def _is_metadata(node: fx.Node) -> bool:
    """A node that reads a tensor's shape, size, rank, dtype or device (not its values)."""
    if node.op == "call_function" and node.target is getattr:
        return node.args[1] in ("shape", "dtype", "device", "ndim", "is_cuda")
    return node.op == "call_method" and node.target in ("size", "dim", "numel", "type",
                                                       "get_device")


def _in_place(node: fx.Node, modules) -> bool:
    if node.op == "call_function":
        return (node.target in (operator.iadd, operator.isub, operator.imul, operator.itruediv)
                or node.kwargs.get("inplace", False) is True)
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.endswith("__")
    if node.op == "call_module":
        return getattr(modules[node.target], "inplace", False) is True
    return False


def _has_tensor(v) -> bool:
    if isinstance(v, torch.Tensor):
        return True
    return isinstance(v, tuple | list) and any(_has_tensor(x) for x in v)


def _bn_scale(bn: nn.Module) -> torch.Tensor:
    if bn.training or bn.running_var is None:
        raise NoBound(f"{type(bn).__name__} without running statistics or in training mode "
                      "depends on the batch")
    scale = (bn.running_var.double() + bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    return scale


def _module_factor(m, node, values, folded, modules) -> float:
    """The constant of a call_module node (a leaf: an exact torch.nn type of the rules, or a
    module declaring ``certified_lipschitz``)."""
    x = values[node.args[0]] if node.args else None
    if node in folded:                                   # a BatchNorm folded into its conv
        return 1.0
    if callable(getattr(m, "certified_lipschitz", None)):
        return float(m.certified_lipschitz(x))
    if isinstance(m, nn.Conv2d | nn.Linear):
        w = m.weight.detach().double()
        users = list(node.users)
        if (len(users) == 1 and users[0].op == "call_module"
                and type(modules[users[0].target]) in (nn.BatchNorm1d, nn.BatchNorm2d)):
            scale = _bn_scale(modules[users[0].target])
            w = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
            folded.add(users[0])
        if isinstance(m, nn.Linear):
            return matrix_norm(w)
        if m.padding_mode != "zeros":
            raise NoBound(f"Conv2d {node.target}: padding mode {m.padding_mode!r}")
        return conv2d_norm_bound(w, input_hw=x.shape[-2:], stride=m.stride, padding=m.padding,
                                 dilation=m.dilation, groups=m.groups)
    if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
        return _bn_scale(m).abs().max().item()
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return pool_norm("adaptive_avg", x.shape[-2:], output_size=m.output_size)
    if isinstance(m, nn.AvgPool2d):
        if m.divisor_override:
            raise NoBound(f"AvgPool2d {node.target}: divisor_override")
        return pool_norm("avg", x.shape[-2:], kernel_size=m.kernel_size, stride=m.stride,
                         padding=m.padding, ceil_mode=m.ceil_mode,
                         count_include_pad=m.count_include_pad)
    if isinstance(m, nn.MaxPool2d):
        return pool_norm("max", x.shape[-2:], kernel_size=m.kernel_size, stride=m.stride,
                         padding=m.padding, ceil_mode=m.ceil_mode, dilation=m.dilation)
    if isinstance(m, nn.GELU):
        return GELU_CONSTANT
    if isinstance(m, nn.ELU):
        return max(1.0, abs(m.alpha))
    if isinstance(m, nn.LeakyReLU):
        return max(1.0, abs(m.negative_slope))
    if isinstance(m, nn.PReLU):
        return max(1.0, m.weight.detach().abs().max().item())
    if type(m) in ACTIVATION_CONSTANTS:
        return ACTIVATION_CONSTANTS[type(m)]
    raise NoBound(f"no Lipschitz rule for module {node.target} ({type(m).__name__})")


# Elementwise binary functions: kind of rule (sub is add with the same bound).
BINARY_KINDS = {operator.add: "add", torch.add: "add", operator.sub: "add", torch.sub: "add",
                operator.iadd: "add", operator.isub: "add", operator.mul: "mul",
                torch.mul: "mul", operator.imul: "mul", operator.truediv: "div",
                torch.div: "div", operator.itruediv: "div"}


def _function_rule(node, values, arg_lip, val, record) -> float:
    f, args = node.target, node.args
    name = getattr(f, "__name__", str(f))
    lins = [arg_lip(a) for a in args]
    if f in BINARY_KINDS:
        a, b = _operands(node)
        return _binary(node, BINARY_KINDS[f], a, b, values, arg_lip, val, record)
    if f in (operator.neg, torch.neg, operator.pos):
        return lins[0]
    if f in FUNCTION_CONSTANTS:
        c = FUNCTION_CONSTANTS[f]
        if f is F.dropout and node.kwargs.get("training", args[2] if len(args) > 2 else False):
            raise NoBound(f"{node.name}: dropout in training mode")
        return record(node, name, c, c * lins[0]) if c != 1.0 else lins[0]
    if f in SHAPE_FUNCTIONS:
        return lins[0]
    if f is operator.getitem:
        idx = args[1]
        if isinstance(val(args[0]), tuple | list):
            return _lip_of_item(args[0], idx, arg_lip)
        if _plain_index(idx):
            return lins[0]
        raise NoBound(f"{node.name}: indexing with tensors may repeat entries")
    if f is torch.cat or f is torch.stack:
        return arg_lip(args[0])
    if f in (torch.mean, torch.sum):
        return record(node, name, *_reduce_factor(node, values, name, lins[0]))
    if f is torch.lerp:
        a, b = lins[0], lins[1]
        w = val(args[2])
        if lins[2] is not None:
            raise NoBound(f"{node.name}: lerp with an input-dependent weight")
        wa, wb = _maxabs(1 - w), _maxabs(w)
        out = values[node].numel()
        ka, kb = (math.sqrt(max(1.0, out / val(x).numel())) for x in args[:2])
        return (wa * ka * (a or 0.0)) + (wb * kb * (b or 0.0))
    if f in (F.adaptive_avg_pool2d, F.avg_pool2d, F.max_pool2d):
        m = {F.adaptive_avg_pool2d: nn.AdaptiveAvgPool2d, F.avg_pool2d: nn.AvgPool2d,
             F.max_pool2d: nn.MaxPool2d}[f](*args[1:], **node.kwargs)
        factor = _module_factor(m.eval(), node, values, set(), {})
        return record(node, name, factor, factor * lins[0])
    if f in (F.conv2d, F.linear):
        if any(x is not None for x in lins[1:]):
            raise NoBound(f"{node.name}: {name} with an input-dependent weight")
        w = val(args[1]).detach().double()
        if f is F.linear:
            factor = matrix_norm(w)
        else:
            kw = dict(zip(("bias", "stride", "padding", "dilation", "groups"), args[2:]))
            kw.update(node.kwargs)
            factor = conv2d_norm_bound(w, input_hw=val(args[0]).shape[-2:],
                                       stride=kw.get("stride", 1), padding=kw.get("padding", 0),
                                       dilation=kw.get("dilation", 1), groups=kw.get("groups", 1))
        return record(node, name, factor, factor * lins[0])
    raise NoBound(f"no Lipschitz rule for function {name} (node {node.name})")


def _operands(node: fx.Node):
    """The two operands of a binary call, positional or keyword (``input``, ``other``)."""
    args = list(node.args) + [None, None]
    a = args[0] if node.args else node.kwargs.get("input")
    b = args[1] if len(node.args) > 1 else node.kwargs.get("other")
    return a, b


def _binary(node, kind, a, b, values, arg_lip, val, record) -> float:
    """Elementwise a + alpha b (``kind`` "add", sub too), a * b, a / b. An operand that
    broadcasting replicates k times (its per-example size times k is the output's) enters with
    sqrt(k); scaling by a constant with its largest |value| (division: 1 / its smallest)."""
    out = values[node]

    def lip(x) -> float | None:
        bound = arg_lip(x)
        if bound is None:
            return None
        size = val(x).numel() if isinstance(val(x), torch.Tensor) else 1
        return bound * math.sqrt(max(1.0, out.numel() / max(size, 1)))

    la, lb = lip(a), lip(b)
    if kind == "add":
        alpha = abs(float(node.kwargs.get("alpha", 1.0)))
        return (la or 0.0) + alpha * (lb or 0.0)
    if la is not None and lb is not None:
        raise NoBound(f"{node.name}: product or quotient of two input-dependent values")
    if kind == "div":
        if node.kwargs.get("rounding_mode") is not None:
            raise NoBound(f"{node.name}: division with rounding is discontinuous")
        if la is None:
            raise NoBound(f"{node.name}: division by an input-dependent value")
        smallest = _minabs(val(b))
        if smallest == 0:
            raise NoBound(f"{node.name}: division by a constant that is zero somewhere")
        return record(node, "div", 1.0 / smallest, la / smallest)
    c = _maxabs(val(b) if la is not None else val(a))
    return record(node, "mul", c, c * (la if la is not None else lb))


def _minabs(v) -> float:
    if isinstance(v, torch.Tensor):
        return v.detach().abs().min().item() if v.numel() else math.inf
    return abs(float(v))


def _lip_of_item(container, idx, arg_lip):
    if isinstance(container, fx.Node):
        return arg_lip(container)               # a tuple-valued node: its bound covers all
    return arg_lip(container[idx])


def _plain_index(idx) -> bool:
    items = idx if isinstance(idx, tuple) else (idx,)
    return all(isinstance(i, int | slice) or i is None or i is Ellipsis for i in items)


def _reduce_factor(node, values, name, l_in) -> tuple[float, float]:
    x = values[node.args[0]]
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    if dims is None:
        k = x.numel()                   # the example is a batch of one: every entry
    else:
        dims = (dims,) if isinstance(dims, int) else tuple(dims)
        k = math.prod(x.shape[d] for d in dims)
    factor = 1 / math.sqrt(k) if name == "mean" else math.sqrt(k)
    return factor, factor * l_in


def _method_rule(node, values, arg_lip, val, record) -> float:
    name = node.target
    l_in = arg_lip(node.args[0])
    if name in SHAPE_METHODS:
        return l_in
    if name in ("mean", "sum"):
        return record(node, name, *_reduce_factor(node, values, name, l_in))
    if name in ("relu", "tanh"):
        return l_in
    if name == "sigmoid":
        return record(node, name, 0.25, 0.25 * l_in)
    if name in ("mul", "div", "add", "sub", "mul_", "div_", "add_", "sub_"):
        kind = {"sub": "add"}.get(name.rstrip("_"), name.rstrip("_"))
        a, b = _operands(node)
        return _binary(node, kind, a, b, values, arg_lip, val, record)
    raise NoBound(f"no Lipschitz rule for method .{name}() (node {node.name})")


# -- lower bounds ----------------------------------------------------------------------------
def gradient_context(gradient: Callable | None):
    """The context a ``gradient`` factory makes (e.g. ``lambda: use_derivative(model)``), or
    none: what every gradient-based estimate in :mod:`metrics` runs under."""
    return gradient() if gradient is not None else contextlib.nullcontext()


def jacobian_norms(model: nn.Module, x: torch.Tensor, *, iters: int = 20, seed: int = 0,
                   gradient: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example of ``x`` (N, ...), a lower bound on the spectral norm of the input Jacobian
    of ``model`` (eval mode, examples independent): ``iters`` steps of power iteration on
    J^T J (``torch.func.jvp`` then ``vjp``). Returns (norms (N,), unit directions like x):
    ||J v|| for the last unit v, the best of the iterates (each is a valid lower bound)."""
    gen = torch.Generator().manual_seed(seed)
    x = x.detach()
    v = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
    v = v / v.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, *[1] * (x.dim() - 1))
    best = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    best_v = v.clone()
    with gradient_context(gradient):
        _, vjp_fn = torch.func.vjp(model, x)
        for _ in range(max(1, iters)):
            _, jv = torch.func.jvp(model, (x,), (v,))
            jv = jv.detach()
            norm = jv.flatten(1).norm(dim=1).double()
            better = norm > best
            best = torch.where(better, norm, best)
            best_v[better] = v[better]
            (jtjv,) = vjp_fn(jv.to(x.dtype))
            jtjv = jtjv.detach()
            n = jtjv.flatten(1).norm(dim=1).clamp_min(1e-30)
            v = (jtjv / n.view(-1, *[1] * (x.dim() - 1))).detach()
    return best, best_v


def pair_ratios(model: nn.Module, x: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """||f(x) - f(x2)|| / ||x - x2|| per pair (float64; NaN where x2 == x)."""
    with torch.no_grad():
        num = (model(x) - model(x2)).flatten(1).double().norm(dim=1)
    x, x2 = x.detach(), x2.detach()
    den = (x - x2).flatten(1).double().norm(dim=1)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.nan)


def ascend_pairs(model: nn.Module, x: torch.Tensor, *, radius: float = 0.05, steps: int = 20,
                 start: torch.Tensor | None = None, seed: int = 0,
                 gradient: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected gradient ascent, per example, on r(x') = ||f(x') - f(x)|| / ||x' - x|| over
    x' in [0, 1] with ||x' - x|| <= ``radius`` (l2, pixel units). Starts at x + radius * d
    (``start``: unit directions, e.g. from :func:`jacobian_norms`; default random), steps of
    normalised gradients with a step size shrinking from radius / 2. Returns (the best ratio
    per example, measured by forward passes only, and the x' attaining it)."""
    x = x.detach()
    view = (-1, *[1] * (x.dim() - 1))
    if start is None:
        gen = torch.Generator().manual_seed(seed)
        start = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
    d = start / start.flatten(1).norm(dim=1).clamp_min(1e-30).view(view)
    xp = (x + radius * d).clamp(0, 1)
    with torch.no_grad():
        fx0 = model(x)
    best = pair_ratios(model, x, xp).nan_to_num(0.0)
    best_x = xp.clone()
    for t in range(steps):
        xp = xp.detach().requires_grad_(True)
        with gradient_context(gradient), torch.enable_grad():
            diff = (model(xp) - fx0).flatten(1).norm(dim=1)
            dist = (xp - x).flatten(1).norm(dim=1).clamp_min(1e-12)
            obj = (diff.clamp_min(1e-12).log() - dist.log()).sum()
            (g,) = torch.autograd.grad(obj, xp)
        g = g / g.flatten(1).norm(dim=1).clamp_min(1e-30).view(view)
        step = radius / 2 * (1 - t / steps) + radius / 20
        with torch.no_grad():
            xp = xp + step * g
            delta = xp - x
            n = delta.flatten(1).norm(dim=1).view(view)
            xp = (x + delta * (radius / n.clamp_min(1e-30)).clamp(max=1.0)).clamp(0, 1)
            r = pair_ratios(model, x, xp).nan_to_num(0.0)
            better = r > best
            best = torch.where(better, r, best)
            best_x[better] = xp[better]
    return best, best_x
