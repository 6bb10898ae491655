"""Which of our linears a LoRA config targets, and the family's HF module names of each (from the family's
name table, families/<family>.py), so `target_modules` may use either naming.

Our modules: `model.layers.{i}.attention.wq | wk_v | wo`, `model.layers.{i}.feed_forward.w1 | w3 | w2` (dense)
or `feed_forward.router.dense` (MoE router), `lm_head`. The HF names come from the entries of the family table
that make our `<module>.weight`: TeleChat `transformer.h.{i}.self_attention.query | key_value | dense`, `mlp.gate_proj
| up_proj | down_proj`; Llama layouts `model.layers.{i}.self_attn.q_proj | k_proj | v_proj | o_proj`, ...; TeleChat-52B
`transformer.h.{i}.attn.c_attn` (= wq and wk_v), `mlp.c_fc` (= w1 and w3), `attn.c_proj`, `mlp.c_proj`.
MoE experts are stacked tensors, not linears: LoRA cannot target them.
"""
from __future__ import annotations

import re

from ..config.base import ConfigError

WEIGHT = ".weight"


def hf_modules_of(config, modules) -> dict[str, list[str]]:
    """{our module: [HF module names]} for `modules` (our linear module names), in the family's canonical
    spelling. A module without a table entry (a tied lm_head) keeps its own name."""
    from ..convert.names import table   # pylint: disable=import-outside-toplevel  (imports the families)
    wanted = set(modules)
    out = {m: [] for m in modules}
    for entry in table(config).entries:
        hf = [k[:-len(WEIGHT)] for k in entry.hf_keys if k.endswith(WEIGHT)]
        for key in entry.ms_keys:
            module = key[:-len(WEIGHT)] if key.endswith(WEIGHT) else None
            if module in wanted:
                out[module] = hf
    for module, names in out.items():
        if not names:
            out[module] = [module]
    return out


def _peft_match(pattern, name: str) -> bool:
    """PEFT's rule: a list entry matches the whole name or its last dotted parts; a string is a full regex."""
    if isinstance(pattern, str):
        return re.fullmatch(pattern, name) is not None
    return any(name == t or name.endswith("." + t) for t in pattern)


def _mindformers_match(pattern, name: str) -> bool:
    """MindFormers' rule (pet/tuners/lora_adapter.py): re.match of the regex on the cell's own attribute name;
    exclude_layers is a list of such regexes."""
    local = name.rsplit(".", 1)[-1]
    patterns = [pattern] if isinstance(pattern, str) else pattern
    return any(re.match(p, local) is not None for p in patterns)


def _matches(lora, pattern, module: str, hf: list[str]) -> tuple[bool, list[str]]:
    """(our name matches, the HF names that match)."""
    if pattern is None:
        return False, []
    if lora.match == "mindformers":
        return _mindformers_match(pattern, module), []
    return _peft_match(pattern, module), [h for h in hf if _peft_match(pattern, h)]


def select_targets(lora, config, modules) -> list[str]:
    """Our module names `lora` targets among `modules` (our linears, model order). A module is targeted when
    its own name or one of its HF names matches and none matches `exclude_modules`. An HF projection we fuse
    (k_proj + v_proj -> wk_v) must be targeted with its partner: a LoRA on the fused rows covers both."""
    hf_names = hf_modules_of(config, modules)
    chosen = []
    for module in modules:
        hf = [h for h in hf_names[module] if h != module]
        own, hf_hit = _matches(lora, lora.target_modules, module, hf)
        if not (own or hf_hit):
            continue
        ex_own, ex_hf = _matches(lora, lora.exclude_modules, module, hf)
        if ex_own or ex_hf:
            continue
        if not own and len(hf_hit) < len(hf):       # several HF projections make this module's rows
            missing = [h.rsplit(".", 1)[-1] for h in hf if h not in hf_hit]
            raise ConfigError(f"{lora.source}.target_modules: {', '.join(h.rsplit('.', 1)[-1] for h in hf_hit)} "
                              f"is targeted but {', '.join(missing)} is not; telechat_ms computes them as one fused "
                              f"projection ({module.rsplit('.', 1)[-1]}), so target both (or our name "
                              f"{module.rsplit('.', 1)[-1]})")
        chosen.append(module)
    if not chosen:
        raise ConfigError(f"{lora.source}.target_modules: {lora.target_modules!r} matches no linear of this "
                          f"{config.family} model; our names: {_local_names(modules)}; the family's HF names: "
                          f"{_local_names([h for m in modules for h in hf_names[m]])}")
    return chosen


def _local_names(names) -> str:
    seen = []
    for name in names:
        local = re.sub(r"^.*\.(\d+)\.", "", name)
        if local not in seen:
            seen.append(local)
    return ", ".join(seen)


# the last name part of every linear LoRA can wrap (decoder projections, MoE router, head)
LINEAR_NAMES = ("wq", "wk_v", "wo", "w1", "w3", "w2", "dense", "lm_head")


def config_linears(config) -> list[str]:
    """Our linear modules of a model with this config, in model order, from the family table (no model
    needed: merge-lora, adapter conversion); MoE experts (`feed_forward.ffn.*`, stacked tensors) are not linears."""
    from ..convert.names import table   # pylint: disable=import-outside-toplevel
    out = []
    for entry in table(config).entries:
        for key in entry.ms_keys:
            module = key[:-len(WEIGHT)] if key.endswith(WEIGHT) else ""
            if module.rsplit(".", 1)[-1] in LINEAR_NAMES and ".ffn." not in module and module not in out:
                out.append(module)
    if "lm_head" not in out:                # tied: the head reads the embedding table, still a linear cell
        out.append("lm_head")
    return out
