"""Independent torch reference for TeleChat2 dense models (spec §9.2).

`transformers.LlamaForCausalLM` with attention_bias / mlp_bias on (q/k/v/gate/up biases zero), key_value split
per head, and its rotary module replaced by a transcription of the HF TeleChat2 rotary arithmetic (dynamic NTK
alpha from base_seqlen, mscale from training_seqlen, cos/sin rounded to fp16, float `math.log` as in HF).
Nothing here imports telechat_ms: every layout detail is re-derived from the spec.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRMSNorm


class TelechatRotary(torch.nn.Module):
    """Drop-in for LlamaRotaryEmbedding returning TeleChat2 cos/sin (B, S, D) for the given positions."""

    def __init__(self, head_dim: int, training_seqlen: int, base_seqlen: int, fp16_rounding: bool = True):
        super().__init__()
        self.dim, self.training_seqlen, self.base_seqlen = head_dim, training_seqlen, base_seqlen
        self.fp16_rounding = fp16_rounding

    def forward(self, x, position_ids):
        seq_len = max(int(position_ids.max()) + 1, self.training_seqlen)
        ntk_alpha = max(2 ** math.ceil(math.log(seq_len / self.base_seqlen, 2) + 1) - 1, 1)
        ratio = seq_len / self.training_seqlen
        mscale = 1.0 if ratio <= 1 else 0.1 * math.log(ratio) + 1.0
        base = 10000 * ntk_alpha ** (self.dim / (self.dim - 2))
        inv_freq = 1.0 / (base ** (torch.arange(0, self.dim, 2).float() / self.dim))
        t = torch.arange(seq_len, dtype=inv_freq.dtype)
        freqs = torch.einsum("i,j->ij", t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        if self.fp16_rounding:
            cos, sin = (mscale * emb.cos().half()).float(), (mscale * emb.sin().half()).float()
        else:
            cos, sin = mscale * emb.cos(), mscale * emb.sin()
        return cos[position_ids].to(x.dtype), sin[position_ids].to(x.dtype)


def random_hf_state(config, seed: int = 0, std: float = 0.08) -> dict[str, np.ndarray]:
    """Random HF-named TeleChat2 dense weights (fp32), non-trivial norms and biases."""
    rng = np.random.default_rng(seed)
    h, f, v, hd = config.hidden_size, config.ffn_hidden_size, config.vocab_size, config.head_dim
    normal = lambda *shape: rng.normal(0.0, std, shape).astype(np.float32)  # noqa: E731
    norm = lambda: (1.0 + rng.normal(0.0, 0.1, (h,))).astype(np.float32)     # noqa: E731
    state = {"transformer.word_embeddings.weight": rng.normal(0, 1.0, (v, h)).astype(np.float32),
             "transformer.ln_f.weight": norm(), "lm_head.weight": normal(v, h)}
    if config.embed_layernorm:
        state["transformer.word_embeddings_layernorm.weight"] = norm()
    for i in range(config.num_layers):
        p = f"transformer.h.{i}."
        state.update({
            p + "input_layernorm.weight": norm(), p + "post_attention_layernorm.weight": norm(),
            p + "self_attention.query.weight": normal(config.num_heads * hd, h),
            p + "self_attention.key_value.weight": normal(2 * config.num_kv_heads * hd, h),
            p + "self_attention.dense.weight": normal(h, config.num_heads * hd),
            p + "self_attention.dense.bias": normal(h),
            p + "mlp.gate_proj.weight": normal(f, h), p + "mlp.up_proj.weight": normal(f, h),
            p + "mlp.down_proj.weight": normal(h, f), p + "mlp.down_proj.bias": normal(h),
        })
    return state


def _kv_per_head(kv: torch.Tensor, n_kv: int, hd: int):
    """(2*n_kv*hd, H) rows [K_0; V_0; K_1; ...] -> K, V (n_kv*hd, H) (spec §2.4)."""
    w = kv.reshape(n_kv, 2, hd, kv.shape[-1])
    return w[:, 0].reshape(n_kv * hd, -1), w[:, 1].reshape(n_kv * hd, -1)


def build_reference(config, hf_state: dict[str, np.ndarray], fp16_rounding: bool = True) -> LlamaForCausalLM:
    """LlamaForCausalLM holding the TeleChat2 weights `hf_state` (fp32, eager attention)."""
    llama_cfg = LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.ffn_hidden_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads, rms_norm_eps=config.rms_norm_eps, rope_theta=10000.0,
        hidden_act="silu", tie_word_embeddings=False, attention_bias=True, mlp_bias=True,
        max_position_embeddings=4096, attn_implementation="eager", torch_dtype=torch.float32)
    model = LlamaForCausalLM(llama_cfg).float().eval()
    model.model.rotary_emb = TelechatRotary(config.head_dim, config.training_seqlen, config.base_seqlen,
                                            fp16_rounding)
    t = {k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in hf_state.items()}
    sd = {"model.embed_tokens.weight": t["transformer.word_embeddings.weight"],
          "model.norm.weight": t["transformer.ln_f.weight"], "lm_head.weight": t["lm_head.weight"]}
    for i in range(config.num_layers):
        p, q = f"transformer.h.{i}.", f"model.layers.{i}."
        k, v = _kv_per_head(t[p + "self_attention.key_value.weight"], config.num_kv_heads, config.head_dim)
        sd.update({
            q + "input_layernorm.weight": t[p + "input_layernorm.weight"],
            q + "post_attention_layernorm.weight": t[p + "post_attention_layernorm.weight"],
            q + "self_attn.q_proj.weight": t[p + "self_attention.query.weight"],
            q + "self_attn.k_proj.weight": k, q + "self_attn.v_proj.weight": v,
            q + "self_attn.o_proj.weight": t[p + "self_attention.dense.weight"],
            q + "self_attn.o_proj.bias": t[p + "self_attention.dense.bias"],
            q + "mlp.gate_proj.weight": t[p + "mlp.gate_proj.weight"],
            q + "mlp.up_proj.weight": t[p + "mlp.up_proj.weight"],
            q + "mlp.down_proj.weight": t[p + "mlp.down_proj.weight"],
            q + "mlp.down_proj.bias": t[p + "mlp.down_proj.bias"],
        })
        for name, rows in (("q_proj", config.num_heads), ("k_proj", config.num_kv_heads),
                           ("v_proj", config.num_kv_heads)):
            sd[q + f"self_attn.{name}.bias"] = torch.zeros(rows * config.head_dim)
        sd[q + "mlp.gate_proj.bias"] = torch.zeros(config.ffn_hidden_size)
        sd[q + "mlp.up_proj.bias"] = torch.zeros(config.ffn_hidden_size)
    model.load_state_dict(sd, strict=True)
    if config.embed_layernorm:
        emb_norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        emb_norm.weight.data = t["transformer.word_embeddings_layernorm.weight"].clone()
        model.model.embed_tokens = torch.nn.Sequential(model.model.embed_tokens, emb_norm)
    if config.apply_residual_connection_post_layernorm:
        for layer in model.model.layers:
            layer.forward = _post_ln_residual_forward.__get__(layer)
    return model


def _post_ln_residual_forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None,
                              use_cache=False, cache_position=None, position_embeddings=None, **kwargs):
    """HF TeleChat block with apply_residual_connection_post_layernorm=True: the residual is the normed input."""
    normed = self.input_layernorm(hidden_states)
    attn, _ = self.self_attn(hidden_states=normed, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=past_key_values, use_cache=use_cache, cache_position=cache_position,
                             position_embeddings=position_embeddings, **kwargs)
    normed2 = self.post_attention_layernorm(normed + attn)
    return normed2 + self.mlp(normed2)


def reference_forward(model, input_ids: np.ndarray, labels=None, attention_mask=None):
    """Logits (and loss) with explicit positions 0..S-1 (TeleChat counts left pads as positions)."""
    ids = torch.from_numpy(input_ids.astype(np.int64))
    pos = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)
    mask = None if attention_mask is None else torch.from_numpy(attention_mask.astype(np.int64))
    lab = None if labels is None else torch.from_numpy(labels.astype(np.int64))
    return model(input_ids=ids, position_ids=pos, attention_mask=mask, labels=lab)


def reference_loss(model, input_ids: np.ndarray, labels: np.ndarray):
    """Next-token CE of HF's forward over the S-1 context positions (the logits a loss reads) vs labels[:, 1:].

    Equal to HF's own `labels=` loss whenever alpha/mscale are the same for S and S-1 (S <= training_seqlen);
    beyond, HF's loss would rotate with the length of an input whose last hidden state it never uses.
    """
    logits = reference_forward(model, input_ids[:, :-1]).logits                       # (B, S-1, V)
    target = torch.from_numpy(labels[:, 1:].astype(np.int64))
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                             ignore_index=-100)


def reference_grads_hf(model, config) -> dict[str, np.ndarray]:
    """Gradients after backward(), renamed to HF TeleChat2 keys (k/v grads re-interleaved per head)."""
    g = {n: p.grad.detach().numpy() for n, p in model.named_parameters() if p.grad is not None}
    emb = "model.embed_tokens.0.weight" if config.embed_layernorm else "model.embed_tokens.weight"
    out = {"transformer.word_embeddings.weight": g[emb],
           "transformer.ln_f.weight": g["model.norm.weight"], "lm_head.weight": g["lm_head.weight"]}
    n_kv, hd = config.num_kv_heads, config.head_dim
    for i in range(config.num_layers):
        p, q = f"transformer.h.{i}.", f"model.layers.{i}."
        k = g[q + "self_attn.k_proj.weight"].reshape(n_kv, 1, hd, -1)
        v = g[q + "self_attn.v_proj.weight"].reshape(n_kv, 1, hd, -1)
        out.update({
            p + "input_layernorm.weight": g[q + "input_layernorm.weight"],
            p + "post_attention_layernorm.weight": g[q + "post_attention_layernorm.weight"],
            p + "self_attention.query.weight": g[q + "self_attn.q_proj.weight"],
            p + "self_attention.key_value.weight": np.concatenate([k, v], 1).reshape(2 * n_kv * hd, -1),
            p + "self_attention.dense.weight": g[q + "self_attn.o_proj.weight"],
            p + "self_attention.dense.bias": g[q + "self_attn.o_proj.bias"],
            p + "mlp.gate_proj.weight": g[q + "mlp.gate_proj.weight"],
            p + "mlp.up_proj.weight": g[q + "mlp.up_proj.weight"],
            p + "mlp.down_proj.weight": g[q + "mlp.down_proj.weight"],
            p + "mlp.down_proj.bias": g[q + "mlp.down_proj.bias"],
        })
    return out
