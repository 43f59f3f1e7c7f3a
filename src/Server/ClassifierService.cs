using System.Diagnostics;
using Ecmt.Engine.Imaging;
using Ecmt.Engine.Serving;
using Ecmt.Protos.V1;
using Grpc.Core;
using Microsoft.Extensions.Options;
using ProtoStopReason = Ecmt.Protos.V1.StopReason;

namespace Ecmt.Server;

/// <summary>
/// The ecmt.v1.Classifier service: validates a request, hands it to the engine, streams the engine's steps back and
/// maps every failure to a precise status (the list is in classifier.proto).
/// </summary>
sealed class ClassifierService(ModelHost host, StreamLimiter limiter, ServerLifecycle lifecycle, ServerMetrics metrics,
    IOptions<EcmtOptions> options, ILogger<ClassifierService> logger) : Classifier.ClassifierBase
{
    const int DefaultTopK = 5;
    readonly EcmtOptions _options = options.Value;

    public override async Task Classify(ClassifyRequest request, IServerStreamWriter<ClassifyUpdate> responseStream, ServerCallContext context)
    {
        long received = Stopwatch.GetTimestamp();
        if (lifecycle.Stopping) throw Fail(StatusCode.Unavailable, "the server is shutting down; retry on another instance");
        var model = RequireModel(request.Model, "model");
        int maxSteps = request.MaxSteps == 0 ? Math.Min(_options.DefaultSteps, _options.Limits.MaxSteps) : checked((int)Math.Min(request.MaxSteps, int.MaxValue));
        if (request.MaxSteps > _options.Limits.MaxSteps)
            throw Fail(StatusCode.OutOfRange, $"max_steps is {request.MaxSteps}; this server runs at most {_options.Limits.MaxSteps} steps per request");
        var stop = StopPolicyOf(request);
        int topK = request.TopK == 0 ? DefaultTopK : (int)Math.Min(request.TopK, (uint)model.Config.NumClasses);
        if (request.InputCase == ClassifyRequest.InputOneofCase.None)
            throw Fail(StatusCode.InvalidArgument, "input is missing: set image (PNG or JPEG bytes) or tensor (intensities in [0, 1], shape (C, H, W))");

        if (model.State != ModelState.Ready)
            throw NotReady(new ModelNotReadyException(model.Name, model.State,
                model.State == ModelState.Failed ? $"model '{model.Name}' failed to load: {model.Error}" : $"model '{model.Name}' is still loading; retry shortly"));

        using var slot = limiter.TryAcquire()
            ?? throw Fail(StatusCode.ResourceExhausted, $"too many Classify streams: this server runs {_options.Limits.MaxConcurrentStreams} at once; retry later");
        metrics.StreamStarted();
        try
        {
            float[] pixels;
            try
            {
                pixels = request.InputCase == ClassifyRequest.InputOneofCase.Image
                    ? ImageInput.Decode(request.Image.Span, model.Config)
                    : ImageInput.FromTensor(request.Tensor.Shape.Select(d => (int)Math.Min(d, int.MaxValue)).ToArray(), request.Tensor.Data.ToArray(), model.Config);
            }
            catch (InvalidInputException e)
            {
                throw Fail(StatusCode.InvalidArgument, request.InputCase == ClassifyRequest.InputOneofCase.Image ? $"image: {e.Message}" : e.Message);
            }

            await foreach (var step in model.ClassifyAsync(pixels, maxSteps, stop, context.CancellationToken))
            {
                var update = new ClassifyUpdate
                {
                    Step = (uint)step.Step,
                    Confidence = step.Confidence,
                    SynapticOperations = (ulong)step.SynapticOperations,
                    EnergyRatio = step.EnergyRatio,
                    FiringRate = step.FiringRate,
                    StepMs = step.StepMilliseconds,
                    ElapsedMs = Stopwatch.GetElapsedTime(received).TotalMilliseconds,
                    StopReason = ReasonOf(step.StopReason),
                    Margin = step.Margin,
                };
                if (step.Gate is float gate) update.Gate = gate;
                foreach (var score in step.Top(topK))
                    update.Top.Add(new Protos.V1.ClassScore { Index = (uint)score.Index, Name = score.Name, Probability = score.Probability });
                await responseStream.WriteAsync(update, context.CancellationToken);
                if (step.StopReason != Engine.Serving.StopReason.None)
                    Log.Classified(logger, model.Name, step.Prediction, step.Confidence, step.Step, maxSteps, step.StopReason, update.ElapsedMs);
            }
        }
        catch (ModelNotReadyException e)
        {
            throw NotReady(e);
        }
        catch (StopPolicyUnavailableException e)
        {
            throw Fail(StatusCode.FailedPrecondition, e.Message);
        }
        catch (OperationCanceledException) when (context.CancellationToken.IsCancellationRequested)
        {
            // The client cancelled, its deadline passed, or shutdown ran out of time: the engine has stopped.
            var code = context.Deadline <= DateTime.UtcNow ? StatusCode.DeadlineExceeded : StatusCode.Cancelled;
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

    public override Task<ListModelsResponse> ListModels(ListModelsRequest request, ServerCallContext context)
    {
        var response = new ListModelsResponse();
        response.Models.AddRange(host.Models.Select(Describe));
        return Task.FromResult(response);
    }

    public override Task<ModelInfo> GetModel(GetModelRequest request, ServerCallContext context) =>
        Task.FromResult(Describe(RequireModel(request.Name, "name")));

    HostedModel RequireModel(string name, string field)
    {
        if (string.IsNullOrWhiteSpace(name))
            throw Fail(StatusCode.InvalidArgument, $"{field} is missing: name a hosted model ({string.Join(", ", host.Models.Select(m => m.Name))})");
        return host.Find(name)
            ?? throw Fail(StatusCode.NotFound, $"model '{name}' is not hosted here; hosted: {string.Join(", ", host.Models.Select(m => m.Name))}");
    }

    /// <summary>The request's stop policy (absent: none), with an out-of-range value refused as INVALID_ARGUMENT.</summary>
    static Protos.StopPolicy StopPolicyOf(ClassifyRequest request)
    {
        var policy = Protos.StopPolicy.FromProto(request.Stop);
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

    ModelInfo Describe(HostedModel model)
    {
        var c = model.Config;
        var info = new ModelInfo
        {
            Name = model.Name,
            Channels = (uint)c.InChannels,
            ImageSize = (uint)c.ImageSize,
            PatchSize = (uint)c.PatchSize,
            EmbedDim = (uint)c.EmbedDim,
            Depth = (uint)c.Depth,
            NumHeads = (uint)c.NumHeads,
            DefaultSteps = (uint)Math.Min(_options.DefaultSteps, _options.Limits.MaxSteps),
            MaxSteps = (uint)_options.Limits.MaxSteps,
            Backend = model.BackendName ?? Kernels.Backends.NameOf(host.Backend),
            Ready = model.State == ModelState.Ready && !lifecycle.Stopping,
            HealthService = HealthNames.Model(model.Name),
        };
        info.ClassNames.AddRange(c.ClassNames);
        if (model.Settings is { } s)
        {
            info.Preset = s.Preset ?? "custom";
            info.Thresholds = s.Granularity == Engine.Conversion.ThresholdGranularity.PerTensor ? "per-tensor" : "per-channel";
            foreach (var place in Engine.Conversion.Places.All) info.Levels[Engine.Conversion.Places.Key(place)] = (uint)s.LevelsAt(place);
        }
        if (model.Confidence is { } confidence)
        {
            info.TemperaturesCalibrated = confidence.IsCalibrated;
            info.Gate = confidence.Gate is not null;
        }
        if (model.RecommendedStop is { } recommended)
        {
            info.RecommendedStop = recommended.ToProto();
            if (model.RecommendedStopValidation is { } v)
                info.RecommendedStopStats = new RecommendedStopStats
                {
                    Images = (uint)v.Images, AnnTop1 = v.AnnTop1, Top1 = v.Top1, MeanSteps = v.MeanSteps, MaxSteps = (uint)v.MaxSteps,
                };
        }
        return info;
    }

    static ProtoStopReason ReasonOf(Engine.Serving.StopReason reason) => reason switch
    {
        Engine.Serving.StopReason.MaxSteps => ProtoStopReason.MaxSteps,
        Engine.Serving.StopReason.Confident => ProtoStopReason.Confident,
        Engine.Serving.StopReason.Stable => ProtoStopReason.Stable,
        Engine.Serving.StopReason.Policy => ProtoStopReason.Policy,
        _ => ProtoStopReason.Unspecified,
    };

    static RpcException NotReady(ModelNotReadyException e) =>
        Fail(e.State == ModelState.Failed ? StatusCode.FailedPrecondition : StatusCode.Unavailable, e.Message);

    static RpcException Fail(StatusCode code, string message) => new(new Status(code, message));
}

/// <summary>Admits at most a fixed number of Classify streams at once; refuses rather than queues, so clients back off.</summary>
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
