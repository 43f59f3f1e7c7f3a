#!/usr/bin/python3
"""A Python client of the ecmt.v1 Classifier service (generated from protos/ by generate.sh).

Streams a spiking ViT's prediction after every time step, lets the server stop early on a stop policy (--min-confidence,
--stable-steps, --min-steps, --min-margin, --min-gate combined: every rule given must hold; or --recommended, the model's
own policy), stops early on the client side by cancelling (--client-stop), or cancels after N steps (--cancel-after).
Uses Debian's python3-grpcio: run it with /usr/bin/python3.

  ./ecmt_client.py list --address localhost:50051
  ./ecmt_client.py classify src/Server/Page/samples/*.png --steps 16 --recommended
  ./ecmt_client.py classify src/Server/Page/samples/*.png --steps 16 --min-confidence 0.9 --stable-steps 1
  ./ecmt_client.py classify src/Server/Page/samples/*.png --steps 64 --client-stop 0.95 --json
  ./ecmt_client.py health --service ecmt.v1.Classifier/fmnist-vit
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import grpc  # noqa: E402

try:
    from ecmt.v1 import classifier_pb2 as pb  # noqa: E402
    from ecmt.v1 import classifier_pb2_grpc as rpc  # noqa: E402
except ImportError:
    sys.exit("ecmt_client.py: the generated code is missing: run examples/python/generate.sh first")

HEALTH_STATUSES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


class _ApiKey(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
              grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds "authorization: Bearer <key>" to every call (a server with access control; works with and without TLS)."""

    def __init__(self, key):
        self._header = ("authorization", f"Bearer {key}")

    def _details(self, details):
        metadata = list(details.metadata or []) + [self._header]
        return details._replace(metadata=metadata) if hasattr(details, "_replace") else _Details(details, metadata)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._details(details), requests)


class _Details(grpc.ClientCallDetails):
    def __init__(self, details, metadata):
        self.method, self.timeout, self.credentials = details.method, details.timeout, details.credentials
        self.wait_for_ready, self.compression = details.wait_for_ready, details.compression
        self.metadata = metadata


def connect(address, ca_file=None, api_key=None, client_cert=None, client_key=None):
    """
    A channel to the server; TLS when a CA (or self-signed server) certificate file is given, with a client
    certificate and key (PEM) for mutual TLS; an API key is sent on every call.
    """
    if ca_file or client_cert:
        def read(path):
            with open(path, "rb") as f:
                return f.read()
        credentials = grpc.ssl_channel_credentials(
            root_certificates=read(ca_file) if ca_file else None,
            private_key=read(client_key or client_cert) if client_cert else None,
            certificate_chain=read(client_cert) if client_cert else None)
        channel = grpc.secure_channel(address, credentials)
    else:
        channel = grpc.insecure_channel(address)
    return grpc.intercept_channel(channel, _ApiKey(api_key)) if api_key else channel


def _varint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def health(channel, service="", timeout=5.0):
    """grpc.health.v1.Health/Check: 'SERVING', 'NOT_SERVING', ... The two one-field messages are coded by hand
    so no health package is needed: HealthCheckRequest{1: service}, HealthCheckResponse{1: status}."""
    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=lambda s: (b"\x0a" + _varint(len(s.encode())) + s.encode()) if s else b"",
        response_deserializer=lambda b: b[1] if len(b) >= 2 and b[0] == 0x08 else 0,
    )
    return HEALTH_STATUSES.get(check(service, timeout=timeout), "UNKNOWN")


