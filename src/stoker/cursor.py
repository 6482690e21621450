"""The consumer cursor: which batch the consumer took last, and the state that saves it.

One cursor per loader, shared by every way of consuming it (a plain loop, ``keras()``,
``tf_dataset()``, ``torch()``). It is a ``Position``: an epoch and the number of its
batches the consumer has taken. Rules, each of which keeps every sample exactly once
per epoch whatever the consumer does:

* **Taking a batch moves the cursor past it.** Taking the last batch of an epoch moves
  it to the start of the next epoch (``batch`` is never ``len(loader)``).
* **Every iteration starts at the cursor.** After a ``break`` the next iteration
  continues the same epoch with the batch after the last one taken; after a complete
  epoch it runs the next epoch. ``set_epoch(e)`` and ``load_state_dict`` move the
  cursor; nothing else does.
* **Adapters that run ahead report what the model consumed.** Keras prefetches
  (tf.data on the TensorFlow backend): its adapter holds the batches it handed out and
  moves the cursor only when Keras says a step consumed them (``adapters.keras``).
* **One live iteration per loader.** Every iteration is a *run* with its own id; starting
  one, or moving the cursor, ends the run before it: its next step raises
  ``LoaderError`` instead of stealing batches or hanging.

``state_dict()`` is the cursor plus what must match to resume (``STATE_KEYS``);
``parse_state`` checks all of it before anything changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import LoaderError

__all__ = ["STATE_KEYS", "STATE_VERSION", "Position", "end_held_run", "parse_state", "superseded"]

STATE_VERSION = 1
STATE_KEYS = ("version", "seed", "epoch", "batches_done", "num_samples", "batch_size",
              "shuffle", "drop_remainder", "shard")


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """``batch`` batches of ``epoch`` taken; ``0 <= batch < batches per epoch``."""

    epoch: int
    batch: int

    def after(self, taken: int, per_epoch: int) -> Position:
        """The position once ``taken`` more batches of this epoch are taken."""
        done = self.batch + taken
        if done >= per_epoch:
            return Position(self.epoch + 1, 0)
        return Position(self.epoch, done)


def superseded(why: str) -> LoaderError:
    return LoaderError(
        f"this iteration of the loader ended because {why}. A loader has one live "
        "iteration (one cursor): finish or leave one loop before starting another, and "
        "make a second Loader over the same source to read two streams at once"
    )


def end_held_run(holder: Any) -> None:
    """End the run an adapter holds (``holder._run`` under ``holder._lock``) because its
    loader is closing, so that a suspended run pins nothing; unless a call is in it now,
    which ends with the closed loader's LoaderError by itself."""
    if holder._lock.acquire(blocking=False):
        try:
            run, holder._run = holder._run, None
            if run is not None:
                try:
                    run.close()
                except ValueError:  # running in this very thread (close() from a signal
                    pass            # handler): it ends with the LoaderError
        finally:
            holder._lock.release()


def _integer(state: Mapping[str, Any], name: str, minimum: int) -> int:
    value = state[name]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(
            f"the state's {name} must be an int, got {value!r} ({type(value).__name__}); "
            "pass the dict that state_dict() returned (a JSON round trip keeps it intact)"
        )
    if value < minimum:
        raise ValueError(f"the state's {name} must be >= {minimum}, got {value}")
    return int(value)


def _same(theirs: Any, mine: Any) -> bool:
    """Equal and of the same kind: ``True`` is not 1, and ``1.9`` is not 1."""
    if isinstance(mine, bool) or isinstance(theirs, bool):
        return isinstance(mine, bool) and isinstance(theirs, bool) and mine == theirs
    if isinstance(mine, int):
        return isinstance(theirs, (int, np.integer)) and int(theirs) == mine
    if isinstance(mine, list):
        return (isinstance(theirs, list) and len(theirs) == len(mine)
                and all(_same(a, b) for a, b in zip(theirs, mine, strict=True)))
    return theirs == mine


def parse_state(state: Any, expected: Mapping[str, Any], per_epoch: int) -> tuple[int, Position]:
    """Check a ``state_dict()`` completely against this loader (``expected``: the
    values of ``num_samples`` … ``shard`` it has) and return ``(seed, cursor)``.
    Raises TypeError/ValueError naming the field and the fix; changes nothing."""
    if not isinstance(state, Mapping):
        raise TypeError(
            f"load_state_dict needs the dict that state_dict() returned, got "
            f"{type(state).__name__}"
        )
    missing = [key for key in STATE_KEYS if key not in state]
    unknown = sorted(str(key) for key in state if key not in STATE_KEYS)
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"lacks {', '.join(missing)}")
        if unknown:
            parts.append(f"has keys a loader state never has: {', '.join(unknown)}")
        raise ValueError(
            f"this is not a loader state: it {' and '.join(parts)}. Pass the dict that "
            "loader.state_dict() returned, unchanged"
        )
    if not _same(state["version"], STATE_VERSION):  # True and 1.0 are no version 1
        raise ValueError(
            f"state version {state['version']!r} is not {STATE_VERSION}; it was saved by "
            "another version of stoker"
        )
    seed = _integer(state, "seed", 0)
    epoch = _integer(state, "epoch", 0)
    done = _integer(state, "batches_done", 0)
    for name, mine in expected.items():
        theirs = state[name]
        if isinstance(theirs, tuple):
            theirs = list(theirs)
        if not _same(theirs, mine):
            raise ValueError(
                f"the state was saved with {name}={state[name]!r} but this loader has "
                f"{name}={mine!r}; resume with the same source and options"
            )
    if done >= per_epoch:
        raise ValueError(
            f"the state's batches_done={done} is not below the {per_epoch} batches of an "
            "epoch; state_dict() saves a finished epoch as the next epoch with "
            "batches_done=0"
        )
    return seed, Position(epoch, done)
