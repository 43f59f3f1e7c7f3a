using System.Collections.Concurrent;
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
/// One converted model served from a folder: loads it, keeps a pool of spiking sessions (each with a backend of its
/// own, so sessions run concurrently), and runs classifications step by step. The step loop checks the caller's
/// cancellation token before every step, so a cancelled or expired request stops within the step in flight and its
/// session goes back to the pool.
/// </summary>
public sealed class HostedModel : IDisposable
{
    readonly BackendKind _backend;
    readonly EngineMetrics _metrics;
    readonly int _pooledSessions;
    readonly ConcurrentBag<Lease> _idle = [];
    SpikingModel? _model;
    long _stepsRun;
    int _inUse, _idleCount;
    volatile bool _disposed;

    /// <param name="config">The model's config.json, read at discovery so the model can be described while it loads.</param>
    /// <param name="pooledSessions">Idle sessions kept for reuse; more run concurrently if asked, and are freed after.</param>
    public HostedModel(ModelLocation location, VitConfig config, BackendKind backend, EngineMetrics metrics, int pooledSessions)
    {
        Name = location.Name;
        Directory = location.Directory;
        Config = config;
        _backend = backend;
        _metrics = metrics;
        _pooledSessions = pooledSessions;
        BackendFactory = () => Backends.Create(_backend);
    }

    public string Name { get; }
    public string Directory { get; }
    public VitConfig Config { get; }
    public ModelState State { get; private set; } = ModelState.Loading;
    /// <summary>
    /// True once a device fault stopped this model while serving (<see cref="Backends.IsDeviceFault"/>): the state is
    /// <see cref="ModelState.Failed"/> and <see cref="Error"/> says what failed and why the device is not reopened.
    /// </summary>
    public bool Faulted { get; private set; }
    /// <summary>Creates the backend of each session (tests replace it to inject faults).</summary>
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

    /// <summary>Time steps run for all requests so far: the engine's own count.</summary>
    public long StepsRun => Interlocked.Read(ref _stepsRun);
    /// <summary>Sessions running a classification now.</summary>
    public int ActiveSessions => Volatile.Read(ref _inUse);
    /// <summary>Sessions held for reuse.</summary>
    public int IdleSessions => Volatile.Read(ref _idleCount);

    /// <summary>Raised when a run has ended and its session is back in the pool.</summary>
    public event Action<RunSummary>? RunCompleted;
    /// <summary>Raised when <see cref="State"/> changes.</summary>
    public event Action<HostedModel>? StateChanged;