def wait_until_serving(channel, service="", timeout=60.0):
    """Polls health until SERVING; raises TimeoutError with the last status or error."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            last = health(channel, service, timeout=2.0)
            if last == "SERVING":
                return
        except grpc.RpcError as e:
            last = e.code().name
        time.sleep(0.2)
    raise TimeoutError(f"health of '{service}' is {last} after {timeout} s")


def classify(stub, model, image, max_steps=0, top_k=3, min_confidence=None, stable_steps=None, min_steps=None,
             min_margin=None, min_gate=None, recommended=False, timeout=None):
    """Starts Classify on PNG/JPEG bytes; returns the call: iterate it for updates, .cancel() it to stop. The stop
    rules given form one policy that the server applies (every rule must hold at the same step); recommended=True
    asks for the model's own policy (ModelInfo.recommended_stop) instead."""
    request = pb.ClassifyRequest(model=model, image=image, max_steps=max_steps, top_k=top_k)
    rules = {"min_confidence": min_confidence, "stable_steps": stable_steps, "min_steps": min_steps,
             "min_margin": min_margin, "min_gate": min_gate}
    for field, value in rules.items():
        if value is not None:
            setattr(request.stop, field, value)
    if recommended:
        request.stop.recommended = True
    return stub.Classify(request, timeout=timeout)


def policy_text(stop):
    """A StopPolicy message as text: 'min_confidence 0.9, stable_steps 1'."""
    fields = ["min_confidence", "stable_steps", "min_steps", "min_margin", "min_gate"]
    parts = [f"{f} {getattr(stop, f):g}" for f in fields if stop.HasField(f)]
    return "recommended" if stop.recommended else (", ".join(parts) or "none")


def run_image(stub, model, path, args, emit):
    """Streams one image; emits one record per step and a final one saying how the stream ended."""
    with open(path, "rb") as f:
        image = f.read()
    call = classify(stub, model, image, args.steps, args.top_k, args.min_confidence, args.stable_steps, args.min_steps,
                    args.min_margin, args.min_gate, args.recommended, args.timeout)
    name, last = os.path.basename(path), None
    try:
        for update in call:
            last = update
            emit({
                "image": name, "step": update.step,
                "top": [[s.name, round(s.probability, 4)] for s in update.top],
                "confidence": round(update.confidence, 4), "margin": round(update.margin, 4),
                "gate": round(update.gate, 4) if update.HasField("gate") else None, "sops": update.synaptic_operations,
                "energy_ratio": round(update.energy_ratio, 4), "step_ms": round(update.step_ms, 2),
                "stop_reason": reason_name(update.stop_reason),
            })
            if args.client_stop is not None and update.confidence >= args.client_stop:
                call.cancel()
                return emit(end(name, last, "CLIENT_STOP"))
            if args.cancel_after is not None and update.step >= args.cancel_after:
                call.cancel()
                return emit(end(name, last, "CANCELLED"))
        return emit(end(name, last, reason_name(last.stop_reason) if last else "EMPTY"))
    except grpc.RpcError as e:
        return emit(end(name, last, "ERROR", code=e.code().name, message=e.details()))


def reason_name(reason):
    """STOP_REASON_CONFIDENT -> CONFIDENT; UNSPECIFIED on every update but the last."""
    return pb.StopReason.Name(reason).removeprefix("STOP_REASON_")


def end(name, last, outcome, **extra):
    record = {"image": name, "event": "end", "outcome": outcome, "steps": last.step if last else 0}
    if last is not None and last.top:
        record["prediction"] = last.top[0].name
        record["confidence"] = round(last.confidence, 4)
    record.update(extra)
    return record


def human(record):
    if record.get("event") == "end":
        if record["outcome"] == "ERROR":
            return f"{record['image']}: {record['code']}: {record['message']}"
        verdict = f"{record.get('prediction', '?')} ({record.get('confidence', 0):.3f})"
        return f"{record['image']}: {verdict} after {record['steps']} steps, {record['outcome']}"
    top = "  ".join(f"{n} {p:.3f}" for n, p in record["top"])
    return (f"{record['image']}  t={record['step']:<3} {top}   sops={record['sops']:,}  "
            f"energy={record['energy_ratio']:.3f}  {record['step_ms']:.1f} ms")


