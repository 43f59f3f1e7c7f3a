using System.Buffers.Binary;
using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Ecmt.Protos.Inference;
using Grpc.Core;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;

namespace Ecmt.Server.Tests;

/// <summary>
/// The Open Inference Protocol over REST, the streaming endpoint and the OpenAPI description: answers equal to the
/// gRPC protocol's, the protocol's error shape with the HTTP status of ecmt.v1's class, one JSON line per step, and a
/// client that closes the connection stopping the engine within one step on a real HTTP/1.1 port.
/// </summary>
public sealed class RestTests : IAsyncLifetime
{
    ServerHost _host = null!;
    HttpClient _http = null!;

    public async ValueTask InitializeAsync()
    {
        _host = await ServerHost.InProcessAsync(("Ecmt:Limits:MaxMessageBytes", "65536"), ("Ecmt:Limits:MaxSteps", "100000"));
        _http = _host.HttpClient();
    }

    public async ValueTask DisposeAsync()
    {
        _http.Dispose();
        await _host.DisposeAsync();
    }

    static JsonObject Request(string input, string datatype, long[] shape, JsonNode data, JsonObject? parameters = null, JsonArray? outputs = null)
    {
        var request = new JsonObject
        {
            ["id"] = "42",
            ["inputs"] = new JsonArray(new JsonObject { ["name"] = input, ["datatype"] = datatype, ["shape"] = new JsonArray([.. shape.Select(d => (JsonNode)d)]), ["data"] = data }),
        };
        if (parameters is not null) request["parameters"] = parameters;
        if (outputs is not null) request["outputs"] = outputs;
        return request;
    }

    /// <summary>Pixels as the REST data: nested (1, 1, 28, 28) arrays, the protocol's "natural" form.</summary>
    static JsonObject Pixels(int seed, long maxSteps)
    {
        var values = TestModels.Image(seed).Intensities;
        var rows = new JsonArray([.. Enumerable.Range(0, TestModels.Size).Select(r => (JsonNode)new JsonArray([.. values.Skip(r * TestModels.Size).Take(TestModels.Size).Select(v => (JsonNode)v)]))]);
        return Request("pixels", "FP32", [1, 1, TestModels.Size, TestModels.Size], new JsonArray(new JsonArray(rows)), new JsonObject { ["max_steps"] = maxSteps });
    }

    static JsonObject Image(byte[] png, long maxSteps) =>
        Request("image", "BYTES", [1], new JsonArray(Convert.ToBase64String(png)), new JsonObject { ["max_steps"] = maxSteps });

