"""`python tests/engine_launch.py ARGS...` = `refseg ARGS...` with the test-only ``tinyfilm``
method registered; used by the engine tests to run commands under torchrun.
``REFSEG_TEST_DIE_AFTER=N`` makes the processes exit abruptly after step N."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import refseg.methods.registry as registry  # noqa: E402
from refseg.cli import main  # noqa: E402

registry._MODULES = {"tinyfilm": "engine_tinyfilm"}


def _die_after(iteration: int) -> None:
    """Make every process exit abruptly once it has taken step ``iteration`` (a kill at
    the same point of every rank, between two checkpoints)."""
    import os

    from refseg.engine import trainer

    advance = trainer.Trainer.advance

    def advance_then_die(self):
        ended = advance(self)
        if self.iteration == iteration:
            os._exit(9)
        return ended

    trainer.Trainer.advance = advance_then_die


if __import__("os").environ.get("REFSEG_TEST_DIE_AFTER"):
    _die_after(int(__import__("os").environ["REFSEG_TEST_DIE_AFTER"]))

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
