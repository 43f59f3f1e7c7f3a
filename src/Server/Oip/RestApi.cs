using System.Text.Json;
using Ecmt.Engine.Serving;
using Ecmt.Protos.Inference;
using Grpc.Core;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.Options;

namespace Ecmt.Server.Oip;

/// <summary>
/// The Open Inference Protocol over REST (KServe v2 "HTTP/REST"), a streaming endpoint with one JSON line per step,
/// and ecmt.v1's model listing as JSON (for the page). Endpoint routing throughout, so ASP.NET Core's authorization
/// and rate limiting apply to every endpoint alike. Errors: {"error": "..."} with the HTTP status of the gRPC code
/// (<see cref="HttpStatusOf"/>), the same classes as every other protocol.
/// </summary>
static class RestApi
{
    public const string Tag = "Open Inference Protocol (REST)";
    const string NdJson = "application/x-ndjson";
    /// <summary>Protobuf's JSON mapping, with fields at their default values written too (a model that is not ready says so).</summary>
    static readonly Google.Protobuf.JsonFormatter ProtoJson = new(Google.Protobuf.JsonFormatter.Settings.Default.WithFormatDefaultValues(true));

    /// <param name="openHealth">Health answers without a credential (Ecmt:Access:OpenHealth); the rest falls back to the caller policy.</param>
    public static void Map(IEndpointRouteBuilder app, bool openHealth)
    {
        var v2 = app.MapGroup("/v2").WithTags(Tag);
        v2.MapGet("", () => Results.Json(RestJson.FromMessage(OipInference.ServerMetadata()), RestJson.Options))
            .WithName("ServerMetadata").WithSummary("The server's name, version and protocol extensions.")
            .Produces<ServerMetadataJson>();
        v2.MapGet("/health/live", () => Results.Json(new LiveJson(true), RestJson.Options))
            .WithName("ServerLive").WithSummary("200 while the server answers.")
            .Produces<LiveJson>().Open(openHealth);
        v2.MapGet("/health/ready", (Classifications c) => Results.Json(new ReadyJson(c.ServerReady), RestJson.Options, statusCode: c.ServerReady ? 200 : 400))
            .WithName("ServerReady").WithSummary("200 once every model has loaded or failed and one is ready; 400 before, and from the start of shutdown.")
            .Produces<ReadyJson>().Produces<ReadyJson>(400).Open(openHealth);

        foreach (var (prefix, versioned) in new[] { ("/models/{name}", false), ("/models/{name}/versions/{version}", true) })
        {
            string suffix = versioned ? "Version" : "";
            v2.MapGet(prefix, (HttpContext http, OipInference oip, string name, string? version) =>
                    Handle(http, () => Json(http, RestJson.FromMessage(OipInference.Metadata(oip.RequireModel(name, version, "name"))))))
                .WithName("ModelMetadata" + suffix).WithSummary("A model's versions, platform, inputs and outputs.")
                .Produces<ModelMetadataJson>().Errors(404);
            v2.MapGet(prefix + "/ready", (HttpContext http, OipInference oip, string name, string? version) => Handle(http, () =>
                {
                    bool ready = oip.Classifications.ModelReady(oip.RequireModel(name, version, "name"));
                    return Json(http, new ReadyJson(ready, name), ready ? 200 : 400);
                }))
                .WithName("ModelReady" + suffix).WithSummary("200 while the model is loaded and the server is not shutting down; 400 otherwise.")
                .Produces<ReadyJson>().Produces<ReadyJson>(400).Errors(404);
            v2.MapPost(prefix + "/infer", (HttpContext http, OipInference oip, IOptions<EcmtOptions> options, string name, string? version) =>
                    Handle(http, () => Infer(http, oip, options.Value, name, version)))
                .WithName("ModelInfer" + suffix)
                .WithSummary("Classifies one image; the answer after the last step (the stop policy's, or max_steps').")
                .WithDescription("Inputs: 'pixels' (FP32 [1, C, H, W], intensities in [0, 1]) or 'image' (BYTES [1]: the base64 of a PNG or JPEG file, "
                    + "or the file itself as binary data after the JSON with the parameter binary_data_size and the header Inference-Header-Content-Length). "
                    + "Parameters: max_steps (0 or absent: the server's default), and the stop policy: min_confidence, stable_steps, min_steps, min_margin, min_gate (every rule given must hold) or recommended.")
                // Any content type: curl -d sends form-urlencoded, and the body is read as JSON whatever it is labelled.
                .Accepts<InferenceRequestJson>("application/json", "application/octet-stream", "*/*")
                .Produces<InferenceResponseJson>().Errors(400, 404, 413, 429, 503);
            v2.MapPost(prefix + "/infer_stream", (HttpContext http, OipInference oip, IOptions<EcmtOptions> options, string name, string? version) =>
                    Handle(http, () => InferStream(http, oip, options.Value, name, version)))
                .WithName("ModelInferStream" + suffix)
                .WithSummary("Classifies one image and streams one JSON line (application/x-ndjson) per time step as it is computed.")
                .WithDescription("Each line is an inference response whose parameter triton_final_response is true on the last line only (with "
                    + "triton_enable_empty_final_response the last line is an empty response carrying it). Closing the connection cancels the "
                    + "computation within one step. An error before the first step is an HTTP error status; after it, a last line {\"error\", \"status\"}.")
                .Accepts<InferenceRequestJson>("application/json", "*/*")
                .Produces<InferenceResponseJson>(200, NdJson).Errors(400, 404, 413, 429, 503);
        }

        // ecmt.v1's ListModels and GetModel as JSON (protobuf's JSON mapping): the page's model list and limits.
        var ecmt = app.MapGroup("/ecmt/v1").WithTags("ecmt.v1 (JSON)");
        ecmt.MapGet("/models", (Classifications c) =>
                Results.Text(ProtoJson.Format(new Protos.V1.ListModelsResponse { Models = { c.Models.Select(m => ClassifierService.Describe(c, m)) } }), "application/json"))
            .WithName("ListModels").WithSummary("ecmt.v1 ListModels: the hosted models, their input size, classes, limits and readiness.")
            .Produces<object>();
        ecmt.MapGet("/models/{name}", (HttpContext http, Classifications c, string name) =>
                Handle(http, () => Text(http, ProtoJson.Format(ClassifierService.Describe(c, c.RequireModel(name, "name"))))))
            .WithName("GetModel").WithSummary("ecmt.v1 GetModel: one hosted model.")
            .Produces<object>().Errors(404);
    }

