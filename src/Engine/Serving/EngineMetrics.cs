using System.Diagnostics.Metrics;

namespace Ecmt.Engine.Serving;

/// <summary>
/// What the engine measures while serving, as <see cref="System.Diagnostics.Metrics"/> instruments of the meter
/// <see cref="MeterName"/> (exported by the server through OpenTelemetry). Every instrument is tagged with the model.
/// </summary>
public sealed class EngineMetrics : IDisposable
{
    public const string MeterName = "Ecmt.Engine";

    readonly Meter _meter;
    readonly Counter<long> _steps, _stepsSaved, _runs;
    readonly Histogram<double> _stepDuration, _queueWait;
    readonly Histogram<long> _batchSize;
    readonly UpDownCounter<long> _slots, _stateBytes, _queue;

    /// <param name="factory">The host's meter factory; null makes a meter of its own (tools and tests).</param>
    public EngineMetrics(IMeterFactory? factory = null)
    {
        _meter = factory?.Create(MeterName) ?? new Meter(MeterName);
        _steps = _meter.CreateCounter<long>("ecmt.steps", "{step}", "Image-steps the spiking model ran (one per image of each batch step)");
        _stepsSaved = _meter.CreateCounter<long>("ecmt.steps.saved", "{step}",
            "Steps a run did not need: requested steps minus steps run, when a stop policy ended it early (reason confident or stable) or the client went away (reason cancelled)");
        _runs = _meter.CreateCounter<long>("ecmt.runs", "{run}", "Classifications by how they ended: max_steps, confident, stable, cancelled or failed");
        _stepDuration = _meter.CreateHistogram<double>("ecmt.step.duration", "ms", "Wall time of one time step of the model's batch (every occupied slot)",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000] });
        _batchSize = _meter.CreateHistogram<long>("ecmt.batch.size", "{image}", "Images in one time step of the model's batch",
            advice: new InstrumentAdvice<long> { HistogramBucketBoundaries = [1, 2, 4, 8, 16, 32, 64, 128, 256] });
        _queueWait = _meter.CreateHistogram<double>("ecmt.queue.wait", "ms", "Time a request waited for a slot in the model's batch",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = [0.1, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000] });
        _slots = _meter.CreateUpDownCounter<long>("ecmt.slots.in_use", "{slot}", "Slots of the model's batch holding an image now");
        _stateBytes = _meter.CreateUpDownCounter<long>("ecmt.state.bytes", "By", "Bytes of spiking state held by the occupied slots");
        _queue = _meter.CreateUpDownCounter<long>("ecmt.queue.length", "{request}", "Requests waiting for a slot");
    }

    /// <summary>One step of a batch of <paramref name="images"/>: counts an image-step for each.</summary>
    internal void Step(string model, double milliseconds, int images)
    {
        var tag = new KeyValuePair<string, object?>("model", model);
        _steps.Add(images, tag);
        _stepDuration.Record(milliseconds, tag);
        _batchSize.Record(images, tag);
    }

    internal void SlotsChanged(string model, int delta, long stateBytesPerImage)
    {
        var tag = new KeyValuePair<string, object?>("model", model);
        _slots.Add(delta, tag);
        _stateBytes.Add(delta * stateBytesPerImage, tag);
    }

    internal void QueueChanged(string model, int delta) => _queue.Add(delta, new KeyValuePair<string, object?>("model", model));

    internal void QueueWait(string model, double milliseconds) => _queueWait.Record(milliseconds, new KeyValuePair<string, object?>("model", model));

    internal void RunEnded(string model, string outcome, long stepsSaved)
    {
        var modelTag = new KeyValuePair<string, object?>("model", model);
        var reasonTag = new KeyValuePair<string, object?>("reason", outcome);
        _runs.Add(1, modelTag, reasonTag);
        if (stepsSaved > 0) _stepsSaved.Add(stepsSaved, modelTag, reasonTag);
    }

    public void Dispose() => _meter.Dispose();
}
