"""`python -m captchaflow.engine.cli`: the command, as `captchaflow` runs it."""

import sys

from ._main import process_main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(process_main())
