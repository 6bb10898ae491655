"""`telechat-ms train` as a script (msrun launches a script file; see scripts/msrun_train.sh)."""
import sys

from telechat_ms.train.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main(sys.argv[1:]))
