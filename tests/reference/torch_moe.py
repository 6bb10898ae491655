"""Independent plain-torch reference for the TeleChat2 MoE block (spec §4.2), on top of the dense reference.

Written from the spec, not from telechat_ms: a per-expert loop (no dispatch buffers), routing
softmax(fp32) -> top-k -> / (sum + 1e-9) -> * scale, output sum_k w_k * (SwiGLU_e(x) + b_e).
Optional capacity dropping follows the spec's priority rule with an explicit Python queue per expert
(choice rank outer loop, token inner loop), per chunk of the sequence axis and per token group (the official
port's per-data-parallel-group dispatch: `groups` contiguous blocks of each chunk's batch-major token list,
each with its own queues and capacity). The aux loss is computed per group of all tokens and averaged.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import nn

from .torch_telechat import build_reference, random_hf_state


class TorchExpert(nn.Module):
    def __init__(self, hidden: int, ffn: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, ffn, bias=False)
        self.up_proj = nn.Linear(hidden, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, hidden, bias=True)

    def forward(self, x):
        return self.down_proj(torch.nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class TorchMoE(nn.Module):
    """x (B, S, H) -> y; the layer's aux loss is left in `self.aux` (Llama's mlp must return one tensor)."""

    def __init__(self, config, capacity_factor: float | None = None, chunks: int = 1, groups: int = 1,
                 capacity_multiple: int = 1):
        super().__init__()
        self.e, self.k = config.num_experts, config.num_experts_per_tok
        self.norm, self.scale = config.norm_topk_prob, config.routed_scaling_factor
        self.alpha, self.z_coef = config.router_aux_loss_coef, config.router_z_loss_coef
        self.capacity_factor, self.chunks = capacity_factor, chunks     # None -> dropless
        self.groups, self.capacity_multiple = groups, capacity_multiple
        self.router = nn.Linear(config.hidden_size, self.e, bias=False)
        self.local_experts = nn.ModuleList(TorchExpert(config.hidden_size, config.ffn_hidden_size)
                                           for _ in range(self.e))
        self.aux = None

    def forward(self, x):
        bsz, seq, hidden = x.shape
        logits = self.router(x.reshape(-1, hidden).float())
        probs = torch.softmax(logits, dim=-1)
        w, idx = torch.topk(probs, self.k, dim=-1)
        if self.norm:
            w = w / (w.sum(-1, keepdim=True) + 1e-9)
        w = w * self.scale
        self.aux = self.aux_loss(logits, probs, idx)
        keep = self.keep_mask(idx.reshape(bsz, seq, self.k)).reshape(-1, self.k)
        flat = x.reshape(-1, hidden)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.local_experts):
            tok, rank = torch.where((idx == e) & keep)
            if len(tok):
                out = out.index_add(0, tok, w[tok, rank, None].to(x.dtype) * expert(flat[tok]))
        return out.reshape(bsz, seq, hidden)

    def keep_mask(self, idx):
        """(B, S, k) bool: assignment kept under capacity; one queue per expert, sequence chunk and token group
        (contiguous blocks of the chunk's batch-major token list), filled rank-major: every token's 1st choice,
        then every 2nd choice, ..."""
        keep = torch.ones(idx.shape, dtype=torch.bool)
        if self.capacity_factor is None:
            return keep
        bsz, seq, _ = idx.shape
        step = seq // self.chunks
        per_group = bsz * step // self.groups
        cap = min(math.ceil(self.k * per_group * self.capacity_factor / self.e), per_group)
        cap = -(-cap // self.capacity_multiple) * self.capacity_multiple
        for c in range(self.chunks):
            tokens = [(b, s) for b in range(bsz) for s in range(c * step, (c + 1) * step)]
            for g in range(self.groups):
                used = [0] * self.e
                for r in range(self.k):
                    for b, s in tokens[g * per_group:(g + 1) * per_group]:
                        e = int(idx[b, s, r])
                        keep[b, s, r] = used[e] < cap
                        used[e] += 1
        return keep

    def aux_loss(self, logits, probs, idx):
        """alpha * E * mean_g sum_i f_gi P_gi (+ z * mean(logsumexp^2)); f_gi = share of group g's k*N_g
        assignments on expert i, P_gi = group g's mean probability; groups = contiguous blocks of all tokens."""
        per_group = idx.shape[0] // self.groups
        aux = 0.0
        for g in range(self.groups):
            block = slice(g * per_group, (g + 1) * per_group)
            f = torch.bincount(idx[block].reshape(-1), minlength=self.e).float() / idx[block].numel()
            aux = aux + self.alpha * self.e * (f * probs[block].mean(0)).sum() / self.groups
        if self.z_coef > 0:
            aux = aux + self.z_coef * (torch.logsumexp(logits, -1) ** 2).mean()
        return aux


def random_hf_moe_state(config, seed: int = 0, std: float = 0.08, router_std: float = 0.5) -> dict:
    """Random HF-named TeleChat2 MoE weights: router, per-expert gate/up/down, nonzero down biases."""
    dense = random_hf_state(dataclasses.replace(config, num_experts=0, num_experts_per_tok=0), seed, std)
    state = {k: v for k, v in dense.items() if ".mlp." not in k}
    rng = np.random.default_rng(seed + 1000)
    h, f = config.hidden_size, config.ffn_hidden_size
    normal = lambda s, *shape: rng.normal(0.0, s, shape).astype(np.float32)  # noqa: E731
    for i in range(config.num_layers):
        p = f"transformer.h.{i}.mlp."
        state[p + "router.weight"] = normal(router_std, config.num_experts, h)
        for e in range(config.num_experts):
            q = f"{p}local_experts.{e}."
            state.update({q + "gate_proj.weight": normal(std, f, h), q + "up_proj.weight": normal(std, f, h),
                          q + "down_proj.weight": normal(std, h, f), q + "down_proj.bias": normal(std, h)})
    return state


def load_moe(module: TorchMoE, hf_state: dict, layer: int) -> None:
    p = f"transformer.h.{layer}.mlp."
    sd = {"router.weight": hf_state[p + "router.weight"]}
    for e in range(module.e):
        for name in ("gate_proj.weight", "up_proj.weight", "down_proj.weight", "down_proj.bias"):
            sd[f"local_experts.{e}.{name}"] = hf_state[f"{p}local_experts.{e}.{name}"]
    module.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, strict=True)


