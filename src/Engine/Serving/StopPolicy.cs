namespace Ecmt.Engine.Serving;

/// <summary>Why a run ended early or on time; <see cref="None"/> on every step but the last.</summary>
public enum StopReason
{
    None,
    /// <summary>The requested number of steps was run.</summary>
    MaxSteps,
    /// <summary>The top-1 probability reached <see cref="StopPolicy.MinConfidence"/>.</summary>
    Confident,
    /// <summary>The top-1 class stayed the same for <see cref="StopPolicy.StableSteps"/> steps.</summary>
    Stable,
}

/// <summary>
/// When to stop before the last step: at the first step whose top-1 probability is at least
/// <see cref="MinConfidence"/>, or at the first step t whose top-1 class equals that of each of the
/// <see cref="StableSteps"/> steps before it (so the earliest such stop is step k + 1). At most one rule is set.
/// </summary>
public sealed record StopPolicy(double? MinConfidence = null, int? StableSteps = null)
{
    public static readonly StopPolicy None = new();

    /// <summary>Throws <see cref="ArgumentException"/> naming the value that is out of its range.</summary>
    public void Validate()
    {
        if (MinConfidence is not null && StableSteps is not null)
            throw new ArgumentException("set one stop rule: min_confidence or stable_steps");
        if (MinConfidence is double p && !(p > 0 && p <= 1))
            throw new ArgumentException($"stop.min_confidence is {p}: it must lie in (0, 1]");
        if (StableSteps is int k && k < 1)
            throw new ArgumentException($"stop.stable_steps is {k}: it must be at least 1");
    }

    /// <summary>Follows the predictions step by step and says when the policy is met.</summary>
    internal sealed class Tracker(StopPolicy policy)
    {
        int _last = -1, _unchanged;

        /// <summary>Records step t's top-1 class and confidence; the reason to stop now, else <see cref="StopReason.None"/>.</summary>
        public StopReason Observe(int prediction, float confidence)
        {
            _unchanged = prediction == _last ? _unchanged + 1 : 0;
            _last = prediction;
            if (policy.MinConfidence is double p && confidence >= p) return StopReason.Confident;
            if (policy.StableSteps is int k && _unchanged >= k) return StopReason.Stable;
            return StopReason.None;
        }
    }
}
