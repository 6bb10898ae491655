"""`telechat-ms plot-loss` with matplotlib: a valid PNG whose figure has the six panels with the log's data
(checked on the matplotlib Figure itself, not by counting pixels); jsonl, our text lines and MindFormers lines."""
import json
import math

import numpy as np
import pytest

from telechat_ms.train.cli import plot_loss_main
from telechat_ms.train.plot_loss import PANELS, PlotError, build_figure, parse_line, plot_loss_file, read_log

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _records(n=60, skipped=(3, 4)):
    out, scale = [], 65536.0
    for s in range(1, n + 1):
        overflow = s in skipped
        out.append({"step": s, "loss": 6.0 - s * 0.05 + 0.1 * math.sin(s), "lr": 1e-3 * min(1.0, s / 10),
                    "scale": scale, "grad_norm": float("nan") if overflow else 1.0 + 1.0 / s, "overflow": overflow,
                    "tokens_per_s_per_device": 1000.0 + s, "mfu": 0.1 + s * 1e-3, "step_time": 0.02})
        scale = scale / 2 if overflow else scale
    return out


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR" and data.endswith(b"IEND\xaeB`\x82")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_jsonl_log_gives_png_and_panels(tmp_path, capsys):
    records = _records()
    log = tmp_path / "train_log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    out = tmp_path / "run.png"
    assert plot_loss_main(["--log", str(log), "--output", str(out), "--width", "640", "--height", "480"]) == 0
    assert f"60 steps, loss {records[0]['loss']:.4f} -> {records[-1]['loss']:.4f}" in capsys.readouterr().out
    assert _png_size(out) == (640, 480)

    fig = build_figure(read_log(str(log)), 640, 480)
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == [title for title, _, _ in PANELS]
    by_title = {ax.get_title(): ax for ax in axes}
    steps = np.arange(1, 61)
    raw, smooth = by_title["loss"].get_lines()[:2]
    assert np.array_equal(raw.get_xdata(), steps) and np.allclose(raw.get_ydata(), [r["loss"] for r in records])
    assert np.ptp(np.diff(smooth.get_ydata())) < np.ptp(np.diff(raw.get_ydata()))     # smoothed is smoother
    # overflow-skipped steps: vertical marks at steps 3 and 4 on the loss and loss-scale panels
    for title in ("loss", "loss scale"):
        marks = [ln.get_xdata()[0] for ln in by_title[title].get_lines() if ln.get_color() == "#dc1e1e"
                 and len(ln.get_xdata())]
        assert sorted(marks) == [3, 4], title
        assert "skipped (overflow): 2" in [t.get_text() for t in by_title[title].get_legend().get_texts()]
    lr = by_title["learning rate"].get_lines()[0]
    assert np.allclose(lr.get_ydata(), [r["lr"] for r in records])
    norm = by_title["grad norm"].get_lines()[0]                                     # skipped steps have none
    assert list(norm.get_xdata()) == [s for s in steps if s not in (3, 4)]
    scale = by_title["loss scale"].get_lines()[0]
    assert scale.get_ydata()[0] == 65536 and scale.get_ydata()[-1] == 16384
    assert np.allclose(by_title["tokens/s per device"].get_lines()[0].get_ydata(), 1000.0 + steps)
    assert np.allclose(by_title["MFU"].get_lines()[0].get_ydata(), 100 * (0.1 + steps * 1e-3))


def test_text_and_mindformers_logs(tmp_path):
    ours = tmp_path / "worker_0.log"
    ours.write_text("noise\n"
                    "step 1/3 | loss 5.500000 | lr 0.000e+00 | scale 65536 | grad_norm 3.7678 | tokens/s/device 122 "
                    "| mfu 0.09% | 4183.9 ms | eta 0:00:08\n"
                    "step 2/3 | loss 5.250000 | lr 2.500e-04 | scale 65536 | grad_norm nan | tokens/s/device 14006 | "
                    "mfu 10.14% | 36.6 ms | eta 0:00:04 | overflow: step skipped, loss scale 65536 -> 32768\n"
                    "step 2/3 | loss 5.000000 | lr 2.500e-04 | scale 32768 | grad_norm 2.0 | tokens/s/device 14000 | "
                    "mfu 10.00% | 36.0 ms\n", encoding="utf-8")
    log = read_log(str(ours))
    assert list(log.steps) == [1, 2] and list(log.values["loss"]) == [5.5, 5.0]       # a repeated step: last wins
    assert list(log.overflow) == [False, False] and log.values["scale"][1] == 32768
    assert np.allclose(log.values["mfu"], [0.0009, 0.1])
    mf = tmp_path / "mf_worker_0.log"
    mf.write_text("2026-01-01 INFO - { Epoch:[  1/  2], step:[    4/    4], loss:[6.229/6.229], per_step_time: 40ms, "
                  "lr: 0.0001, overflow cond: False, loss_scale: 65536.0, global_norm: [3.7678], "
                  "train_throughput_per_npu: 0.012T\n"
                  "2026-01-01 INFO - { Epoch:[  2/  2], step:[    1/    4], loss: 6.100000, per_step_time: 41ms, "
                  "lr: 0.0002, overflow cond: True, loss_scale: 32768.0, global_norm: [inf]\n", encoding="utf-8")
    log = read_log(str(mf))
    assert list(log.steps) == [4, 5] and list(log.values["loss"]) == [6.229, 6.1]
    assert list(log.overflow) == [False, True] and list(log.values["lr"]) == [1e-4, 2e-4]
    assert not log.has("tokens_per_s")
    fig = build_figure(log)
    texts = [t.get_text() for ax in fig.get_axes() for t in ax.texts]
    assert "no tokens/s per device in this log" in texts and "no MFU in this log" in texts
    assert plot_loss_file(str(mf), str(tmp_path / "mf.png")) == (2, 6.229, 6.1)
    assert _png_size(tmp_path / "mf.png") == (800, 480)


def test_bad_logs_are_one_error(tmp_path, capsys):
    out = tmp_path / "x.png"
    assert plot_loss_main(["--log", str(tmp_path / "none.log"), "--output", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    empty = tmp_path / "empty.log"
    empty.write_text("nothing here\n", encoding="utf-8")
    assert plot_loss_main(["--log", str(empty), "--output", str(out)]) == 2
    assert "no training step records" in capsys.readouterr().err
    nan = tmp_path / "nan.jsonl"
    nan.write_text(json.dumps({"step": 1, "loss": float("nan")}) + "\n", encoding="utf-8")
    with pytest.raises(PlotError, match="every loss is nan"):
        plot_loss_file(str(nan), str(out))
    assert not out.exists()
    assert parse_line('{"not": "a record"}') is None and parse_line("step x/y") is None
