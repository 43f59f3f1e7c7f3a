using Ecmt.Engine.Simulation;

namespace Ecmt.Engine.Serving;

/// <summary>One class and its probability.</summary>
public readonly record struct ClassScore(int Index, string Name, float Probability);

/// <summary>
/// What a client sees after step t of one image: the calibrated probabilities softmax(accumulated logits / (t·τ_t))
/// (classes), the margin and the gate, the cumulative synaptic operations and energy over steps 1..t, the time the
/// step took, and on the last step why the run ended.
/// </summary>
public sealed class StepResult
{
    /// <param name="image">The image's index in the batch's output.</param>
    internal StepResult(StepOutput output, int image, Conversion.PredictionTracker tracker, Protos.StopSignal signal, IReadOnlyList<string> classNames, double stepMilliseconds)
    {
        Step = output.Steps[image];
        Probabilities = tracker.Probabilities.ToArray();
        Prediction = signal.Prediction;
        Confidence = signal.Confidence;
        Margin = signal.Margin;
        Gate = signal.Gate;
        Signal = signal;
        SynapticOperations = output.Sops[image];
        EnergyRatio = output.EnergyRatio(image);
        FiringRate = output.FiringRate(image);
        StepMilliseconds = stepMilliseconds;
        CompletedTimestamp = System.Diagnostics.Stopwatch.GetTimestamp();
        _classNames = classNames;
    }

    readonly IReadOnlyList<string> _classNames;

    public int Step { get; }
    /// <summary>(classes): the calibrated probabilities, softmax(accumulated logits / (t·τ_t)).</summary>
    public float[] Probabilities { get; }
    /// <summary>argmax of the accumulated logits.</summary>
    public int Prediction { get; }
    public float Confidence { get; }
    /// <summary>Top-1 minus top-2 calibrated probability.</summary>
    public float Margin { get; }
    /// <summary>The model's gate (its estimate that the top-1 is final), or null when it has none.</summary>
    public float? Gate { get; }
    /// <summary>What a stop policy read at this step.</summary>
    public Protos.StopSignal Signal { get; }
    public long SynapticOperations { get; }
    public double EnergyRatio { get; }
    public double FiringRate { get; }
    public double StepMilliseconds { get; }
    /// <summary>
    /// <see cref="System.Diagnostics.Stopwatch"/> timestamp of the moment the step was done: the scheduler may run a
    /// step ahead of the stream that reads it, so the time a result is read says less.
    /// </summary>
    public long CompletedTimestamp { get; }
    public StopReason StopReason { get; internal set; }

    /// <summary>The <paramref name="k"/> most probable classes, best first (ties: lower index first); k is clamped to the class count.</summary>
    public ClassScore[] Top(int k)
    {
        k = Math.Clamp(k, 0, Probabilities.Length);
        var order = Enumerable.Range(0, Probabilities.Length).ToArray();
        // The prediction leads even if softmax rounding ties it with another class.
        Array.Sort(order, (a, b) =>
            a == b ? 0
            : a == Prediction ? -1
            : b == Prediction ? 1
            : Probabilities[b] != Probabilities[a] ? Probabilities[b].CompareTo(Probabilities[a])
            : a.CompareTo(b));
        return order.Take(k).Select(i => new ClassScore(i, _classNames[i], Probabilities[i])).ToArray();
    }
}

/// <summary>How one classification went, reported when its slot of the model's batch is released (logs, tests).</summary>
/// <param name="StepsRun">Time steps the engine ran for this request.</param>
/// <param name="StepsAfterCancellation">Steps completed after the cancellation signal arrived (at most 1: the step in flight); null when not cancelled.</param>
public sealed record RunSummary(
    string Model, int MaxSteps, int StepsRun, StopReason StopReason, bool Cancelled, int? StepsAfterCancellation,
    TimeSpan Elapsed, Exception? Error)
{
    /// <summary>max_steps, confident, stable, policy, cancelled or failed.</summary>
    public string Outcome => Error is not null ? "failed" : Cancelled ? "cancelled" : StopReason switch
    {
        StopReason.Confident => "confident",
        StopReason.Stable => "stable",
        StopReason.Policy => "policy",
        StopReason.MaxSteps => "max_steps",
        _ => "abandoned",
    };
}
