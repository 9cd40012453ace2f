#!/usr/bin/env python3
"""Reads a whole series from Hourglass with a per-call deadline, following
continuation tokens until the range is done, and checks the order.

A call that ends without a row (DEADLINE_EXCEEDED: the server found none in
the budget, or the deadline cut the answer off) or is refused for a while
(RESOURCE_EXHAUSTED, UNAVAILABLE) is repeated with the same token, up to
RETRIES times, backing off: the token still stands, so nothing is lost or
read twice. (The Rust helpers also wait out the server's RetryInfo; reading
it needs grpcio-status, which this example does without.)

Generate the stubs first (grpcio-tools):

    python -m grpc_tools.protoc -Iproto --python_out=gen --grpc_python_out=gen \
        proto/hourglass/v1/hourglass.proto
    PYTHONPATH=gen python examples/python/read_series.py --server 127.0.0.1:50051 \
        --namespace demo --series sensor-42 --start 0 --end 9223372036854775807
"""
import argparse
import sys
import time

import grpc
from hourglass.v1 import hourglass_pb2 as pb
from hourglass.v1 import hourglass_pb2_grpc as rpc

RETRIES = 5
BACKOFF_S = 0.1
RETRIED = {
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
}


def call(stub, request, timeout):
    """One page, repeating a call that failed in a way a retry helps."""
    for attempt in range(RETRIES + 1):
        try:
            return stub.ReadEvents(request, timeout=timeout)
        except grpc.RpcError as e:
            if e.code() not in RETRIED or attempt == RETRIES:
                raise
            time.sleep(BACKOFF_S * (attempt + 1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", default="127.0.0.1:50051")
    p.add_argument("--namespace", required=True)
    p.add_argument("--series", required=True)
    p.add_argument("--start", type=int, required=True)
    p.add_argument("--end", type=int, required=True)
    p.add_argument("--page-size", type=int, default=1000)
    p.add_argument("--deadline-ms", type=int, default=100, help="gRPC deadline of each call")
    p.add_argument("--descending", action="store_true")
    args = p.parse_args()

    stub = rpc.HourglassStub(grpc.insecure_channel(args.server))
    request = pb.ReadEventsRequest(
        namespace=args.namespace,
        series_id=args.series,
        start_time_micros=args.start,
        end_time_micros=args.end,
        order=pb.ORDER_DESCENDING if args.descending else pb.ORDER_ASCENDING,
        page_size=args.page_size,
    )
    events = calls = partial = 0
    last = None
    while True:
        response = call(stub, request, args.deadline_ms / 1000.0)
        calls += 1
        for e in response.events:
            key = (e.event_time_micros, e.event_id)
            in_order = last is None or (key < last if args.descending else key > last)
            if not in_order:
                print(f"out of order: {key} after {last}", file=sys.stderr)
                return 1
            last = key
            events += 1
        if not response.partial:
            break
        partial += 1
        request.continuation_token = response.continuation_token
    print(f"events={events} calls={calls} partial={partial}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
