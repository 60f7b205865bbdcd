"""A stock gRPC health client (grpcio and grpcio-health-checking, the
standard grpc.health.v1 stub), driven by tests/tests/health.rs.

It prints one JSON object per line on stdout:
  1. {"daemon": STATUS, "service": STATUS}: Check("") and Check(SERVICE);
  2. then {"watch": STATUS} for every message of Watch(SERVICE), until the
     stream ends or --timeout seconds pass; then {"end": REASON}.
STATUS is the enum's name (SERVING, NOT_SERVING, SERVICE_UNKNOWN, ...), or
"error: CODE" when the call failed.
"""

import argparse
import json
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def name(status):
    return health_pb2.HealthCheckResponse.ServingStatus.Name(status)


def check(stub, service):
    try:
        return name(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)
    except grpc.RpcError as e:
        return "error: " + e.code().name


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True)
    p.add_argument("--service", required=True)
    p.add_argument("--timeout", type=float, default=60.0)
    a = p.parse_args()
    with grpc.insecure_channel(a.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        print(json.dumps({"daemon": check(stub, ""), "service": check(stub, a.service)}), flush=True)
        try:
            for r in stub.Watch(health_pb2.HealthCheckRequest(service=a.service), timeout=a.timeout):
                print(json.dumps({"watch": name(r.status)}), flush=True)
            print(json.dumps({"end": "stream ended"}), flush=True)
        except grpc.RpcError as e:
            print(json.dumps({"end": e.code().name}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
