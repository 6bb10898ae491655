"""Training checkpoints: atomic directories that are also loadable model directories.

    <output_dir>/checkpoint/
        step_00000100/
            model_config.yaml, model.safetensors, model.safetensors.index.json   # TelechatForCausalLM.from_pretrained
            tokenizer.model ...                                                   # copied from the loaded model dir
            optimizer.safetensors       # adam_m.*, adam_v.*, adam_step
            trainer_state.json          # step, loss scale, data and lr schedule (written last)
        latest                          # name of the newest step directory of the current run

A save writes everything into a hidden temporary directory, fsyncs it and renames it into place; only then is
`latest` rewritten (atomically) and old steps removed. A step directory is removed by first renaming it to a
hidden temporary name and then deleting that, so a name `step_*` always holds a whole checkpoint. A process
killed at any point leaves the previous checkpoints and `latest` untouched; leftover temporary directories and
incomplete step directories (from older versions) are removed by the next save.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
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
KILL_ENV = "TELECHAT_MS_TEST_KILL_AT"   # tests: SIGKILL this process at the named point (kill -9 tests)


def _kill_point(name: str) -> None:
    """Deterministic crash for the kill -9 tests; read only here, so no other code depends on it."""
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _remove_tree(path: str) -> None:
    """shutil.rmtree file by file, with the test kill point after each removed file."""
    for dirpath, _, filenames in os.walk(path, topdown=False):
        for name in sorted(filenames):
            os.remove(os.path.join(dirpath, name))
            _kill_point("rotate-delete")
        os.rmdir(dirpath)


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
         keep: int, side_dirs=(), write_model=None) -> str:
    """Write step `step` atomically under `root`, then rotate (see `_rotate`). Returns its path.
    `write_model(directory)` replaces the model weights (LoRA runs write only their adapter, telechat_ms/lora)."""
    os.makedirs(root, exist_ok=True)
    _remove_stale_tmp(root)
    final = os.path.join(root, step_dir_name(step))
    tmp = tempfile.mkdtemp(prefix=_TMP + step_dir_name(step) + "-", dir=root)
    os.chmod(tmp, 0o755)                   # mkdtemp's 0700 would hide the checkpoint from other users
    try:
        model_config.to_yaml(os.path.join(tmp, MODEL_CONFIG))
        if write_model is not None:
            write_model(tmp)
        else:
            write_tensors(model_params, os.path.join(tmp, SAFE_SINGLE))
            _write_json(os.path.join(tmp, SAFE_INDEX), {"metadata": {"step": step}, "weight_map":
                                                         {name: SAFE_SINGLE for name in sorted(model_params)}})
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
    _rotate(root, step, keep)
    return final


def _rotate(root: str, step: int, keep: int) -> None:
    """Keep step `step` (just written) and the `keep` - 1 newest complete steps before it; remove incomplete
    step directories. Steps after `step` (left by a run that went further, when this one resumed from an
    earlier step) are kept: this run replaces them as it reaches them."""
    older = []
    for number, path in step_dirs(root):
        if number == step:
            continue
        if not is_complete(path):
            _delete_step(root, path)
        elif number < step:
            older.append(path)
    for path in older[:max(0, len(older) - (keep - 1))]:
        _delete_step(root, path)


def _delete_step(root: str, path: str) -> None:
    """Rename, then delete: killed at any point, `path` is either whole or gone (its remains are a hidden
    temporary directory that the next save removes)."""
    trash = tempfile.mkdtemp(prefix=_TMP + "old-", dir=root)
    os.rename(path, os.path.join(trash, os.path.basename(path)))
    _fsync(root)                           # the rename is on disk before any file of the step is deleted
    _remove_tree(trash)


def clear(root: str) -> None:
    """Delete every step directory and `latest` under `root` (a fresh run with overwrite_output_dir)."""
    if not os.path.isdir(root):
        return
    if os.path.isfile(os.path.join(root, LATEST)):
        os.remove(os.path.join(root, LATEST))
    for _, path in step_dirs(root):
        _delete_step(root, path)
    _remove_stale_tmp(root)


def _remove_stale_tmp(root: str) -> None:
    for path in glob.glob(os.path.join(root, _TMP + "*")):
        shutil.rmtree(path, ignore_errors=True)


_STEP_NAME = re.compile(re.escape(PREFIX) + r"(\d+)")
_REQUIRED = (MODEL_CONFIG, SAFE_SINGLE, SAFE_INDEX, OPTIMIZER_FILE, STATE_FILE)
# a LoRA step holds its adapter in the PEFT format instead of model weights (telechat_ms/lora/training.py)
_REQUIRED_LORA = (MODEL_CONFIG, "adapter_config.json", "adapter_model.safetensors", OPTIMIZER_FILE, STATE_FILE)


def step_dirs(root: str) -> list[tuple[int, str]]:
    """(step, path) of every step directory under `root`, complete or not, oldest first."""
    found = []
    for name in os.listdir(root) if os.path.isdir(root) else []:
        match = _STEP_NAME.fullmatch(name)
        if match and os.path.isdir(os.path.join(root, name)):
            found.append((int(match.group(1)), os.path.join(root, name)))
    return sorted(found)


def is_complete(path: str) -> bool:
    """Every file a resume reads is there (trainer_state.json alone is not enough: a directory half deleted
    by an older version kept it)."""
    return any(all(os.path.isfile(os.path.join(path, name)) for name in required)
               for required in (_REQUIRED, _REQUIRED_LORA))


def complete_steps(root: str) -> list[str]:
    """Complete step directories under `root`, oldest first."""
    return [path for _, path in step_dirs(root) if is_complete(path)]


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
    check_shapes(path, {**network.parameters_dict(), **optimizer.state()}, weights)
    ms.load_param_into_net(network, {k: weights[k] for k in network.parameters_dict()}, strict_load=True)
    ms.load_param_into_net(optimizer, {k: weights[k] for k in optimizer.state()}, strict_load=True)
    return read_state(path)


def check_shapes(source: str, params: dict, tensors: dict) -> None:
    """ConfigError naming the first mismatches if a tensor of `tensors` has another shape than its parameter
    (MindSpore's load_param_into_net would raise a RuntimeError deep in its own code)."""
    wrong = [f"{name}: checkpoint {list(tensors[name].shape)}, model {list(param.shape)}"
             for name, param in params.items() if name in tensors and tuple(tensors[name].shape) != tuple(param.shape)]
    if wrong:
        more = f", ... ({len(wrong) - 3} more)" if len(wrong) > 3 else ""
        raise ConfigError(f"{source}: {len(wrong)} tensor(s) have another shape than the model built from the "
                          f"config: {', '.join(wrong[:3])}{more}")
