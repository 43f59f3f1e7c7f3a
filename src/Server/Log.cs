using Ecmt.Engine.Serving;
using Grpc.Core;

namespace Ecmt.Server;

/// <summary>The server's structured log events (source-generated: no cost when the level is off).</summary>
static partial class Log
{
    [LoggerMessage(1, LogLevel.Information, "Serving {Count} model(s) from {Directory} on backend {Backend}")]
    public static partial void Serving(ILogger logger, int count, string directory, string backend);

    [LoggerMessage(2, LogLevel.Warning, "Skipping {Folder}: it holds a model that is not converted (no conversion.json or thresholds.safetensors)")]
    public static partial void SkippedUnconverted(ILogger logger, string folder);

    [LoggerMessage(3, LogLevel.Error, "Not serving {Folder}: its config.json is unreadable: {Reason}")]
    public static partial void BadConfig(ILogger logger, string folder, string reason);

    [LoggerMessage(4, LogLevel.Information, "Model {Model} ready in {Seconds:F2} s: depth {Depth}, dim {Dim}, {Classes} classes, backend {Backend}")]
    public static partial void ModelReady(ILogger logger, string model, double seconds, int depth, int dim, int classes, string? backend);

    [LoggerMessage(5, LogLevel.Error, "Model {Model} failed to load from {Directory}: {Reason}")]
    public static partial void ModelFailed(ILogger logger, string model, string directory, string? reason);

    [LoggerMessage(6, LogLevel.Information, "Classify {Model}: class {Class} ({Confidence:F3}) after {Steps} of {MaxSteps} steps, {Reason}, {ElapsedMs:F1} ms")]
    public static partial void Classified(ILogger logger, string model, int @class, float confidence, int steps, int maxSteps, StopReason reason, double elapsedMs);

    [LoggerMessage(7, LogLevel.Information, "Classify {Model} ended early: {Status}")]
    public static partial void EndedEarly(ILogger logger, string model, StatusCode status);

    [LoggerMessage(8, LogLevel.Error, "Classify {Model} failed in the engine")]
    public static partial void EngineFailed(ILogger logger, Exception error, string model);

    [LoggerMessage(9, LogLevel.Information, "Shutting down: health is NOT_SERVING; in-flight streams drain after {DelaySeconds} s")]
    public static partial void ShuttingDown(ILogger logger, double delaySeconds);

    [LoggerMessage(10, LogLevel.Warning, "Publishing health failed")]
    public static partial void HealthPublishFailed(ILogger logger, Exception error);

    [LoggerMessage(11, LogLevel.Information, "Access file {Path} loaded: {Callers} caller(s)")]
    public static partial void AccessLoaded(ILogger logger, string path, int callers);

    [LoggerMessage(12, LogLevel.Error, "Access file {Path} could not be read again; keeping the previous version")]
    public static partial void AccessReloadFailed(ILogger logger, Exception exception, string path);

    [LoggerMessage(30, LogLevel.Error, "Backend auto: a CUDA device is present but broken, serving on the fast CPU path instead: {Reason}")]
    public static partial void AutoFellBack(ILogger logger, string reason);

    [LoggerMessage(31, LogLevel.Error, "Model {Model} stopped serving after a device fault: {Reason}")]
    public static partial void ModelFaulted(ILogger logger, string model, string? reason);
}
