"""Liveness and readiness probes that call the service instead of only connecting to its port.

    python /opt/iheardai/flink-deploy/probes.py worker-pool [--address localhost:50000] [--timeout-s 5]

`worker-pool`: the Beam Python SDK worker pool (beam_fn_api BeamFnExternalWorkerPool). It sends
StopWorker for a worker id that never exists, which the pool answers without doing anything: the reply shows
that its gRPC server still accepts, dispatches and answers calls (a bound port alone would not; the kernel
completes TCP handshakes for a process that no longer serves). Exit 0 when answered, 1 otherwise.

The Java services (job server, expansion service) are probed from their own image with curl, calling a read-only
RPC over HTTP/2 (see flink-deploy/base/beam-services.yaml); tests/integration/test_deploy_probes.py runs both
kinds against the local stack.
"""

from __future__ import annotations

import argparse
import sys

PROBE_WORKER_ID = "k8s-liveness-probe"  # the pool names its workers by number: this id is never running


STOP_WORKER = "/org.apache.beam.model.fn_execution.v1.BeamFnExternalWorkerPool/StopWorker"


def stop_worker_request(worker_id: str = PROBE_WORKER_ID) -> bytes:
    """StopWorkerRequest{worker_id} in protobuf wire format (field 1, length-delimited), written by hand so that
    the probe imports only grpc (importing apache_beam costs a second of CPU on every probe);
    tests/unit/test_deploy.py checks it against Beam's generated message."""
    data = worker_id.encode()
    assert len(data) < 128
    return b"\x0a" + bytes([len(data)]) + data


def probe_worker_pool(address: str, timeout_s: float) -> str:
    import grpc

    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(STOP_WORKER, request_serializer=None, response_deserializer=None)
        reply = call(stop_worker_request(), timeout=timeout_s)
    if reply:  # StopWorkerResponse{error}: empty on success
        raise RuntimeError(f"StopWorker answered with an error: {reply[2:].decode(errors='replace')}")
    return "worker pool answered StopWorker"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("service", choices=("worker-pool",))
    parser.add_argument("--address", default="localhost:50000")
    parser.add_argument("--timeout-s", type=float, default=5.0)
    args = parser.parse_args(argv)
    try:
        print(probe_worker_pool(args.address, args.timeout_s))
    except Exception as e:  # any failure is a failed probe; the message lands in the pod's events
        print(f"{args.service} at {args.address} did not answer: {type(e).__name__}: {e}"[:500], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
