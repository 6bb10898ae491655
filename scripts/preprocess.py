#!/usr/bin/env python
"""SFT jsonl -> packed MindRecord. Same as `telechat-ms preprocess`; see docs/data.md.

    python scripts/preprocess.py --input data/sample_sft.jsonl --output runs/sft.mindrecord \
        --tokenizer data/tiny_tokenizer.model --seq-length 256
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from telechat_ms.data.preprocess import main  # noqa: E402  pylint: disable=wrong-import-position

if __name__ == "__main__":
    sys.exit(main())
