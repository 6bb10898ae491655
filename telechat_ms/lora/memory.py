"""LoRA in `telechat-ms plan` (parallel/memory.py asks this when Workload.lora is set).

Per device, a LoRA run holds
  frozen base   base_bytes x W              no fp32 master copy, no gradients, no optimizer state
  adapters      (4 + 4 + 8) x A             fp32 master weights, fp32 gradients, AdamW m and v (/ optimizer shard)
  activations   as full training, plus per adapted linear and token: the r-wide A output (16-bit) and, with
                dropout, the dropped input copy
A = sum over adapted linears of r x (in + out). The base's weight gradients are not computed: one forward-sized
matmul pass less per layer (2x forward instead of 3x), and the data-parallel all-reduce carries A only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .names import WEIGHT, config_linears, select_targets

_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class LoraMemory:
    per_layer: float                   # adapter parameters of one decoder layer (mean over layers)
    head: float                        # adapter parameters on lm_head (last stage)
    base_bytes: int                    # bytes per frozen base parameter
    act_per_token: float               # extra activation bytes per token and layer
    rank: int = 0
    modules: tuple = field(default=(), compare=False)

    @classmethod
    def from_config(cls, config, lora, base_dtype: str | None = None) -> "LoraMemory":
        """`base_dtype`: the frozen base's dtype (default: lora.base_dtype, 'auto' = the config's compute dtype)."""
        dtype = base_dtype or (config.compute_dtype if lora.base_dtype == "auto" else lora.base_dtype)
        modules = select_targets(lora, config, config_linears(config))
        shapes = _shapes(config)
        layer, head, act = 0.0, 0.0, 0.0
        for module in modules:
            out_f, in_f = shapes[module]
            count = lora.rank * (in_f + out_f)
            if module == "lm_head":
                head += count
            else:
                layer += count
                act += 2 * lora.rank + (2 * in_f if lora.dropout > 0 else 0)
        n = config.num_layers
        return cls(layer / n, head, _BYTES[dtype], act / n, lora.rank, tuple(modules))

    def trainable(self, layers: int, last: bool) -> float:
        return layers * self.per_layer + (self.head if last else 0.0)

    def states_bytes(self, base_params: float, layers: int, last: bool, optimizer_shard: int) -> float:
        adapters = self.trainable(layers, last)
        return self.base_bytes * base_params + (4 + 4) * adapters + 8 * adapters / max(optimizer_shard, 1)

    def activation_bytes(self, tokens: float, layers: int) -> float:
        return self.act_per_token * tokens * layers


def _shapes(config) -> dict[str, tuple[int, int]]:
    """{our linear module: (out, in)} from the family table (lm_head (vocab, hidden) when tied)."""
    from ..convert.names import table   # pylint: disable=import-outside-toplevel
    out = {}
    for entry in table(config).entries:
        for key, shape in zip(entry.ms_keys, entry.ms_shapes):
            if key.endswith(WEIGHT) and len(shape) == 2:
                out[key[:-len(WEIGHT)]] = tuple(shape)
    out.setdefault("lm_head", (config.vocab_size, config.hidden_size))
    return out
