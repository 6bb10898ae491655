"""Training checkpoints: atomic directories that are also loadable model directories.

    <output_dir>/checkpoint/
        step_00000100/
            model_config.yaml, model.safetensors, model.safetensors.index.json   # TelechatForCausalLM.from_pretrained
            tokenizer.model ...                                                   # copied from the loaded model dir
            optimizer.safetensors       # adam_m.*, adam_v.*, adam_step
            trainer_state.json          # step, loss scale, data schedule (written last)
        latest                          # name of the newest complete step directory

A save writes everything into a hidden temporary directory, fsyncs it and renames it into place; only then is
`latest` rewritten (atomically) and old steps removed. A save killed at any point leaves the previous
checkpoints and `latest` untouched; leftover temporary directories are removed by the next save.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile

from ..config.base import ConfigError, atomic_write_text
from ..io.output import copy_side_files
from ..io.checkpoint import MODEL_CONFIG
from ..io.sources import SAFE_INDEX, SAFE_SINGLE

OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
LATEST = "latest"
PREFIX = "step_"
_TMP = ".tmp-"


def step_dir_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def write_tensors(tensors: dict, path: str) -> None:
    """One safetensors file (the single place tensors are written; tests inject failures here)."""
    import mindspore as ms   # pylint: disable=import-outside-toplevel
    ms.save_checkpoint(tensors, path, format="safetensors")
    _fsync(path)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: str, data) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def save(root: str, step: int, model_params: dict, optimizer_state: dict, state: dict, model_config,
         keep: int, side_dirs=()) -> str:
    """Write step `step` atomically under `root`; keep the `keep` newest step directories. Returns its path."""
    os.makedirs(root, exist_ok=True)
    _remove_stale_tmp(root)
    final = os.path.join(root, step_dir_name(step))
    tmp = tempfile.mkdtemp(prefix=_TMP + step_dir_name(step) + "-", dir=root)
    os.chmod(tmp, 0o755)                   # mkdtemp's 0700 would hide the checkpoint from other users
    try:
        model_config.to_yaml(os.path.join(tmp, MODEL_CONFIG))
        write_tensors(model_params, os.path.join(tmp, SAFE_SINGLE))
        _write_json(os.path.join(tmp, SAFE_INDEX), {"metadata": {"step": step},
                                                     "weight_map": {name: SAFE_SINGLE for name in sorted(model_params)}})
        write_tensors(optimizer_state, os.path.join(tmp, OPTIMIZER_FILE))
        copy_side_files(list(side_dirs), tmp)
        _write_json(os.path.join(tmp, STATE_FILE), {**state, "step": step})
        _fsync(tmp)
        if os.path.exists(final):          # the same step saved by an earlier, interrupted run: replace it
            trash = tempfile.mkdtemp(prefix=_TMP + "old-", dir=root)
            os.rename(final, os.path.join(trash, "old"))
        os.rename(tmp, final)
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(os.path.join(root, LATEST), step_dir_name(step) + "\n")
    _remove_stale_tmp(root)
    for old in complete_steps(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _remove_stale_tmp(root: str) -> None:
    for path in glob.glob(os.path.join(root, _TMP + "*")):
        shutil.rmtree(path, ignore_errors=True)


def is_complete(path: str) -> bool:
    return os.path.isfile(os.path.join(path, STATE_FILE))


def complete_steps(root: str) -> list[str]:
    """Complete step directories under `root`, oldest first."""
    paths = [p for p in glob.glob(os.path.join(root, PREFIX + "*")) if is_complete(p)]
    return sorted(paths, key=lambda p: int(os.path.basename(p)[len(PREFIX):]))


def latest(root: str) -> str | None:
    """The step directory named by `latest`, else the newest complete one, else None."""
    pointer = os.path.join(root, LATEST)
    if os.path.isfile(pointer):
        with open(pointer, encoding="utf-8") as fh:
            path = os.path.join(root, fh.read().strip())
        if is_complete(path):
            return path
    steps = complete_steps(root)
    return steps[-1] if steps else None


def resolve_resume(resume, load_checkpoint: str, output_dir: str) -> str:
    """The step directory to resume from. `load_checkpoint` may name a step directory or a checkpoint root;
    otherwise (e.g. it is the converted model a finetune started from) <output_dir>/checkpoint is searched.
    `resume` True takes the newest complete step; a string names the step directory (MindFormers style)."""
    if load_checkpoint and is_complete(load_checkpoint):
        return load_checkpoint
    roots = [r for r in (load_checkpoint, os.path.join(output_dir, "checkpoint")) if r and complete_steps(r)]
    if not roots:
        raise ConfigError(f"resume_training: no complete checkpoint ({PREFIX}*/{STATE_FILE}) in "
                          f"{load_checkpoint or '(no load_checkpoint)'} or {os.path.join(output_dir, 'checkpoint')}")
    if isinstance(resume, str):
        path = os.path.join(roots[0], resume)
        if not is_complete(path):
            raise ConfigError(f"resume_training: {path} is not a complete training checkpoint (no {STATE_FILE})")
        return path
    return latest(roots[0])


def read_state(path: str) -> dict:
    with open(os.path.join(path, STATE_FILE), encoding="utf-8") as fh:
        return json.load(fh)


def load_tensors(path: str) -> dict:
    import mindspore as ms   # pylint: disable=import-outside-toplevel
    return ms.load_checkpoint(path, format="safetensors")


def restore(path: str, network, optimizer) -> dict:
    """Load model params and optimizer state of step directory `path` into the cells; returns trainer_state."""
    import mindspore as ms   # pylint: disable=import-outside-toplevel
    weights = load_tensors(os.path.join(path, SAFE_SINGLE))
    weights.update(load_tensors(os.path.join(path, OPTIMIZER_FILE)))
    wanted = set(network.parameters_dict()) | set(optimizer.state())
    missing = sorted(wanted - set(weights))
    if missing:
        raise ConfigError(f"{path}: checkpoint lacks {len(missing)} parameter(s), e.g. {missing[:3]}")
    ms.load_param_into_net(network, {k: weights[k] for k in network.parameters_dict()}, strict_load=True)
    ms.load_param_into_net(optimizer, {k: weights[k] for k in optimizer.state()}, strict_load=True)
    return read_state(path)
