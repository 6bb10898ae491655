"""The one TeleChat2 decoder layer (pre-norm; dense or MoE by swapping the MLP module) and the layer stack."""
from __future__ import annotations

import mindspore as ms
from mindspore import Parameter, Tensor, lazy_inline, nn, ops
from mindspore.common.initializer import Normal, initializer

from .attention import Attention
from .dtypes import to_ms_dtype
from .kernels import Kernels
from .mlp import MLP
from .norm import RMSNorm
from .inputs import AttentionMask, RopeTables


def build_mlp(config, kernels: Kernels) -> nn.Cell:
    """Dense SwiGLU or the MoE block; both map x -> (y, aux_loss)."""
    if config.is_moe:
        from .moe import MoE   # pylint: disable=import-outside-toplevel
        return MoE(config, kernels)
    return MLP(config)


class DecoderLayer(nn.Cell):
    """h = x + drop(attn(norm(x))); y = h + drop(mlp(norm(h))) (HF block, spec §2.2)."""

    def __init__(self, config, kernels: Kernels = Kernels()):
        super().__init__()
        param = to_ms_dtype(config.param_dtype)
        self.attention_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, param, kernels)
        self.attention = Attention(config, kernels)
        self.ffn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, param, kernels)
        self.feed_forward = build_mlp(config, kernels)
        # an architecture switch of the HF file (false in every published config), not a parallel setting
        self.residual_from_norm = config.apply_residual_connection_post_layernorm
        p = config.hidden_dropout
        self.attn_dropout = nn.Dropout(p=p) if p > 0 else nn.Identity()
        self.mlp_dropout = nn.Dropout(p=p) if p > 0 else nn.Identity()
        self.add_attn = ops.Add()
        self.add_mlp = ops.Add()
        # collective hooks: identity on one device; tensor-parallel inference (telechat_ms/infer/tp.py) installs
        # an AllReduce here that sums the row-parallel partial outputs of attention.wo and feed_forward.w2
        self.attn_collective = nn.Identity()
        self.mlp_collective = nn.Identity()

    # MindSpore Cell.recompute flags (recompute_slice_activation, parallel_optimizer_comm_recompute) that the
    # parallel setup gives every fully recomputed layer; recompute() is called by parallel/pipeline.py
    recompute_flags = None

    def recompute(self, **kwargs):
        return super().recompute(**{**(self.recompute_flags or {}), **kwargs})

    def construct(self, x, rope, mask, placement=None):
        """x (B, S, H) -> (y (B, S, H), aux_loss scalar fp32); rope/mask/placement as in Attention."""
        normed = self.attention_norm(x)
        residual = normed if self.residual_from_norm else x
        attn = self.attn_collective(self.attention(normed, rope, mask, placement))     # (B, S, H)
        h = self.add_attn(residual, self.attn_dropout(attn))
        normed = self.ffn_norm(h)
        residual = normed if self.residual_from_norm else h
        out, aux = self.feed_forward(normed)
        return self.add_mlp(residual, self.mlp_dropout(self.mlp_collective(out))), aux

    def shard(self, parallel) -> None:
        """Residual adds on (dp, sp) tokens; sub-layers shard themselves."""
        from ..parallel.strategies import shard_cell   # pylint: disable=import-outside-toplevel
        shard_cell(self, parallel)
        self.attention_norm.shard(parallel)
        self.attention.shard(parallel)
        self.ffn_norm.shard(parallel)
        self.feed_forward.shard(parallel)


class ReusedDecoderLayer(DecoderLayer):
    """DecoderLayer compiled once and reused for every layer (mindspore.lazy_inline): graph mode builds one layer
    graph instead of num_layers copies, the compile time of a 96-layer model. Selected by Kernels.cell_reuse
    (Ascend); MindSpore 2.9's CPU backend rejects reused cells. lazy_inline wants a construct without defaulted
    parameters, hence the override; pynative ignores the decoration."""

    @lazy_inline
    def __init__(self, config, kernels: Kernels = Kernels()):
        super().__init__(config, kernels)

    def construct(self, x, rope, mask, placement):
        return super().construct(x, rope, mask, placement)


