using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Threading.Channels;
using Ecmt.Engine.Simulation;
using Ecmt.Kernels;

namespace Ecmt.Engine.Serving;

/// <summary>How a model's step scheduler batches (server settings <c>Ecmt:Batching</c>).</summary>
public sealed record BatchingOptions
{
    /// <summary>Most images in one step.</summary>
    public int MaxBatch { get; init; } = 32;
    /// <summary>Bytes of spiking state (membranes, EC sums, running products) the model's slots may hold together.</summary>
    public long StateBudgetBytes { get; init; } = 1L << 30;
    /// <summary>Requests that may wait for a slot; one more is refused (<see cref="SchedulerFullException"/>).</summary>
    public int QueueLength { get; init; } = 64;
    /// <summary>Threads the fast CPU backend's loops use for this model's steps (OpenBLAS's own threads are process-wide).</summary>
    public int Threads { get; init; } = Environment.ProcessorCount;
    /// <summary>Nice value (Linux) of the step thread: above 0 lets the server's I/O threads (health checks) run first.</summary>
    public int Nice { get; init; } = 10;

    /// <summary>The batch limit: min(max batch, state budget / state bytes per image), at least 1.</summary>
    public int BatchLimit(long stateBytesPerImage) =>
        (int)Math.Clamp(StateBudgetBytes / Math.Max(1, stateBytesPerImage), 1, Math.Max(1, MaxBatch));
}

/// <summary>Every slot is taken and the wait queue is full; retry after <see cref="RetryAfter"/>.</summary>
public sealed class SchedulerFullException(string message, TimeSpan retryAfter) : Exception(message)
{
    public TimeSpan RetryAfter { get; } = retryAfter;
}

/// <summary>
/// One model's step loop (continuous batching): a dedicated thread, not the thread pool, so blocking compute never
/// starves the server's I/O. At each step boundary it drops what was cancelled, admits waiting requests first come,
/// first served up to the batch limit, runs one step of the batched <see cref="SpikingSession"/> for every occupied
/// slot (each image at its own step), hands each stream its <see cref="StepResult"/> through the stream's channel, and
/// releases the slots whose stream finished, stopped on its policy, was cancelled or passed its deadline. A cancel
/// takes effect at the next boundary: at most the step in flight runs after it. The batch keeps at most one step
/// ahead of each stream's reader (<see cref="WaitForReaders"/>).
/// </summary>
sealed class StepScheduler : IDisposable
{
    readonly string _name;
    readonly SpikingModel _model;
    readonly ISpikingBackend _backend;
    readonly EngineMetrics _metrics;
    readonly BatchingOptions _options;
    readonly Action<RunSummary> _completed;
    readonly Action _stepped;
    readonly SpikingSession _session;
    readonly Queue<Request> _queue = new();
    readonly List<Request> _active = [];  // _active[slot]
    readonly Thread _thread;
    readonly object _lock = new();
    readonly long _stateBytesPerImage;
    double _meanStepMs = 10;
    bool _stopping;

    /// <summary>Called (on the scheduler's thread) when a step fails with a device fault (<see cref="Backends.IsDeviceFault"/>).</summary>
    public Action<Exception>? DeviceFaulted { get; init; }

    public StepScheduler(string name, SpikingModel model, ISpikingBackend backend, BatchingOptions options, EngineMetrics metrics,
        Action<RunSummary> completed, Action stepped)
    {
        _name = name;
        _model = model;
        _backend = backend;
        _options = options;
        _metrics = metrics;
        _completed = completed;
        _stepped = stepped;
        if (backend is Kernels.Cpu.FastCpuBackend fast) fast.Threads = Math.Max(1, options.Threads);
        // State per image is known from the model's shape before any tensor is allocated.
        using (var probe = new SpikingSession(model, new Kernels.Reference.ReferenceBackend(), 1))
            _stateBytesPerImage = probe.StateFloatsPerImage * sizeof(float);
        BatchLimit = options.BatchLimit(_stateBytesPerImage);
        _session = new SpikingSession(model, backend, BatchLimit);
        _thread = new Thread(Loop) { IsBackground = true, Name = $"ecmt-steps {name}" };
        _thread.Start();
    }

    /// <summary>Images one step runs at most.</summary>
    public int BatchLimit { get; }
    public long StateBytesPerImage => _stateBytesPerImage;
    public int InUse { get { lock (_lock) return _active.Count; } }
    public int Waiting { get { lock (_lock) return _queue.Count; } }

