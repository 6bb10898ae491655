"""Checkpoints around MindFormers' Trainer: the weights a finetune starts from, and MindFormers' own resume.

MindFormers' CheckpointMonitor writes <output_dir>/checkpoint/rank_<r>/<prefix>_rank_<r>-<epoch>_<step>.ckpt
(or .safetensors with checkpoint_format: safetensors) and rank_<r>/meta.json naming the newest; each file holds
the rank's parameters, the AdamW moments (adam_m.*, adam_v.*), global_step, and epoch_num / step_num /
loss_scale / global_batch_size for resume. MindFormers' loaders read them back (resume_training) and
convert/ms2hf.py converts one rank's file (data parallel: every rank's is whole) with
--config <output_dir>/model_config.yaml (written by mf_engine.py).
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import re

from ..config.base import ConfigError
from ..io.checkpoint import MODEL_CONFIG, weight_files
from ..io.errors import ConvertError

_RANK_FILE = re.compile(r"_rank_\d+(?:_\d+)?-(\d+)_(\d+)\.(ckpt|safetensors)$")


def rank_checkpoints(root: str) -> list[str]:
    """MindFormers' per-rank checkpoint files under `root` (rank_*/...), oldest step first."""
    files = glob.glob(os.path.join(root, "rank_*", "*.ckpt")) + glob.glob(os.path.join(root, "rank_*", "*.safetensors"))
    return sorted((f for f in files if _RANK_FILE.search(f)), key=_step_of)


def _step_of(path: str) -> tuple[int, int]:
    """(epoch, step within the epoch) of a file name: MindFormers' order of its checkpoints."""
    match = _RANK_FILE.search(path)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def saved_step(path: str) -> int:
    """The global step_num MindFormers stored in a checkpoint (read from its header, not the whole file)."""
    from ..io.sources import open_ms   # pylint: disable=import-outside-toplevel
    try:
        with open_ms(path) as source:
            if "step_num" not in source.infos:
                raise ConfigError(f"resume_training: {path} has no step_num (not a MindFormers training checkpoint)")
            return int(source.read("step_num", 0, 1).reshape(-1)[0])
    except ConvertError as exc:
        raise ConfigError(f"resume_training: {exc}") from None


def _tensor_shapes(files: list[str], fmt: str) -> dict:
    from ..io import ckpt_io, safetensors_io   # pylint: disable=import-outside-toplevel
    shapes = {}
    for file in files:
        infos = safetensors_io.read_header(file)[0] if fmt == "safetensors" else ckpt_io.scan_ckpt(file)
        shapes.update({k: tuple(v.shape) for k, v in infos.items()})
    return shapes


def check_weights(path: str, model) -> tuple[str, str]:
    """(load_checkpoint, load_ckpt_format) for MindFormers' loader, after checking that the checkpoint holds every
    parameter of `model` with its shape (MindFormers' load_param_into_net would log a missing tensor and train it
    from its random initialisation)."""
    from ..parallel.validate import build_abstract_model   # pylint: disable=import-outside-toplevel
    if os.path.isdir(path) and glob.glob(os.path.join(path, "rank_*")):
        raise ConfigError(f"load_checkpoint: {path} holds per-rank checkpoints: to finetune from them merge them "
                          "first (docs/training.md, merging), or resume them with --resume_training")
    try:
        if os.path.isdir(path):
            files, fmt = weight_files(path)
        elif path.endswith((".ckpt", ".safetensors")):
            files, fmt = [path], "safetensors" if path.endswith(".safetensors") else "ckpt"
        else:
            raise ConfigError(f"load_checkpoint: {path}: expected a model directory or a .ckpt / .safetensors file")
        shapes = _tensor_shapes(files, fmt)
    except ConvertError as exc:
        raise ConfigError(f"load_checkpoint: {exc}") from None
    params = {p.name: tuple(p.shape) for p in build_abstract_model(model).get_parameters()}
    missing = sorted(set(params) - set(shapes))
    wrong = [f"{k}: checkpoint {list(shapes[k])}, model {list(v)}" for k, v in params.items()
             if k in shapes and shapes[k] != v]
    if missing or wrong:
        what = f"{len(missing)} parameter(s) missing, e.g. {missing[:3]}" if missing else \
            f"{len(wrong)} tensor(s) of another shape, e.g. {wrong[:2]}"
        raise ConfigError(f"load_checkpoint: {path}: {what} (the model is built from model.model_config"
                          f"{' + its model_config.yaml' if os.path.isdir(path) else ''})")
    return path, fmt


