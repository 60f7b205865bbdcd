"""A stock gRPC client (grpcio, gRPC's C-core) using the grpclb policy.

Driven by tests/tests/grpclb_stock.rs over stdin/stdout, one JSON object per
line. Nothing here knows about lb: the client is configured exactly as any
grpclb user would configure it.

With --ca the channel uses TLS (grpc.ssl_channel_credentials, with --cert and
--key for mTLS), and --token adds grpc.access_token_call_credentials.

Start-up:
  1. A DNS server on 127.0.0.1 (UDP, port 0) answers for NAME:
       SRV _grpclb._tcp.NAME -> 0 0 LB_PORT lb.NAME.   (the balancer)
       A   lb.NAME           -> 127.0.0.1
       A   NAME              -> FALLBACK_IP            (fallback backends)
     and nothing else (NXDOMAIN; empty answers for other types of known names).
  2. It prints {"dns_port": PORT}.
  3. It opens one channel to dns://127.0.0.1:PORT/NAME:TARGET_PORT with
     grpc.dns_enable_srv_queries=1 and the service config
     {"loadBalancingConfig":[{"grpclb":{}}]}.

Commands (stdin):
  {"cmd": "calls", "n": N}  makes N sequential unary calls to
      /lb.example.v1.Echo/Whoami (3 s deadline each) and prints
      {"ok": {instance: count}, "tokens": {instance: lb-token seen},
       "errors": {STATUS: count}, "details": [first few error messages]}
  {"cmd": "quit"}           exits (so does end of input).
"""

import argparse
import json
import sys

import grpc
from whoami import decode_reply
from dnslib import QTYPE, RCODE, RR, A, SRV
from dnslib.server import BaseResolver, DNSLogger, DNSServer

METHOD = "/lb.example.v1.Echo/Whoami"


class Resolver(BaseResolver):
    def __init__(self, name, lb_port, fallback_ip):
        self.name = name.rstrip(".").lower()
        self.lb_port = lb_port
        self.fallback_ip = fallback_ip

    def resolve(self, request, handler):
        reply = request.reply()
        qname = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        balancer = "lb." + self.name
        if qname == "_grpclb._tcp." + self.name:
            if qtype == "SRV":
                reply.add_answer(
                    RR(request.q.qname, QTYPE.SRV, ttl=60,
                       rdata=SRV(0, 0, self.lb_port, balancer + "."))
                )
        elif qname == balancer:
            if qtype == "A":
                reply.add_answer(RR(request.q.qname, QTYPE.A, ttl=60, rdata=A("127.0.0.1")))
        elif qname == self.name:
            if qtype == "A":
                reply.add_answer(RR(request.q.qname, QTYPE.A, ttl=60, rdata=A(self.fallback_ip)))
        else:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply




def calls(stub, n):
    ok, tokens, errors, details = {}, {}, {}, []
    for _ in range(n):
        try:
            instance, token = decode_reply(stub(b"", timeout=3))
            ok[instance] = ok.get(instance, 0) + 1
            tokens[instance] = token
        except grpc.RpcError as e:
            code = e.code().name
            errors[code] = errors.get(code, 0) + 1
            if len(details) < 3:
                details.append(e.details())
    return {"ok": ok, "tokens": tokens, "errors": errors, "details": details}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--name", required=True)
    p.add_argument("--lb-port", type=int, required=True)
    p.add_argument("--target-port", type=int, required=True)
    p.add_argument("--fallback-ip", required=True)
    # TLS (the balancer and the backends), as any grpcio user sets it up.
    p.add_argument("--ca", help="PEM CA: use TLS, trusting it")
    p.add_argument("--cert", help="PEM client certificate (mTLS)")
    p.add_argument("--key", help="PEM key of --cert")
    p.add_argument("--token", help="bearer token sent as call credentials")
    args = p.parse_args()

    dns = DNSServer(
        Resolver(args.name, args.lb_port, args.fallback_ip),
        address="127.0.0.1",
        port=0,
        logger=DNSLogger(log="-request,-reply,-truncated,-data,-recv,-send", prefix=False),
    )
    dns.start_thread()
    dns_port = dns.server.server_address[1]
    print(json.dumps({"dns_port": dns_port}), flush=True)

    target = f"dns://127.0.0.1:{dns_port}/{args.name}:{args.target_port}"
    options = [
        ("grpc.dns_enable_srv_queries", 1),
        ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"grpclb": {}}]})),
        # The config above is the whole config: no TXT lookup.
        ("grpc.service_config_disable_resolution", 1),
    ]
    if args.ca:
        read = lambda path: open(path, "rb").read() if path else None
        creds = grpc.ssl_channel_credentials(
            root_certificates=read(args.ca),
            private_key=read(args.key),
            certificate_chain=read(args.cert),
        )
        if args.token:
            creds = grpc.composite_channel_credentials(
                creds, grpc.access_token_call_credentials(args.token)
            )
        channel = grpc.secure_channel(target, creds, options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    stub = channel.unary_unary(METHOD)
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        if cmd["cmd"] == "calls":
            print(json.dumps(calls(stub, int(cmd["n"]))), flush=True)
        elif cmd["cmd"] == "quit":
            break
    channel.close()
    dns.stop()


if __name__ == "__main__":
    main()
