using System.Globalization;

namespace Ecmt.Client;

/// <summary>How to run one classification. Every property is optional.</summary>
public sealed record ClassifyOptions
{
    public static readonly ClassifyOptions Default = new();

    /// <summary>Time steps to run at most; 0 asks for the model's default (<c>ModelInfo.default_steps</c>).</summary>
    public int MaxSteps { get; init; }
    /// <summary>Classes reported per update; 0 asks for the server's default (5).</summary>
    public int TopK { get; init; }
    /// <summary>Stop policy applied here: once it holds, the client cancels the call and the server stops computing.</summary>
    public ClientStopPolicy? Stop { get; init; }
    /// <summary>Stop policy sent with the request and applied by the server (one rule; saves the step in flight).</summary>
    public ServerStopPolicy? ServerStop { get; init; }
    /// <summary>Deadline of the whole call, retries included; null: <see cref="EcmtClientOptions.DefaultTimeout"/>.</summary>
    public TimeSpan? Timeout { get; init; }

    internal void Validate()
    {
        if (MaxSteps < 0) throw new ArgumentOutOfRangeException(nameof(MaxSteps), MaxSteps, "MaxSteps must be 0 (the model's default) or more");
        if (TopK < 0) throw new ArgumentOutOfRangeException(nameof(TopK), TopK, "TopK must be 0 (the server's default) or more");
        if (Timeout is { } t && t <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(Timeout), t, "Timeout must be positive");
        Stop?.Validate();
    }

    /// <summary>top_k on the wire: the margin rule needs the top-2 class even when the caller asked for one.</summary>
    internal uint WireTopK => TopK == 1 && Stop?.MinMargin is not null ? 2u : (uint)TopK;
}

/// <summary>
/// A stop policy applied by the client: the stream ends at the first step where any rule that is set holds —
/// the top-1 probability reaches <see cref="MinConfidence"/>, the top-1 leads the top-2 by <see cref="MinMargin"/>,
/// or the top-1 class equals that of each of the <see cref="StableSteps"/> steps before it (the earliest such stop
/// is step k + 1, as on the server). The client then cancels the call, so the server stops before its next step.
/// </summary>
public sealed record ClientStopPolicy(double? MinConfidence = null, double? MinMargin = null, int? StableSteps = null)
{
    internal void Validate()
    {
        if (MinConfidence is null && MinMargin is null && StableSteps is null)
            throw new ArgumentException("a ClientStopPolicy needs a rule: MinConfidence, MinMargin or StableSteps");
        if (MinConfidence is double p && !(p > 0 && p <= 1))
            throw new ArgumentOutOfRangeException(nameof(MinConfidence), p, "MinConfidence must lie in (0, 1]");
        if (MinMargin is double m && !(m > 0 && m <= 1))
            throw new ArgumentOutOfRangeException(nameof(MinMargin), m, "MinMargin must lie in (0, 1]");
        if (StableSteps is int k && k < 1)
            throw new ArgumentOutOfRangeException(nameof(StableSteps), k, "StableSteps must be at least 1");
    }

    public override string ToString() => string.Join(" or ", new[]
    {
        MinConfidence is double p ? string.Create(CultureInfo.InvariantCulture, $"confidence >= {p}") : null,
        MinMargin is double m ? string.Create(CultureInfo.InvariantCulture, $"margin >= {m}") : null,
        StableSteps is int k ? $"top-1 stable for {k} steps" : null,
    }.Where(s => s is not null));

    /// <summary>Follows one stream's updates and says when the policy holds.</summary>
    internal sealed class Tracker(ClientStopPolicy policy)
    {
        int _last = -1, _unchanged;

        public StopReason Observe(int prediction, float confidence, float margin)
        {
            _unchanged = prediction == _last ? _unchanged + 1 : 0;
            _last = prediction;
            if (policy.MinConfidence is double p && confidence >= p) return StopReason.Confident;
            if (policy.MinMargin is double m && margin >= m) return StopReason.Margin;
            if (policy.StableSteps is int k && _unchanged >= k) return StopReason.Stable;
            return StopReason.None;
        }
    }
}

/// <summary>A stop rule sent to the server (the protocol carries one): <see cref="Confidence"/> or <see cref="Stable"/>.</summary>
public sealed record ServerStopPolicy
{
    ServerStopPolicy(double? minConfidence, int? stableSteps)
    {
        MinConfidence = minConfidence;
        StableSteps = stableSteps;
    }

    public double? MinConfidence { get; }
    public int? StableSteps { get; }

    /// <summary>The server stops at the first step whose top-1 probability is at least <paramref name="minConfidence"/> (0 &lt; p ≤ 1).</summary>
    public static ServerStopPolicy Confidence(double minConfidence) => minConfidence is > 0 and <= 1
        ? new(minConfidence, null)
        : throw new ArgumentOutOfRangeException(nameof(minConfidence), minConfidence, "the minimum confidence must lie in (0, 1]");

    /// <summary>The server stops once the top-1 class equals that of each of the <paramref name="steps"/> steps before (k ≥ 1).</summary>
    public static ServerStopPolicy Stable(int steps) => steps >= 1
        ? new(null, steps)
        : throw new ArgumentOutOfRangeException(nameof(steps), steps, "stable steps must be at least 1");

    internal Protos.V1.StopPolicy ToProto() => MinConfidence is double p
        ? new Protos.V1.StopPolicy { MinConfidence = p }
        : new Protos.V1.StopPolicy { StableSteps = (uint)StableSteps!.Value };
}
