#!/usr/bin/python3
"""Checks a running ecmt server's standard interfaces from Python: the Open Inference Protocol over gRPC (a client
generated from protos/inference/open_inference_grpc.proto: metadata, ModelInfer, Triton's ModelStreamInfer) and over
REST (health, metadata, infer, the one-JSON-line-per-step stream, the OpenAPI description), and bad input on each in
the protocol's error shape. Prints one line per check and 'N passed, M failed'; exits non-zero when any check fails.

  ./oip_smoke_test.py --address 127.0.0.1:50051 --http http://127.0.0.1:8080 --model fmnist-vit \\
      --metrics http://127.0.0.1:9464/metrics src/Server/Page/samples/*.png
"""
import argparse
import base64
import http.client
import json
import os
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import grpc  # noqa: E402

from inference import open_inference_grpc_pb2 as pb  # noqa: E402  (examples/python/generate.sh)
from inference import open_inference_grpc_pb2_grpc as rpc  # noqa: E402
from smoke_test import check, expect, metric, png, status_of, RESULTS  # noqa: E402

OUTPUTS = ["probabilities", "step", "stop_reason", "synaptic_operations", "energy_ratio"]


def infer_request(model, image=None, pixels=None, shape=None, raw=False, request_id="", **parameters):
    """A ModelInferRequest with the PNG/JPEG `image` (BYTES [1]) or the intensities `pixels` (FP32 `shape`)."""
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    for name, value in parameters.items():
        p = request.parameters[name]
        if isinstance(value, bool):
            p.bool_param = value
        elif isinstance(value, int):
            p.int64_param = value
        elif isinstance(value, float):
            p.double_param = value
        else:
            p.string_param = value
    if image is not None:
        tensor = request.inputs.add(name="image", datatype="BYTES", shape=[1])
        if raw:  # a BYTES element in raw_input_contents: its 4-byte little-endian length, then its bytes
            request.raw_input_contents.append(struct.pack("<I", len(image)) + image)
        else:
            tensor.contents.bytes_contents.append(image)
    else:
        tensor = request.inputs.add(name="pixels", datatype="FP32", shape=shape)
        if raw:
            request.raw_input_contents.append(struct.pack(f"<{len(pixels)}f", *pixels))
        else:
            tensor.contents.fp32_contents.extend(pixels)
    return request


def outputs(response):
    """name -> list of values of a ModelInferResponse's outputs (BYTES decoded as text)."""
    result = {}
    for o in response.outputs:
        c = o.contents
        result[o.name] = (list(c.fp32_contents) or list(c.int64_contents) or list(c.uint64_contents)
                          or list(c.fp64_contents) or [b.decode() for b in c.bytes_contents])
    return result


def fp32(values):
    return list(struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values)))


def final(response):
    p = response.parameters.get("triton_final_response")
    return None if p is None else p.bool_param


