"""HF checkpoint layouts as data: a family's name table and the small named layout helpers it uses.

Every family maps its HF tensors onto ONE internal layout (TeleChat names, fused per-head key_value rows
[K_0; V_0; K_1; V_1; ...], feed_forward.w1/w3/w2 = gate/up/down). A table is a list of `Entry`s; each entry
names some HF tensors, some of our tensors (with shapes from the config) and a `Layout` -- a pair of pure
functions on lazy `Virtual` tensors, one per direction -- so the same table drives hf2ms, ms2hf and the
in-memory `hf_to_ms` / `ms_to_hf`. Nothing here reads data.

A `spelling` is what varies between checkpoints of one family without changing the model: the TeleChat v1 7B
index has no `transformer.` prefix, TeleChat2 MoE checkpoints name the router `mlp.router` or `mlp.gate`.
hf2ms detects it from the tensor names and records it (convert_meta.json); ms2hf builds the table with it.
`buffers` are per-layer non-weight tensors some checkpoints carry (GPT-2 attention masks, Llama's rotary
inv_freq): dropped on input, recorded, re-created on output.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..io.virtual import Virtual

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Layout:
    """How the HF tensors of one entry become ours (`to_ms`) and back (`to_hf`); both get and return lists
    of Virtual in the entry's order, and the entry itself (for shapes)."""
    name: str
    to_ms: Callable[[list[Virtual], "Entry", Any], list[Virtual]]
    to_hf: Callable[[list[Virtual], "Entry", Any], list[Virtual]]


@dataclass(frozen=True)
class Entry:
    """Our tensors `ms_keys` (shapes `ms_shapes`) are made of the HF tensors `hf_keys` (`hf_shapes`)."""
    ms_keys: tuple[str, ...]
    ms_shapes: tuple[Shape, ...]
    hf_keys: tuple[str, ...]
    hf_shapes: tuple[Shape, ...]
    layout: Layout

    # one-tensor views (plain and stacked entries: the TeleChat2 table) -- kept for callers of the old table
    @property
    def ms_key(self) -> str:
        return self._one(self.ms_keys)

    @property
    def shape(self) -> Shape:
        return self._one(self.ms_shapes)

    @property
    def hf_shape(self) -> Shape:
        return self.hf_shapes[0]

    @property
    def stack(self) -> bool:
        return self.layout is STACK

    def _one(self, values):
        if len(values) != 1:
            raise ValueError(f"entry {self.hf_keys} -> {self.ms_keys} ({self.layout.name}) makes several tensors")
        return values[0]


@dataclass(frozen=True)
class Table:
    entries: list[Entry]
    buffers: tuple[str, ...] = ()          # per-layer HF key templates ({i}) of droppable buffers
    num_layers: int = 0

    def buffer_keys(self) -> dict[str, tuple[str, int]]:
        """{HF key: (template, layer)} of every possible buffer."""
        return {t.format(i=i): (t, i) for t in self.buffers for i in range(self.num_layers)}


@dataclass(frozen=True)
class HFLayout:
    """A family's checkpoint layout: `table(config, spelling)` and `spelling(keys)` (detected from tensor
    names; {} when the family has one spelling)."""
    table: Callable[[Any, Mapping[str, Any]], Table]
    spelling: Callable[[frozenset], dict] = lambda keys: {}


def entry(ms: list[tuple[str, Shape]], hf: list[tuple[str, Shape]], layout: "Layout") -> Entry:
    return Entry(tuple(k for k, _ in ms), tuple(tuple(s) for _, s in ms), tuple(k for k, _ in hf),
                 tuple(tuple(s) for _, s in hf), layout)


def same(ms_key: str, hf_key: str, shape: Shape) -> Entry:
    return entry([(ms_key, shape)], [(hf_key, shape)], SAME)


# ---- named layout helpers (pure Virtual algebra; dimensions from the entry / config) -------------------

