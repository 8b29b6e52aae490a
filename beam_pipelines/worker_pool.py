"""The Beam Python SDK worker pool (EXTERNAL environment) with a user-state cache, for the local stack and the
TaskManager pods:

    python -m beam_pipelines.worker_pool --service_port=50000 [--state_cache_mb=256]

Beam's own `python -m apache_beam.runners.worker.worker_pool_main` starts every SDK worker with
`state_cache_size=0` (no flag changes it; pipeline options such as --max_cache_memory_usage_mb reach only
workers started by a container boot program). Without the cache every bundle reads each key's state from
the TaskManager with a blocking gRPC round trip, and a keyed step (session and account-hour totals) spends
its time waiting on those. The Flink runner hands the workers cache tokens for user state, so cached state
stays correct across bundles and is dropped when the runner says so (checkpoint restore, rescaling).
This module starts the same pool with a cache size and, optionally, an outbound data buffer time limit; its
workers are `python -m beam_pipelines.sdk_worker` (Beam's harness, with a cheaper weighing of cached values).
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import List, Optional


def _pool_class(stock_state_weigher: bool = False):
    import subprocess
    import sys

    from apache_beam.portability.api import beam_fn_api_pb2
    from apache_beam.runners.worker.worker_pool_main import BeamFnExternalWorkerPoolServicer

    class Pool(BeamFnExternalWorkerPoolServicer):
        """Beam's pool (use_process=True), whose worker processes run `beam_pipelines.sdk_worker`."""

        def StartWorker(self, request, unused_context):
            try:
                command = [sys.executable, "-m", "beam_pipelines.sdk_worker",
                           f"--control_endpoint={request.control_endpoint.url}", f"--worker_id={request.worker_id}",
                           f"--state_cache_bytes={self._state_cache_size}",
                           f"--data_buffer_time_limit_ms={self._data_buffer_time_limit_ms}"]
                if stock_state_weigher:
                    command.append("--stock_state_weigher")
                logging.info("starting SDK worker %s", request.worker_id)
                self._worker_processes[request.worker_id] = subprocess.Popen(command, stdout=subprocess.PIPE,
                                                                             close_fds=True)
                return beam_fn_api_pb2.StartWorkerResponse()
            except Exception:  # the runner shows the error of the worker that did not start
                import traceback

                return beam_fn_api_pb2.StartWorkerResponse(error=traceback.format_exc())

    return Pool


def main(argv: Optional[List[str]] = None) -> None:

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--service_port", type=int, required=True, help="port the pool listens on")
    ap.add_argument("--state_cache_mb", type=int, default=256,
                    help="user-state cache per SDK worker process, MiB (0: Beam's default, none)")
    ap.add_argument("--data_buffer_time_limit_ms", type=int, default=-1,
                    help="flush a worker's outbound data buffer after this long (-1: when it is full or the "
                         "bundle ends, Beam's default)")
    ap.add_argument("--stock_state_weigher", action="store_true",
                    help="workers weigh cached state with Beam's own objsize walk (for A/B benchmarks only)")
    args = ap.parse_args(argv)
    address, server = _pool_class(args.stock_state_weigher).start(
        use_process=True, port=args.service_port, state_cache_size=args.state_cache_mb << 20,
        data_buffer_time_limit_ms=args.data_buffer_time_limit_ms)
    logging.getLogger().setLevel(logging.INFO)
    logging.info("worker pool at %s, state cache %d MiB per worker", address, args.state_cache_mb)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop(0)


if __name__ == "__main__":
    main()
