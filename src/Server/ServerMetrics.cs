using System.Diagnostics.Metrics;
using Grpc.Core;
using Microsoft.AspNetCore.Http.Features;

namespace Ecmt.Server;

/// <summary>The transport's instruments (meter <see cref="MeterName"/>); the engine's are in <see cref="Engine.Serving.EngineMetrics"/>.</summary>
public sealed class ServerMetrics
{
    public const string MeterName = "Ecmt.Server";

    readonly UpDownCounter<long> _activeStreams;
    readonly Counter<long> _errors;

    public ServerMetrics(IMeterFactory factory)
    {
        var meter = factory.Create(MeterName);
        _activeStreams = meter.CreateUpDownCounter<long>("ecmt.classify.active_streams", "{stream}", "Classifications admitted and not yet finished, over every protocol (Classify streams, ModelInfer, ModelStreamInfer requests, REST)");
        _errors = meter.CreateCounter<long>("ecmt.rpc.errors", "{call}", "gRPC calls that ended with a status other than OK, by method and status code");
    }

    public void StreamStarted() => _activeStreams.Add(1);
    public void StreamEnded() => _activeStreams.Add(-1);

    public void Error(string method, StatusCode code) =>
        _errors.Add(1, new KeyValuePair<string, object?>("method", method), new KeyValuePair<string, object?>("code", CodeName(code)));

    /// <summary>NOT_FOUND, RESOURCE_EXHAUSTED, …: the names the gRPC specification uses.</summary>
    public static string CodeName(StatusCode code) => code switch
    {
        StatusCode.OK => "OK",
        StatusCode.Cancelled => "CANCELLED",
        StatusCode.Unknown => "UNKNOWN",
        StatusCode.InvalidArgument => "INVALID_ARGUMENT",
        StatusCode.DeadlineExceeded => "DEADLINE_EXCEEDED",
        StatusCode.NotFound => "NOT_FOUND",
        StatusCode.AlreadyExists => "ALREADY_EXISTS",
        StatusCode.PermissionDenied => "PERMISSION_DENIED",
        StatusCode.ResourceExhausted => "RESOURCE_EXHAUSTED",
        StatusCode.FailedPrecondition => "FAILED_PRECONDITION",
        StatusCode.Aborted => "ABORTED",
        StatusCode.OutOfRange => "OUT_OF_RANGE",
        StatusCode.Unimplemented => "UNIMPLEMENTED",
        StatusCode.Internal => "INTERNAL",
        StatusCode.Unavailable => "UNAVAILABLE",
        StatusCode.DataLoss => "DATA_LOSS",
        StatusCode.Unauthenticated => "UNAUTHENTICATED",
        _ => ((int)code).ToString(),
    };
}

/// <summary>
/// Counts every gRPC call's final status, read from the grpc-status the response carries (trailers, or headers for
/// a trailers-only response). This sees statuses no service code produces: an oversized message, a deadline, a
/// client that went away.
/// </summary>
sealed class GrpcStatusMiddleware(RequestDelegate next, ServerMetrics metrics, ServerLifecycle lifecycle)
{
    const string WatchPath = "/grpc.health.v1.Health/Watch";

    public async Task InvokeAsync(HttpContext context)
    {
        if (context.Request.ContentType?.StartsWith("application/grpc", StringComparison.Ordinal) != true)
        {
            await next(context);
            return;
        }
        CancellationTokenSource? watch = null;
        if (context.Request.Path == WatchPath)
        {
            // Health Watch streams never end on their own; end them at shutdown so the drain need not wait for them.
            watch = CancellationTokenSource.CreateLinkedTokenSource(context.RequestAborted, lifecycle.WatchesEnd);
            context.RequestAborted = watch.Token;
        }
        try
        {
            await next(context);
        }
        finally
        {
            watch?.Dispose();
            var code = StatusOf(context);
            if (code != StatusCode.OK) metrics.Error(context.Request.Path.Value ?? "", code);
        }
    }

    static StatusCode StatusOf(HttpContext context)
    {
        var trailers = context.Features.Get<IHttpResponseTrailersFeature>()?.Trailers;
        string? value = trailers?["grpc-status"].FirstOrDefault() ?? context.Response.Headers["grpc-status"].FirstOrDefault();
        // No status written, or UNKNOWN from a request message that never arrived: the client reset the stream before the
        // server finished. That is a cancel, not a server error.
        if (value is not null && int.TryParse(value, out int code) && !((StatusCode)code == StatusCode.Unknown && context.RequestAborted.IsCancellationRequested))
            return (StatusCode)code;
        return context.RequestAborted.IsCancellationRequested ? StatusCode.Cancelled : StatusCode.Unknown;
    }
}