    async Task<(HttpStatusCode Status, JsonObject Body)> Post(string path, JsonNode body)
    {
        using var response = await _http.PostAsync(new Uri(path, UriKind.Relative), new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json"));
        return (response.StatusCode, JsonNode.Parse(await response.Content.ReadAsStringAsync())!.AsObject());
    }

    async Task<(HttpStatusCode Status, JsonObject Body)> Get(string path)
    {
        using var response = await _http.GetAsync(new Uri(path, UriKind.Relative));
        return (response.StatusCode, JsonNode.Parse(await response.Content.ReadAsStringAsync())!.AsObject());
    }

    static JsonNode Output(JsonObject response, string name) => response["outputs"]!.AsArray().Single(o => (string)o!["name"]! == name)!;

    [Fact]
    public async Task Health_and_metadata_follow_the_protocol()
    {
        Assert.Equal((HttpStatusCode.OK, true), Flag(await Get("/v2/health/live"), "live"));
        Assert.Equal((HttpStatusCode.OK, true), Flag(await Get("/v2/health/ready"), "ready"));
        Assert.Equal((HttpStatusCode.OK, true), Flag(await Get($"/v2/models/{TestModels.Tiny}/ready"), "ready"));
        Assert.Equal((HttpStatusCode.OK, true), Flag(await Get($"/v2/models/{TestModels.Tiny}/versions/1/ready"), "ready"));
        Assert.Equal((HttpStatusCode.BadRequest, false), Flag(await Get($"/v2/models/{TestModels.Broken}/ready"), "ready"));
        var (status, body) = await Get("/v2/models/nope/ready");
        Assert.Equal(HttpStatusCode.NotFound, status);
        Assert.Contains("'nope' is not hosted", (string)body["error"]!, StringComparison.Ordinal);

        var (_, server) = await Get("/v2");
        Assert.Equal("ecmt", (string)server["name"]!);
        Assert.Contains("binary_tensor_data", server["extensions"]!.AsArray().Select(e => (string)e!));

        // The same metadata as the gRPC protocol's, in the protocol's JSON names.
        var (_, model) = await Get($"/v2/models/{TestModels.Tiny}");
        var grpc = await _host.Inference.ModelMetadataAsync(new ModelMetadataRequest { Name = TestModels.Tiny });
        Assert.Equal(grpc.Platform, (string)model["platform"]!);
        Assert.Equal(grpc.Inputs.Select(i => (i.Name, i.Datatype, string.Join(",", i.Shape))),
            model["inputs"]!.AsArray().Select(i => ((string)i!["name"]!, (string)i["datatype"]!, string.Join(",", i["shape"]!.AsArray().Select(d => (long)d!)))));
        Assert.Equal(grpc.Outputs.Select(o => o.Name), model["outputs"]!.AsArray().Select(o => (string)o!["name"]!));
        Assert.Equal(HttpStatusCode.NotFound, (await Get($"/v2/models/{TestModels.Tiny}/versions/7")).Status);

        static (HttpStatusCode, bool) Flag((HttpStatusCode Status, JsonObject Body) r, string name) => (r.Status, (bool)r.Body[name]!);
    }

    [Fact]
    public async Task Infer_answers_as_the_grpc_protocol_does_for_pixels_and_for_an_encoded_image()
    {
        var grpc = await _host.Inference.ModelInferAsync(OipRequests.Pixels(TestModels.Tiny, seed: 11, maxSteps: 5));
        var (status, body) = await Post($"/v2/models/{TestModels.Tiny}/infer", Pixels(11, 5));
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal("42", (string)body["id"]!);
        Assert.Equal(TestModels.Tiny, (string)body["model_name"]!);
        Assert.Equal(grpc.Probabilities(), Output(body, "probabilities")["data"]!.AsArray().Select(v => (float)v!));
        Assert.Equal([1L, TestModels.Classes], Output(body, "probabilities")["shape"]!.AsArray().Select(v => (long)v!));
        Assert.Equal(5L, (long)Output(body, "step")["data"]![0]!);
        Assert.Equal("max_steps", (string)Output(body, "stop_reason")["data"]![0]!);
        Assert.Equal(grpc.Sops(), (ulong)Output(body, "synaptic_operations")["data"]![0]!);
        Assert.Equal(grpc.Energy(), (double)Output(body, "energy_ratio")["data"]![0]!);

        var png = TestModels.Png(4);
        var fromImage = await _host.Inference.ModelInferAsync(OipRequests.Image(TestModels.Tiny, png, maxSteps: 3));
        (status, body) = await Post($"/v2/models/{TestModels.Tiny}/versions/1/infer", Image(png, 3));
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal(fromImage.Probabilities(), Output(body, "probabilities")["data"]!.AsArray().Select(v => (float)v!));

        // Parameters, chosen outputs and the classification extension, in JSON.
        var request = Image(png, 30);
        request["parameters"]!["stable_steps"] = 2;
        request["outputs"] = new JsonArray(new JsonObject { ["name"] = "probabilities", ["parameters"] = new JsonObject { ["classification"] = 2 } }, new JsonObject { ["name"] = "step" });
        var stable = await _host.Inference.ModelInferAsync(OipRequests.Image(TestModels.Tiny, png, maxSteps: 30).With("stable_steps", 2L));
        (_, body) = await Post($"/v2/models/{TestModels.Tiny}/infer", request);
        Assert.Equal(["probabilities", "step"], body["outputs"]!.AsArray().Select(o => (string)o!["name"]!));
        Assert.Equal(stable.Step(), (long)Output(body, "step")["data"]![0]!);
        var top = Output(body, "probabilities")["data"]!.AsArray().Select(v => ((string)v!).Split(':')).ToList();
        Assert.Equal(2, top.Count);
        Assert.Equal(stable.Probabilities().Max(), float.Parse(top[0][0], System.Globalization.CultureInfo.InvariantCulture));
    }

    [Fact]
    public async Task The_binary_tensor_data_extension_carries_the_file_in_and_the_outputs_out()
    {
        var png = TestModels.Png(6);
        var json = Encoding.UTF8.GetBytes(new JsonObject
        {
            ["inputs"] = new JsonArray(new JsonObject
            {
                ["name"] = "image", ["datatype"] = "BYTES", ["shape"] = new JsonArray(1),
                ["parameters"] = new JsonObject { ["binary_data_size"] = 4 + png.Length },
            }),
            ["outputs"] = new JsonArray(new JsonObject { ["name"] = "probabilities", ["parameters"] = new JsonObject { ["binary_data"] = true } }, new JsonObject { ["name"] = "step" }),
            ["parameters"] = new JsonObject { ["max_steps"] = 3 },
        }.ToJsonString());
        var body = new byte[json.Length + 4 + png.Length];
        json.CopyTo(body, 0);
        BinaryPrimitives.WriteUInt32LittleEndian(body.AsSpan(json.Length), (uint)png.Length);
        png.CopyTo(body, json.Length + 4);
        using var content = new ByteArrayContent(body);
        content.Headers.ContentType = new("application/octet-stream");
        content.Headers.Add("Inference-Header-Content-Length", json.Length.ToString());
        using var response = await _http.PostAsync(new Uri($"/v2/models/{TestModels.Tiny}/infer", UriKind.Relative), content);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);

        var bytes = await response.Content.ReadAsByteArrayAsync();
        int headerLength = int.Parse(response.Headers.GetValues("Inference-Header-Content-Length").Single());
        var header = JsonNode.Parse(bytes.AsSpan(0, headerLength))!.AsObject();
        var probabilities = Output(header, "probabilities");
        Assert.Null(probabilities["data"]);
        Assert.Equal(4 * TestModels.Classes, (long)probabilities["parameters"]!["binary_data_size"]!);
        var fromBinary = Enumerable.Range(0, TestModels.Classes).Select(i => BinaryPrimitives.ReadSingleLittleEndian(bytes.AsSpan(headerLength + 4 * i))).ToArray();
        var grpc = await _host.Inference.ModelInferAsync(OipRequests.Image(TestModels.Tiny, png, maxSteps: 3));
        Assert.Equal(grpc.Probabilities(), fromBinary);
        Assert.Equal(3L, (long)Output(header, "step")["data"]![0]!);
    }

