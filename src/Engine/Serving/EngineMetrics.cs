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
    readonly Histogram<double> _stepDuration;
    readonly UpDownCounter<long> _activeSessions;

    /// <param name="factory">The host's meter factory; null makes a meter of its own (tools and tests).</param>
    public EngineMetrics(IMeterFactory? factory = null)
    {
        _meter = factory?.Create(MeterName) ?? new Meter(MeterName);
        _steps = _meter.CreateCounter<long>("ecmt.steps", "{step}", "Time steps the spiking model ran");
        _stepsSaved = _meter.CreateCounter<long>("ecmt.steps.saved", "{step}",
            "Steps a run did not need: requested steps minus steps run, when a stop policy ended it early (reason confident or stable) or the client went away (reason cancelled)");
        _runs = _meter.CreateCounter<long>("ecmt.runs", "{run}", "Classifications by how they ended: max_steps, confident, stable, cancelled or failed");
        _stepDuration = _meter.CreateHistogram<double>("ecmt.step.duration", "ms", "Wall time of one time step of one image",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000] });
        _activeSessions = _meter.CreateUpDownCounter<long>("ecmt.sessions.active", "{session}", "Spiking sessions running a classification now");
    }

    internal void Step(string model, double milliseconds)
    {
        var tag = new KeyValuePair<string, object?>("model", model);
        _steps.Add(1, tag);
        _stepDuration.Record(milliseconds, tag);
    }

    internal void SessionStarted(string model, int delta) => _activeSessions.Add(delta, new KeyValuePair<string, object?>("model", model));

    internal void RunEnded(string model, string outcome, long stepsSaved)
    {
        var modelTag = new KeyValuePair<string, object?>("model", model);
        var reasonTag = new KeyValuePair<string, object?>("reason", outcome);
        _runs.Add(1, modelTag, reasonTag);
        if (stepsSaved > 0) _stepsSaved.Add(stepsSaved, modelTag, reasonTag);
    }

    public void Dispose() => _meter.Dispose();
}
