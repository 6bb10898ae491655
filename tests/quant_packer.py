"""GPTQ / AWQ packer and reference dequantization for the quantization tests (and bench/quant.py), written
from the spec formulas (families.md §5; AWQ GEMM order from AutoAWQ), independently of telechat_ms.quant:
explicit per-row / per-column bit loops, own names.

quantize_linear(W) does round-to-nearest per group like GPTQ's quantizer (min/max including 0, sym: zero
2^(b-1)), with an act-order permutation when desc_act. pack() writes the tensors of a format; reference()
dequantizes the STORED fields with the format's formula (v1 adds 1 to the stored zero), in fp32.
"""
from __future__ import annotations

import json
import os

import numpy as np
from safetensors.numpy import save_file

ORDER_AWQ = [0, 2, 4, 6, 1, 3, 5, 7]


def quantize_linear(weight: np.ndarray, bits: int, group_size: int, desc_act: bool, sym: bool, rng) -> dict:
    """weight (N, K) float -> {q (K, N), zero (G, N), scales fp16 (G, N), g_idx (K,)} (true zero points)."""
    n_out, k_in = weight.shape
    size = k_in if group_size == -1 else group_size
    groups = -(-k_in // size)
    w_t = weight.T.astype(np.float32)                                        # (K, N)
    if desc_act:
        order = rng.permutation(k_in)                                        # activation order of the inputs
        g_idx = np.empty(k_in, np.int32)
        g_idx[order] = np.arange(k_in) // size                               # position in that order // size
    else:
        g_idx = (np.arange(k_in) // size).astype(np.int32)
    maxq = 2 ** bits - 1
    q = np.zeros((k_in, n_out), np.int64)
    zero = np.zeros((groups, n_out), np.int64)
    scales = np.zeros((groups, n_out), np.float16)
    for g in range(groups):
        rows = np.flatnonzero(g_idx == g)
        block = w_t[rows]
        lo, hi = np.minimum(block.min(0), 0), np.maximum(block.max(0), 0)
        if sym:
            hi = np.maximum(np.abs(lo), hi)
            lo = -hi
        step = np.where(hi > lo, (hi - lo) / maxq, 1.0).astype(np.float16)
        scales[g] = step
        zero[g] = (maxq + 1) // 2 if sym else np.clip(np.round(-lo / step.astype(np.float32)), 0, maxq)
        q[rows] = np.clip(np.round(block / step.astype(np.float32)) + zero[g], 0, maxq)
    return {"q": q, "zero": zero, "scales": scales, "g_idx": g_idx, "bits": bits, "group_size": size}


def _or_into(words: np.ndarray, index, value: np.ndarray, shift: int) -> None:
    words[index] |= (value.astype(np.uint64) << np.uint64(shift)).astype(np.uint32)


def pack(quant: dict, fmt: str) -> dict[str, np.ndarray]:
    """{qweight, qzeros, scales (, g_idx)} of a format: gptq (zero-1 stored), gptq_v2 (zero stored), awq."""
    q, zero, bits = quant["q"], quant["zero"], quant["bits"]
    k_in, n_out = q.shape
    p = 32 // bits
    stored = (zero - 1) & (2 ** bits - 1) if fmt == "gptq" else zero
    if fmt == "awq":
        qweight = np.zeros((k_in, n_out // 8), np.uint32)
        qzeros = np.zeros((zero.shape[0], n_out // 8), np.uint32)
        for n in range(n_out):
            slot = ORDER_AWQ.index(n % 8)                                    # column n sits in this shift slot
            _or_into(qweight, (slice(None), n // 8), q[:, n], 4 * slot)
            _or_into(qzeros, (slice(None), n // 8), stored[:, n], 4 * slot)
        return {"qweight": qweight.view(np.int32), "qzeros": qzeros.view(np.int32), "scales": quant["scales"]}
    qweight = np.zeros((k_in // p, n_out), np.uint32)
    for k in range(k_in):
        _or_into(qweight, k // p, q[k], bits * (k % p))
    qzeros = np.zeros((zero.shape[0], n_out // p), np.uint32)
    for n in range(n_out):
        _or_into(qzeros, (slice(None), n // p), stored[:, n], bits * (n % p))
    return {"qweight": qweight.view(np.int32), "qzeros": qzeros.view(np.int32), "scales": quant["scales"],
            "g_idx": quant["g_idx"].astype(np.int32)}


def reference(tensors: dict, fmt: str, bits: int, group_size: int, k_in: int) -> np.ndarray:
    """The torch Linear weight (N, K) fp32 from the stored tensors, by the formula of `fmt`."""
    qweight = tensors["qweight"].view(np.uint32)
    qzeros = tensors["qzeros"].view(np.uint32)
    mask = 2 ** bits - 1
    if fmt == "awq":
        n_out = qweight.shape[1] * 8
        q = np.zeros((k_in, n_out), np.int64)
        z = np.zeros((qzeros.shape[0], n_out), np.int64)
        for n in range(n_out):
            shift = 4 * ORDER_AWQ.index(n % 8)
            q[:, n] = (qweight[:, n // 8] >> shift) & mask
            z[:, n] = (qzeros[:, n // 8] >> shift) & mask
        g_idx = np.arange(k_in) // (k_in if group_size == -1 else group_size)
    else:
        p, n_out = 32 // bits, qweight.shape[1]
        q = np.zeros((k_in, n_out), np.int64)
        for k in range(k_in):
            q[k] = (qweight[k // p] >> (bits * (k % p))) & mask
        z = np.zeros((qzeros.shape[0], n_out), np.int64)
        for n in range(n_out):
            z[:, n] = (qzeros[:, n // p] >> (bits * (n % p))) & mask
        if fmt == "gptq":
            z = z + 1
        g_idx = tensors["g_idx"]
    w_t = tensors["scales"].astype(np.float32)[g_idx] * (q - z[g_idx]).astype(np.float32)
    return np.ascontiguousarray(w_t.T)


def quantize_state(state: dict, linear_keys, bits: int, group_size: int, desc_act: bool, sym: bool, fmt: str,
                   seed: int = 0):
    """Replace every `X.weight` of linear_keys by X.qweight / qzeros / scales (/ g_idx); returns the
    quantized state and {X.weight: reference float (N, K) fp32}."""
    rng = np.random.default_rng(seed)
    out, ref = dict(state), {}
    for key in linear_keys:
        prefix = key[: -len(".weight")]
        weight = out.pop(key)
        tensors = pack(quantize_linear(weight, bits, group_size, desc_act, sym, rng), fmt)
        out.update({f"{prefix}.{leaf}": value for leaf, value in tensors.items()})
        ref[key] = reference(tensors, fmt, bits, group_size, weight.shape[1])
    return out, ref


def quant_config(fmt: str, bits: int, group_size: int, desc_act: bool, sym: bool) -> dict:
    if fmt == "awq":
        return {"quant_method": "awq", "bits": bits, "group_size": group_size, "zero_point": True, "version": "gemm"}
    return {"quant_method": "gptq", "bits": bits, "group_size": group_size, "desc_act": desc_act, "sym": sym,
            "damp_percent": 0.1, "true_sequential": True, "checkpoint_format": fmt}


def write_checkpoint(directory: str, config_json: dict, state: dict, qconfig: dict, where: str = "file") -> None:
    """config.json (+ quantization_config when where == 'inline'), quantize_config.json / quant_config.json
    (where == 'file'; 'none': neither), model.safetensors (floats kept as given)."""
    os.makedirs(directory, exist_ok=True)
    data = dict(config_json)
    if where == "inline":
        data["quantization_config"] = qconfig
    elif where == "file":
        name = "quant_config.json" if qconfig["quant_method"] == "awq" else "quantize_config.json"
        body = {k: v for k, v in qconfig.items() if not (name == "quantize_config.json" and k == "quant_method")}
        with open(os.path.join(directory, name), "w", encoding="utf-8") as fh:
            json.dump(body, fh, indent=2)
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, os.path.join(directory, "model.safetensors"),
              metadata={"format": "pt"})


def llama_state(config, seed: int = 0, dtype=np.float16) -> tuple[dict, list[str]]:
    """A Llama-named HF state (spelled here) and its decoder linear weight keys."""
    rng = np.random.default_rng(seed)
    h, f, v = config.hidden_size, config.ffn_hidden_size, config.vocab_size
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    state = {"model.embed_tokens.weight": rng.normal(0, 1.0, (v, h)), "model.norm.weight": 1 + rng.normal(0, .1, h),
             "lm_head.weight": rng.normal(0, 0.1, (v, h))}
    linears = []
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        state[p + "input_layernorm.weight"] = 1 + rng.normal(0, 0.1, h)
        state[p + "post_attention_layernorm.weight"] = 1 + rng.normal(0, 0.1, h)
        for name, shape in (("self_attn.q_proj", (q, h)), ("self_attn.k_proj", (kv, h)), ("self_attn.v_proj", (kv, h)),
                            ("self_attn.o_proj", (h, q)), ("mlp.gate_proj", (f, h)), ("mlp.up_proj", (f, h)),
                            ("mlp.down_proj", (h, f))):
            state[p + name + ".weight"] = rng.normal(0, 0.15, shape)
            linears.append(p + name + ".weight")
    return {k: np.asarray(a, dtype) for k, a in state.items()}, linears


def make_llama(directory: str, config, fmt: str, bits: int, group: int, desc_act: bool, sym: bool,
               where: str = "file", seed: int = 0, tokenizer: str | None = None) -> dict:
    """A tiny Llama-named checkpoint quantized here; returns the reference float weights {HF key: (N, K)}."""
    state, linears = llama_state(config, seed)
    quantized, ref = quantize_state(state, linears, bits, group, desc_act, sym, fmt, seed)
    write_checkpoint(directory, config.to_hf_config(), quantized, quant_config(fmt, bits, group, desc_act, sym), where)
    if tokenizer:
        import shutil   # pylint: disable=import-outside-toplevel
        shutil.copy(tokenizer, os.path.join(directory, "tokenizer.model"))
    return ref