    /// <summary>A request: its image, its limits, where its results go.</summary>
    public sealed class Request(float[] normalised, int maxSteps, Protos.StopPolicy stop, Conversion.PredictionTracker predictions,
        CancellationToken cancellationToken)
    {
        public readonly float[] Image = normalised;
        public readonly int MaxSteps = maxSteps;
        public readonly Protos.StopPolicy Stop = stop;
        public readonly Protos.StopPolicy.Tracker Tracker = stop.Track();
        public readonly Conversion.PredictionTracker Predictions = predictions;
        public readonly CancellationToken Token = cancellationToken;
        public readonly Channel<StepResult> Results = Channel.CreateUnbounded<StepResult>(new UnboundedChannelOptions { SingleWriter = true });  // (multi-reader: it can Count)
        public readonly long Enqueued = Stopwatch.GetTimestamp();
        public int Steps, StepsAtCancel = -1;
        public CancellationTokenRegistration Registration;
        /// <summary>Completes once the request holds no slot and no place in the queue.</summary>
        public readonly TaskCompletionSource Released = new(TaskCreationOptions.RunContinuationsAsynchronously);
        volatile bool _abandoned;

        /// <summary>The reader has gone (it finished, failed or stopped reading): release at the next boundary.</summary>
        public void Abandon() => _abandoned = true;
        public bool Gone => _abandoned || Token.IsCancellationRequested;
        public void MarkCancelled() => Interlocked.CompareExchange(ref StepsAtCancel, Volatile.Read(ref Steps), -1);
    }

    /// <summary>Wakes the loop: a reader took a result, or a request has gone (it leaves the queue at once).</summary>
    public void Nudge()
    {
        lock (_lock) Monitor.Pulse(_lock);
    }

