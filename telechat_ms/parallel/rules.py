"""What MindSpore's semi-auto parallel requires of one primitive's strategy, checked against input shapes.

Generic (every op): one strategy entry per tensor input, () for a scalar, rank equal to the input's rank,
every split divides its dimension, and the devices the op uses divide the stage's device count.
Per op: matmul reduction splits equal (MatMul / BatchMatMul), broadcast dimensions consistent
(elementwise), axes MindSpore cannot split (softmax / top-k / cumsum / concat / GatherD dim / Split axis /
the axis a StridedSlice cuts), OneHot (any split of a 1-D input's output, only the first axis otherwise),
Select (equal shapes and strategies), BiasAdd (bias split like the channel axis), Tile (splits of the
multiplied extent: the multiple where > 1, else the input dimension), TensorScatterAdd (indices and the
updates' index axes unsplit), batch-mode Gather (batch axes split alike, gather axis unsplit),
flash-attention q/k/v/mask agreement, RmsNorm's normalised axis.
"""
from __future__ import annotations

import math

from ..config.base import ConfigError

ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "RealDiv", "Div", "Select", "Maximum", "Minimum", "MaskedFill",
                         "LogicalOr", "LogicalAnd", "NotEqual", "Equal", "Less", "GreaterEqual"})


class StrategyError(ConfigError):
    """A strategy does not fit a shape or the device count. Names the op, the config field(s), the numbers."""

    def __init__(self, op: str, message: str, fields: tuple = ()):
        self.op, self.fields = op, tuple(fields)
        field_text = f" [fields: {', '.join(self.fields)}]" if self.fields else ""
        super().__init__(f"{op}: {message}{field_text}")


def _fields(*splits) -> tuple:
    out: list = []
    for s in splits:
        out.extend(f for f in getattr(s, "fields", ()) if f not in out)
    return tuple(out)


def _dim_text(dim) -> str:
    name = getattr(dim, "name", "")
    return f"{name}={int(dim)}" if name else str(int(dim))


def _split_text(split) -> str:
    return split.describe() if hasattr(split, "describe") else str(int(split))


def check_generic(op: str, strategy: tuple, shapes: tuple, stage_devices: int) -> None:
    if len(strategy) != len(shapes):
        raise StrategyError(op, f"strategy has {len(strategy)} entries for {len(shapes)} inputs {shapes}")
    for i, (st, shape) in enumerate(zip(strategy, shapes)):
        if len(st) != len(shape):
            raise StrategyError(op, f"input {i}: strategy {tuple(map(int, st))} has rank {len(st)} but the input "
                                f"{tuple(map(int, shape))} has rank {len(shape)}")
        for axis, (split, dim) in enumerate(zip(st, shape)):
            if int(split) < 1 or int(dim) % int(split):
                raise StrategyError(op, f"input {i} axis {axis}: {_dim_text(dim)} is not divisible by split "
                                    f"{_split_text(split)}", _fields(split))
        product = math.prod(int(s) for s in st)
        if stage_devices % product:
            raise StrategyError(op, f"input {i}: splits {tuple(map(int, st))} use {product} devices, which does "
                                f"not divide the {stage_devices} devices of a stage", _fields(*st))


def _equal(op: str, what: str, a, b) -> None:
    if int(a) != int(b):
        raise StrategyError(op, f"{what}: splits {_split_text(a)} and {_split_text(b)} differ", _fields(a, b))


def _unsplit(op: str, what: str, split) -> None:
    if int(split) != 1:
        raise StrategyError(op, f"{what} cannot be split (got {_split_text(split)})", _fields(split))


def _devices(op: str, used: int, stage_devices: int, splits) -> int:
    if used > stage_devices or stage_devices % used:
        raise StrategyError(op, f"uses {used} devices, which does not divide the {stage_devices} devices of a "
                            "stage", _fields(*splits))
    return used


def check_matmul(op, prim, strategy, out_strategy, stage_devices) -> int:
    x, w = strategy
    m, kx = (x[1], x[0]) if prim.attrs.get("transpose_a") else (x[0], x[1])
    kw, n = (w[1], w[0]) if prim.attrs.get("transpose_b") else (w[0], w[1])
    _equal(op, "reduction axis (x vs weight)", kx, kw)
    if out_strategy is not None:
        (out,) = out_strategy
        _equal(op, "out_strategy output-feature axis", out[1], n)
        if int(out[0]) not in (int(m), int(m) * int(kx)):
            raise StrategyError(op, f"out_strategy rows {int(out[0])} must be {int(m)} (all-reduce) or "
                                f"{int(m) * int(kx)} (reduce-scatter)", _fields(out[0]))
    return _devices(op, int(m) * int(kx) * int(n), stage_devices, (m, kx, n))


def check_batch_matmul(op, prim, strategy, stage_devices) -> int:
    x, w = strategy
    for axis, (a, b) in enumerate(zip(x[:-2], w[:-2])):
        _equal(op, f"batch axis {axis}", a, b)
    m, kx = (x[-1], x[-2]) if prim.attrs.get("transpose_a") else (x[-2], x[-1])
    kw, n = (w[-1], w[-2]) if prim.attrs.get("transpose_b") else (w[-2], w[-1])
    _equal(op, "reduction axis", kx, kw)
    used = math.prod(int(s) for s in x[:-2]) * int(m) * int(kx) * int(n)
    return _devices(op, used, stage_devices, tuple(x) + (n,))


