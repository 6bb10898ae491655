"""Independent torch references for the model families beside TeleChat2 (spec families.md §6).

* Llama-named families (Llama-2 / Firefly, Aquila2, Tele-FLM / FLM-2): transformers' `LlamaForCausalLM` holds
  the HF state as-is (rope_theta, rope_scaling linear and GQA are LlamaConfig's own). Tele-FLM's muP
  multipliers are applied around it as vLLM's TeleFLM port does: embeddings x input_mult (fed as
  inputs_embeds), logits x output_mult / mup_scale_factor.
* TeleChat v1: the TeleChat2 reference of torch_telechat (Llama + TeleChat rotary with fp16 cos/sin, biases on
  dense / down_proj, per-head key_value) with v1's hard-coded NTK divisor in place of TeleChat2's base_seqlen
  (v1's `get_ntk_alpha` divides by 4096 / 8192 after clamping the length up to training_seqlen), MHA, and the
  7B layout: no `transformer.` prefix, no lm_head (tied to the embeddings).
* TeleChat-52B: a Llama (no biases, untied) with the FLM rotary of the released modeling_telechat.py -- base
  theta x alpha (alpha not raised to d/(d-2)), alpha = max(2^ceil(log2(L/4096)+1)-1, 1) from the END L of the
  key positions, fp32 cos/sin, no mscale -- and logits x output_mult / mup_scale_factor. Its HF state is made by
  re-laying the reference's Linear weights into GPT-2 Conv1D tensors ([in, out]; c_attn = q|k|v column
  blocks; c_fc = gate|up), so a test of it exercises the production converter for that layout.

Configs are plain dicts in each family's HF naming. Nothing here imports telechat_ms.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from .torch_telechat import build_reference, random_hf_state


# ---------------------------------------------------------------------------------------------------------
# the reference wrapper: multipliers, logits, HF loss, uncached greedy decoding

@dataclass
class Reference:
    """A LlamaForCausalLM plus the family's embedding / logit multipliers (1.0 = plain Llama)."""
    model: LlamaForCausalLM
    input_mult: float = 1.0
    logit_mult: float = 1.0

    def logits_t(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> torch.Tensor:
        """(B, S, V) fp32 logits; positions 0..S-1 (no padding in these tests)."""
        ids = torch.from_numpy(input_ids.astype(np.int64))
        pos = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)
        mask = None if attention_mask is None else torch.from_numpy(attention_mask.astype(np.int64))
        embeds = self.model.model.embed_tokens(ids) * self.input_mult          # muP input_mult
        out = self.model(inputs_embeds=embeds, position_ids=pos, attention_mask=mask)
        return out.logits * self.logit_mult                                     # muP output_mult / scale

    def logits(self, input_ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.logits_t(input_ids).numpy()

    def loss(self, input_ids: np.ndarray, labels: np.ndarray) -> float:
        """HF causal-LM loss of one forward over all S tokens: mean CE of logits[:, :-1] vs labels[:, 1:],
        -100 ignored (the released TeleChat-52B forward computes it the same way from its scaled logits)."""
        with torch.no_grad():
            logits = self.logits_t(input_ids)[:, :-1]                           # (B, S-1, V)
            target = torch.from_numpy(labels[:, 1:].astype(np.int64))
            return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                           target.reshape(-1), ignore_index=-100))

    def context_loss(self, input_ids: np.ndarray, labels: np.ndarray) -> float:
        """The same CE from a forward over the S-1 context tokens only (the positions whose logits a loss
        reads). Equals `loss` unless the length rule (NTK alpha / mscale) differs between S and S-1; it is the
        definition telechat_ms trains with (docs/architecture.md)."""
        with torch.no_grad():
            logits = self.logits_t(input_ids[:, :-1])                           # (B, S-1, V)
            target = torch.from_numpy(labels[:, 1:].astype(np.int64))
            return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                           target.reshape(-1), ignore_index=-100))

    def greedy(self, input_ids: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """Greedy continuation without any cache (a full forward per token): new ids (B, steps) and the
        top-1 minus top-2 logit margin of every step (B, steps)."""
        out, margins = input_ids.copy(), []
        for _ in range(steps):
            last = self.logits(out)[:, -1]                                      # (B, V)
            top2 = np.sort(last, axis=-1)[:, -2:]
            margins.append(top2[:, 1] - top2[:, 0])
            out = np.concatenate([out, last.argmax(-1).astype(out.dtype)[:, None]], axis=1)
        return out[:, input_ids.shape[1]:], np.stack(margins, axis=1)


def _llama(cfg: dict, **overrides) -> LlamaForCausalLM:
    """An fp32 eager LlamaForCausalLM from LlamaConfig-named fields."""
    fields = dict(hidden_act="silu", attn_implementation="eager", torch_dtype=torch.float32,
                  max_position_embeddings=4096, tie_word_embeddings=False)
    fields.update({k: v for k, v in cfg.items() if k not in ("input_mult", "output_mult", "mup_scale_factor",
                                                              "use_mup")})
    fields.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**fields)).float().eval()


