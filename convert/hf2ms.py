"""python convert/hf2ms.py --help   (thin wrapper of telechat_ms.convert.cli.hf2ms_main; see docs/convert.md)"""
import sys

from telechat_ms.convert.cli import hf2ms_main

if __name__ == "__main__":
    sys.exit(hf2ms_main())