    static RouteHandlerBuilder Open(this RouteHandlerBuilder builder, bool open) => open ? builder.AllowAnonymous() : builder;

    static RouteHandlerBuilder Errors(this RouteHandlerBuilder builder, params int[] statuses)
    {
        foreach (int status in statuses) builder.Produces<ErrorJson>(status);
        return builder;
    }

    static async Task Infer(HttpContext http, OipInference oip, EcmtOptions options, string name, string? version)
    {
        var (request, binaryOutputs) = await ReadRequest(http, options, name, version);
        var job = oip.Prepare(request);
        var last = await oip.Classifications.RunAsync(job.Job, _ => ValueTask.CompletedTask, DateTime.MaxValue, http.RequestAborted);
        var response = OipInference.Response(job, last, final: null);
        if (binaryOutputs.Count == 0)
        {
            await Json(http, RestJson.FromMessage(response));
            return;
        }
        // Binary tensor data extension: the JSON, then the outputs' bytes; the header says where the JSON ends.
        using var binary = new MemoryStream();
        var header = JsonSerializer.SerializeToUtf8Bytes(RestJson.FromMessage(response, binaryOutputs, binary), RestJson.Options);
        http.Response.ContentType = "application/octet-stream";
        http.Response.Headers[RestJson.HeaderLength] = header.Length.ToString(System.Globalization.CultureInfo.InvariantCulture);
        http.Response.ContentLength = header.Length + binary.Length;
        await http.Response.Body.WriteAsync(header, http.RequestAborted);
        await http.Response.Body.WriteAsync(binary.GetBuffer().AsMemory(0, (int)binary.Length), http.RequestAborted);
    }

