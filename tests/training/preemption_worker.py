"""`python -m jaxseg.train ...` with a fault injected at a known point, for the fault tests.

    python tests/training/preemption_worker.py --config C --workdir W [train flags]

Environment (all optional):
  WORKER_SIGTERM_AT=i        this process sends itself SIGTERM when it fetches batch i
  WORKER_SIGTERM_PROCESS=p   ... only on process p (JAXSEG_PROCESS_ID; default 0)
  WORKER_STEP_SLEEP=s        sleep s seconds per batch, so that a preemption notice
                             shared through the coordinator arrives well before the end
  WORKER_EXIT_IN_WRITE=k     os._exit(WRITE_EXIT) inside the write of checkpoint k, after
                             orbax created its temporary folder and before it commits:
                             a kill that lands in a checkpoint write, every time

`config_text` is the tiny run every fault test trains.
"""

import os
import signal
import sys
import time

WRITE_EXIT = 17
STEPS = 12  # of every fault test's run

CONFIG = """
from jaxseg.defaults import base_config

def get_config():
    c = base_config()
    c.data.root = {root!r}
    c.data.patch_size = (32, 32)
    c.data.batch_size = {batch_size}
    c.data.num_threads = 1
    c.model.name = "unet"
    c.model.args.features = (4, 8)
    for key in list(c.augment):
        if key.endswith("_prob"):
            c.augment[key] = 0.0
    c.augment.flip_prob = 0.5  # keep one random augmentation: the step key must resume too
    c.train.steps = {steps}
    c.train.warmup_steps = 1
    c.train.learning_rate = 1e-2
    c.train.log_every = 1000
    c.train.eval_every = 1000
    c.train.checkpoint_every = {checkpoint_every}
    c.train.keep_checkpoints = {keep}
    c.eval.max_val_cases = 0  # no validation: these tests are about the train state
    return c
"""


def config_text(root, *, steps=STEPS, checkpoint_every=2, keep=3, batch_size=4) -> str:
    return CONFIG.format(
        root=str(root),
        steps=steps,
        checkpoint_every=checkpoint_every,
        keep=keep,
        batch_size=batch_size,
    )


def _install_faults() -> None:
    from jaxseg.data import pipeline

    sigterm_at = os.environ.get("WORKER_SIGTERM_AT")
    me = os.environ.get("JAXSEG_PROCESS_ID", "0")
    sleep = float(os.environ.get("WORKER_STEP_SLEEP", "0"))
    original_next = pipeline.BatchIterator.__next__

    def paced_next(self):
        index = self._next
        batch = original_next(self)
        if sigterm_at is not None and index == int(sigterm_at):
            if me == os.environ.get("WORKER_SIGTERM_PROCESS", "0"):
                print(f"worker {me}: SIGTERM to myself at batch {index}", flush=True)
                os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(sleep)
        return batch

    pipeline.BatchIterator.__next__ = paced_next

    exit_step = os.environ.get("WORKER_EXIT_IN_WRITE")
    if exit_step is not None:
        import grain

        handler = grain.checkpoint.CheckpointHandler
        original_save = handler.save

        def dying_save(self, directory, *args, **kwargs):
            if f"/{exit_step}.orbax-checkpoint-tmp" in str(directory):
                print(f"worker: exit inside the write of checkpoint {exit_step}", flush=True)
                os._exit(WRITE_EXIT)
            return original_save(self, directory, *args, **kwargs)

        handler.save = dying_save


if __name__ == "__main__":
    from jaxseg import cli, train

    _install_faults()
    cli.run(train.main, sys.argv[1:])