    /// <summary>Queues a request; throws <see cref="SchedulerFullException"/> when the slots and the queue are full.</summary>
    public void Submit(Request request)
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_stopping, this);
            if (_active.Count + _queue.Count >= BatchLimit + _options.QueueLength)
            {
                // Roughly when a slot frees: the mean step time for each request ahead of this one, per slot.
                var wait = TimeSpan.FromMilliseconds(Math.Max(50, _meanStepMs * 8 * Math.Max(1, _queue.Count) / BatchLimit));
                throw new SchedulerFullException(
                    $"model '{_name}' is at capacity: {BatchLimit} images in its batch and {_queue.Count} waiting; retry later", wait);
            }
            _queue.Enqueue(request);
            _metrics.QueueChanged(_name, 1);
            Monitor.Pulse(_lock);
        }
    }

    void Loop()
    {
        Niceness.Lower(_options.Nice);
        while (true)
        {
            lock (_lock)
            {
                while (!_stopping && _queue.Count == 0 && _active.Count == 0) Monitor.Wait(_lock);
                if (_stopping) break;
                WaitForReaders();
                DropGone();
                while (_queue.Count > 0 && _active.Count < BatchLimit) Admit(_queue.Dequeue());
            }
            if (_active.Count == 0) continue;
            StepAll();
        }
        lock (_lock)
        {
            foreach (var r in _queue)
            {
                r.Results.Writer.TryComplete(new OperationCanceledException("the model was unloaded"));
                r.Released.TrySetResult();
            }
            _queue.Clear();
            for (int slot = _active.Count - 1; slot >= 0; slot--) Finish(slot, StopReason.None, new OperationCanceledException("the model was unloaded"));
        }
    }

    /// <summary>
    /// Under the lock: the batch runs at most one step ahead of each stream's reader, as a stream's own loop would, so
    /// a client that stops reading (its own stop policy, a cancel on its way) costs at most the step in flight. A reader
    /// that lags holds the batch for at most <see cref="ReaderWait"/> per step; then the step runs anyway.
    /// </summary>
    void WaitForReaders()
    {
        long start = Stopwatch.GetTimestamp();
        while (_active.Any(r => !r.Gone && r.Results.Reader.Count > 1))
        {
            var left = ReaderWait - Stopwatch.GetElapsedTime(start);
            if (left <= TimeSpan.Zero || _stopping) return;
            Monitor.Wait(_lock, left);
        }
    }

    static readonly TimeSpan ReaderWait = TimeSpan.FromMilliseconds(250);

    /// <summary>Under the lock: waiting requests already cancelled leave the queue; running ones leave their slots.</summary>
    void DropGone()
    {
        if (_queue.Any(r => r.Gone))
        {
            int before = _queue.Count;
            var keep = _queue.Where(r => !r.Gone).ToArray();
            foreach (var r in _queue.Where(r => r.Gone))
            {
                r.Results.Writer.TryComplete(new OperationCanceledException(r.Token));
                _completed(Summary(r, StopReason.None, null));
                r.Released.TrySetResult();
            }
            _queue.Clear();
            foreach (var r in keep) _queue.Enqueue(r);
            _metrics.QueueChanged(_name, _queue.Count - before);
        }
        for (int slot = _active.Count - 1; slot >= 0; slot--)
            if (_active[slot].Gone) Finish(slot, StopReason.None, new OperationCanceledException(_active[slot].Token));
    }

    void Admit(Request request)
    {
        _metrics.QueueChanged(_name, -1);
        _metrics.QueueWait(_name, Stopwatch.GetElapsedTime(request.Enqueued).TotalMilliseconds);
        int slot = _session.Admit(request.Image);
        Debug.Assert(slot == _active.Count);
        _active.Add(request);
        request.Registration = request.Token.Register(static r => ((Request)r!).MarkCancelled(), request);
        _metrics.SlotsChanged(_name, 1, _stateBytesPerImage);
    }

    void StepAll()
    {
        long start = Stopwatch.GetTimestamp();
        StepOutput output;
        try
        {
            output = _session.Next();
        }
        catch (Exception e)
        {
            lock (_lock)
                for (int slot = _active.Count - 1; slot >= 0; slot--) Finish(slot, StopReason.None, e, failed: true);
            if (Backends.IsDeviceFault(e)) DeviceFaulted?.Invoke(e);
            return;
        }
        double ms = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        _meanStepMs = 0.9 * _meanStepMs + 0.1 * ms;
        int count = output.Images;
        _metrics.Step(_name, ms, count);
        var names = _model.Config.ClassNames;
        var finished = new List<(int Slot, StopReason Reason)>();
        var results = new StepResult[count];
        for (int slot = 0; slot < count; slot++)
        {
            var r = _active[slot];
            Interlocked.Increment(ref r.Steps);
            _stepped();
            var signal = r.Predictions.Observe(output.Logits(slot), output.Steps[slot]);
            var result = new StepResult(output, slot, r.Predictions, signal, names, ms);
            var stop = r.Tracker.Observe(signal) ? StopReasons.When(r.Stop) : StopReason.None;
            if (stop == StopReason.None && output.Steps[slot] >= r.MaxSteps) stop = StopReason.MaxSteps;
            result.StopReason = stop;
            results[slot] = result;
            if (stop != StopReason.None) finished.Add((slot, stop));
        }
        lock (_lock)
        {
            // The last result of a run goes out after its slot is released and its summary raised, so a caller that has
            // read its stream to the end sees the run complete.
            var done = finished.ToDictionary(f => _active[f.Slot], f => (f.Reason, Result: results[f.Slot]));
            for (int slot = 0; slot < count; slot++)
                if (!done.ContainsKey(_active[slot])) _active[slot].Results.Writer.TryWrite(results[slot]);
            foreach (var (slot, _) in finished.OrderByDescending(f => f.Slot))
            {
                var r = _active[slot];
                Finish(slot, done[r].Reason, null, last: done[r].Result);
            }
        }
    }

    /// <summary>Under the lock: releases a slot (the batch's last image moves into it), ends the stream, reports the run.</summary>
    void Finish(int slot, StopReason reason, Exception? error, bool failed = false, StepResult? last = null)
    {
        var r = _active[slot];
        r.Registration.Dispose();
        int moved = _session.Release(slot);
        if (moved >= 0)
        {
            _active[slot] = _active[moved];
            _active.RemoveAt(moved);
        }
        else _active.RemoveAt(slot);
        _metrics.SlotsChanged(_name, -1, _stateBytesPerImage);
        var summary = Summary(r, reason, failed ? error : null);
        _metrics.RunEnded(_name, summary.Outcome,
            summary.StopReason is StopReason.Confident or StopReason.Stable or StopReason.Policy || summary.Cancelled ? r.MaxSteps - summary.StepsRun : 0);
        _completed(summary);
        if (last is not null) r.Results.Writer.TryWrite(last);
        r.Results.Writer.TryComplete(error);
        r.Released.TrySetResult();
    }

    RunSummary Summary(Request r, StopReason reason, Exception? error)
    {
        int steps = Volatile.Read(ref r.Steps), atCancel = Volatile.Read(ref r.StepsAtCancel);
        bool cancelled = r.Token.IsCancellationRequested && reason == StopReason.None;
        return new RunSummary(_name, r.MaxSteps, steps, reason, cancelled, cancelled && atCancel >= 0 ? steps - atCancel : null,
            Stopwatch.GetElapsedTime(r.Enqueued), error);
    }

    public void Dispose()
    {
        lock (_lock)
        {
            if (_stopping) return;
            _stopping = true;
            Monitor.PulseAll(_lock);
        }
        if (Thread.CurrentThread != _thread) _thread.Join();
        _session.Dispose();
        _backend.Dispose();
    }
}

/// <summary>Lowers the calling thread's scheduling priority (Linux nice), so compute yields the cores to I/O threads.</summary>
static partial class Niceness
{
    [LibraryImport("libc", SetLastError = true)]
    private static partial int setpriority(int which, int who, int prio);

    [LibraryImport("libc")]
    private static partial int gettid();

    public static void Lower(int nice)
    {
        if (nice <= 0 || !OperatingSystem.IsLinux()) return;
        try
        {
            // PRIO_PROCESS with a thread id sets that thread's nice value on Linux.
            setpriority(0, gettid(), Math.Min(nice, 19));
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
        }
    }
}