    static async Task InferStream(HttpContext http, OipInference oip, EcmtOptions options, string name, string? version)
    {
        var (request, _) = await ReadRequest(http, options, name, version);
        var job = oip.Prepare(request);
        try
        {
            // The 200 and its headers go out with the first step, so admission and input errors still get their status.
            await oip.Classifications.RunAsync(job.Job, step => new ValueTask(Line(http, RestJson.FromMessage(OipInference.Response(job, step, OipInference.IsFinal(job, step))))),
                DateTime.MaxValue, http.RequestAborted);
            if (job.EmptyFinal) await Line(http, RestJson.FromMessage(OipInference.EmptyFinal(job)));
        }
        catch (RpcException e) when (http.Response.HasStarted && !http.RequestAborted.IsCancellationRequested)
        {
            Count(http, e.StatusCode);
            await Line(http, new ErrorJson(e.Status.Detail, ServerMetrics.CodeName(e.StatusCode)));
        }
    }

    /// <summary>Writes one line and flushes it, so the client sees each step as it is computed.</summary>
    static async Task Line<T>(HttpContext http, T value)
    {
        if (!http.Response.HasStarted)
        {
            http.Response.ContentType = NdJson;
            // Proxies that buffer responses (nginx) pass this one through line by line.
            http.Response.Headers["X-Accel-Buffering"] = "no";
            http.Response.Headers.CacheControl = "no-store";
        }
        var bytes = JsonSerializer.SerializeToUtf8Bytes(value, RestJson.Options);
        await http.Response.Body.WriteAsync(bytes, http.RequestAborted);
        await http.Response.Body.WriteAsync("\n"u8.ToArray(), http.RequestAborted);
        await http.Response.Body.FlushAsync(http.RequestAborted);
    }

    /// <summary>
    /// The body as the protocol's request (JSON, or JSON followed by binary tensor data) and the outputs the client
    /// wants as binary data. Larger than Ecmt:Limits:MaxMessageBytes: 413.
    /// </summary>
    static async Task<(ModelInferRequest Request, HashSet<string> BinaryOutputs)> ReadRequest(HttpContext http, EcmtOptions options, string name, string? version)
    {
        int limit = options.Limits.MaxMessageBytes;
        if (http.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } size) size.MaxRequestBodySize = limit;
        if (http.Request.ContentLength > limit) throw TooLarge(http.Request.ContentLength.Value, limit);
        using var body = new MemoryStream();
        var buffer = new byte[81920];
        for (int read; (read = await http.Request.Body.ReadAsync(buffer, http.RequestAborted)) > 0;)
        {
            if (body.Length + read > limit) throw TooLarge(body.Length + read, limit);
            body.Write(buffer, 0, read);
        }
        var all = body.GetBuffer().AsMemory(0, (int)body.Length);

        int jsonLength = all.Length;
        if (http.Request.Headers.TryGetValue(RestJson.HeaderLength, out var header))
            if (!int.TryParse(header, out jsonLength) || jsonLength < 0 || jsonLength > all.Length)
                throw Classifications.Fail(StatusCode.InvalidArgument, $"{RestJson.HeaderLength} is '{header}'; it must be the JSON's length, at most the body's {all.Length} bytes");
        InferenceRequestJson? json;
        try
        {
            json = JsonSerializer.Deserialize<InferenceRequestJson>(all.Span[..jsonLength], RestJson.Options);
        }
        catch (JsonException e)
        {
            throw Classifications.Fail(StatusCode.InvalidArgument, $"the body is not an inference request object: {e.Message}");
        }
        if (json is null) throw Classifications.Fail(StatusCode.InvalidArgument, "the body is not an inference request object: it is null");
        var request = RestJson.ToMessage(name, version, json, all[jsonLength..]);

