using System.Diagnostics;
using System.Runtime.CompilerServices;
using Ecmt.Engine.Conversion;
using Ecmt.Engine.Imaging;
using Ecmt.Engine.Model;
using Ecmt.Engine.Simulation;
using Ecmt.Kernels;

namespace Ecmt.Engine.Serving;

public enum ModelState { Loading, Ready, Failed }

/// <summary>The model is not loaded (yet, or at all); <see cref="State"/> says which.</summary>
public sealed class ModelNotReadyException(string model, ModelState state, string message) : Exception(message)
{
    public string Model { get; } = model;
    public ModelState State { get; } = state;
}

/// <summary>
/// One converted model served from a folder: loads it and runs its classifications through one
/// <see cref="StepScheduler"/>: a batched spiking session on one backend, stepped by a dedicated thread, with every
/// running request in a slot of the batch (continuous batching). A cancelled or expired request leaves its slot at the
/// next step boundary.
/// </summary>
public sealed class HostedModel : IDisposable
{
    readonly BackendKind _backend;
    readonly EngineMetrics _metrics;
    readonly BatchingOptions _batching;
    SpikingModel? _model;
    StepScheduler? _scheduler;
    long _stepsRun;
    volatile bool _disposed;

    /// <param name="config">The model's config.json, read at discovery so the model can be described while it loads.</param>
    /// <param name="batching">Batch limit, state budget, queue length and threads of the model's step scheduler.</param>
    public HostedModel(ModelLocation location, VitConfig config, BackendKind backend, EngineMetrics metrics, BatchingOptions? batching = null)
    {
        Name = location.Name;
        Directory = location.Directory;
        Config = config;
        _backend = backend;
        _metrics = metrics;
        _batching = batching ?? new BatchingOptions();
        BackendFactory = () => Backends.Create(_backend);
    }

    public string Name { get; }
    public string Directory { get; }
    public VitConfig Config { get; }
    public ModelState State { get; private set; } = ModelState.Loading;
    /// <summary>
    /// True once a device fault stopped this model while serving (<see cref="Backends.IsDeviceFault"/>, reported by the
    /// step scheduler): the state is <see cref="ModelState.Failed"/> and <see cref="Error"/> says what failed and why
    /// the device is not reopened.
    /// </summary>
    public bool Faulted { get; private set; }
    /// <summary>Creates the backend of the model's scheduler (tests may replace it).</summary>
    internal Func<ISpikingBackend> BackendFactory { get; set; }
    /// <summary>Why loading failed, for <see cref="ModelState.Failed"/>.</summary>
    public string? Error { get; private set; }
    /// <summary>The conversion settings, once loaded.</summary>
    public ConversionSettings? Settings => _model?.Converted.Settings;
    /// <summary>Temperatures and gate, once loaded (<see cref="ConfidenceCalibration.Uncalibrated"/> without them).</summary>
    public ConfidenceCalibration? Confidence => _model?.Converted.Confidence;
    /// <summary>The policy chosen at conversion on validation images, and how it measured there; null without one.</summary>
    public Protos.StopPolicy? RecommendedStop => _model?.Converted.Record.RecommendedStop;
    public RecommendedStopStats? RecommendedStopValidation => _model?.Converted.Record.RecommendedStopValidation;
    /// <summary>What runs the steps, e.g. "reference" or "cuda (NVIDIA H200)", once loaded.</summary>
    public string? BackendName { get; private set; }

    /// <summary>Image-steps run for all requests so far (one per image of each batch step): the engine's own count.</summary>
    public long StepsRun => Interlocked.Read(ref _stepsRun);
    /// <summary>Slots of the batch holding a running classification now.</summary>
    public int ActiveSessions => _scheduler?.InUse ?? 0;
    /// <summary>Free slots of the batch.</summary>
    public int IdleSessions => _scheduler is { } s ? s.BatchLimit - s.InUse : 0;
    /// <summary>Requests waiting for a slot.</summary>
    public int Waiting => _scheduler?.Waiting ?? 0;
    /// <summary>Images one step runs at most: min(max batch, state budget / state bytes per image); 0 until loaded.</summary>
    public int BatchLimit => _scheduler?.BatchLimit ?? 0;
    /// <summary>Bytes of spiking state one image holds; 0 until loaded.</summary>
    public long StateBytesPerImage => _scheduler?.StateBytesPerImage ?? 0;

    /// <summary>Raised (on the scheduler's thread) when a run has ended and its slot is free.</summary>
    public event Action<RunSummary>? RunCompleted;
    /// <summary>Raised when <see cref="State"/> changes.</summary>
    public event Action<HostedModel>? StateChanged;