    /// <summary>
    /// Loads the weights and thresholds and warms one session (which proves the backend runs this model). Never throws
    /// for a bad model: the state becomes <see cref="ModelState.Failed"/> with the reason.
    /// </summary>
    public void Load()
    {
        try
        {
            var converted = ConvertedModel.Load(Directory);
            var model = new SpikingModel(converted);
            var lease = new Lease(model, BackendFactory());
            BackendName = lease.Backend.Name;
            _model = model;
            Return(lease, healthy: true, countInUse: false);
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
    /// own); the last result carries the stop reason. Cancelling <paramref name="cancellationToken"/> stops before the
    /// next step and throws <see cref="OperationCanceledException"/>.
    /// </summary>
    /// <exception cref="ArgumentException">a stop rule is out of its range</exception>
    /// <exception cref="StopPolicyUnavailableException">the policy needs a recommended policy or a gate the model lacks</exception>
    public async IAsyncEnumerable<StepResult> ClassifyAsync(float[] intensities, int maxSteps, Protos.StopPolicy stop,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxSteps, 1);
        stop.Validate();
        var model = RequireReady();
        stop = Resolve(stop, model.Converted);
        var normalised = ImageInput.Normalise(intensities, model.Config);
        cancellationToken.ThrowIfCancellationRequested();
        // Keep the caller's thread free of the first step's compute.
        await Task.Yield();

        var run = new RunState(Stopwatch.GetTimestamp());
        using var registration = cancellationToken.Register(static s => ((RunState)s!).MarkCancelled(), run);
        var lease = Rent(model);
        var predictions = model.Converted.Confidence.Track(model.Config.NumClasses);
        var tracker = stop.Track();
        var reason = StopReason.None;
        Exception? error = null;
        try
        {
            lease.Session.Reset(normalised);
            for (int t = 1; t <= maxSteps; t++)
            {
                // The one place a cancel or a deadline takes effect: before any new step starts.
                cancellationToken.ThrowIfCancellationRequested();
                long start = Stopwatch.GetTimestamp();
                StepOutput output;
                try
                {
                    output = lease.Session.Next();
                }
                catch (Exception e)
                {
                    error = e;
                    if (Backends.IsDeviceFault(e)) Fault(e);
                    throw;
                }
                double ms = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
                run.StepDone();
                Interlocked.Increment(ref _stepsRun);
                _metrics.Step(Name, ms);
                var signal = predictions.Observe(output.Logits(0), output.Step);
                var result = new StepResult(output, predictions, signal, model.Config.ClassNames, ms);
                var stopNow = tracker.Observe(signal) ? StopReasons.When(stop) : StopReason.None;
                if (stopNow == StopReason.None && t == maxSteps) stopNow = StopReason.MaxSteps;
                result.StopReason = reason = stopNow;
                yield return result;
                if (stopNow != StopReason.None) yield break;
            }
        }
        finally
        {
            // A session whose backend failed mid-step is not reused.
            Return(lease, healthy: error is null, countInUse: true);
            var summary = run.Summary(Name, maxSteps, reason, cancellationToken.IsCancellationRequested, error);
            _metrics.RunEnded(Name, summary.Outcome, summary.StopReason is StopReason.Confident or StopReason.Stable or StopReason.Policy || summary.Cancelled ? maxSteps - summary.StepsRun : 0);
            RunCompleted?.Invoke(summary);
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

    Lease Rent(SpikingModel model)
    {
        Interlocked.Increment(ref _inUse);
        _metrics.SessionStarted(Name, 1);
        if (_idle.TryTake(out var lease))
        {
            Interlocked.Decrement(ref _idleCount);
            return lease;
        }
        try
        {
            return new Lease(model, BackendFactory());
        }
        catch (Exception e)
        {
            Interlocked.Decrement(ref _inUse);
            _metrics.SessionStarted(Name, -1);
            if (Backends.IsDeviceFault(e)) Fault(e);
            throw;
        }
    }

    /// <summary>
    /// Stops serving after a device fault: NOT_SERVING in health with the fault and the reason the device is not reopened.
    /// A CUDA fault is sticky: it leaves the context, and with it every session's buffers and the uploaded weights that
    /// all sessions of the process share, unusable; reopening means a new context for the whole process, i.e. a restart.
    /// </summary>
    void Fault(Exception e)
    {
        lock (_idle)
        {
            if (Faulted) return;
            Error = $"device fault on {BackendName} while serving: {e.Message}. The device is not reopened: a CUDA fault leaves "
                + "its context, every session's buffers and the shared uploaded weights unusable for this process; restart the server";
            Faulted = true;
            State = ModelState.Failed;
        }
        DrainIdle();
        StateChanged?.Invoke(this);
    }

    void Return(Lease lease, bool healthy, bool countInUse)
    {
        if (healthy && !_disposed && Interlocked.Increment(ref _idleCount) <= _pooledSessions) _idle.Add(lease);
        else
        {
            if (healthy && !_disposed) Interlocked.Decrement(ref _idleCount);
            lease.Dispose();
        }
        if (countInUse)
        {
            Interlocked.Decrement(ref _inUse);
            _metrics.SessionStarted(Name, -1);
        }
        // A session returned after Dispose started is freed here rather than leaked.
        if (_disposed) DrainIdle();
    }

    void DrainIdle()
    {
        while (_idle.TryTake(out var lease))
        {
            Interlocked.Decrement(ref _idleCount);
            lease.Dispose();
        }
    }

    public void Dispose()
    {
        _disposed = true;
        DrainIdle();
    }

    /// <summary>One backend and the session state it holds for one image.</summary>
    sealed class Lease(SpikingModel model, ISpikingBackend backend) : IDisposable
    {
        public ISpikingBackend Backend { get; } = backend;
        public SpikingSession Session { get; } = new(model, backend, images: 1);

        public void Dispose()
        {
            Session.Dispose();
            Backend.Dispose();
        }
    }

    /// <summary>Steps run by one request, and how many of them finished after its cancellation arrived.</summary>
    sealed class RunState(long started)
    {
        int _steps, _stepsAtCancel = -1;

        public void StepDone() => Interlocked.Increment(ref _steps);

        public void MarkCancelled() => Interlocked.CompareExchange(ref _stepsAtCancel, Volatile.Read(ref _steps), -1);

        public RunSummary Summary(string model, int maxSteps, StopReason reason, bool cancelled, Exception? error)
        {
            int steps = Volatile.Read(ref _steps), atCancel = Volatile.Read(ref _stepsAtCancel);
            bool wasCancelled = cancelled && reason == StopReason.None;
            return new RunSummary(model, maxSteps, steps, reason, wasCancelled, atCancel >= 0 ? steps - atCancel : null,
                Stopwatch.GetElapsedTime(started), error);
        }
    }
}
