"""The merge step: checkpoints written by --engine mindformers -> one model directory (from_pretrained, chat,
convert/ms2hf.py, --load_checkpoint all read it).

    python -m telechat_ms.integrations.mf_export --src <output_dir> --dst <model dir>
        [--step FILE_NAME] [--strategy <dir or file>] [--config model_config.yaml] [--overwrite]

--src is a run's output_dir (model_config.yaml, checkpoint/rank_*/, strategy/), its checkpoint root, or one
rank's file. Stand-alone and data-parallel ranks hold whole copies: rank 0's file is used. Semi-auto parallel
ranks hold shards: with the strategy files MindFormers wrote (<output_dir>/strategy, or --strategy) the shards
are merged with MindSpore's transform_checkpoints (.ckpt; pipeline stages' strategies merged first with
merge_pipeline_strategys) or unified_safetensors (.safetensors). The output holds the model weights only
(MindFormers' optimizer moments, step counters and loss scale are dropped), model_config.yaml and the tokenizer
files of the run. Written atomically (io/output.py staged_output). Exit 0, or 2 with one `error:` line.
"""
from __future__ import annotations

import argparse
import filecmp
import glob
import json
import os
import sys
import tempfile

from ..config.base import ConfigError
from ..config.model import TelechatConfig
from ..io.checkpoint import MODEL_CONFIG
from ..io.errors import ConvertError
from ..io.output import TOKENIZER_FILES, check_destination, copy_side_files, staged_output
from ..io.sources import SAFE_INDEX, SAFE_SINGLE
from .mf_checkpoints import rank_checkpoints
from .mf_engine import HF_SOURCE_FILES


def locate(src: str, step: str | None = None) -> tuple[str, str, str]:
    """(run directory, checkpoint root, rank-0 file) of --src."""
    src = os.path.abspath(src)
    if os.path.isfile(src):
        root = os.path.dirname(os.path.dirname(src))
        name = os.path.basename(src).replace(os.path.basename(os.path.dirname(src)), "rank_0")
        file = os.path.join(root, "rank_0", name)
    else:
        root = src if rank_checkpoints(src) else os.path.join(src, "checkpoint")
        files = [f for f in rank_checkpoints(root) if os.path.basename(os.path.dirname(f)) == "rank_0"]
        if not files:
            raise ConfigError(f"{src}: no MindFormers checkpoint (checkpoint/rank_0/*_rank_0-<epoch>_<step>.ckpt)")
        chosen = [f for f in files if os.path.basename(f) == step] if step else [_newest(root, files)]
        if not chosen:
            raise ConfigError(f"--step {step}: not in {root}/rank_0")
        file = chosen[0]
    if not os.path.isfile(file):
        raise ConfigError(f"{file}: no such checkpoint file")
    return os.path.dirname(root), root, file


def _newest(root: str, files: list[str]) -> str:
    meta = os.path.join(root, "rank_0", "meta.json")
    if os.path.isfile(meta):
        with open(meta, encoding="utf-8") as fh:
            name = json.load(fh).get("last_ckpt_file")
        return next((f for f in files if os.path.basename(f) == name), files[-1])
    return files[-1]


def strategy_file(path: str | None, tmp: str) -> str | None:
    """One strategy file for the whole network, or None (no strategy = ranks hold whole copies)."""
    if not path or not os.path.exists(path):
        return None
    if os.path.isfile(path):
        return path
    files = sorted(glob.glob(os.path.join(path, "*.ckpt")) + glob.glob(os.path.join(path, "*.json")))
    if not files:
        return None
    if all(filecmp.cmp(files[0], f, shallow=False) for f in files[1:]):
        return files[0]
    import mindspore as ms   # pylint: disable=import-outside-toplevel
    merged = os.path.join(tmp, "merged_strategy.ckpt")
    ms.parallel.merge_pipeline_strategys(path, merged)      # one file per pipeline stage -> the whole net
    return merged


