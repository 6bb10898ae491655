"""Training curves as a PNG with matplotlib (Agg, no display): `telechat-ms plot-loss --log LOG --output run.png`.

Reads `train_log.jsonl` records, our text lines `step N/T | loss X | lr ... | scale ... | grad_norm ... |
tokens/s/device ... | mfu ...%` (stdout, msrun worker logs), or MindFormers' own lines (`--engine mindformers`
worker logs: `{ Epoch:[e/E], step:[s/S], loss:[x/avg], ... lr: ..., overflow cond: ..., loss_scale: ...,
global_norm: [...]`). When a step appears twice (a resumed run repeats the steps after its last checkpoint)
the last occurrence wins.

Panels (3 x 2): loss (raw + moving average, overflow-skipped steps marked), learning rate, grad norm (before
clipping), loss scale (skipped steps marked), tokens/s per device, MFU. A quantity the log does not carry is a
panel saying so.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass

import numpy as np

FIELDS = ("loss", "lr", "scale", "grad_norm", "tokens_per_s", "mfu")
_JSON_KEYS = {"loss": "loss", "lr": "lr", "scale": "scale", "grad_norm": "grad_norm",
              "tokens_per_s": "tokens_per_s_per_device", "mfu": "mfu"}
_NUM = r"([-+0-9.eEnaifNAIF]+)"
_OURS = re.compile(r"step (\d+)/\d+ \| loss " + _NUM)
_OURS_FIELDS = {"lr": re.compile(r"\| lr " + _NUM), "scale": re.compile(r"\| scale " + _NUM),
                "grad_norm": re.compile(r"\| grad_norm " + _NUM),
                "tokens_per_s": re.compile(r"\| tokens/s/device " + _NUM), "mfu": re.compile(r"\| mfu " + _NUM + "%")}
_MF = re.compile(r"Epoch:\[\s*(\d+)/\s*\d+\], step:\[\s*(\d+)/\s*(\d+)\], loss:\s*\[?\s*" + _NUM)
_MF_FIELDS = {"lr": re.compile(r"lr: \[?" + _NUM), "scale": re.compile(r"loss_scale: \[?" + _NUM),
              "grad_norm": re.compile(r"global_norm: \[?" + _NUM)}
_MF_OVERFLOW = re.compile(r"overflow cond: (True|False)")
# panel: (title, y label, field)
PANELS = (("loss", "loss", "loss"), ("learning rate", "lr", "lr"), ("grad norm", "global L2 norm", "grad_norm"),
          ("loss scale", "scale", "scale"), ("tokens/s per device", "tokens/s", "tokens_per_s"),
          ("MFU", "MFU (%)", "mfu"))


class PlotError(ValueError):
    """The log has no step records or cannot be read."""


@dataclass
class TrainLog:
    steps: np.ndarray                  # (N,) int, sorted
    overflow: np.ndarray               # (N,) bool: the step was skipped (non-finite gradients)
    values: dict                       # field -> (N,) float64, NaN where the log has no value

    def has(self, name: str) -> bool:
        return bool(np.isfinite(self.values[name]).any())


def read_log(path: str) -> TrainLog:
    """Every step record of a jsonl or text log (module docstring), last record per step."""
    records: dict[int, dict] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                parsed = parse_line(line)
                if parsed:
                    records[parsed["step"]] = parsed
    except OSError as exc:
        raise PlotError(f"{path}: {exc.strerror}") from None
    if not records:
        raise PlotError(f"{path}: no training step records (expected train_log.jsonl, 'step N/T | loss X' lines "
                        "or MindFormers 'Epoch:[..], step:[..], loss: ..' lines)")
    steps = np.array(sorted(records))
    values = {f: np.array([records[s].get(f, np.nan) for s in steps], dtype=np.float64) for f in FIELDS}
    overflow = np.array([records[s].get("overflow", False) for s in steps], dtype=bool)
    return TrainLog(steps, overflow, values)


def read_losses(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, losses, overflow flags) sorted by step (the loss curve alone)."""
    log = read_log(path)
    return log.steps, log.values["loss"], log.overflow


