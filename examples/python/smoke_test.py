#!/usr/bin/python3
"""Checks a running ecmt server through the generated Python client: health, listing, streaming, server-side and
client-side early stops, cancellation (seen in the server's own metrics), deadlines and bad-input statuses.
Prints one line per check and 'N passed, M failed'; exits non-zero when any check fails.

  ./smoke_test.py --address 127.0.0.1:50051 --model fmnist-vit --metrics http://127.0.0.1:9464/metrics src/Server/Page/samples/*.png
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import time
import urllib.request
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import grpc  # noqa: E402

import ecmt_client as client  # noqa: E402
from ecmt_client import pb, rpc  # noqa: E402

RESULTS = []


def check(name):
    def run(fn):
        try:
            fn()
            RESULTS.append((name, None))
            print(f"ok    {name}", flush=True)
        except Exception as e:  # a failed check is reported, the others still run
            RESULTS.append((name, e))
            print(f"FAIL  {name}: {type(e).__name__}: {e}", flush=True)
        return fn
    return run


def expect(condition, message):
    if not condition:
        raise AssertionError(message)


def png(width, height, pixels):
    """An 8-bit grey PNG, for when no sample images are given."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    rows = b"".join(b"\x00" + bytes(pixels[y * width:(y + 1) * width]) for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def status_of(fn):
    try:
        fn()
        return "OK"
    except grpc.RpcError as e:
        return e.code().name