def rest(base, method, path, body=None, headers=None):
    """(status, parsed JSON body) of one REST call."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(base + path, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def rest_output(body, name):
    return next(o for o in body["outputs"] if o["name"] == name)["data"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", required=True, help="gRPC host:port")
    parser.add_argument("--http", required=True, help="REST base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--model", required=True)
    parser.add_argument("--metrics", help="the server's /metrics URL (HTTP/1.1 metrics port)")
    parser.add_argument("images", nargs="*", help="PNG/JPEG files (default: a generated grey image)")
    args = parser.parse_args()

    channel = grpc.insecure_channel(args.address)
    stub = rpc.GRPCInferenceServiceStub(channel)
    base = args.http.rstrip("/")
    images = [open(p, "rb").read() for p in args.images] or [png(28, 28, [(x * 9 + y * 5) % 256 for y in range(28) for x in range(28)])]
    image = images[0]
    meta = {}

    def cancelled_runs():
        return metric(args.metrics, "ecmt_runs_total", model=args.model, reason="cancelled") if args.metrics else 0

    def wait_for_cancelled_run(before):
        """The server's own count of cancelled runs passes `before` (when its metrics are given)."""
        deadline = time.time() + 20
        while args.metrics and cancelled_runs() < before + 1:
            expect(time.time() < deadline, "no cancelled run in the server's metrics")
            time.sleep(0.1)

    @check("gRPC: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata")
    def _():
        expect(stub.ServerLive(pb.ServerLiveRequest()).live, "not live")
        expect(stub.ServerReady(pb.ServerReadyRequest()).ready, "not ready")
        expect(stub.ModelReady(pb.ModelReadyRequest(name=args.model)).ready, "model not ready")
        server = stub.ServerMetadata(pb.ServerMetadataRequest())
        expect(server.name == "ecmt" and "classification" in server.extensions, f"server metadata {server}")
        m = stub.ModelMetadata(pb.ModelMetadataRequest(name=args.model))
        expect([i.name for i in m.inputs] == ["pixels", "image"], f"inputs {m.inputs}")
        expect([o.name for o in m.outputs] == OUTPUTS, f"outputs {m.outputs}")
        meta["shape"] = list(m.inputs[0].shape)
        meta["classes"] = m.outputs[0].shape[1]

    shape = meta.get("shape", [1, 1, 28, 28])
    size = shape[1] * shape[2] * shape[3]
    grey = [((i * 37) % 100) / 100 for i in range(size)]

    @check("gRPC ModelInfer: the answer after max_steps, the same for contents and raw_input_contents, FP32 and BYTES")
    def _():
        by_contents = stub.ModelInfer(infer_request(args.model, image=image, max_steps=4))
        by_raw = stub.ModelInfer(infer_request(args.model, image=image, raw=True, max_steps=4))
        a, b = outputs(by_contents), outputs(by_raw)
        expect(a["step"] == [4] and a["stop_reason"] == ["max_steps"], f"{a['step']} {a['stop_reason']}")
        expect(len(a["probabilities"]) == meta.get("classes", 10) and abs(sum(a["probabilities"]) - 1) < 1e-3, f"{a['probabilities']}")
        expect(a["probabilities"] == b["probabilities"], "raw and typed contents differ")
        p1 = outputs(stub.ModelInfer(infer_request(args.model, pixels=grey, shape=shape, max_steps=2)))
        p2 = outputs(stub.ModelInfer(infer_request(args.model, pixels=grey, shape=shape, raw=True, max_steps=2)))
        expect(p1["step"] == [2] and p1["probabilities"] == p2["probabilities"], "FP32 contents and raw differ")
        expect(a["synaptic_operations"][0] > 0 and a["energy_ratio"][0] > 0, "no synaptic operations or energy")

    @check("gRPC ModelInfer: stop policy parameters and the classification extension")
    def _():
        r = outputs(stub.ModelInfer(infer_request(args.model, image=image, max_steps=50, min_confidence=0.01)))
        expect(r["step"] == [1] and r["stop_reason"] == ["confident"], f"{r['step']} {r['stop_reason']}")
        r = outputs(stub.ModelInfer(infer_request(args.model, image=image, max_steps=50, stable_steps=1)))
        expect(r["stop_reason"] in (["stable"], ["max_steps"]) and r["step"][0] >= 2, f"{r}")
        request = infer_request(args.model, image=image, max_steps=3)
        request.outputs.add(name="probabilities").parameters["classification"].int64_param = 3
        top = outputs(stub.ModelInfer(request))["probabilities"]
        expect(len(top) == 3 and all(len(t.split(":")) >= 3 for t in top), f"classification {top}")
        values = [float(t.split(":")[0]) for t in top]
        expect(values == sorted(values, reverse=True), f"not best first: {top}")

    @check("gRPC ModelStreamInfer: one response per step, in order, the last one final")
    def _():
        responses = list(stub.ModelStreamInfer(iter([infer_request(args.model, image=image, request_id="one", max_steps=5)])))
        expect(len(responses) == 5 and all(r.error_message == "" for r in responses), f"{len(responses)} responses")
        expect([outputs(r.infer_response)["step"][0] for r in responses] == [1, 2, 3, 4, 5], "steps out of order")
        expect([final(r.infer_response) for r in responses] == [False] * 4 + [True], "final flags")
        expect(all(r.infer_response.id == "one" for r in responses), "id not echoed")

    @check("gRPC ModelStreamInfer: requests interleave by id; a bad one gets error_message and the stream goes on")
    def _():
        requests = [infer_request(args.model, image=image, request_id="a", max_steps=3),
                    infer_request("no-such-model", image=image, request_id="bad"),
                    infer_request(args.model, image=image, request_id="b", max_steps=2, triton_enable_empty_final_response=True)]
        by_id = {}
        for r in stub.ModelStreamInfer(iter(requests)):
            by_id.setdefault(r.infer_response.id, []).append(r)
        expect([outputs(r.infer_response)["step"][0] for r in by_id["a"]] == [1, 2, 3], "request a")
        bad = by_id["bad"]
        expect(len(bad) == 1 and "not hosted" in bad[0].error_message, f"bad: {bad}")
        expect(bad[0].infer_response.parameters["status"].string_param == "NOT_FOUND", "status parameter")
        b = by_id["b"]  # with an empty final response: 2 steps, then an empty response carrying the flag
        expect(len(b) == 3 and [final(r.infer_response) for r in b] == [False, False, True] and not b[2].infer_response.outputs, "empty final")

    @check("gRPC ModelStreamInfer: cancelling stops the server (its metrics count a cancelled run)")
    def _():
        before = cancelled_runs()
        call = stub.ModelStreamInfer(iter([infer_request(args.model, image=image, max_steps=100000)]))
        for n, _ in enumerate(call, 1):
            if n == 2:
                call.cancel()
                break
        wait_for_cancelled_run(before)

    @check("gRPC errors: the statuses ecmt.v1 gives the same mistakes")
    def _():
        cases = {
            "NOT_FOUND": infer_request("no-such-model", image=image),
            "INVALID_ARGUMENT": infer_request(args.model, image=b"not an image"),
            "OUT_OF_RANGE": infer_request(args.model, image=image, max_steps=10**9),
        }
        wrong_shape = infer_request(args.model, pixels=grey[:-1], shape=[1] + shape[1:3] + [shape[3] - 1])
        wrong_type = infer_request(args.model, image=image, max_steps="ten")
        for code, request in cases.items():
            got = status_of(lambda: stub.ModelInfer(request))
            expect(got == code, f"{code}: got {got}")
        for request in (wrong_shape, wrong_type):
            got = status_of(lambda: stub.ModelInfer(request))
            expect(got == "INVALID_ARGUMENT", f"got {got}")
        expect(status_of(lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name="no-such-model"))) == "NOT_FOUND", "metadata")

    @check("REST: health, server and model metadata")
    def _():
        expect(rest(base, "GET", "/v2/health/live") == (200, {"live": True}), "live")
        expect(rest(base, "GET", "/v2/health/ready") == (200, {"ready": True}), "ready")
        status, body = rest(base, "GET", f"/v2/models/{args.model}/ready")
        expect(status == 200 and body["ready"], f"model ready {status} {body}")
        status, body = rest(base, "GET", "/v2")
        expect(status == 200 and body["name"] == "ecmt", f"{body}")
        status, body = rest(base, "GET", f"/v2/models/{args.model}")
        expect(status == 200 and [o["name"] for o in body["outputs"]] == OUTPUTS, f"{body}")

    @check("REST infer: base64 BYTES and nested FP32 data answer as gRPC does")
    def _():
        body = {"id": "r", "parameters": {"max_steps": 4},
                "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(image).decode()]}]}
        status, answer = rest(base, "POST", f"/v2/models/{args.model}/infer", body)
        expect(status == 200 and answer["id"] == "r", f"{status} {answer}")
        grpc_answer = outputs(stub.ModelInfer(infer_request(args.model, image=image, max_steps=4)))
        # JSON carries each FP32 value in its shortest form; as FP32 both are the same numbers.
        expect(fp32(rest_output(answer, "probabilities")) == fp32(grpc_answer["probabilities"]), "REST and gRPC differ")
        rows = [grey[r * shape[3]:(r + 1) * shape[3]] for r in range(shape[2])]
        nested = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": shape, "data": [[rows]]}], "parameters": {"max_steps": 2}}
        status, answer = rest(base, "POST", f"/v2/models/{args.model}/infer", nested)
        expect(status == 200 and rest_output(answer, "step") == [2], f"{status} {answer}")

    @check("REST stream: one JSON line per step as it is computed, the last one final")
    def _():
        url = urllib.parse.urlsplit(base)
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        body = {"parameters": {"max_steps": 6}, "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(image).decode()]}]}
        connection.request("POST", f"/v2/models/{args.model}/infer_stream", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        expect(response.status == 200 and response.getheader("Content-Type").startswith("application/x-ndjson"), f"{response.status}")
        lines = [json.loads(line) for line in response if line.strip()]
        connection.close()
        expect([rest_output(line, "step")[0] for line in lines] == [1, 2, 3, 4, 5, 6], "steps")
        expect([line["parameters"]["triton_final_response"] for line in lines] == [False] * 5 + [True], "final flags")

    @check("REST stream: closing the connection stops the server (its metrics count a cancelled run)")
    def _():
        before = cancelled_runs()
        url = urllib.parse.urlsplit(base)
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        body = {"parameters": {"max_steps": 100000}, "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(image).decode()]}]}
        connection.request("POST", f"/v2/models/{args.model}/infer_stream", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        first = json.loads(response.readline())
        expect(rest_output(first, "step") == [1], f"{first}")
        connection.sock.close()
        connection.close()
        wait_for_cancelled_run(before)

    @check("REST errors: {\"error\": ...} with the HTTP status of ecmt.v1's class")
    def _():
        image_input = {"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(image).decode()]}
        cases = [
            (404, "no-such-model", {"inputs": [image_input]}),
            (400, args.model, {"inputs": [{**image_input, "data": [base64.b64encode(b"not an image").decode()]}]}),
            (400, args.model, {"inputs": [image_input], "parameters": {"max_steps": 10**9}}),
            (400, args.model, {"inputs": [image_input], "parameters": {"min_confidence": 7}}),
            (400, args.model, b"{not json"),
        ]
        for code, model, body in cases:
            for endpoint in ("infer", "infer_stream"):
                status, answer = rest(base, "POST", f"/v2/models/{model}/{endpoint}", body)
                expect(status == code and set(answer) == {"error"} and answer["error"], f"{endpoint} {body!r:.60}: {status} {answer}")
        status, answer = rest(base, "GET", "/v2/models/no-such-model")
        expect(status == 404 and "not hosted" in answer["error"], f"{status} {answer}")

    @check("REST: the OpenAPI description is served and lists the endpoints")
    def _():
        status, document = rest(base, "GET", "/openapi/ecmt.json")
        expect(status == 200 and document["openapi"].startswith("3."), f"{status}")
        for path in ("/v2/health/ready", "/v2/models/{name}/infer", "/v2/models/{name}/infer_stream"):
            expect(path in document["paths"], f"{path} missing")

    failed = sum(1 for _, e in RESULTS if e is not None)
    print(f"{len(RESULTS) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