    /// <summary>
    /// Loads the weights and thresholds and starts the step scheduler with its batched session (which proves the
    /// backend runs this model). Never throws for a bad model: the state becomes <see cref="ModelState.Failed"/> with the reason.
    /// </summary>
    public void Load()
    {
        try
        {
            var converted = ConvertedModel.Load(Directory);
            var model = new SpikingModel(converted);
            var backend = BackendFactory();
            BackendName = backend.Name;
            _scheduler = new StepScheduler(Name, model, backend, _batching, _metrics, s => RunCompleted?.Invoke(s),
                () => Interlocked.Increment(ref _stepsRun)) { DeviceFaulted = ReportDeviceFault };
            _model = model;
            State = ModelState.Ready;
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            Error = e.Message;
            State = ModelState.Failed;
        }
        StateChanged?.Invoke(this);
    }

    /// <summary>
    /// Classifies one image: intensities (C, H, W) in [0, 1] (see <see cref="ImageInput"/>). Yields one result per step
    /// until <paramref name="maxSteps"/> or the stop policy (<see cref="Protos.StopPolicy.Recommended"/>: the model's
    /// own); the last result carries the stop reason. The request waits for a slot of the model's batch, first come,
    /// first served. Cancelling <paramref name="cancellationToken"/> ends the enumeration at once with
    /// <see cref="OperationCanceledException"/>; the engine releases the slot at its next step boundary.
    /// </summary>
    /// <exception cref="ArgumentException">a stop rule is out of its range</exception>
    /// <exception cref="StopPolicyUnavailableException">the policy needs a recommended policy or a gate the model lacks</exception>
    /// <exception cref="SchedulerFullException">every slot is taken and the wait queue is full</exception>
    public async IAsyncEnumerable<StepResult> ClassifyAsync(float[] intensities, int maxSteps, Protos.StopPolicy stop,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxSteps, 1);
        stop.Validate();
        var model = RequireReady();
        var scheduler = _scheduler!;
        stop = Resolve(stop, model.Converted);
        var normalised = ImageInput.Normalise(intensities, model.Config);
        cancellationToken.ThrowIfCancellationRequested();
        var request = new StepScheduler.Request(normalised, maxSteps, stop, model.Converted.Confidence.Track(model.Config.NumClasses), cancellationToken);
        scheduler.Submit(request);
        try
        {
            // ReadAllAsync checks the token only when it has to wait; results already queued must not outlive a cancel.
            await foreach (var result in request.Results.Reader.ReadAllAsync(cancellationToken))
            {
                cancellationToken.ThrowIfCancellationRequested();
                // The scheduler steps at most one result ahead of this reader.
                scheduler.Nudge();
                yield return result;
            }
        }
        finally
        {
            // However the reader leaves (done, cancelled, failed, stopped reading), its slot is released at the next
            // step boundary; the call ends after that, so a caller that sees it end sees the slot free.
            request.Abandon();
            scheduler.Nudge();
            await request.Released.Task.ConfigureAwait(false);
        }
    }

    /// <summary>The policy to track: the model's recommended one when asked for; refuses rules the model cannot apply.</summary>
    static Protos.StopPolicy Resolve(Protos.StopPolicy stop, ConvertedModel converted)
    {
        if (stop.IsRecommended)
            stop = converted.Record.RecommendedStop
                ?? throw new StopPolicyUnavailableException($"model '{converted.Name}' has no recommended stop policy (convert it with validation images to choose one)");
        if (stop.MinGate is not null && converted.Confidence.Gate is null)
            throw new StopPolicyUnavailableException($"model '{converted.Name}' has no gate: stop.min_gate cannot apply");
        return stop;
    }

    SpikingModel RequireReady() => State switch
    {
        ModelState.Ready when _model is not null && !_disposed => _model,
        ModelState.Failed when Faulted => throw new ModelNotReadyException(Name, State, $"model '{Name}' stopped serving: {Error}"),
        ModelState.Failed => throw new ModelNotReadyException(Name, State, $"model '{Name}' failed to load: {Error}"),
        _ when _disposed => throw new ModelNotReadyException(Name, ModelState.Loading, $"model '{Name}' has been unloaded"),
        _ => throw new ModelNotReadyException(Name, State, $"model '{Name}' is still loading"),
    };

    /// <summary>
    /// Stops serving after a device fault in a step: NOT_SERVING in health with the fault and the reason the device is
    /// not reopened. A CUDA fault is sticky: it leaves the context, and with it the batched session's buffers and the
    /// uploaded weights the process shares, unusable; reopening means a new context for the whole process, i.e. a restart.
    /// </summary>
    internal void ReportDeviceFault(Exception e)
    {
        lock (this)
        {
            if (Faulted) return;
            Error = $"device fault on {BackendName} while serving: {e.Message}. The device is not reopened: a CUDA fault leaves "
                + "its context, the session's buffers and the shared uploaded weights unusable for this process; restart the server";
            Faulted = true;
            State = ModelState.Failed;
        }
        StateChanged?.Invoke(this);
    }

    public void Dispose()
    {
        _disposed = true;
        _scheduler?.Dispose();
    }
}
