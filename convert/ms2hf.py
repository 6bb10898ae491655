"""python convert/ms2hf.py --help   (thin wrapper of telechat_ms.convert.cli.ms2hf_main; see docs/convert.md)"""
import sys

from telechat_ms.convert.cli import ms2hf_main

if __name__ == "__main__":
    sys.exit(ms2hf_main())
