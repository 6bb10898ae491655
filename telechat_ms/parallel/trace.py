"""Which primitives a compiled graph really runs, read from MindSpore's IR dump: the proof that no op of
construct() escapes the shard plans.

The static validator (validate.py) checks the primitives the shape table (shapes.py) lists. An op outside the
table -- a functional call (`ops.broadcast_to`), a slice (`x[..., :d]`), a Python operator on tensors, a cell
class without a plan -- would run on MindSpore's default strategy under semi-auto parallel. `check_traced`
compiles the network in GRAPH_MODE on this machine (tiny configs only), parses the optimised frontend graph
(every node carries its cell scope and, for a cell-held primitive, the attribute name) and requires every
primitive node to be a planned attribute of the cell it runs in, or a layout-free Reshape / Cast.
Only the forward graph is read: MindSpore derives the backward ops' layouts from the forward strategies.
"""
from __future__ import annotations

import glob
import os
import re
import tempfile
from dataclasses import dataclass

from .rules import StrategyError
from .strategies import UNITS, plan_for, walk_cells
from .validate import LAYOUT_FREE, _is_known, _planned_ids

# graph plumbing, not computation: no strategy exists for these
STRUCTURAL = frozenset({"UpdateState", "Load", "Depend", "MakeTuple", "TupleGetItem", "StopGradient", "Return",
                        "Switch", "Partial", "MakeList", "ListGetItem", "ZerosLike", "J", "MakeRange"})
_NODE = re.compile(r"^\s+%\d+\([^)]*\) = (?:PrimFunc_)?([A-Za-z_][\w]*)\(")
_INSTANCE = re.compile(r"\{instance name: (\w+)\}")
_SCOPE = re.compile(r"# Fullname with scope: \((.*)\)")


@dataclass(frozen=True)
class TracedOp:
    path: str        # cell path inside the traced network ("" = the network itself)
    name: str        # the primitive's attribute name on that cell ("" = not a cell-held primitive)
    kind: str        # primitive class ("Mul", "Tile", ...)

    def where(self) -> str:
        return ".".join(p for p in (self.path, self.name or f"<{self.kind}>") if p)


def _cell_path(scope: str) -> str:
    """'Default/model-TelechatModel/layers-CellList/0-DecoderLayer/Mul-op3' -> 'model.layers.0'."""
    parts = scope.split("/")[1:-1]
    return ".".join(part.rsplit("-", 1)[0] for part in parts)


def parse_ir(text: str) -> list[TracedOp]:
    """Primitive nodes of one IR dump (graph plumbing left out). A node's text runs from its `%n(...) = Op(`
    line to its scope comment (constant inputs may print over several lines)."""
    ops, kind, body = [], None, ""
    for line in text.splitlines():
        node = _NODE.match(line)
        if node:
            kind, body = node.group(1), line
            continue
        if kind is None:
            continue
        scope = _SCOPE.search(line)
        if scope is None:
            body += line
            continue
        if kind not in STRUCTURAL:
            instance = _INSTANCE.search(body)
            ops.append(TracedOp(_cell_path(scope.group(1)), instance.group(1) if instance else "", kind))
        kind = None
    return ops


def traced_primitives(network, *args) -> list[TracedOp]:
    """Compile `network(*args)` in GRAPH_MODE (not run) with IR dumps in a temporary directory and return the
    primitive nodes of the forward graph. The network must not have been compiled with these inputs
    already (a cached graph writes no dump)."""
    import mindspore as ms   # pylint: disable=import-outside-toplevel
    saved = {key: ms.get_context(key) for key in ("mode", "save_graphs", "save_graphs_path")}
    with tempfile.TemporaryDirectory() as tmp:
        ms.set_context(mode=ms.GRAPH_MODE, save_graphs=1, save_graphs_path=tmp)
        try:
            network.compile(*args)
        finally:
            ms.set_context(**saved)
        dumps = sorted(glob.glob(os.path.join(tmp, "**", "*_pre_auto_parallel_*.ir"), recursive=True))
        if not dumps:
            raise RuntimeError(f"no pre_auto_parallel IR written under {tmp}: was the network already compiled?")
        with open(dumps[-1], encoding="utf-8") as handle:
            return parse_ir(handle.read())


def planned_primitives(network, parallel) -> set:
    """id() of every planned primitive (dotted plan keys such as "dropout.dropout" or the MoE unit's
    "ffn.w1.bmm" reach into child cells; a primitive shared by two cells is planned once)."""
    out = set()
    for _path, cell, kind in walk_cells(network):
        if kind in UNITS or _is_known(kind):
            out |= _planned_ids(cell, plan_for(cell, parallel))
    return out


def check_traced(network, parallel, *args) -> list[TracedOp]:
    """Every primitive the compiled forward graph of `network(*args)` runs must be planned for `parallel` (or be
    a layout-free Reshape / Cast); raises StrategyError naming the first one that is not, returns the ops."""
    planned = planned_primitives(network, parallel)
    cells = dict(network.cells_and_names())
    traced = traced_primitives(network, *args)
    for op in traced:
        if op.kind in LAYOUT_FREE:
            continue
        if not op.name:
            raise StrategyError(op.where(), f"{op.kind} runs in construct without a cell-held primitive (a "
                                "functional op, slice or operator on tensors): it gets MindSpore's default strategy")
        if id(getattr(cells.get(op.path), op.name, None)) not in planned:
            raise StrategyError(op.where(), f"{op.kind} runs in construct but has no planned strategy "
                                "(telechat_ms.parallel.strategies)")
    return traced
