"""LoRA adapters between our linears and the family's HF modules, exactly, in both directions.

A LoRA changes a weight (out, in) by scaling * B A; only the OUTPUT rows of a projection are laid out
differently between us and an HF family (the input features are the same hidden vector), so a layout of the
family table (families/hf_layout.py) is, for adapters, a permutation of output rows within a group of modules:

    same, transpose   one HF module <-> one of ours (PEFT keeps A (r, in), B (out, r) also for GPT-2 Conv1D)
    kv_split          HF k_proj, v_proj (n_kv*hd rows each) <-> our wk_v, rows [K_0; V_0; K_1; V_1; ...]
    conv1d_qkv        HF c_attn rows q | k | v <-> our wq and wk_v (per-head interleaved)
    conv1d_gate_up    HF c_fc rows gate | up <-> our w1, w3

Converting a group: every source adapter keeps its A; a target module's A stacks the distinct A's whose rows
reach it, and its B holds, row by row, the source B rows (times the ratio of their scalings to the target's),
zero in the columns of the other A's. So a LoRA on our fused wk_v becomes two LoRAs (k_proj, v_proj) that
share A, and two independent k_proj / v_proj LoRAs of rank r become one wk_v LoRA of rank 2r, A = [A_k; A_v],
B = per head [B_k 0; 0 B_v]. Both are exact. The fused adapter remembers its column blocks (Adapter.blocks): a
block whose B is zero on a target module's rows adds nothing there and is dropped, so converting back restores
the original pair (after training in the fused form the blocks are dense: the HF pair then has rank 2r each);
two LoRAs with the same A and scaling share their columns, so ours -> HF -> ours restores our rank r.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config.base import ConfigError
from .inject import Adapter
from .names import WEIGHT

SUPPORTED = ("same", "transpose", "kv_split", "conv1d_qkv", "conv1d_gate_up")


@dataclass
class Group:
    """Our modules `ours` and the HF modules `hf` that share output rows: ours_rows = hf_rows[perm] on the
    concatenated rows of each side."""
    ours: list[tuple[str, int]]          # (module, rows)
    hf: list[tuple[str, int]]
    perm: np.ndarray


def _kv_perm(n_kv: int, hd: int, offset: int = 0) -> np.ndarray:
    """Rows of our per-head interleaved wk_v in the concatenated [K; V] rows."""
    k = np.arange(n_kv * hd).reshape(n_kv, 1, hd)
    return (np.concatenate([k, k + n_kv * hd], axis=1).reshape(-1) + offset)       # (n_kv, 2, hd) -> (2 n_kv hd,)


def _perm(entry, config) -> np.ndarray:
    name = entry.layout.name
    rows = sum(s[0] for s in entry.ms_shapes)
    if name in ("same", "transpose", "conv1d_gate_up"):
        return np.arange(rows)
    if name == "kv_split":
        return _kv_perm(config.num_kv_heads, config.head_dim)
    if name == "conv1d_qkv":
        q = config.num_heads * config.head_dim
        return np.concatenate([np.arange(q), _kv_perm(config.num_kv_heads, config.head_dim, q)])
    raise ConfigError(f"LoRA cannot map the {name!r} layout of family {config.family!r} (experts are not linears)")


def groups(config, modules, spelling=None) -> list[Group]:
    """The groups of the family table that make our linear `modules` (model order); a module without a table
    entry (a tied lm_head) is its own group under its own name."""
    from ..convert.names import table   # pylint: disable=import-outside-toplevel
    wanted, out, seen = set(modules), [], set()
    for entry in table(config, spelling).entries:
        ours = [k[:-len(WEIGHT)] for k in entry.ms_keys if k.endswith(WEIGHT)]
        if not any(m in wanted for m in ours):
            continue
        if entry.layout.name not in SUPPORTED:
            raise ConfigError(f"LoRA cannot target {ours[0]}: its {entry.layout.name!r} layout is not a linear")
        ms_rows = [s[0] for s in entry.ms_shapes]
        # Conv1D weights are stored (in, out): the HF module's output rows are the stored columns
        hf_rows = [s[1] if entry.layout.name.startswith("conv1d") or entry.layout.name == "transpose" else s[0]
                   for s in entry.hf_shapes]
        out.append(Group(list(zip(ours, ms_rows)), [(k[:-len(WEIGHT)], r) for k, r in zip(entry.hf_keys, hf_rows)],
                         _perm(entry, config)))
        seen.update(ours)
    for module in modules:
        if module not in seen:                      # tied lm_head: no table entry, same name both sides
            rows = config.vocab_size if module == "lm_head" else None
            if rows is None:
                raise ConfigError(f"{module}: no entry of the {config.family} name table makes this module")
            out.append(Group([(module, rows)], [(module, rows)], np.arange(rows)))
    return out


def _same(x: Adapter, y: Adapter) -> bool:
    return x.scaling == y.scaling and x.a.shape == y.a.shape and np.array_equal(x.a, y.a)


def _regroup(src: list[tuple[str, int]], dst: list[tuple[str, int]], rows_of_dst: np.ndarray,
             adapters: dict[str, Adapter]) -> dict[str, Adapter]:
    """Adapters of the `src` modules -> adapters of the `dst` modules; dst concatenated row i is src
    concatenated row rows_of_dst[i]."""
    distinct, owner = [], []
    for module, rows in src:                          # which distinct adapter owns each src row (-1: none)
        ad = adapters.get(module)
        if ad is None:
            owner.append(np.full(rows, -1))
        else:
            j = next((i for i, d in enumerate(distinct) if _same(d, ad)), None)
            if j is None:
                distinct.append(ad)
                j = len(distinct) - 1
            owner.append(np.full(rows, j))
    owner = np.concatenate(owner)
    src_offsets = np.cumsum([0] + [r for _, r in src])
    out, start = {}, 0
    for module, rows in dst:
        picked = rows_of_dst[start:start + rows]
        start += rows
        used = [j for j in range(len(distinct)) if np.any(owner[picked] == j)]
        if used:
            out[module] = _build(distinct, used, owner, picked, src, src_offsets, adapters)
    return out


def _build(distinct, used, owner, picked, src, src_offsets, adapters) -> Adapter:
    scaling = distinct[used[0]].scaling
    a = np.concatenate([distinct[j].a for j in used], axis=0)                    # (sum r, in)
    b = np.zeros((len(picked), a.shape[0]), np.float64)                          # (rows, sum r)
    blocks, col = [], 0
    for j in used:
        ad = distinct[j]
        rows = np.nonzero(owner[picked] == j)[0]                                 # target rows fed by adapter j
        src_rows = picked[rows]                                                  # their concatenated src rows
        module_index = np.searchsorted(src_offsets, src_rows, side="right") - 1
        for m in np.unique(module_index):                                        # each src module's own B rows
            sel = module_index == m
            b_src = adapters[src[m][0]].b
            b[rows[sel], col:col + ad.rank] = b_src[src_rows[sel] - src_offsets[m]] * (ad.scaling / scaling)
        start = col
        for size in ad.blocks or (ad.rank,):
            blocks.append((start, size))
            start += size
        col += ad.rank
    return _drop_zero_blocks(a, b, blocks, scaling)


def _drop_zero_blocks(a, b, blocks, scaling) -> Adapter:
    """Blocks of independent LoRAs whose B is zero on these rows add nothing here: dropped (unless every block
    is zero: a fresh adapter keeps its rank). One LoRA is one block and never loses columns."""
    kept = [(s, n) for s, n in blocks if np.any(b[:, s:s + n] != 0)] or blocks
    cols = np.concatenate([np.arange(s, s + n) for s, n in kept])
    sizes = tuple(n for _, n in kept)
    return Adapter(a[cols].astype(np.float32), b[:, cols].astype(np.float32), scaling,
                   sizes if len(sizes) > 1 else None)


def hf_to_ours(config, hf_adapters: dict[str, Adapter], modules, spelling=None) -> dict[str, Adapter]:
    """{HF module: Adapter} -> {our module: Adapter}; an HF module no group of `modules` names is an error."""
    out, used = {}, set()
    for group in groups(config, modules, spelling):
        if not any(h in hf_adapters for h, _ in group.hf):
            continue
        used.update(h for h, _ in group.hf)
        out.update(_regroup(group.hf, group.ours, group.perm, hf_adapters))
    unknown = sorted(set(hf_adapters) - used)
    if unknown:
        raise ConfigError(f"adapter module(s) {', '.join(unknown[:3])}{' ...' if len(unknown) > 3 else ''} are not "
                          f"linear layers of this {config.family} model (expected HF names like "
                          f"{', '.join(h for g in groups(config, modules[:7], spelling) for h, _ in g.hf)[:200]})")
    return out


def ours_to_hf(config, adapters: dict[str, Adapter], modules, spelling=None) -> dict[str, Adapter]:
    """{our module: Adapter} -> {HF module: Adapter} (HF names in the family's canonical spelling)."""
    out = {}
    for group in groups(config, modules, spelling):
        if not any(m in adapters for m, _ in group.ours):
            continue
        inverse = np.argsort(group.perm)                  # hf concatenated row i is ours row inverse[i]
        out.update(_regroup(group.ours, group.hf, inverse, adapters))
    return out