def main(argv=None):
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--address", default="localhost:50051", help="host:port of the server")
    common.add_argument("--ca", help="PEM certificate to trust (TLS); plain HTTP/2 when absent")
    common.add_argument("--api-key", default=os.environ.get("ECMT_API_KEY"),
                        help="API key of a server with access control (default: $ECMT_API_KEY)")
    common.add_argument("--client-cert", help="PEM client certificate (mutual TLS)")
    common.add_argument("--client-key", help="PEM private key of --client-cert (unless that file holds it)")
    common.add_argument("--json", action="store_true", help="one JSON object per line instead of text")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", parents=[common], help="the hosted models")
    h = sub.add_parser("health", parents=[common], help="grpc.health.v1 Check")
    h.add_argument("--service", default="", help='"" (server), ecmt.v1.Classifier or ecmt.v1.Classifier/<model>')
    c = sub.add_parser("classify", parents=[common], help="stream per-step predictions for images")
    c.add_argument("images", nargs="+", help="PNG or JPEG files")
    c.add_argument("--model", help="model name (default: the first hosted model)")
    c.add_argument("--steps", type=int, default=0, help="max steps (0: the server's default)")
    c.add_argument("--top-k", type=int, default=3)
    c.add_argument("--min-confidence", type=float, help="stop rule: calibrated top-1 probability >= p")
    c.add_argument("--stable-steps", type=int, help="stop rule: the top-1 class equals that of each of the k steps before")
    c.add_argument("--min-steps", type=int, help="stop rule: at least m steps have run")
    c.add_argument("--min-margin", type=float, help="stop rule: top-1 minus top-2 calibrated probability >= m")
    c.add_argument("--min-gate", type=float, help="stop rule: the model's gate >= g")
    c.add_argument("--recommended", action="store_true", help="the server stops on the model's recommended policy")
    c.add_argument("--client-stop", type=float, help="the client cancels once top-1 probability >= p")
    c.add_argument("--cancel-after", type=int, help="the client cancels after this many steps")
    c.add_argument("--timeout", type=float, help="deadline in seconds")
    args = parser.parse_args(argv)

    channel = connect(args.address, args.ca, args.api_key, args.client_cert, args.client_key)
    stub = rpc.ClassifierStub(channel)

    def emit(record):
        print(json.dumps(record) if args.json else human(record), flush=True)
        return record

    try:
        if args.command == "health":
            status = health(channel, args.service)
            emit({"service": args.service, "status": status}) if args.json else print(status)
            return 0 if status == "SERVING" else 1
        if args.command == "list":
            for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models:
                if args.json:
                    emit({"name": m.name, "ready": m.ready, "channels": m.channels, "image_size": m.image_size,
                          "classes": list(m.class_names), "backend": m.backend, "default_steps": m.default_steps,
                          "max_steps": m.max_steps, "health_service": m.health_service,
                          "temperatures_calibrated": m.temperatures_calibrated, "gate": m.gate,
                          "recommended_stop": policy_text(m.recommended_stop) if m.HasField("recommended_stop") else None})
                else:
                    recommended = policy_text(m.recommended_stop) if m.HasField("recommended_stop") else "none"
                    print(f"{m.name}: {'ready' if m.ready else 'not ready'}, {m.channels}x{m.image_size}x{m.image_size}, "
                          f"{len(m.class_names)} classes, depth {m.depth}, dim {m.embed_dim}, backend {m.backend}, "
                          f"steps {m.default_steps} (max {m.max_steps}), recommended stop: {recommended}")
            return 0
        model = args.model or stub.ListModels(pb.ListModelsRequest(), timeout=10).models[0].name
        results = [run_image(stub, model, path, args, emit) for path in args.images]
        return 1 if any(r["outcome"] == "ERROR" for r in results) else 0
    except grpc.RpcError as e:
        print(f"ecmt_client.py: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    finally:
        channel.close()


if __name__ == "__main__":
    sys.exit(main())