def check_parallel_load(config, path: str, run: dict) -> None:
    """MindFormers' own rules for loading a whole checkpoint with use_parallel, as one line before it starts:
    a directory (not a single file) and auto_trans_ckpt (it slices the checkpoint onto the layout)."""
    if not config.use_parallel:
        return
    if os.path.isfile(path):
        raise ConfigError(f"load_checkpoint: {path}: with use_parallel MindFormers loads a directory, not a single "
                          "file: pass the directory holding it (e.g. a convert/hf2ms.py output)")
    if not run.get("auto_trans_ckpt"):
        raise ConfigError(f"load_checkpoint: {path} is a whole checkpoint and use_parallel is true: set "
                          "auto_trans_ckpt: True (MindFormers slices it onto the layout; docs/training.md)")


@dataclasses.dataclass
class ResumePoint:
    root: str            # MindFormers checkpoint root (rank_*/ inside)
    file: str            # this rank's checkpoint file to resume from
    step: int
    fmt: str
    model_dir: str | None   # directory with the run's model_config.yaml

    def announcement(self) -> str:
        return (f"resume (MindFormers): {self.file} at step {self.step}; restored: weights, AdamW moments and update "
                "count (lr), loss scale value and its clean-step counter, data position (the first "
                f"{self.step} global batches are skipped). Differs from the native loop: an overflow step does not "
                "advance MindFormers' lr schedule (its optimizer step counter), so fp16 runs with skipped steps "
                "follow a shifted schedule")


def resolve_resume(config) -> ResumePoint:
    """The checkpoint a MindFormers resume continues: load_checkpoint (a checkpoint root or one rank file) or
    <output_dir>/checkpoint; resume_training True = newest, a string = that file name in rank_0."""
    root = os.path.join(config.output_dir, "checkpoint")
    load = config.load_checkpoint
    if load and os.path.isfile(load) and _RANK_FILE.search(load):
        root, wanted = os.path.dirname(os.path.dirname(load)), os.path.basename(load)
    else:
        root = load if load and rank_checkpoints(load) else root
        wanted = config.resume_training if isinstance(config.resume_training, str) else None
    files = [f for f in rank_checkpoints(root) if os.path.basename(os.path.dirname(f)) == "rank_0"]
    if not files:
        raise ConfigError(f"resume_training: no MindFormers checkpoint (rank_0/*_rank_0-<epoch>_<step>.ckpt) in "
                          f"{root}{'' if not load else f' (load_checkpoint {load})'}")
    if wanted:
        chosen = [f for f in files if os.path.basename(f) == wanted]
        if not chosen:
            raise ConfigError(f"resume_training: {wanted} is not in {root}/rank_0 (there: "
                              f"{', '.join(os.path.basename(f) for f in files)})")
        file = chosen[0]
    else:
        file = _newest(root, files)
    run_dir = os.path.dirname(os.path.abspath(root))
    model_dir = run_dir if os.path.isfile(os.path.join(run_dir, MODEL_CONFIG)) else None
    fmt = "safetensors" if file.endswith(".safetensors") else "ckpt"
    return ResumePoint(os.path.abspath(root), os.path.abspath(file), saved_step(file), fmt, model_dir)


def _newest(root: str, files: list[str]) -> str:
    """The file rank_0/meta.json names (MindFormers' choice), else the highest step."""
    meta = os.path.join(root, "rank_0", "meta.json")
    if os.path.isfile(meta):
        with open(meta, encoding="utf-8") as fh:
            name = json.load(fh).get("last_ckpt_file")
        for file in files:
            if os.path.basename(file) == name:
                return file
    return files[-1]


def apply_resume(mf_config, resume: ResumePoint) -> None:
    """MindFormers' resume: the checkpoint root + file name (ckpt; every rank reads its rank_<r> file); a
    safetensors file directly (MindFormers reads rank directories of safetensors only with use_parallel)."""
    mf_config.load_ckpt_format = resume.fmt
    if resume.fmt == "ckpt":
        mf_config.load_checkpoint = resume.root
        mf_config.resume_training = os.path.basename(resume.file)
    else:
        mf_config.load_checkpoint = resume.file
        mf_config.resume_training = True
