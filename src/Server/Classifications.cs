using System.Diagnostics;
using Ecmt.Engine.Imaging;
using Ecmt.Engine.Serving;
using Ecmt.Server.Access;
using Grpc.Core;
using Microsoft.Extensions.Options;
using StopPolicy = Ecmt.Protos.StopPolicy;

namespace Ecmt.Server;

/// <summary>What a client sent as the image: encoded PNG/JPEG bytes, or intensities (C, H, W) in [0, 1].</summary>
abstract record ModelInput
{
    /// <summary>PNG or JPEG bytes, decoded by the rules of <see cref="ImageInput.Decode"/>.</summary>
    public sealed record Encoded(ReadOnlyMemory<byte> Bytes) : ModelInput;

    /// <summary>Intensities: <paramref name="Shape"/> must be the model's (C, H, W); <paramref name="Data"/> (C·H·W) row-major.</summary>
    public sealed record Intensities(int[] Shape, float[] Data) : ModelInput;

    /// <summary>How the protocol names this input, prefixed to messages about it ("image", "input 'pixels'"); null: no prefix.</summary>
    public string? Where { get; init; }
}

/// <summary>A classification checked and ready to run.</summary>
sealed record ClassifyJob(HostedModel Model, ModelInput Input, int MaxSteps, StopPolicy Stop);