def parse_line(line: str) -> dict | None:
    line = line.strip()
    if line.startswith("{") and '"step"' in line:
        try:
            rec = json.loads(line)
            out = {"step": int(rec["step"]), "overflow": bool(rec.get("overflow", False))}
            out.update({f: _float(rec.get(key)) for f, key in _JSON_KEYS.items() if rec.get(key) is not None})
            return out if "loss" in out else None
        except (ValueError, KeyError, TypeError):
            return None
    match = _OURS.search(line)
    if match:
        out = {"step": int(match.group(1)), "loss": _float(match.group(2)), "overflow": "overflow" in line}
        out.update({f: _float(m.group(1)) for f, rx in _OURS_FIELDS.items() if (m := rx.search(line))})
        if "mfu" in out:
            out["mfu"] /= 100.0                    # the text line prints percent; records hold the fraction
        return out
    match = _MF.search(line)
    if match:
        epoch, step, per_epoch = (int(match.group(i)) for i in (1, 2, 3))
        flag = _MF_OVERFLOW.search(line)
        out = {"step": (epoch - 1) * per_epoch + step, "loss": _float(match.group(4)),
               "overflow": bool(flag and flag.group(1) == "True")}
        out.update({f: _float(m.group(1)) for f, rx in _MF_FIELDS.items() if (m := rx.search(line))})
        return out
    return None


def _float(value) -> float:
    try:
        return float(str(value).strip("[],"))
    except ValueError:
        return float("nan")


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over `window` values (the first ones averaged with copies of values[0])."""
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def build_figure(log: TrainLog, width: int = 800, height: int = 480, dpi: int = 80):
    """A matplotlib Figure (no pyplot, no global state) with the six panels of PANELS."""
    from matplotlib.figure import Figure   # pylint: disable=import-outside-toplevel
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, layout="constrained")
    axes = fig.subplots(3, 2, sharex=True).ravel()
    skipped = log.steps[log.overflow]
    for ax, (title, ylabel, name) in zip(axes, PANELS):
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
        if not log.has(name):
            ax.text(0.5, 0.5, f"no {title} in this log", ha="center", va="center", transform=ax.transAxes,
                    fontsize=8, color="0.5")
            continue
        values = log.values[name] * (100.0 if name == "mfu" else 1.0)
        _draw(ax, name, log.steps, values, skipped)
    for ax in axes[-2:]:
        ax.set_xlabel("step", fontsize=8)
    return fig


def _draw(ax, name: str, steps: np.ndarray, values: np.ndarray, skipped: np.ndarray) -> None:
    finite = np.isfinite(values)
    if name == "loss":
        ax.plot(steps[finite], values[finite], color="#9cc3e6", linewidth=0.8, label="loss")
        if finite.sum() >= 5:
            window = max(2, int(finite.sum()) // 20)
            ax.plot(steps[finite], moving_average(values[finite], window), color="#143ca0", linewidth=1.6,
                    label=f"moving average ({window})")
    elif name == "scale":
        ax.step(steps[finite], values[finite], where="post", color="#143ca0", linewidth=1.2, label="loss scale")
        if np.nanmax(values) / max(np.nanmin(values[finite]), 1e-30) > 100:
            ax.set_yscale("log", base=2)
    else:
        ax.plot(steps[finite], values[finite], color="#143ca0", linewidth=1.0, label=name)
    if name in ("loss", "scale") and len(skipped):
        for step in skipped:
            ax.axvline(step, color="#dc1e1e", linewidth=0.8, alpha=0.6)
        ax.plot([], [], color="#dc1e1e", label=f"skipped (overflow): {len(skipped)}")
    if name in ("loss", "scale"):
        ax.legend(fontsize=6, loc="upper right")


def plot_loss_file(log: str, output: str, width: int = 800, height: int = 480) -> tuple[int, float, float]:
    """Write the PNG (atomically: temp file + rename); returns (steps, first loss, last loss)."""
    data = read_log(log)
    losses = data.values["loss"]
    finite = np.isfinite(losses)
    if not finite.any():
        raise PlotError(f"{log}: every loss is nan/inf")
    if width < 160 or height < 120:
        raise PlotError(f"--width/--height: {width}x{height} is too small for the six panels (at least 160x120)")
    fig = build_figure(data, width, height)
    directory = os.path.dirname(os.path.abspath(output))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=directory)
    except OSError as exc:
        raise PlotError(f"--output {output}: cannot write: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png")
        os.replace(tmp, output)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return len(data.steps), float(losses[finite][0]), float(losses[finite][-1])
