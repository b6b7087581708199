"""Joining a multi-process (multi-host) JAX run.

On a Cloud TPU pod slice every worker runs the same command and `jax.distributed`
discovers the others by itself. Elsewhere (GPU clusters, several processes on one CPU
machine for testing) the coordinator address, the process count and this process's id
come from flags or from the environment:

    JAXSEG_COORDINATOR=10.0.0.2:1234  JAXSEG_NUM_PROCESSES=4  JAXSEG_PROCESS_ID=0..3

`launch/local.sh N ...` sets them for N processes on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import threading

import jax

from jaxseg.errors import ConfigError

ENV_COORDINATOR = "JAXSEG_COORDINATOR"
ENV_NUM_PROCESSES = "JAXSEG_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXSEG_PROCESS_ID"


def _tpu_pod() -> bool:
    # Set by the TPU VM runtime on every worker of a multi-host slice.
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return "," in hosts


def initialize(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
    """Calls `jax.distributed.initialize` when this is one of several processes.

    Returns True when it did. Must run before anything touches a JAX device.
    """
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR)
    if num_processes is None and os.environ.get(ENV_NUM_PROCESSES):
        num_processes = int(os.environ[ENV_NUM_PROCESSES])
    if process_id is None and os.environ.get(ENV_PROCESS_ID):
        process_id = int(os.environ[ENV_PROCESS_ID])
    if coordinator is None and num_processes in (None, 1):
        if _tpu_pod():
            jax.distributed.initialize()  # the TPU runtime supplies everything
            return True
        return False
    if coordinator is None or num_processes is None or process_id is None:
        raise ConfigError(
            "a multi-process run needs all of --coordinator (or $JAXSEG_COORDINATOR), "
            "--num-processes ($JAXSEG_NUM_PROCESSES) and --process-id ($JAXSEG_PROCESS_ID); "
            f"got coordinator={coordinator}, num_processes={num_processes}, "
            f"process_id={process_id}"
        )
    if not 0 <= process_id < num_processes:
        raise ConfigError(f"--process-id {process_id} is not in [0, {num_processes})")
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
        # CPU processes need a collectives backend to all-reduce across processes.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )
    return True


class PreemptionWatch:
    """SIGTERM (a TPU VM's or GKE node's preemption notice) -> a step to stop at that every
    process agrees on. Use around the loop and call `reached(step)` at every step, with the
    same step numbers on every process.

    One process: a SIGTERM handler (the previous one is restored on exit) marks the notice
    and `reached` is True from the next step on. Several processes: `jax.distributed`'s
    preemption service already catches SIGTERM on each process and shares the notice
    through the coordinator; `reached(step)` is True on every process at the same step
    (one past the furthest any process had got to), so all save the same checkpoint.
    A Python handler there would replace the service's, so none is installed.
    """

    def __init__(self):
        self.noticed = False
        self._previous = None
        self._installed = False

    def __enter__(self) -> PreemptionWatch:
        self._shared = jax.process_count() > 1 and jax.config.jax_enable_preemption_service
        if not self._shared and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
            self._installed = True
        return self

    def _on_sigterm(self, signum, frame) -> None:
        self.noticed = True

    def reached(self, step: int) -> bool:
        if self._shared:
            from jax.experimental import multihost_utils

            self.noticed = multihost_utils.reached_preemption_sync_point(step)
        return self.noticed

    def __exit__(self, *exc) -> None:
        if self._installed:
            # None: the old handler was not Python's; the default is the closest we can do.
            previous = signal.SIG_DFL if self._previous is None else self._previous
            signal.signal(signal.SIGTERM, previous)
            self._installed = False
