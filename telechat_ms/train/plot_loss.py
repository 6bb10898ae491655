"""Loss-curve PNG from a training log, with numpy and zlib only (matplotlib is not a dependency).

Reads `train_log.jsonl` records or text lines `step N/T | loss X | ...` (stdout, msrun worker logs). When a step
appears twice (a resumed run repeats the steps after its last checkpoint) the last occurrence wins.
Draws the raw loss (light), its moving average (dark), overflow-skipped steps (red) and labelled axes.
"""
from __future__ import annotations

import json
import re
import struct
import zlib

import numpy as np

_LINE = re.compile(r"step (\d+)/\d+ \| loss ([-+0-9.eEnaif]+)")

# 3x5 glyphs for axis labels
_GLYPHS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001010010010",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", "-": "000000111000000",
    "e": "000111111100111", "l": "110010010010111", "o": "000111101101111", "s": "000111110011111",
    "t": "010111010010011", "p": "000111101111100", "v": "000101101101010", " ": "000000000000000",
}


class PlotError(ValueError):
    """The log has no loss records or cannot be read."""


def read_losses(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, losses, overflow flags) sorted by step, last record per step."""
    records: dict[int, tuple[float, bool]] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                parsed = _parse(line)
                if parsed:
                    records[parsed[0]] = parsed[1:]
    except OSError as exc:
        raise PlotError(f"{path}: {exc.strerror}") from None
    if not records:
        raise PlotError(f"{path}: no training step records (expected train_log.jsonl or 'step N/T | loss X' lines)")
    steps = np.array(sorted(records))
    losses = np.array([records[s][0] for s in steps], dtype=np.float64)
    overflow = np.array([records[s][1] for s in steps], dtype=bool)
    return steps, losses, overflow


def _parse(line: str):
    line = line.strip()
    if line.startswith("{"):
        try:
            rec = json.loads(line)
            return int(rec["step"]), float(rec["loss"]), bool(rec.get("overflow", False))
        except (ValueError, KeyError, TypeError):
            return None
    match = _LINE.search(line)
    if match:
        return int(match.group(1)), float(match.group(2)), "overflow" in line
    return None


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def plot_loss_file(log: str, output: str, width: int = 800, height: int = 480) -> tuple[int, float, float]:
    steps, losses, overflow = read_losses(log)
    finite = np.isfinite(losses)
    if not finite.any():
        raise PlotError(f"{log}: every loss is nan/inf")
    image = render(steps[finite], losses[finite], steps[overflow], width, height)
    write_png(output, image)
    return len(steps), float(losses[finite][0]), float(losses[finite][-1])


def render(steps, losses, overflow_steps, width: int, height: int) -> np.ndarray:
    img = np.full((height, width, 3), 255, dtype=np.uint8)
    left, right, top, bottom = 70, width - 20, 30, height - 40
    lo, hi = float(losses.min()), float(losses.max())
    pad = max((hi - lo) * 0.05, 1e-6)
    lo, hi = lo - pad, hi + pad
    x0, x1 = float(steps[0]), float(max(steps[-1], steps[0] + 1))

    def to_px(s, v):
        return (left + (np.asarray(s, float) - x0) / (x1 - x0) * (right - left),
                bottom - (np.asarray(v, float) - lo) / (hi - lo) * (bottom - top))
    for i in range(5):                                   # grid and tick labels
        value, step = lo + (hi - lo) * i / 4, x0 + (x1 - x0) * i / 4
        _, y = to_px(x0, value)
        x, _ = to_px(step, lo)
        img[int(y), left:right] = 225
        img[top:bottom, int(x)] = 225
        _text(img, f"{value:.3g}", 4, int(y) - 5)
        _text(img, f"{int(round(step))}", int(x) - 8, bottom + 8)
    img[top:bottom + 1, left] = 0
    img[bottom, left:right + 1] = 0
    _text(img, "loss vs step", left, 8)
    _polyline(img, *to_px(steps, losses), (150, 190, 235))
    if len(losses) >= 5:
        _polyline(img, *to_px(steps, moving_average(losses, max(2, len(losses) // 20))), (20, 60, 160))
    for s in overflow_steps:
        x, _ = to_px(s, lo)
        img[bottom - 6:bottom, max(left, int(x) - 1):int(x) + 2] = (220, 30, 30)
    return img


def _polyline(img, xs, ys, color) -> None:
    h, w, _ = img.shape
    for i in range(max(1, len(xs) - 1)):
        j = min(i + 1, len(xs) - 1)
        n = int(max(abs(xs[j] - xs[i]), abs(ys[j] - ys[i]))) + 2
        px = np.clip(np.round(np.linspace(xs[i], xs[j], n)).astype(int), 0, w - 2)
        py = np.clip(np.round(np.linspace(ys[i], ys[j], n)).astype(int), 0, h - 2)
        for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):    # 2 px thick
            img[py + dy, px + dx] = color


def _text(img, text: str, x: int, y: int, scale: int = 2) -> None:
    for k, ch in enumerate(text.lower()):
        glyph = _GLYPHS.get(ch)
        if glyph is None:
            continue
        bits = np.array([int(b) for b in glyph], dtype=bool).reshape(5, 3)
        block = np.kron(bits, np.ones((scale, scale), dtype=bool))
        gx = x + k * 4 * scale
        region = img[y:y + block.shape[0], gx:gx + block.shape[1]]
        if region.shape[:2] == block.shape:
            region[block] = 0


def write_png(path: str, image: np.ndarray) -> None:
    """8-bit RGB PNG: signature, IHDR, one zlib IDAT (filter 0 per row), IEND."""
    height, width, _ = image.shape
    raw = np.concatenate([np.zeros((height, 1), dtype=np.uint8), image.reshape(height, -1)], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    with open(path, "wb") as fh:
        fh.write(png)
