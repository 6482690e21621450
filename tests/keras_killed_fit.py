"""A training script that test_keras_cursor.py kills with SIGKILL mid-epoch and starts
again: BackupAndRestore(save_freq=3) keeps the model and the loader's cursor.

    python keras_killed_fit.py BACKUP_DIR LOG OUT_WEIGHTS KILL_AT_STEP(-1: never)

Every trained step appends the loader's position to LOG; at step KILL_AT_STEP (counted
over this process's steps) the process SIGKILLs itself, right after the step's callbacks
(so the last backup is the one before it). The final weights go to OUT_WEIGHTS (.npy).
"""

from __future__ import annotations

import json
import os
import signal
import sys

import keras
import numpy as np

import stoker
from stoker.adapters.keras import BackupAndRestore

backup_dir, log_path, out_path, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

rng = np.random.default_rng(0)
x = rng.random((100, 4, 4, 1)).astype(np.float32)
y = np.arange(100, dtype=np.float32) / 100


class Log(keras.callbacks.Callback):
    def __init__(self, loader):
        super().__init__()
        self.loader, self.steps = loader, 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        state = self.loader.state_dict()
        with open(log_path, "a") as handle:
            handle.write(json.dumps([state["epoch"], state["batches_done"]]) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        if self.steps == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    keras.utils.set_random_seed(0)
    with stoker.Loader(stoker.from_arrays(x, y), batch_size=10, workers=2, seed=5) as loader:
        model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                                  keras.layers.Dense(1)])
        model.compile(keras.optimizers.SGD(0.1), "mse")
        backup = BackupAndRestore(backup_dir, loader, save_freq=3, delete_checkpoint=False)
        model.fit(loader.keras(), epochs=3, verbose=0, callbacks=[backup, Log(loader)])
        np.save(out_path, np.concatenate([w.ravel() for w in model.get_weights()]))
