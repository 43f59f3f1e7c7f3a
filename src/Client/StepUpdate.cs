using Ecmt.Protos.V1;

namespace Ecmt.Client;

/// <summary>Why a classification stream ended; <see cref="None"/> on every update but the last.</summary>
public enum StopReason
{
    None,
    /// <summary>The requested number of steps was run.</summary>
    MaxSteps,
    /// <summary>The top-1 probability reached the policy's minimum confidence.</summary>
    Confident,
    /// <summary>The top-1 class stayed the same for the policy's number of steps.</summary>
    Stable,
    /// <summary>Every rule of a policy other than min_confidence alone or stable_steps alone held.</summary>
    Policy,
}

/// <summary>One class and its probability, softmax(accumulated logits / t).</summary>
public readonly record struct ClassScore(int Index, string Name, float Probability);

/// <summary>
/// The prediction after step t of one image, as the server streamed it, with what the client adds: the time since the
/// call began on this side, and whether the client's stop policy ended the stream here.
/// </summary>
public sealed record StepUpdate
{
    /// <summary>1-based time step t.</summary>
    public required int Step { get; init; }
    /// <summary>The most probable classes after step t, best first (as many as <see cref="ClassifyOptions.TopK"/> asked).</summary>
    public required IReadOnlyList<ClassScore> Top { get; init; }
    /// <summary>Probability of the top-1 class.</summary>
    public required float Confidence { get; init; }
    /// <summary>Top-1 minus top-2 calibrated probability, as the server computed it.</summary>
    public required float Margin { get; init; }
    /// <summary>The model's gate (its estimate that the top-1 is final), or null when the model has none.</summary>
    public float? Gate { get; init; }
    /// <summary>Synaptic operations over steps 1..t.</summary>
    public required long SynapticOperations { get; init; }
    /// <summary>Estimated energy over steps 1..t relative to one ANN inference.</summary>
    public required double EnergyRatio { get; init; }
    /// <summary>Synaptic operations over the ANN's multiply-accumulates, averaged over steps 1..t.</summary>
    public required double FiringRate { get; init; }
    /// <summary>Server time spent on step t.</summary>
    public required double StepMilliseconds { get; init; }
    /// <summary>Server time spent on the call so far (decode, queueing and compute).</summary>
    public required double ServerElapsedMilliseconds { get; init; }
    /// <summary>Client time from the start of the call (retries included) to this update's arrival.</summary>
    public required TimeSpan Elapsed { get; init; }
    /// <summary>Why the stream ends here; <see cref="StopReason.None"/> on every update but the last.</summary>
    public required StopReason StopReason { get; init; }
    /// <summary>True when the client's <see cref="ClassifyOptions.Stop"/> ended the stream here (the call was cancelled).</summary>
    public bool StoppedByClient { get; init; }
    /// <summary>Attempts the call took to get its first update (1 unless UNAVAILABLE was retried).</summary>
    public int Attempts { get; init; } = 1;
    /// <summary>The update exactly as the server sent it.</summary>
    public required ClassifyUpdate Raw { get; init; }

    /// <summary>The top-1 class.</summary>
    public ClassScore Prediction => Top[0];
    /// <summary>True on the last update of the stream.</summary>
    public bool IsLast => StopReason != StopReason.None;

    /// <summary>What a stop policy reads at this step.</summary>
    public Protos.StopSignal Signal => new(Step, Prediction.Index, Confidence, Margin, Gate);
}

/// <summary>A whole classification: every update, in order (<see cref="EcmtClient.ClassifyToEndAsync"/>).</summary>
public sealed record Classification(IReadOnlyList<StepUpdate> Updates)
{
    public StepUpdate Last => Updates[^1];
    public ClassScore Prediction => Last.Prediction;
    public float Confidence => Last.Confidence;
    /// <summary>Time steps the image used (the last update's step).</summary>
    public int Steps => Last.Step;
    public StopReason StopReason => Last.StopReason;
    public bool StoppedByClient => Last.StoppedByClient;
    /// <summary>Client time to the first update and to the last.</summary>
    public TimeSpan FirstUpdate => Updates[0].Elapsed;
    public TimeSpan Elapsed => Last.Elapsed;
}
