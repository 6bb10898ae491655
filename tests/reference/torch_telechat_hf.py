"""A torch TeleChat2 model with the HF checkpoint's MODULE names, for PEFT (which adapts modules by name).

`transformer.word_embeddings`, `transformer.h.{i}.input_layernorm | self_attention.query | key_value | dense |
post_attention_layernorm | mlp.gate_proj | up_proj | down_proj`, `transformer.ln_f`, `lm_head`: each projection a
torch nn.Linear, so `peft.get_peft_model` / `PeftModel.from_pretrained` put LoRA layers on exactly the modules a
TeleChat2 adapter names (the fused key_value included). The forward is the HF TeleChat2 math transcribed from
the spec (rotary of torch_telechat.TelechatRotary, per-head key_value rows [K_0; V_0; ...], GQA, fp32 softmax,
SwiGLU); tests check it against torch_telechat's Llama-based reference. Nothing here imports telechat_ms.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .torch_telechat import TelechatRotary


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(size)), eps

    def forward(self, x):
        x32 = x.float()
        return self.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.heads, self.kv_heads, self.hd = c.num_heads, c.num_kv_heads, c.head_dim
        self.query = nn.Linear(c.hidden_size, c.num_heads * c.head_dim, bias=False)
        self.key_value = nn.Linear(c.hidden_size, 2 * c.num_kv_heads * c.head_dim, bias=False)
        self.dense = nn.Linear(c.num_heads * c.head_dim, c.hidden_size, bias=True)

    def forward(self, x, cos, sin):
        b, s, _ = x.shape
        q = self.query(x).view(b, s, self.heads, self.hd).transpose(1, 2)              # (B, N, S, D)
        kv = self.key_value(x).view(b, s, self.kv_heads, 2, self.hd)                   # per head [K_h | V_h]
        k, v = kv[:, :, :, 0].transpose(1, 2), kv[:, :, :, 1].transpose(1, 2)          # (B, Nkv, S, D)
        rot = lambda t: t * cos + torch.cat((-t[..., self.hd // 2:], t[..., :self.hd // 2]), -1) * sin  # noqa: E731
        q, k = rot(q), rot(k)
        rep = self.heads // self.kv_heads
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.hd)
        causal = torch.ones(s, s, dtype=torch.bool).triu(1)
        probs = scores.float().masked_fill(causal, torch.finfo(torch.float32).min).softmax(-1).to(q.dtype)
        return self.dense((probs @ v).transpose(1, 2).reshape(b, s, -1))


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.ffn_hidden_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.ffn_hidden_size, bias=False)
        self.down_proj = nn.Linear(c.ffn_hidden_size, c.hidden_size, bias=True)

    def forward(self, x):
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attention = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = MLP(c)

    def forward(self, x, cos, sin):
        h = x + self.self_attention(self.input_layernorm(x), cos, sin)
        return h + self.mlp(self.post_attention_layernorm(h))


class Transformer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.h = nn.ModuleList([Block(c) for _ in range(c.num_layers)])
        self.ln_f = RMSNorm(c.hidden_size, c.rms_norm_eps)


class TelechatHF(nn.Module):
    """TeleChat2 dense (no embedding norm) under its HF module names; logits(input_ids) -> (B, S, V) fp32."""

    def __init__(self, config):
        super().__init__()
        self.config = _PeftConfigView(config)
        self.transformer = Transformer(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.rotary = TelechatRotary(config.head_dim, config.training_seqlen, config.base_seqlen)

    def forward(self, input_ids=None, **_ignored):
        pos = torch.arange(input_ids.shape[1]).unsqueeze(0).expand_as(input_ids)
        x = self.transformer.word_embeddings(input_ids)
        cos, sin = self.rotary(x, pos)                                                  # (B, S, D)
        cos, sin = cos[:, None], sin[:, None]                                           # (B, 1, S, D)
        for block in self.transformer.h:
            x = block(x, cos, sin)
        return self.lm_head(self.transformer.ln_f(x)).float()

    def prepare_inputs_for_generation(self, *args, **kwargs):   # PeftModelForCausalLM reads it
        raise NotImplementedError

    def load_hf_state(self, state: dict[str, np.ndarray]) -> "TelechatHF":
        """The HF checkpoint tensors (torch_telechat.random_hf_state) under the same names."""
        self.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, strict=False)
        missing = set(self.state_dict()) - set(state) - {k for k in self.state_dict() if "rotary" in k}
        assert not missing, missing
        return self.float().eval()


class _PeftConfigView(dict):
    """What PEFT reads of `model.config` (a dict with attribute access)."""

    def __init__(self, config):
        super().__init__(model_type="telechat", tie_word_embeddings=False, vocab_size=config.vocab_size)

    def __getattr__(self, name):
        return self.get(name)

    def to_dict(self):
        return dict(self)
