"""`python tests/engine_launch.py ARGS...` = `refseg ARGS...` with the test-only ``tinyfilm``
method registered; used by the engine tests to run commands under torchrun.
``REFSEG_TEST_DIE_AFTER=N`` makes the processes exit abruptly after step N;
``REFSEG_TEST_UNMATCHED_AT=N`` makes rank 1 alone meet a non-finite matching cost in step N."""

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


def _unmatched_at(step: int) -> None:
    """Rank 1's loss raises the matcher's NonFiniteCost in step ``step``, rank 0's does not
    (one process's batch diverging alone)."""
    import os

    import engine_tinyfilm
    from refseg.modeling.matching import NonFiniteCost

    loss, calls = engine_tinyfilm.TinyFilm.loss, []

    def loss_or_raise(self, outputs, batch):
        calls.append(1)
        if os.environ.get("RANK") == "1" and len(calls) == step:
            raise NonFiniteCost("injected on rank 1")
        return loss(self, outputs, batch)

    engine_tinyfilm.TinyFilm.loss = loss_or_raise


if __import__("os").environ.get("REFSEG_TEST_UNMATCHED_AT"):
    _unmatched_at(int(__import__("os").environ["REFSEG_TEST_UNMATCHED_AT"]))

if __import__("os").environ.get("REFSEG_TEST_DIE_AFTER"):
    _die_after(int(__import__("os").environ["REFSEG_TEST_DIE_AFTER"]))

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
