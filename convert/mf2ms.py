"""python convert/mf2ms.py --help   (thin wrapper of telechat_ms.convert.cli.mf2ms_main; see docs/convert.md)"""
import sys

from telechat_ms.convert.cli import mf2ms_main

if __name__ == "__main__":
    sys.exit(mf2ms_main())
