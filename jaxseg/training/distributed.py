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