    [Fact]
    public async Task The_stream_sends_one_json_line_per_step_the_last_one_final()
    {
        using var response = await _http.PostAsync(new Uri($"/v2/models/{TestModels.Tiny}/infer_stream", UriKind.Relative),
            new StringContent(Pixels(9, 4).ToJsonString(), Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("application/x-ndjson", response.Content.Headers.ContentType!.MediaType);
        var lines = (await response.Content.ReadAsStringAsync()).Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();
        var grpc = await _host.Inference.StreamAsync(OipRequests.Pixels(TestModels.Tiny, seed: 9, maxSteps: 4));

        Assert.Equal(4, lines.Count);
        Assert.Equal([1L, 2, 3, 4], lines.Select(l => (long)Output(l, "step")["data"]![0]!));
        Assert.Equal([false, false, false, true], lines.Select(l => (bool)l["parameters"]!["triton_final_response"]!));
        for (int i = 0; i < 4; i++)
            Assert.Equal(grpc[i].InferResponse.Probabilities(), Output(lines[i], "probabilities")["data"]!.AsArray().Select(v => (float)v!));
    }

    /// <summary>A mistake of each class as ecmt.v1 sees it, sent over REST: the HTTP status of that class and {"error": "..."}.</summary>
    public static TheoryData<string, StatusCode, int> Mistakes => new()
    {
        { "unknown model", StatusCode.NotFound, 404 },
        { "too many steps", StatusCode.OutOfRange, 400 },
        { "confidence above 1", StatusCode.InvalidArgument, 400 },
        { "corrupt image", StatusCode.InvalidArgument, 400 },
        { "value outside [0, 1]", StatusCode.InvalidArgument, 400 },
        { "model failed to load", StatusCode.FailedPrecondition, 400 },
        { "oversized body", StatusCode.ResourceExhausted, 413 },
        { "not json", StatusCode.InvalidArgument, 400 },
    };

    [Theory]
    [MemberData(nameof(Mistakes))]
    public async Task Each_mistake_gets_the_http_status_of_its_class_and_the_error_object(string mistake, StatusCode code, int http)
    {
        var png = TestModels.Png(1);
        var pixels = Pixels(1, 2);
        pixels["inputs"]![0]!["data"]![0]![0]![0]![5] = 255f;
        var confident = Pixels(1, 2);
        confident["parameters"]!["min_confidence"] = 1.5;
        (string Model, string Body) request = mistake switch
        {
            "unknown model" => ("nope", Pixels(1, 2).ToJsonString()),
            "too many steps" => (TestModels.Tiny, Pixels(1, 100_001).ToJsonString()),
            "confidence above 1" => (TestModels.Tiny, confident.ToJsonString()),
            "corrupt image" => (TestModels.Tiny, Image(png[..100], 2).ToJsonString()),
            "value outside [0, 1]" => (TestModels.Tiny, pixels.ToJsonString()),
            "model failed to load" => (TestModels.Broken, Pixels(1, 2).ToJsonString()),
            "oversized body" => (TestModels.Tiny, Image(new byte[70_000], 2).ToJsonString()),
            _ => (TestModels.Tiny, "{\"inputs\": [ {"),
        };
        // The status of the class (a body over the size limit is HTTP's own 413 rather than 429).
        if (mistake != "oversized body") Assert.Equal(http, Oip.RestApi.HttpStatusOf(code));
        foreach (var endpoint in new[] { "infer", "infer_stream" })
        {
            using var response = await _http.PostAsync(new Uri($"/v2/models/{request.Model}/{endpoint}", UriKind.Relative),
                new StringContent(request.Body, Encoding.UTF8, "application/json"));
            Assert.Equal(http, (int)response.StatusCode);
            Assert.Equal("application/json", response.Content.Headers.ContentType!.MediaType);
            var error = JsonNode.Parse(await response.Content.ReadAsStringAsync())!.AsObject();
            Assert.Equal(["error"], error.Select(p => p.Key));
            Assert.False(string.IsNullOrWhiteSpace((string)error["error"]!));
        }
        // The server keeps serving.
        Assert.Equal(HttpStatusCode.OK, (await Post($"/v2/models/{TestModels.Tiny}/infer", Pixels(1, 1))).Status);
    }

    [Fact]
    public async Task Admission_refusals_are_429_and_say_when_to_retry_when_the_engine_does()
    {
        await using var host = await ServerHost.InProcessAsync(("Ecmt:Limits:MaxConcurrentStreams", "1"), ("Ecmt:Limits:MaxSteps", "100000"));
        using var http = host.HttpClient();
        using var cts = new CancellationTokenSource();
        using var busy = host.Client.Classify(Requests.Tensor(TestModels.Deep, maxSteps: 100_000), cancellationToken: cts.Token);
        Assert.True(await busy.ResponseStream.MoveNext(CancellationToken.None));
        using var refused = await http.PostAsync(new Uri($"/v2/models/{TestModels.Tiny}/infer", UriKind.Relative),
            new StringContent(Pixels(1, 1).ToJsonString(), Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.TooManyRequests, refused.StatusCode);
        Assert.Contains("too many classifications", (await refused.Content.ReadFromJsonAsync<JsonObject>())!["error"]!.ToString(), StringComparison.Ordinal);
        cts.Cancel();
    }

    [Fact]
    public async Task The_openapi_description_parses_and_describes_every_rest_endpoint()
    {
        using var response = await _http.GetAsync(new Uri("/openapi/ecmt.json", UriKind.Relative));
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var text = await response.Content.ReadAsStringAsync();
        var read = Microsoft.OpenApi.OpenApiDocument.Parse(text, "json");
        Assert.Empty(read.Diagnostic?.Errors ?? []);
        var document = read.Document!;

        // Every route the app maps for HTTP clients (not gRPC, not the page, not the probes) is in the description.
        var endpoints = _host.App.Services.GetRequiredService<EndpointDataSource>().Endpoints.OfType<RouteEndpoint>()
            .Where(e => e.RoutePattern.RawText is { } p && (p.StartsWith("/v2", StringComparison.Ordinal) || p.StartsWith("/ecmt/", StringComparison.Ordinal)))
            .SelectMany(e => e.Metadata.GetMetadata<HttpMethodMetadata>()!.HttpMethods.Select(m => (Path: e.RoutePattern.RawText!.TrimEnd('/'), Method: m)))
            .ToList();
        Assert.True(endpoints.Count >= 13, $"only {endpoints.Count} REST endpoints found");
        foreach (var (path, method) in endpoints)
        {
            Assert.True(document.Paths.TryGetValue(path, out var item), $"{method} {path} is not in the OpenAPI description");
            Assert.Contains(item!.Operations!, o => o.Key.ToString().Equals(method, StringComparison.OrdinalIgnoreCase));
        }

        // The inference request and response schemas carry the protocol's snake_case names.
        var schemas = document.Components!.Schemas!;
        Assert.Equal(["id", "inputs", "outputs", "parameters"], schemas["InferenceRequestJson"].Properties!.Keys.Order());
        Assert.Contains("model_name", schemas["InferenceResponseJson"].Properties!.Keys);
        var infer = document.Paths["/v2/models/{name}/infer"]!.Operations!.Single().Value;
        Assert.Contains("application/json", infer.RequestBody!.Content!.Keys);
        Assert.Contains("413", infer.Responses!.Keys);
        var stream = document.Paths["/v2/models/{name}/infer_stream"]!.Operations!.Single().Value;
        Assert.Contains("application/x-ndjson", stream.Responses!["200"].Content!.Keys);
    }

    [Fact]
    public async Task The_ecmt_v1_model_listing_is_served_as_json()
    {
        var (status, body) = await Get("/ecmt/v1/models");
        Assert.Equal(HttpStatusCode.OK, status);
        var tiny = body["models"]!.AsArray().Single(m => (string)m!["name"]! == TestModels.Tiny)!;
        Assert.Equal(TestModels.Size, (int)tiny["imageSize"]!);
        Assert.Equal(TestModels.Classes, tiny["classNames"]!.AsArray().Count);
        Assert.True((bool)tiny["ready"]!);
        Assert.False((bool)body["models"]!.AsArray().Single(m => (string)m!["name"]! == TestModels.Broken)!["ready"]!);
        Assert.Equal(HttpStatusCode.NotFound, (await Get("/ecmt/v1/models/nope")).Status);
    }
}

/// <summary>REST on a real HTTP/1.1 port: a client that closes the connection mid-stream stops the engine within one step.</summary>
public sealed class RestKestrelTests
{
    [Fact]
    public async Task Closing_the_connection_mid_stream_stops_the_engine_within_one_step()
    {
        await using var host = await ServerHost.KestrelWithHttpAsync(null, ("Ecmt:Limits:MaxSteps", "1000000"));
        var model = host.Model(TestModels.Deep);
        var run = model.NextRun();
        long before = model.StepsRun;

        using var http = new HttpClient { BaseAddress = host.HttpAddress, DefaultRequestVersion = HttpVersion.Version11 };
        var body = new JsonObject
        {
            ["parameters"] = new JsonObject { ["max_steps"] = 1_000_000 },
            ["inputs"] = new JsonArray(new JsonObject
            {
                ["name"] = "image", ["datatype"] = "BYTES", ["shape"] = new JsonArray(1), ["data"] = new JsonArray(Convert.ToBase64String(TestModels.Png(3))),
            }),
        };
        using (var request = new HttpRequestMessage(HttpMethod.Post, $"/v2/models/{TestModels.Deep}/infer_stream") { Content = new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json") })
        using (var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead))
        {
            Assert.Equal(HttpVersion.Version11, response.Version);
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
            for (int i = 1; i <= 3; i++)
            {
                var line = JsonNode.Parse((await reader.ReadLineAsync())!)!;
                Assert.Equal(i, (long)line["outputs"]!.AsArray().Single(o => (string)o!["name"]! == "step")!["data"]![0]!);
            }
        }
        // Disposing the response closed the connection.
        var summary = await run.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.True(summary.Cancelled);
        Assert.InRange(summary.StepsAfterCancellation!.Value, 0, 1);
        Assert.InRange(summary.StepsRun, 3, 10_000);
        Assert.Equal(summary.StepsRun, model.StepsRun - before);
        Assert.Equal(0, model.ActiveSessions);
    }

    [Fact]
    public async Task The_http_port_serves_rest_and_the_page_over_http1_while_grpc_keeps_its_port()
    {
        await using var host = await ServerHost.KestrelWithHttpAsync(null);
        Assert.NotEqual(host.Address.Port, host.HttpAddress!.Port);
        using var http = new HttpClient { BaseAddress = host.HttpAddress };
        using var ready = await http.GetAsync(new Uri("/v2/health/ready", UriKind.Relative));
        Assert.Equal(HttpVersion.Version11, ready.Version);
        Assert.Equal(HttpStatusCode.OK, ready.StatusCode);
        var page = await http.GetStringAsync(new Uri("/", UriKind.Relative));
        Assert.Contains("infer_stream", page, StringComparison.Ordinal);
        var samples = JsonNode.Parse(await http.GetStringAsync(new Uri("/page/samples.json", UriKind.Relative)))!.AsArray();
        Assert.Equal(10, samples.Count);
        using var png = await http.GetAsync(new Uri((string)samples[0]!["url"]!, UriKind.Relative));
        Assert.Equal("image/png", png.Content.Headers.ContentType!.MediaType);
        Assert.Equal(HttpStatusCode.NotFound, (await http.GetAsync(new Uri("/page/nope.js", UriKind.Relative))).StatusCode);
        // gRPC still answers on its own port.
        Assert.True((await host.Inference.ServerLiveAsync(new ServerLiveRequest())).Live);
    }
}