def check_elementwise(op, strategy, shapes) -> None:
    tensors = [(st, sh) for st, sh in zip(strategy, shapes) if len(sh)]
    if not tensors:                  # scalars only (the summed aux losses)
        return
    rank = max(len(sh) for _, sh in tensors)
    for axis in range(1, rank + 1):
        present = [(st[-axis], sh[-axis]) for st, sh in tensors if len(sh) >= axis and int(sh[-axis]) > 1]
        for split, _ in present[1:]:
            _equal(op, f"broadcast axis -{axis}", present[0][0], split)


def check_special(op, kind, prim, strategy, shapes, axis) -> None:
    """Axes MindSpore cannot split, and multi-input agreements."""
    if kind == "Softmax":
        _unsplit(op, "softmax axis", strategy[0][prim.attrs.get("axis", (-1,))[0]])
    elif kind == "TopK":
        _unsplit(op, "top-k axis", strategy[0][-1])
    elif kind == "CumSum":
        _unsplit(op, "cumsum axis", strategy[0][axis])
    elif kind == "Concat":
        for st in strategy[1:]:
            for a, b in zip(strategy[0], st):
                _equal(op, "concat inputs", a, b)
        _unsplit(op, "concat axis", strategy[0][prim.attrs.get("axis", 0)])
    elif kind in ("Split", "StridedSlice"):
        cut = prim.attrs.get("axis", axis) if kind == "Split" else axis
        _unsplit(op, f"{kind} axis {cut}", strategy[0][cut])
    elif kind == "Select":
        if len({tuple(map(int, s)) for s in shapes}) > 1 or len({tuple(map(int, s)) for s in strategy}) > 1:
            raise StrategyError(op, f"Select needs three equal shapes and strategies, got {shapes} / {strategy}",
                                _fields(*(x for s in strategy for x in s)))
    elif kind == "BiasAdd":
        _equal(op, "bias vs channel axis 1", strategy[0][1], strategy[1][0])
    elif kind == "TensorScatterAdd":
        for split in tuple(strategy[1]) + tuple(strategy[2][:len(shapes[1]) - 1]):
            _unsplit(op, "scatter indices / updates index axes", split)
    elif kind == "GatherD":
        _unsplit(op, "GatherD dim axis", strategy[0][axis])
        for a, b in zip(strategy[0], strategy[1]):
            _equal(op, "GatherD input vs index", a, b)
    elif kind == "OneHot":
        if len(shapes[0]) > 2:   # (the entry is the output): a >1-D index input splits on its first axis only
            for split in strategy[0][1:]:
                _unsplit(op, "one-hot axes after the first (multi-dimensional indices)", split)
    elif kind == "RmsNorm":
        _unsplit(op, "normalised (hidden) axis", strategy[0][-1])
        _unsplit(op, "gamma", strategy[1][0])
    elif kind == "FlashAttentionScore":
        q = strategy[0]
        for i in (1, 2):
            _equal(op, f"q vs {'kv'[i - 1]} batch", q[0], strategy[i][0])
            _equal(op, f"q vs {'kv'[i - 1]} heads", q[1], strategy[i][1])
            _unsplit(op, "head_dim", strategy[i][3])
        _equal(op, "q vs mask batch", q[0], strategy[3][0])
        _unsplit(op, "head_dim", q[3])


def tile_extents(op: str, shapes: tuple) -> tuple:
    """Tile (input, Multiples) -> the extent each strategy axis splits: the multiple where > 1, else the input
    dimension (MindSpore's TileInfo)."""
    (shape, multiples) = shapes
    if len(multiples) != len(shape):
        raise StrategyError(op, f"multiples {tuple(multiples)} must have the rank of the input {tuple(shape)}")
    return (tuple(m if int(m) > 1 else dim for dim, m in zip(shape, multiples)),)


def check_call(op: str, prim, strategy: tuple, out_strategy, shapes: tuple, stage_devices: int, axis=None) -> int:
    """All checks of one call; returns the devices the op uses."""
    kind = type(prim).__name__
    if kind == "Tile":
        shapes = tile_extents(op, shapes)
    check_generic(op, strategy, shapes, stage_devices)
    if kind == "MatMul":
        return check_matmul(op, prim, strategy, out_strategy, stage_devices)
    if kind == "BatchMatMul":
        return check_batch_matmul(op, prim, strategy, stage_devices)
    if out_strategy is not None:
        raise StrategyError(op, f"out_strategy is only planned for MatMul, not {kind}")
    if kind in ELEMENTWISE:
        check_elementwise(op, strategy, shapes)
    check_special(op, kind, prim, strategy, shapes, axis)
    products = [math.prod(int(s) for s in st) for st in strategy]
    used = math.prod(products) if kind == "Gather" else max(products)
    batch_dims = int(prim.attrs.get("batch_dims", 0) or 0) if kind == "Gather" else 0
    if batch_dims:
        # MindSpore's batch-mode Gather (BatchImpl; the MoE's per-group gathers, axis = batch_dims): batch axes
        # split alike in params and indices, gather axis unsplit; devices = indices splits x params splits after
        # the gather axis (the batch axes are shared, not multiplied)
        params, indices = strategy
        for i in range(batch_dims):
            _equal(op, f"batch axis {i} (params vs indices)", params[i], indices[i])
        _unsplit(op, "gather axis", params[batch_dims])
        used = products[1] * math.prod(int(s) for s in params[batch_dims:])
    return _devices(op, used, stage_devices, tuple(s for st in strategy for s in st))
