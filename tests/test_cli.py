"""`telechat-ms` entry points and packaging rules."""
import subprocess
import sys

import pytest

from telechat_ms.cli import main


def test_info_lists_presets_with_counts(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "115b" in out and "113.28B" in out and "39b_a12b" in out and "12.15B" in out
    line = next(row for row in out.splitlines() if row.startswith("telechat1_7b "))
    assert line.split()[1] == "telechat1" and "7,200,018,432" in line      # the published index size / 2


def test_info_unknown_preset_is_a_clear_error(capsys):
    assert main(["info", "--model", "huge"]) == 2
    assert "unknown preset 'huge'" in capsys.readouterr().err


def test_forward_runs_tiny(capsys):
    assert main(["forward", "--preset", "tiny_gqa", "--seq-len", "12"]) == 0
    assert "logits (2, 12, 512) float32" in capsys.readouterr().out


def test_package_never_imports_torch_or_transformers():
    code = ("import sys, telechat_ms, telechat_ms.cli, telechat_ms.convert.names;"
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("argv", [["nonsense"], []])
def test_bad_subcommand_exits_nonzero(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