def build_moe_reference(config, hf_state: dict, **moe_kwargs):
    """Dense Llama reference of a dense copy of `config`, each layer's mlp swapped for a TorchMoE."""
    dense_cfg = dataclasses.replace(config, num_experts=0, num_experts_per_tok=0)
    h, f = config.hidden_size, config.ffn_hidden_size
    placeholder = {"gate_proj.weight": np.zeros((f, h), np.float32), "up_proj.weight": np.zeros((f, h), np.float32),
                   "down_proj.weight": np.zeros((h, f), np.float32), "down_proj.bias": np.zeros(h, np.float32)}
    dense_state = {k: v for k, v in hf_state.items() if ".mlp." not in k}
    for i in range(config.num_layers):
        dense_state.update({f"transformer.h.{i}.mlp.{k}": v for k, v in placeholder.items()})
    model = build_reference(dense_cfg, dense_state)
    for i, layer in enumerate(model.model.layers):
        layer.mlp = TorchMoE(config, **moe_kwargs)
        load_moe(layer.mlp, hf_state, i)
    return model.eval()


def total_aux(model) -> torch.Tensor:
    """Sum of the layers' aux losses of the last forward (the model adds this to the LM loss)."""
    return sum(layer.mlp.aux for layer in model.model.layers)


def _grad(param) -> np.ndarray:
    """An expert that received no token has no grad in torch; its gradient is zero."""
    return np.zeros(tuple(param.shape), np.float32) if param.grad is None else param.grad.numpy()


def moe_grads_hf(model) -> dict[str, np.ndarray]:
    """Router / expert gradients after backward(), keyed by HF names."""
    out = {}
    for i, layer in enumerate(model.model.layers):
        p = f"transformer.h.{i}.mlp."
        out[p + "router.weight"] = _grad(layer.mlp.router.weight)
        for e, expert in enumerate(layer.mlp.local_experts):
            q = f"{p}local_experts.{e}."
            for name in ("gate_proj", "up_proj", "down_proj"):
                out[q + name + ".weight"] = _grad(getattr(expert, name).weight)
            out[q + "down_proj.bias"] = _grad(expert.down_proj.bias)
    return out
