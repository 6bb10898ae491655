"""Chat / generation with a converted TeleChat2 model: the same entry as `telechat-ms chat` (docs/inference.md).

usage: python scripts/run_predict.py --model CONVERTED_DIR --prompt "..." [--interactive] [--input prompts.jsonl]
       msrun --worker_num=N --local_worker_num=N scripts/run_predict.py --model DIR --tp N --prompt "..."
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from telechat_ms.infer.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