def metric(url, name, **labels):
    """Sum of a Prometheus series' samples whose labels include the given ones."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--metrics", help="the server's /metrics URL (HTTP/1.1 metrics port)")
    parser.add_argument("images", nargs="*", help="PNG/JPEG files (default: a generated grey image)")
    args = parser.parse_args()

    images = [open(p, "rb").read() for p in args.images] or [png(28, 28, [(x * 9 + y * 5) % 256 for y in range(28) for x in range(28)])]
    image = images[0]
    channel = client.connect(args.address)
    stub = rpc.ClassifierStub(channel)
    # Long streams ask for the server's limit (the CI script raises it through Ecmt__Limits__MaxSteps).
    long_steps = stub.GetModel(pb.GetModelRequest(name=args.model), timeout=60, wait_for_ready=True).max_steps

    @check("health: server and model SERVING")
    def _():
        client.wait_until_serving(channel, "", timeout=60)
        info = stub.GetModel(pb.GetModelRequest(name=args.model), timeout=10)
        expect(info.health_service == f"ecmt.v1.Classifier/{args.model}", info.health_service)
        expect(client.health(channel, info.health_service) == "SERVING", "model not SERVING")
        expect(client.health(channel, "ecmt.v1.Classifier") == "SERVING", "service not SERVING")

    @check("ListModels names the model, ready")
    def _():
        models = {m.name: m for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models}
        expect(args.model in models and models[args.model].ready, f"models: {list(models)}")
        expect(len(models[args.model].class_names) > 1, "no class names")

    @check("Classify streams one update per step, the last with MAX_STEPS")
    def _():
        for data in images:
            updates = list(client.classify(stub, args.model, data, max_steps=4, top_k=3, timeout=60))
            expect([u.step for u in updates] == [1, 2, 3, 4], [u.step for u in updates])
            expect(all(u.stop_reason == pb.STOP_REASON_UNSPECIFIED for u in updates[:-1]), "early stop reason")
            expect(updates[-1].stop_reason == pb.STOP_REASON_MAX_STEPS, updates[-1].stop_reason)
            expect(all(len(u.top) == 3 and u.top[0].probability == u.confidence for u in updates), "top-k")
            sops = [u.synaptic_operations for u in updates]
            expect(sops == sorted(sops) and sops[0] > 0, f"SOPs not cumulative: {sops}")

    @check("server-side stop: min_confidence ends the stream early with CONFIDENT")
    def _():
        updates = list(client.classify(stub, args.model, image, max_steps=20, min_confidence=0.01, timeout=60))
        expect(len(updates) == 1 and updates[0].stop_reason == pb.STOP_REASON_CONFIDENT, [(u.step, u.stop_reason) for u in updates])

    @check("server-side stop: stable_steps ends once the top-1 class held")
    def _():
        updates = list(client.classify(stub, args.model, image, max_steps=20, stable_steps=2, timeout=60))
        last = updates[-1]
        if last.stop_reason == pb.STOP_REASON_STABLE:
            expect(len({u.top[0].index for u in updates[-3:]}) == 1 and len(updates) >= 3, "not stable")
        else:
            expect(last.stop_reason == pb.STOP_REASON_MAX_STEPS and len(updates) == 20, last.stop_reason)

    @check("server-side stop: every rule of a combined policy must hold (stable for 1 step, at least 3 steps)")
    def _():
        updates = list(client.classify(stub, args.model, image, max_steps=20, stable_steps=1, min_steps=3, timeout=60))
        last = updates[-1]
        expect(len(updates) >= 3, len(updates))
        if last.stop_reason == pb.STOP_REASON_POLICY:
            expect(updates[-1].top[0].index == updates[-2].top[0].index, "not stable")
            expect(len(updates) == 3 or updates[-2].top[0].index != updates[-3].top[0].index, "stopped late")
        else:
            expect(last.stop_reason == pb.STOP_REASON_MAX_STEPS and len(updates) == 20, last.stop_reason)

    @check("the model's recommended policy: ModelInfo reports it and a request can ask for it")
    def _():
        info = stub.GetModel(pb.GetModelRequest(name=args.model), timeout=10)
        if not info.HasField("recommended_stop"):
            code = status_of(lambda: list(client.classify(stub, args.model, image, max_steps=4, recommended=True, timeout=60)))
            expect(code == "FAILED_PRECONDITION", code)
            return
        expect(info.temperatures_calibrated, "a recommended policy without temperatures")
        full = list(client.classify(stub, args.model, image, max_steps=16, timeout=60))
        stopped = list(client.classify(stub, args.model, image, max_steps=16, recommended=True, timeout=60))
        expect(len(stopped) <= len(full) and [u.top[0].index for u in stopped] == [u.top[0].index for u in full[:len(stopped)]],
               "the recommended stop does not follow the full stream")
        expect(stopped[-1].stop_reason != pb.STOP_REASON_UNSPECIFIED, stopped[-1].stop_reason)
        expect(all(u.HasField("gate") == info.gate for u in stopped), "gate presence differs from ModelInfo.gate")

    @check("client-side stop: cancelling mid-stream stops the server (its metrics count a cancelled run)")
    def _():
        before = metric(args.metrics, "ecmt_runs_total", model=args.model, reason="cancelled") if args.metrics else 0
        call = client.classify(stub, args.model, image, max_steps=long_steps, timeout=120)
        received = 0
        for update in call:
            received += 1
            if update.step == 2:
                call.cancel()
                break
        expect(received == 2, received)
        expect(call.code() == grpc.StatusCode.CANCELLED, call.code())
        if args.metrics:
            deadline = time.monotonic() + 10
            while metric(args.metrics, "ecmt_runs_total", model=args.model, reason="cancelled") < before + 1:
                expect(time.monotonic() < deadline, "the server did not record the cancelled run")
                time.sleep(0.2)
            expect(metric(args.metrics, "ecmt_sessions_active", model=args.model) == 0, "a session is still active")

    @check("a deadline ends a long stream with DEADLINE_EXCEEDED")
    def _():
        code = status_of(lambda: list(client.classify(stub, args.model, image, max_steps=long_steps, timeout=0.5)))
        expect(code == "DEADLINE_EXCEEDED", code)

    @check("bad input gets precise statuses")
    def _():
        expect(status_of(lambda: list(client.classify(stub, "no-such-model", image, timeout=10))) == "NOT_FOUND", "unknown model")
        expect(status_of(lambda: list(client.classify(stub, args.model, b"not an image", timeout=10))) == "INVALID_ARGUMENT", "corrupt image")
        expect(status_of(lambda: list(stub.Classify(pb.ClassifyRequest(model=args.model), timeout=10))) == "INVALID_ARGUMENT", "no input")
        expect(status_of(lambda: list(client.classify(stub, args.model, image, max_steps=long_steps + 1, timeout=10))) == "OUT_OF_RANGE", "steps")

    @check("the server keeps serving after errors and cancels")
    def _():
        updates = list(client.classify(stub, args.model, image, max_steps=2, timeout=60))
        expect(len(updates) == 2, len(updates))

    @check("ecmt_client.py classify --json --client-stop stops the client early")
    def _():
        path = args.images[0] if args.images else None
        if path is None:
            return
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run([sys.executable, os.path.join(here, "ecmt_client.py"), "classify", path, "--address", args.address,
                              "--model", args.model, "--steps", "30", "--client-stop", "0.0", "--json"],
                             capture_output=True, text=True, timeout=120, check=True).stdout
        records = [json.loads(line) for line in out.splitlines()]
        expect(records[-1]["outcome"] == "CLIENT_STOP" and records[-1]["steps"] == 1, records[-1])

    channel.close()
    failed = sum(1 for _, e in RESULTS if e is not None)
    print(f"{len(RESULTS) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