class TelechatModel(nn.Cell):
    """Embedding (x embedding_multiplier) -> (optional embedding norm) -> decoder layers -> final norm."""

    def __init__(self, config, kernels: Kernels = Kernels()):
        super().__init__()
        self.config = config
        param = to_ms_dtype(config.param_dtype)
        self.compute_dtype = to_ms_dtype(config.compute_dtype)
        self.tok_embeddings = Embedding(config.vocab_size, config.hidden_size, param, config.initializer_range)
        self.embed_norm = config.embed_layernorm
        # architecture constants (Tele-FLM's input_mult); 1.0 adds no op to the graph
        self.embedding_multiplier = config.embedding_multiplier
        self.mul_embed = ops.Mul()
        if self.embed_norm:
            self.tok_embeddings_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, param, kernels)
        layer = ReusedDecoderLayer if kernels.cell_reuse else DecoderLayer
        self.layers = nn.CellList([layer(config, kernels) for _ in range(config.num_layers)])
        self.norm_out = RMSNorm(config.hidden_size, config.rms_norm_eps, param, kernels)
        self.rope_tables = RopeTables(config, kernels)         # rotary tables once per forward, shared
        self.attention_mask = AttentionMask(kernels)
        self.cast = ops.Cast()
        self.add_aux = ops.Add()

    def construct(self, input_ids, attention_mask=None, position_ids=None, document_ids=None, ntk_len=0):
        """input_ids (B, S) int -> (hidden (B, S, H), summed aux loss).

        attention_mask (B, S): 1 = keep, 0 = padding. Packed rows (docs/data.md): position_ids (B, S) restart
        at 0 per document and document_ids (B, S) stop attention across documents. Without them positions
        are 0..S-1 (left pads included, as in HF). `ntk_len`: the length that sets dynamic NTK alpha/mscale
        (0 = S, the HF rule); the loss path passes S-1 (see TelechatForCausalLM).
        """
        bsz, seq = input_ids.shape
        rope = self.rope_tables(bsz, seq, position_ids, ntk_len)                       # (cos_q, sin_q, cos_k, sin_k)
        mask = self.attention_mask(bsz, seq, attention_mask, document_ids)             # (B, 1, S, S)
        return self._run(input_ids, rope, mask, None)

    def forward_cached(self, input_ids, rope, mask, placement):
        """One incremental step with the layers' KV caches (see telechat_ms/infer/engine.py)."""
        hidden, _ = self._run(input_ids, rope, mask, placement)
        return hidden

    def enable_kv_cache(self, batch: int, max_len: int) -> None:
        for layer in self.layers:
            layer.attention.enable_kv_cache(batch, max_len)

    def _run(self, input_ids, rope, mask, placement):
        x = self.cast(self.tok_embeddings(input_ids), self.compute_dtype)             # (B, S, H)
        if self.embedding_multiplier != 1.0:
            x = self.mul_embed(x, self.embedding_multiplier)
        if self.embed_norm:
            x = self.tok_embeddings_norm(x)
        aux = Tensor(0.0, ms.float32)
        for layer in self.layers:
            x, layer_aux = layer(x, rope, mask, placement)
            aux = self.add_aux(aux, layer_aux)
        return self.norm_out(x), aux

    def shard(self, parallel) -> None:
        """Own ops (the embedding multiplier, the aux-loss sum), rotary tables, mask, embedding, layers and final
        norm."""
        from ..parallel.strategies import shard_cell   # pylint: disable=import-outside-toplevel
        shard_cell(self, parallel)
        self.rope_tables.shard(parallel)
        self.attention_mask.shard(parallel)
        self.tok_embeddings.shard(parallel)
        if self.embed_norm:
            self.tok_embeddings_norm.shard(parallel)
        for layer in self.layers:
            layer.shard(parallel)
        self.norm_out.shard(parallel)


class Embedding(nn.Cell):
    """Token embedding table (vocab, hidden); no scaling, no padding index (HF nn.Embedding defaults)."""

    def __init__(self, vocab_size: int, hidden_size: int, param_dtype, init_std: float):
        super().__init__()
        self.embedding_weight = Parameter(initializer(Normal(init_std), (vocab_size, hidden_size), param_dtype),
                                          name="embedding_weight")
        self.gather = ops.Gather()

    def construct(self, input_ids):
        return self.gather(self.embedding_weight, input_ids, 0)                       # (B, S, H)

    def shard(self, parallel) -> None:
        """Table rows split by mp (vocab parallel) or replicated with vocab_emb_dp; ids by dp."""
        from ..parallel.strategies import shard_cell   # pylint: disable=import-outside-toplevel
        shard_cell(self, parallel)
