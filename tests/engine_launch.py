"""`python tests/engine_launch.py ARGS...` = `refseg ARGS...` with the test-only ``tinyfilm``
method registered; used by the engine tests to run commands under torchrun."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import refseg.methods.registry as registry  # noqa: E402
from refseg.cli import main  # noqa: E402

registry._MODULES = {"tinyfilm": "engine_tinyfilm"}

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