SAME = Layout("same", lambda hf, e, c: [hf[0].reshaped(e.ms_shapes[0])],
              lambda ms, e, c: [ms[0].reshaped(e.hf_shapes[0])])

# E per-expert HF tensors <-> one of ours stacked on a leading expert axis: (E, ...)
STACK = Layout("stack", lambda hf, e, c: [Virtual.concat(hf, e.ms_shapes[0])],
               lambda ms, e, c: [ms[0].rows(i, i + 1, s) for i, s in enumerate(e.hf_shapes)])

# GPT-2 Conv1D [in, out] <-> our Linear [out, in]
TRANSPOSE = Layout("transpose", lambda hf, e, c: [hf[0].T], lambda ms, e, c: [ms[0].T])


def interleave_kv(k: Virtual, v: Virtual, num_kv_heads: int, head_dim: int) -> Virtual:
    """K, V (n_kv*hd, H) -> fused (2*n_kv*hd, H) rows [K_0; V_0; K_1; V_1; ...] (our key_value layout)."""
    parts = []
    for h in range(num_kv_heads):
        parts += [k.rows(h * head_dim, (h + 1) * head_dim), v.rows(h * head_dim, (h + 1) * head_dim)]
    return Virtual.concat(parts, (2 * num_kv_heads * head_dim,) + k.shape[1:])


def deinterleave_kv(kv: Virtual, num_kv_heads: int, head_dim: int) -> tuple[Virtual, Virtual]:
    """Inverse of interleave_kv: fused (2*n_kv*hd, H) -> K, V (n_kv*hd, H)."""
    shape = (num_kv_heads * head_dim,) + kv.shape[1:]
    k = [kv.rows(2 * h * head_dim, (2 * h + 1) * head_dim) for h in range(num_kv_heads)]
    v = [kv.rows((2 * h + 1) * head_dim, (2 * h + 2) * head_dim) for h in range(num_kv_heads)]
    return Virtual.concat(k, shape), Virtual.concat(v, shape)


# Llama split k_proj / v_proj (n_kv*hd, H) each <-> our per-head interleaved wk_v
KV_SPLIT = Layout(
    "kv_split",
    lambda hf, e, c: [interleave_kv(hf[0], hf[1], c.num_kv_heads, c.head_dim)],
    lambda ms, e, c: list(deinterleave_kv(ms[0], c.num_kv_heads, c.head_dim)))


def _qkv_to_ms(hf, e, c):
    """c_attn [H, q|k|v] (contiguous column blocks) -> wq (q, H), wk_v per-head interleaved (2kv, H)."""
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    t = hf[0].T                                                          # (q + 2kv, H): one row per output
    return [t.rows(0, q), interleave_kv(t.rows(q, q + kv), t.rows(q + kv, q + 2 * kv), c.num_kv_heads,
                                        c.head_dim)]


def _qkv_to_hf(ms, e, c):
    k, v = deinterleave_kv(ms[1], c.num_kv_heads, c.head_dim)
    rows = ms[0].shape[0] + k.shape[0] + v.shape[0]
    return [Virtual.concat([ms[0], k, v], (rows, ms[0].shape[1])).T]    # (q + 2kv, H) -> (H, q + 2kv)


# GPT-2 fused c_attn [in, out] = q | k | v column blocks <-> our wq + interleaved wk_v
CONV1D_QKV = Layout("conv1d_qkv", _qkv_to_ms, _qkv_to_hf)


def _gate_up_to_ms(hf, e, c):
    f = c.ffn_hidden_size
    t = hf[0].T                                                          # (2f, H)
    return [t.rows(0, f), t.rows(f, 2 * f)]


# GPT-2 fused c_fc [in, out] = gate | up column blocks <-> our w1 (gate), w3 (up)
CONV1D_GATE_UP = Layout("conv1d_gate_up", _gate_up_to_ms,
                        lambda ms, e, c: [Virtual.concat(ms, (2 * c.ffn_hidden_size, ms[0].shape[1])).T])