/// <summary>
/// The one place every protocol (ecmt.v1, the Open Inference Protocol over gRPC and REST, the page) checks a
/// classification and runs it: model lookup, the step limit, the stop policy, readiness, admission, image decoding,
/// the engine's run, and the mapping of every failure to a status code (<see cref="StatusCode"/>; REST turns it into
/// an HTTP status). Failures are thrown as <see cref="RpcException"/>, so the gRPC services let them through and REST
/// maps them in one function.
/// </summary>
sealed class Classifications(ModelHost host, StreamLimiter limiter, CallerAccess access, ServerLifecycle lifecycle, ServerMetrics metrics,
    IOptions<EcmtOptions> options, ILogger<Classifications> logger)
{
    readonly EcmtOptions _options = options.Value;

    /// <summary>Steps run when a request asks for none.</summary>
    public int DefaultSteps => Math.Min(_options.DefaultSteps, _options.Limits.MaxSteps);
    public int MaxSteps => _options.Limits.MaxSteps;
    /// <summary>The models the current caller may use (every model with access control off): what listings show.</summary>
    public IEnumerable<HostedModel> Models => host.Models.Where(m => access.Allows(m.Name));
    public ModelHost Host => host;

    /// <summary>New work is refused once shutdown began.</summary>
    public void RequireAccepting()
    {
        if (lifecycle.Stopping) throw Fail(StatusCode.Unavailable, "the server is shutting down; retry on another instance");
    }

    /// <summary>Whether the server as a whole is ready: the readiness of grpc.health.v1 service "" (<see cref="HealthNames"/>).</summary>
    public bool ServerReady => !lifecycle.Stopping && host.LoadingFinished && host.Models.Any(m => m.State == ModelState.Ready);

    /// <summary>Whether one model is loaded and the server is not shutting down.</summary>
    public bool ModelReady(HostedModel model) => model.State == ModelState.Ready && !lifecycle.Stopping;

    /// <param name="field">How the protocol names the field, for the message ("model", "name", "model_name").</param>
    public HostedModel RequireModel(string? name, string field)
    {
        if (string.IsNullOrWhiteSpace(name))
            throw Fail(StatusCode.InvalidArgument, $"{field} is missing: name a hosted model ({Hosted})");
        var model = host.Find(name) ?? throw Fail(StatusCode.NotFound, $"model '{name}' is not hosted here; hosted: {Hosted}");
        // Access control: the caller's models only (PERMISSION_DENIED).
        access.RequireModel(model);
        return model;
    }

    string Hosted => string.Join(", ", Models.Select(m => m.Name));

    /// <summary>The steps to run: 0 means the default; more than the limit is OUT_OF_RANGE.</summary>
    public int Steps(long requested)
    {
        if (requested < 0) throw Fail(StatusCode.InvalidArgument, $"max_steps is {requested}: ask for 1 to {MaxSteps} steps, or 0 for the default ({DefaultSteps})");
        if (requested > MaxSteps)
            throw Fail(StatusCode.OutOfRange, $"max_steps is {requested}; this server runs at most {MaxSteps} steps per request");
        return requested == 0 ? DefaultSteps : (int)requested;
    }

    /// <summary>The policy if its values are in range, else INVALID_ARGUMENT naming the value.</summary>
    public static StopPolicy Validated(StopPolicy policy)
    {
        try
        {
            policy.Validate();
        }
        catch (ArgumentException e)
        {
            throw Fail(StatusCode.InvalidArgument, e.Message);
        }
        return policy;
    }

    /// <summary>
    /// Runs a checked job: refuses a model that is not ready, admits it under the concurrency limit, decodes its input,
    /// and calls <paramref name="onStep"/> with every step as the engine yields it (the last carries the stop reason).
    /// Cancelling <paramref name="cancellationToken"/> stops the engine within one step. Returns the last step.
    /// </summary>
    /// <param name="deadline">The call's deadline (UTC), to tell DEADLINE_EXCEEDED from CANCELLED; MaxValue when none.</param>
    public async Task<StepResult> RunAsync(ClassifyJob job, Func<StepResult, ValueTask> onStep, DateTime deadline, CancellationToken cancellationToken)
    {
        long received = Stopwatch.GetTimestamp();
        var model = job.Model;
        if (model.State != ModelState.Ready)
            throw NotReady(new ModelNotReadyException(model.Name, model.State,
                model.State == ModelState.Failed ? (model.Faulted ? $"model '{model.Name}' stopped serving: {model.Error}" : $"model '{model.Name}' failed to load: {model.Error}") : $"model '{model.Name}' is still loading; retry shortly"));

        // Per-caller admission (access control: the caller's rate and concurrent streams), then the server's.
        using var callerSlot = access.Admit();
        using var slot = limiter.TryAcquire()
            ?? throw Fail(StatusCode.ResourceExhausted, $"too many classifications: this server admits {_options.Limits.MaxConcurrentStreams} at once; retry later",
                Pushback(TimeSpan.FromSeconds(1)));
        metrics.StreamStarted();
        try
        {
            var pixels = Decode(job);
            StepResult? last = null;
            await foreach (var step in model.ClassifyAsync(pixels, job.MaxSteps, job.Stop, cancellationToken))
            {
                last = step;
                await onStep(step);
                if (step.StopReason != StopReason.None)
                    Log.Classified(logger, model.Name, step.Prediction, step.Confidence, step.Step, job.MaxSteps, step.StopReason,
                        Stopwatch.GetElapsedTime(received).TotalMilliseconds);
            }
            return last ?? throw new InvalidOperationException("the engine ended a run without a step");
        }
        catch (ModelNotReadyException e)
        {
            throw NotReady(e);
        }
        catch (SchedulerFullException e)
        {
            // Every slot of the model's batch is taken and its wait queue is full.
            throw Fail(StatusCode.ResourceExhausted, e.Message, Pushback(e.RetryAfter));
        }
        catch (StopPolicyUnavailableException e)
        {
            // The recommended policy or the gate was asked of a model whose conversion has none.
            throw Fail(StatusCode.FailedPrecondition, e.Message);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            // The client cancelled or went away, its deadline passed, or shutdown ran out of time: the engine has stopped.
            var code = deadline <= DateTime.UtcNow ? StatusCode.DeadlineExceeded : StatusCode.Cancelled;
            Log.EndedEarly(logger, model.Name, code);
            throw Fail(code, code == StatusCode.DeadlineExceeded ? "the deadline passed; computing stopped" : "the call was cancelled; computing stopped");
        }
        catch (Exception e) when (e is not RpcException)
        {
            Log.EngineFailed(logger, e, model.Name);
            throw Fail(StatusCode.Internal, $"the engine failed: {e.Message}");
        }
        finally
        {
            metrics.StreamEnded();
        }
    }

    static float[] Decode(ClassifyJob job)
    {
        var config = job.Model.Config;
        try
        {
            return job.Input switch
            {
                ModelInput.Encoded e => ImageInput.Decode(e.Bytes.Span, config),
                ModelInput.Intensities t => ImageInput.FromTensor(t.Shape, t.Data, config),
                _ => throw new InvalidInputException("input is missing"),
            };
        }
        catch (InvalidInputException e)
        {
            throw Fail(StatusCode.InvalidArgument, job.Input.Where is { } where ? $"{where}: {e.Message}" : e.Message);
        }
    }

    /// <summary>The standard gRPC retry hint (gRFC A6): a client should wait this long before trying again.</summary>
    static Metadata Pushback(TimeSpan wait) => new() { { "grpc-retry-pushback-ms", ((long)Math.Ceiling(wait.TotalMilliseconds)).ToString(System.Globalization.CultureInfo.InvariantCulture) } };

    static RpcException NotReady(ModelNotReadyException e) =>
        Fail(e.State == ModelState.Failed ? StatusCode.FailedPrecondition : StatusCode.Unavailable, e.Message);

    /// <param name="trailers">E.g. grpc-retry-pushback-ms on an admission refusal: REST turns it into Retry-After.</param>
    public static RpcException Fail(StatusCode code, string message, Metadata? trailers = null) =>
        trailers is null ? new(new Status(code, message)) : new(new Status(code, message), trailers);
}

/// <summary>
/// Admits at most a fixed number of classifications at once over every model and protocol (running or waiting for a
/// slot of a model's batch): the server-wide bound on top of each model's own batch limit and wait queue.
/// </summary>
sealed class StreamLimiter(IOptions<EcmtOptions> options)
{
    readonly int _limit = options.Value.Limits.MaxConcurrentStreams;
    int _active;

    public int Active => Volatile.Read(ref _active);

    public Slot? TryAcquire()
    {
        if (Interlocked.Increment(ref _active) <= _limit) return new Slot(this);
        Interlocked.Decrement(ref _active);
        return null;
    }

    public sealed class Slot(StreamLimiter owner) : IDisposable
    {
        int _released;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _released, 1) == 0) Interlocked.Decrement(ref owner._active);
        }
    }
}
