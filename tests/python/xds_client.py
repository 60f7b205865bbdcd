"""A stock gRPC client (grpcio, gRPC's C-core) on xDS: it dials xds:///NAME.

Driven by tests/tests/xds_stock.rs over stdin/stdout, one JSON object per
line. Nothing here knows about lb: the client is configured exactly as any
xDS user would configure it, with a bootstrap file (gRFC A27) that names the
control plane.

Start-up:
  1. It writes a bootstrap file: one xds_server (--server, insecure channel
     credentials on loopback, or with --ca/--cert/--key "tls" credentials
     for mTLS; "xds_v3"), and the node (--node-id, --zone as locality.zone,
     --label K=V as string metadata).
  2. It sets GRPC_XDS_BOOTSTRAP to it, opens a channel to xds:///NAME and
     prints {"bootstrap": PATH}.

Commands (stdin):
  {"cmd": "calls", "n": N}  makes N sequential unary calls to
      /lb.example.v1.Echo/Whoami (3 s deadline each) and prints
      {"ok": {instance: count}, "errors": {STATUS: count},
       "details": [first few error messages]}
  {"cmd": "keyed", "keys": K, "n": N}  makes N calls for each of K request
      keys ("user-0"...), each with the key in the lb-key header, and prints
      {"by_key": {key: {instance: count}}, "errors": {STATUS: count},
       "details": [...]}
  {"cmd": "quit"}           exits (so does end of input).
"""

import argparse
import json
import os
import sys
import tempfile

from whoami import decode_reply

METHOD = "/lb.example.v1.Echo/Whoami"


def instance_of(data):
    """Field 1 (instance_id) of a WhoamiReply."""
    return decode_reply(data)[0]


def calls(stub, n):
    import grpc

    ok, errors, details = {}, {}, []
    for _ in range(n):
        try:
            instance = instance_of(stub(b"", timeout=3))
            ok[instance] = ok.get(instance, 0) + 1
        except grpc.RpcError as e:
            code = e.code().name
            errors[code] = errors.get(code, 0) + 1
            if len(details) < 3:
                details.append(e.details())
    return {"ok": ok, "errors": errors, "details": details}


def keyed(stub, keys, n):
    import grpc

    by_key, errors, details = {}, {}, []
    for k in range(keys):
        key = f"user-{k}"
        seen = by_key.setdefault(key, {})
        for _ in range(n):
            try:
                instance = instance_of(stub(b"", timeout=3, metadata=(("lb-key", key),)))
                seen[instance] = seen.get(instance, 0) + 1
            except grpc.RpcError as e:
                code = e.code().name
                errors[code] = errors.get(code, 0) + 1
                if len(details) < 3:
                    details.append(e.details())
    return {"by_key": by_key, "errors": errors, "details": details}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True, help="the control plane, HOST:PORT")
    p.add_argument("--name", required=True, help="the target: xds:///NAME")
    p.add_argument("--node-id", default="xds-test-client")
    p.add_argument("--zone", default="")
    p.add_argument("--label", action="append", default=[], help="K=V node metadata")
    # mTLS to the control plane, from the bootstrap (gRFC A65's "tls"
    # channel credentials); the backends are still dialled in plaintext.
    p.add_argument("--ca", help="PEM CA the control plane's certificate is checked against")
    p.add_argument("--cert", help="PEM client certificate")
    p.add_argument("--key", help="PEM key of --cert")
    args = p.parse_args()

    node = {"id": args.node_id, "metadata": dict(kv.split("=", 1) for kv in args.label)}
    if args.zone:
        node["locality"] = {"zone": args.zone}
    creds = {"type": "insecure"}
    if args.ca:
        creds = {
            "type": "tls",
            "config": {
                "ca_certificate_file": args.ca,
                "certificate_file": args.cert,
                "private_key_file": args.key,
            },
        }
    bootstrap = {
        "xds_servers": [
            {
                "server_uri": args.server,
                "channel_creds": [creds],
                "server_features": ["xds_v3"],
            }
        ],
        "node": node,
    }
    fd, path = tempfile.mkstemp(prefix="xds-bootstrap-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(bootstrap, f)
    os.environ["GRPC_XDS_BOOTSTRAP"] = path
    import grpc  # after GRPC_XDS_BOOTSTRAP: C-core reads it when xDS starts

    channel = grpc.insecure_channel(f"xds:///{args.name}")
    stub = channel.unary_unary(METHOD)
    print(json.dumps({"bootstrap": path}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        if cmd["cmd"] == "calls":
            print(json.dumps(calls(stub, int(cmd["n"]))), flush=True)
        elif cmd["cmd"] == "keyed":
            print(json.dumps(keyed(stub, int(cmd["keys"]), int(cmd["n"]))), flush=True)
        elif cmd["cmd"] == "quit":
            break
    channel.close()
    os.unlink(path)


if __name__ == "__main__":
    main()
