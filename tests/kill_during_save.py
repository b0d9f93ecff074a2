"""
Helper of tests/test_long_runs.py: a training that hangs in the middle of writing a checkpoint, so that
the test can SIGKILL it at that moment.

    python tests/kill_during_save.py MODE FOLDER MARKER

SDAC (tiny) on Pendulum-v1 with a CheckpointCallback (every 50 steps, replay buffer included) learns 100
steps (checkpoints 50 and 100) and saves FOLDER/best_model.zip. Then the next write hangs half-way, after
MARKER is created:

- ``model``: the model zip of the checkpoint at step 150 (while its entries are being written);
- ``replay_buffer``: the replay-buffer pickle of the checkpoint at step 150 (half of its bytes written);
- ``overwrite``: a second ``save`` over FOLDER/best_model.zip, as EvalCallback does on a new best.

The hang is put into Stable-Baselines3's own writing functions (``save_to_zip_file`` asks for the system
info after writing the parameters; ``save_to_pkl`` calls ``pickle.dump``), so it works whatever the
algorithm does around them.
"""

import pathlib
import pickle
import sys
import time
import types

import torch as th
from stable_baselines3.common import save_util
from stable_baselines3.common.callbacks import CheckpointCallback

from sb3_diffusion import SDAC

TINY = dict(net_arch=[16, 16], diffusion_steps=3, time_embed_dim=4, time_hidden_dim=8)


def hang(marker: pathlib.Path) -> None:
    marker.write_text("writing")
    time.sleep(600)
    sys.exit("not killed")


def main() -> None:
    mode, folder, marker = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
    th.set_num_threads(1)
    model = SDAC(
        "MlpPolicy",
        "Pendulum-v1",
        seed=0,
        learning_starts=30,
        batch_size=16,
        n_candidates=2,
        n_reverse_samples=4,
        policy_kwargs=TINY,
    )
    checkpoints = CheckpointCallback(save_freq=50, save_path=str(folder), name_prefix="rl_model", save_replay_buffer=True)
    model.learn(100, callback=checkpoints)
    model.save(folder / "best_model.zip")

    if mode in ("model", "overwrite"):
        system_info = save_util.get_system_info

        def get_system_info(*args, **kwargs):  # called inside the zip, after the parameters
            hang(marker)
            return system_info(*args, **kwargs)

        save_util.get_system_info = get_system_info
    else:

        def dump(obj, file, protocol=None):
            data = pickle.dumps(obj, protocol=protocol)
            file.write(data[: len(data) // 2])
            file.flush()
            hang(marker)

        shim = types.ModuleType("pickle")
        shim.__dict__.update(pickle.__dict__)
        shim.dump = dump
        save_util.pickle = shim

    if mode == "overwrite":
        model.save(folder / "best_model.zip")
    else:
        model.learn(100, callback=checkpoints, reset_num_timesteps=False)
    sys.exit("the write did not hang")


if __name__ == "__main__":
    main()