        bool allBinary = json.Parameters?.TryGetValue("binary_data_output", out var b) == true && b.ValueKind == JsonValueKind.True;
        var requested = json.Outputs?.Where(o => o.Name is not null).ToList() ?? [];
        var binaryOutputs = requested.Count == 0
            ? (allBinary ? OipInference.OutputNames.ToHashSet() : [])
            : requested.Where(o => o.Parameters?.TryGetValue("binary_data", out var v) == true ? v.ValueKind == JsonValueKind.True : allBinary)
                .Select(o => o.Name!).ToHashSet();
        return (request, binaryOutputs);
    }

    static BadHttpRequestException TooLarge(long bytes, int limit) =>
        new($"the request is {bytes} bytes or more; this server accepts at most {limit} (Ecmt:Limits:MaxMessageBytes)", StatusCodes.Status413PayloadTooLarge);

    /// <summary>Runs an endpoint's work and answers its failure in the protocol's shape: {"error": "..."} with the matching HTTP status.</summary>
    static async Task Handle(HttpContext http, Func<Task> work)
    {
        try
        {
            await work();
        }
        catch (RpcException e) when (!http.Response.HasStarted && !http.RequestAborted.IsCancellationRequested)
        {
            Count(http, e.StatusCode);
            http.Response.StatusCode = HttpStatusOf(e.StatusCode);
            // Admission refusals may say when to come back (gRPC's retry pushback, in ms): HTTP's Retry-After, in s.
            if (e.Trailers.GetValue("grpc-retry-pushback-ms") is { } ms && long.TryParse(ms, out long pushback) && pushback >= 0)
                http.Response.Headers.RetryAfter = ((pushback + 999) / 1000).ToString(System.Globalization.CultureInfo.InvariantCulture);
            await Json(http, new ErrorJson(e.Status.Detail), http.Response.StatusCode);
        }
        catch (BadHttpRequestException e) when (!http.Response.HasStarted && !http.RequestAborted.IsCancellationRequested)
        {
            // Kestrel's own request limits and ours on the body size.
            Count(http, e.StatusCode == StatusCodes.Status413PayloadTooLarge ? StatusCode.ResourceExhausted : StatusCode.InvalidArgument);
            await Json(http, new ErrorJson(e.Message), e.StatusCode);
        }
        catch (Exception e) when (http.RequestAborted.IsCancellationRequested && e is RpcException or OperationCanceledException or IOException)
        {
            // The client went away; the engine has stopped (Classifications logged it). Nothing is left to answer.
            Count(http, StatusCode.Cancelled);
        }
    }

    static void Count(HttpContext http, StatusCode code) =>
        http.RequestServices.GetRequiredService<ServerMetrics>().Error($"{http.Request.Method} {(http.GetEndpoint() as RouteEndpoint)?.RoutePattern.RawText}", code);

    /// <summary>The HTTP status of a gRPC status code: the mapping of google.rpc.Code (googleapis' code.proto), CANCELLED 499 included.</summary>
    public static int HttpStatusOf(StatusCode code) => code switch
    {
        StatusCode.OK => 200,
        StatusCode.InvalidArgument or StatusCode.OutOfRange or StatusCode.FailedPrecondition => 400,
        StatusCode.Unauthenticated => 401,
        StatusCode.PermissionDenied => 403,
        StatusCode.NotFound => 404,
        StatusCode.AlreadyExists or StatusCode.Aborted => 409,
        StatusCode.ResourceExhausted => 429,
        StatusCode.Cancelled => 499,
        StatusCode.Unimplemented => 501,
        StatusCode.Unavailable => 503,
        StatusCode.DeadlineExceeded => 504,
        _ => 500,
    };

    static Task Json<T>(HttpContext http, T value, int status = 200)
    {
        http.Response.StatusCode = status;
        return http.Response.WriteAsJsonAsync(value, RestJson.Options, http.RequestAborted);
    }

    static Task Text(HttpContext http, string json)
    {
        http.Response.ContentType = "application/json";
        return http.Response.WriteAsync(json, http.RequestAborted);
    }
}
