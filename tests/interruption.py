"""A kill after an epoch's checkpoint, simulated: for the tests of resumption and of stale checkpoints."""


class Interrupted(Exception):
    """Raised in place of a kill by stopping_end_epoch."""


def stopping_end_epoch(end_epoch, epochs: int):
    """training.end_epoch, but raising Interrupted when epoch epochs + 1 ends: the run stops as if killed then, its
    checkpoint holding epoch `epochs` and no final artifact written."""

    def wrapped(state, *args, **kwargs):
        if state["epoch"] == epochs:
            raise Interrupted(f"interrupted during epoch {epochs + 1}")
        return end_epoch(state, *args, **kwargs)

    return wrapped