def merge_shards(root: str, file: str, strategy: str, tmp: str) -> str:
    """The checkpoint of every rank at `file`'s step, merged with `strategy`; returns the merged file."""
    import mindspore as ms   # pylint: disable=import-outside-toplevel
    name = os.path.basename(file)
    src = os.path.join(tmp, "src")
    for rank_dir in sorted(glob.glob(os.path.join(root, "rank_*"))):
        rank = os.path.basename(rank_dir)
        shard = os.path.join(rank_dir, name.replace("rank_0", rank))
        if not os.path.isfile(shard):
            raise ConfigError(f"{shard}: missing (every rank's file of this step is needed to merge shards)")
        os.makedirs(os.path.join(src, rank))
        os.symlink(shard, os.path.join(src, rank, os.path.basename(shard)))   # one step per rank directory
    dst = os.path.join(tmp, "merged")
    if file.endswith(".safetensors"):
        ms.parallel.unified_safetensors(src, strategy, dst)
        return dst
    ms.transform_checkpoints(src, dst, "merged", src_strategy_file=strategy, dst_strategy_file=None)
    return glob.glob(os.path.join(dst, "rank_0", "*.ckpt"))[0]


def _weights(path: str, model: TelechatConfig) -> dict:
    """The model's parameters from a (merged) checkpoint; training state dropped, names and shapes checked."""
    import mindspore as ms   # pylint: disable=import-outside-toplevel
    from ..parallel.validate import build_abstract_model   # pylint: disable=import-outside-toplevel
    files = sorted(glob.glob(os.path.join(path, "*.safetensors"))) if os.path.isdir(path) else [path]
    params = {}
    for file in files:
        params.update(ms.load_checkpoint(file, format="safetensors" if file.endswith(".safetensors") else "ckpt"))
    wanted = {p.name: tuple(p.shape) for p in build_abstract_model(model).get_parameters()}
    missing = sorted(set(wanted) - set(params))
    wrong = [k for k, shape in wanted.items() if k in params and tuple(params[k].shape) != shape]
    if missing or wrong:
        raise ConfigError(f"{path}: does not match {MODEL_CONFIG}: {len(missing)} missing (e.g. {missing[:2]}), "
                          f"{len(wrong)} of another shape (e.g. {wrong[:2]}); a sharded checkpoint needs its "
                          "strategy files (--strategy)")
    return {k: params[k] for k in wanted}


def export(src: str, dst: str, step: str | None = None, strategy: str | None = None, config: str | None = None,
           overwrite: bool = False) -> str:
    import mindspore as ms   # pylint: disable=import-outside-toplevel
    run_dir, root, file = locate(src, step)
    config_path = config or os.path.join(run_dir, MODEL_CONFIG)
    if not os.path.isfile(config_path):
        raise ConfigError(f"{config_path}: no model config (written by --engine mindformers into output_dir; "
                          "pass --config)")
    model = TelechatConfig.from_yaml(config_path)
    check_destination(dst, overwrite, [run_dir])
    with tempfile.TemporaryDirectory() as tmp:
        plan = strategy_file(strategy or os.path.join(run_dir, "strategy"), tmp)
        merged = merge_shards(root, file, plan, tmp) if plan else file
        params = _weights(merged, model)
        with staged_output(dst, overwrite) as out:
            ms.save_checkpoint(params, os.path.join(out, SAFE_SINGLE), format="safetensors")
            with open(os.path.join(out, SAFE_INDEX), "w", encoding="utf-8") as fh:
                json.dump({"metadata": {"source": file}, "weight_map": {k: SAFE_SINGLE for k in sorted(params)}},
                          fh, indent=2)
            model.to_yaml(os.path.join(out, MODEL_CONFIG))
            copy_side_files([run_dir, os.path.dirname(config_path)], out, TOKENIZER_FILES + HF_SOURCE_FILES)
    return file


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m telechat_ms.integrations.mf_export", description=__doc__.split("\n")[0])
    p.add_argument("--src", required=True, help="output_dir of an --engine mindformers run, its checkpoint root, "
                   "or one rank's checkpoint file")
    p.add_argument("--dst", required=True, help="model directory to write")
    p.add_argument("--step", help="checkpoint file name in rank_0 (default: the newest, meta.json)")
    p.add_argument("--strategy", help="strategy file or directory (default <output_dir>/strategy)")
    p.add_argument("--config", help="model_config.yaml (default <output_dir>/model_config.yaml)")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    try:
        used = export(args.src, args.dst, args.step, args.strategy, args.config, args.overwrite)
    except (ConfigError, ConvertError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst} from {used}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
