"""Benchmark of the weight converters: throughput and peak memory on a generated multi-GB fp32 checkpoint.

    python bench/convert.py                 # ~2 GB fp32 in 8 shards (needs ~3x that on disk)
    python bench/convert.py --size-mb 300   # quick run

Generates an HF-format TeleChat2 checkpoint (hidden 1024, vocab 32000, as many layers as the size allows),
then runs each conversion in a fresh process through the real CLI scripts and reports wall time, MB/s, the
child's peak RSS and peak RSS / checkpoint size (target: <= 0.3 and < 1 GB). The import-only RSS of the CLI
(MindSpore is imported by the telechat_ms package) is measured too, to separate it from the working set.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench_config(size_mb: int):
    """hidden 1024 / vocab 32000 and enough layers for about `size_mb` of fp32 weights."""
    from telechat_ms.config import TelechatConfig
    base = TelechatConfig.preset("tiny", vocab_size=32000, hidden_size=1024, num_heads=8, num_kv_heads=8,
                                 ffn_hidden_size=2816, num_layers=1)
    per_layer = (base.num_parameters() - 2 * base.vocab_size * base.hidden_size) * 4
    fixed = 2 * base.vocab_size * base.hidden_size * 4
    layers = max(1, round((size_mb * 2**20 - fixed) / per_layer))
    return TelechatConfig.preset("tiny", vocab_size=32000, hidden_size=1024, num_heads=8, num_kv_heads=8,
                                 ffn_hidden_size=2816, num_layers=layers)


def write_checkpoint(directory: str, config, shards: int) -> int:
    """Random fp32 weights in `shards` safetensors files + index, one shard in memory at a time."""
    import numpy as np
    from safetensors.numpy import save_file
    from tests.hf_checkpoint import hf_shapes, write_side_files
    os.makedirs(directory)
    write_side_files(directory, config)
    shapes = hf_shapes(config)
    total = sum(int(np.prod(s)) * 4 for s in shapes.values())
    rng = np.random.default_rng(0)
    keys = list(shapes)
    bounds = np.linspace(0, len(keys), shards + 1).astype(int)          # equal tensor counts per shard
    weight_map = {}
    for number, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]), 1):
        name = f"model-{number:05d}-of-{shards:05d}.safetensors"
        group = {k: rng.standard_normal(shapes[k], dtype=np.float32) * np.float32(0.02) for k in keys[lo:hi]}
        save_file(group, os.path.join(directory, name), metadata={"format": "pt"})
        weight_map.update({k: name for k in group})
        del group
    with open(os.path.join(directory, "model.safetensors.index.json"), "w", encoding="utf-8") as fh:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh)
    return total


def run_child(args: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child process (os.wait4 gives that child's own rusage).

    Linux folds the RSS high-water mark of the process image replaced by exec into the child's ru_maxrss, so
    this parent stays small (stdlib only; generation runs in a child) to keep the figures clean."""
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *args], cwd=tempfile.gettempdir(), stdout=log,
                                stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            log.seek(0)
            raise SystemExit(f"{' '.join(args)} failed:\n{log.read()}")
    return wall, usage.ru_maxrss * 1024          # Linux reports KiB


# The converter itself needs neither mindspore nor torch, but `import telechat_ms.convert` runs the package
# __init__, which imports the model (and so mindspore, ~0.5-0.75 GB RSS). This child registers a bare
# `telechat_ms` package first, to measure the converter's own working set (what a lazy package __init__ gives).
_BARE = ("import sys, types; pkg = types.ModuleType('telechat_ms'); pkg.__path__ = [sys.argv[1]]; "
         "sys.modules['telechat_ms'] = pkg; from telechat_ms.convert import cli; "
         "sys.exit(cli.main(sys.argv[2:]))")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=2048, help="checkpoint size (default 2048)")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--workdir", default=None, help="where to generate (default: a temp dir, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--generate", metavar="DIR", help=argparse.SUPPRESS)   # internal: the generator child
    args = parser.parse_args(argv)
    if args.generate:
        sys.path.insert(0, REPO)
        write_checkpoint(args.generate, bench_config(args.size_mb), args.shards)
        return 0
    from common import machine_facts   # pylint: disable=import-outside-toplevel
    print(machine_facts())
    work = args.workdir or tempfile.mkdtemp(prefix="telechat-convert-bench-")
    os.makedirs(work, exist_ok=True)
    try:
        src = os.path.join(work, "hf")
        wall, _ = run_child([os.path.abspath(__file__), "--generate", src, "--size-mb", str(args.size_mb),
                             "--shards", str(args.shards)])
        with open(os.path.join(src, "model.safetensors.index.json"), encoding="utf-8") as fh:
            total = json.load(fh)["metadata"]["total_size"]
        with open(os.path.join(src, "config.json"), encoding="utf-8") as fh:
            layers = json.load(fh)["n_layer"]
        print(f"checkpoint: {total / 2**20:.0f} MiB fp32, {layers} layers, {args.shards} shards "
              f"(generated in {wall:.1f} s)")
        _, import_rss = run_child(["-c", "import telechat_ms.convert.cli"])
        print(f"import-only peak RSS: {import_rss / 2**20:.0f} MiB (mindspore is imported by telechat_ms)")
        script = lambda name: os.path.join(REPO, "convert", name)          # noqa: E731
        runs = [("hf2ms fp32 -> safetensors", [script("hf2ms.py"), "--src", src, "--dst", f"{work}/ms"]),
                ("hf2ms fp32 -> bf16 safetensors", [script("hf2ms.py"), "--src", src, "--dst", f"{work}/ms16",
                                                    "--dtype", "bfloat16"]),
                ("hf2ms fp32 -> one .ckpt", [script("hf2ms.py"), "--src", src, "--dst", f"{work}/ckpt",
                                             "--format", "ckpt"]),
                ("ms2hf fp32 -> safetensors", [script("ms2hf.py"), "--src", f"{work}/ms", "--dst", f"{work}/back"]),
                ("hf2ms, no package import", ["-c", _BARE, os.path.join(REPO, "telechat_ms"), "hf2ms", "--src",
                                              src, "--dst", f"{work}/bare"]),
                ("hf2ms bf16, no package import", ["-c", _BARE, os.path.join(REPO, "telechat_ms"), "hf2ms",
                                                   "--src", src, "--dst", f"{work}/bare16", "--dtype", "bfloat16"])]
        print(f"{'conversion':34s} {'wall s':>7s} {'MB/s':>7s} {'peak RSS MiB':>13s} {'RSS/ckpt':>9s} "
              f"{'(RSS-import)/ckpt':>18s}")
        for name, cmd in runs:
            wall, rss = run_child([*cmd, "--no-progress"])
            above = "-" if cmd[0] == "-c" else f"{(rss - import_rss) / total:.3f}"
            print(f"{name:34s} {wall:7.1f} {total / 1e6 / wall:7.0f} {rss / 2**20:13.0f} {rss / total:9.3f} "
                  f"{above:>18s}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