def _mup(cfg: dict) -> tuple[float, float]:
    if not cfg.get("use_mup"):
        return 1.0, 1.0
    out_mult = float(cfg.get("output_mult", 1.0)) / float(cfg.get("mup_scale_factor", 1.0))
    return float(cfg.get("input_mult", 1.0)), out_mult


def _load(model: LlamaForCausalLM, state: dict[str, np.ndarray]) -> None:
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, strict=True)


# ---------------------------------------------------------------------------------------------------------
# Llama-named layout (Llama-2, Firefly, Aquila2, Tele-FLM / FLM-2)

def random_llama_state(cfg: dict, seed: int = 0, std: float = 0.08) -> dict[str, np.ndarray]:
    """Random fp32 weights under HF Llama names (no biases, untied), non-trivial norm weights."""
    rng = np.random.default_rng(seed)
    h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    heads = cfg["num_attention_heads"]
    kv, hd = cfg.get("num_key_value_heads", heads), h // heads
    normal = lambda *shape: rng.normal(0.0, std, shape).astype(np.float32)   # noqa: E731
    norm = lambda: (1.0 + rng.normal(0.0, 0.1, (h,))).astype(np.float32)      # noqa: E731
    state = {"model.embed_tokens.weight": rng.normal(0, 1.0, (v, h)).astype(np.float32),
             "model.norm.weight": norm(), "lm_head.weight": normal(v, h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        state.update({
            p + "input_layernorm.weight": norm(), p + "post_attention_layernorm.weight": norm(),
            p + "self_attn.q_proj.weight": normal(heads * hd, h), p + "self_attn.k_proj.weight": normal(kv * hd, h),
            p + "self_attn.v_proj.weight": normal(kv * hd, h), p + "self_attn.o_proj.weight": normal(h, heads * hd),
            p + "mlp.gate_proj.weight": normal(f, h), p + "mlp.up_proj.weight": normal(f, h),
            p + "mlp.down_proj.weight": normal(h, f),
        })
    return state


def llama_reference(cfg: dict, state: dict[str, np.ndarray]) -> Reference:
    """transformers' Llama holding the state as-is; `cfg` is the checkpoint's config.json (Llama names,
    plus Tele-FLM's use_mup / input_mult / output_mult / mup_scale_factor)."""
    model = _llama(cfg)
    _load(model, state)
    return Reference(model, *_mup(cfg))


# ---------------------------------------------------------------------------------------------------------
# TeleChat v1 (7B: tied, unprefixed keys; 12B: prefixed keys with lm_head)

def random_telechat1_state(cfg: dict, seed: int = 0, std: float = 0.08) -> dict[str, np.ndarray]:
    """Random TeleChat v1 weights in the layout of the checkpoint `cfg` describes: the 7B index (tied: no
    `transformer.` prefix, no lm_head) or the 12B index (`transformer.` prefix, lm_head.weight)."""
    state = random_hf_state(_v1_namespace(cfg, 0), seed=seed, std=std)
    if not cfg.get("tie_word_embeddings", True):
        return state
    del state["lm_head.weight"]
    # the table is the lm_head too: give it an lm_head's scale (std 1 would make logits ~70 and an fp32 loss
    # of ~60, whose rounding alone approaches the 1e-5 loss tolerance)
    state["transformer.word_embeddings.weight"] *= np.float32(std)
    return {k[len("transformer."):]: v for k, v in state.items()}


def telechat1_reference(cfg: dict, state: dict[str, np.ndarray], ntk_divisor: int) -> Reference:
    """v1 = TeleChat2's math with the divisor of v1's get_ntk_alpha (`true_seq_len / 4096` in the 7B file)
    as the NTK reference length; MHA; lm_head shares the embedding table when tied."""
    tied = cfg.get("tie_word_embeddings", True)
    full = {k if k.startswith("transformer.") or k == "lm_head.weight" else "transformer." + k: v
            for k, v in state.items()}
    if tied:
        assert "lm_head.weight" not in full, "a tied v1 checkpoint has no lm_head"
        full["lm_head.weight"] = full["transformer.word_embeddings.weight"]
    model = build_reference(_v1_namespace(cfg, ntk_divisor), full)     # TelechatRotary(.., base_seqlen=divisor)
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    return Reference(model)


def _v1_namespace(cfg: dict, ntk_divisor: int) -> SimpleNamespace:
    """v1 config.json names -> the attribute names torch_telechat reads (v1 has no GQA field: MHA); v1's
    hard-coded NTK divisor plays TeleChat2's base_seqlen."""
    return SimpleNamespace(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"], ffn_hidden_size=cfg["ffn_hidden_size"],
        num_layers=cfg["n_layer"], num_heads=cfg["n_head"], num_kv_heads=cfg["n_head"],
        head_dim=cfg["hidden_size"] // cfg["n_head"], rms_norm_eps=cfg["layer_norm_epsilon"],
        training_seqlen=cfg["training_seqlen"], base_seqlen=ntk_divisor, embed_layernorm=False,
        apply_residual_connection_post_layernorm=False)


# ---------------------------------------------------------------------------------------------------------
# TeleChat-52B (FLM-2 architecture, GPT-2 Conv1D layout)

class FlmRotary(torch.nn.Module):
    """TeleChat-52B's RotaryEmbedding as a drop-in for LlamaRotaryEmbedding: for a forward whose key positions
    end at L, inv_freq = 1 / (theta*alpha)^(2i/d) with alpha = max(2^ceil(log2(L/divisor)+1)-1, 1) (float
    log as in the released file), cos/sin in fp32, no mscale."""

    def __init__(self, head_dim: int, theta: float, ntk_divisor: int):
        super().__init__()
        self.dim, self.theta, self.divisor = head_dim, theta, ntk_divisor

    def forward(self, x, position_ids):
        end = int(position_ids.max()) + 1
        alpha = max(2 ** math.ceil(math.log(end / self.divisor, 2) + 1) - 1, 1)
        inv_freq = 1.0 / ((self.theta * alpha) ** (torch.arange(0, self.dim, 2).float() / self.dim))
        freqs = position_ids[..., None].float() * inv_freq                      # (B, S, d/2)
        emb = torch.cat((freqs, freqs), dim=-1)                                  # (B, S, d)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def telechat52b_llama_config(cfg: dict) -> dict:
    """The TeleChat-52B config.json (GPT-2 names) as LlamaConfig fields of the equivalent Llama."""
    return dict(vocab_size=cfg["vocab_size"], hidden_size=cfg["n_embd"], intermediate_size=cfg["n_inner"],
                num_hidden_layers=cfg["n_layer"], num_attention_heads=cfg["n_head"],
                num_key_value_heads=cfg["n_head"], rms_norm_eps=cfg["layer_norm_epsilon"],
                rope_theta=float(cfg["rotary_theta"]))


def telechat52b_reference(cfg: dict, llama_state: dict[str, np.ndarray], ntk_divisor: int = 4096) -> Reference:
    """Llama + FLM rotary + muP logit scaling holding Llama-named weights (re-laid by conv1d_state)."""
    lcfg = telechat52b_llama_config(cfg)
    model = _llama(lcfg)
    _load(model, llama_state)
    model.model.rotary_emb = FlmRotary(lcfg["hidden_size"] // lcfg["num_attention_heads"], lcfg["rope_theta"],
                                       ntk_divisor)
    return Reference(model, *_mup(cfg))


def conv1d_state(llama_state: dict[str, np.ndarray], cfg: dict) -> dict[str, np.ndarray]:
    """Llama-named Linear weights re-laid into TeleChat-52B's GPT-2 keys: Conv1D weights [in, out] (the
    transpose of nn.Linear's [out, in]), c_attn columns = q | k | v blocks of n_embd, c_fc columns = gate | up,
    plus the per-layer `attn.masked_bias` buffer (-1e4) the released checkpoint carries."""
    out = {"transformer.wte.weight": llama_state["model.embed_tokens.weight"],
           "transformer.ln_f.weight": llama_state["model.norm.weight"],
           "lm_head.weight": llama_state["lm_head.weight"]}
    for i in range(cfg["n_layer"]):
        src, dst = f"model.layers.{i}.", f"transformer.h.{i}."
        t = lambda name: np.ascontiguousarray(llama_state[src + name].T)        # noqa: E731  (out,in)->(in,out)
        out.update({
            dst + "ln_1.weight": llama_state[src + "input_layernorm.weight"],
            dst + "attn.c_attn.weight": np.concatenate(
                [t("self_attn.q_proj.weight"), t("self_attn.k_proj.weight"), t("self_attn.v_proj.weight")],
                axis=1),                                                         # (h, 3h)
            dst + "attn.c_proj.weight": t("self_attn.o_proj.weight"),            # (h, h)
            dst + "attn.masked_bias": np.array(-1e4, np.float32),
            dst + "ln_2.weight": llama_state[src + "post_attention_layernorm.weight"],
            dst + "mlp.c_fc.weight": np.concatenate([t("mlp.gate_proj.weight"), t("mlp.up_proj.weight")],
                                                    axis=1),                      # (h, 2f)
            dst + "mlp.c_proj.weight": t("mlp.down_proj.weight"),                # (f, h)
        })
    return out


def conv1d_forward(cfg: dict, state: dict[str, np.ndarray], input_ids: np.ndarray, ntk_divisor: int = 4096):
    """Logits (B, S, V) by a direct transcription of the released TeleChat-52B forward over its Conv1D tensors
    (eager upcast path: x @ W with W [in, out], c_attn split into q|k|v blocks of n_embd, causal mask -1e4,
    fp32 softmax, swiglu = silu(first half of c_fc) * second half, logits x output_mult / mup_scale_factor).
    Independent of conv1d_state's inverse: it checks the re-laid state describes the same model."""
    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    h, heads, eps = cfg["n_embd"], cfg["n_head"], cfg["layer_norm_epsilon"]
    d = h // heads
    in_mult, out_mult = _mup(cfg)
    rms = lambda x, w: w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))   # noqa: E731
    ids = torch.from_numpy(input_ids.astype(np.int64))
    batch, seq = ids.shape
    pos = torch.arange(seq).unsqueeze(0)
    cos, sin = FlmRotary(d, float(cfg["rotary_theta"]), ntk_divisor)(torch.zeros(()), pos)   # (1, S, d)
    cos, sin = cos[:, None], sin[:, None]                                                   # (1, 1, S, d)
    rotate = lambda x: x * cos + torch.cat((-x[..., d // 2:], x[..., :d // 2]), -1) * sin  # noqa: E731
    heads_of = lambda x: x.view(batch, seq, heads, d).permute(0, 2, 1, 3)                 # noqa: E731 (B,N,S,d)
    causal = torch.tril(torch.ones(seq, seq, dtype=torch.bool))
    x = t["transformer.wte.weight"][ids] * in_mult                                          # (B, S, h)
    with torch.no_grad():
        for i in range(cfg["n_layer"]):
            p = f"transformer.h.{i}."
            q, k, v = (rms(x, t[p + "ln_1.weight"]) @ t[p + "attn.c_attn.weight"]).split(h, dim=2)
            q, k, v = rotate(heads_of(q)), rotate(heads_of(k)), heads_of(v)
            scores = torch.where(causal, q @ k.transpose(-1, -2) / math.sqrt(d), torch.tensor(-10000.0))
            ctx = (scores.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(batch, seq, h)       # (B, S, h)
            x = x + ctx @ t[p + "attn.c_proj.weight"]
            gate, up = (rms(x, t[p + "ln_2.weight"]) @ t[p + "mlp.c_fc.weight"]).chunk(2, dim=-1)
            x = x + (torch.nn.functional.silu(gate) * up) @ t[p + "mlp.c_proj.weight"]
        logits = rms(x, t["transformer.ln_f.weight"]) @ t["lm_head.weight"].T * out_mult
    return logits.numpy()
