using System.Globalization;
using System.Text.Json.Serialization;

namespace Ecmt.Protos;

/// <summary>
/// What a stop policy reads after step t of one image: the 1-based step, the top-1 class, its calibrated probability,
/// the margin (top-1 minus top-2 calibrated probability) and the model's gate (null when the model has none).
/// </summary>
public readonly record struct StopSignal(int Step, int Prediction, float Confidence, float Margin, float? Gate = null);

/// <summary>Which rule a met policy reports: its only rule when it has one of the two classic ones, else the policy as a whole.</summary>
public enum StopRule
{
    /// <summary>The policy is min_confidence alone.</summary>
    Confidence,
    /// <summary>The policy is stable_steps alone.</summary>
    Stable,
    /// <summary>Any other combination of rules.</summary>
    Policy,
}

/// <summary>
/// When to stop classifying an image before its last step: the one definition that eval, the server (requests and
/// each model's recommended policy), the .NET client and <c>ecmt classify</c> share. Every rule that is set must hold at
/// the same step t:
/// <list type="bullet">
/// <item><see cref="MinConfidence"/>: the calibrated top-1 probability is at least p;</item>
/// <item><see cref="StableSteps"/>: the top-1 class equals that of each of the k steps before t (so t ≥ k + 1);</item>
/// <item><see cref="MinSteps"/>: t ≥ m;</item>
/// <item><see cref="MinMargin"/>: the top-1 minus the top-2 calibrated probability is at least m;</item>
/// <item><see cref="MinGate"/>: the model's gate (its estimate that the top-1 will not change any more) is at least g.</item>
/// </list>
/// A policy with no rule never stops early. <see cref="Recommended"/> stands for the model's recommended policy and
/// is resolved by whoever knows the model (the server, or a client that asked for ModelInfo) before tracking.
/// It lives in the protos assembly so that the engine, the server and the client (which depends on the protos
/// alone) use this one type, its tracker and its mapping to and from the wire.
/// </summary>
public sealed record StopPolicy
{
    public static readonly StopPolicy None = new();

    /// <summary>The model's recommended policy (ModelInfo.recommended_stop), resolved where the model is known.</summary>
    public static readonly StopPolicy Recommended = new() { IsRecommended = true };

    public double? MinConfidence { get; init; }
    public int? StableSteps { get; init; }
    public int? MinSteps { get; init; }
    public double? MinMargin { get; init; }
    public double? MinGate { get; init; }
    /// <summary>True for <see cref="Recommended"/>: no rule of its own, the model's recommended policy instead.</summary>
    [JsonPropertyName("recommended"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public bool IsRecommended { get; init; }

    /// <summary>True when no rule is set (and it is not <see cref="Recommended"/>): the run goes to its last step.</summary>
    [JsonIgnore]
    public bool IsEmpty => !IsRecommended && MinConfidence is null && StableSteps is null && MinSteps is null && MinMargin is null && MinGate is null;

    /// <summary>The rule a met policy reports.</summary>
    [JsonIgnore]
    public StopRule Rule =>
        MinConfidence is not null && StableSteps is null && MinSteps is null && MinMargin is null && MinGate is null ? StopRule.Confidence
        : StableSteps is not null && MinConfidence is null && MinSteps is null && MinMargin is null && MinGate is null ? StopRule.Stable
        : StopRule.Policy;

    /// <summary>Throws <see cref="ArgumentException"/> naming the field (as on the wire) that is out of its range.</summary>
    public void Validate()
    {
        if (IsRecommended && !(MinConfidence is null && StableSteps is null && MinSteps is null && MinMargin is null && MinGate is null))
            throw new ArgumentException("stop.recommended takes the model's policy: set no other stop field with it");
        if (MinConfidence is double p && !(p > 0 && p <= 1))
            throw new ArgumentException(Invariant($"stop.min_confidence is {p}: it must lie in (0, 1]"));
        if (StableSteps is int k && k < 1)
            throw new ArgumentException($"stop.stable_steps is {k}: it must be at least 1");
        if (MinSteps is int m && m < 1)
            throw new ArgumentException($"stop.min_steps is {m}: it must be at least 1");
        if (MinMargin is double margin && !(margin > 0 && margin <= 1))
            throw new ArgumentException(Invariant($"stop.min_margin is {margin}: it must lie in (0, 1]"));
        if (MinGate is double g && !(g > 0 && g <= 1))
            throw new ArgumentException(Invariant($"stop.min_gate is {g}: it must lie in (0, 1]"));
    }

    /// <summary>A fresh tracker for one image (one <see cref="Tracker.Observe"/> per step).</summary>
    public Tracker Track()
    {
        if (IsRecommended) throw new InvalidOperationException("resolve the recommended policy to the model's own before tracking");
        return new Tracker(this);
    }

    /// <summary>"confidence ≥ 0.9, top-1 stable for 2 steps, t ≥ 2"; "none" without rules.</summary>
    public override string ToString()
    {
        if (IsRecommended) return "the model's recommended policy";
        var parts = new[]
        {
            MinConfidence is double p ? Invariant($"confidence >= {p}") : null,
            MinMargin is double m ? Invariant($"margin >= {m}") : null,
            MinGate is double g ? Invariant($"gate >= {g}") : null,
            StableSteps is int k ? $"top-1 stable for {k} step{(k == 1 ? "" : "s")}" : null,
            MinSteps is int s ? $"at least {s} step{(s == 1 ? "" : "s")}" : null,
        }.Where(x => x is not null);
        var text = string.Join(" and ", parts);
        return text.Length == 0 ? "none" : text;
    }

    /// <summary>Follows one image's steps and says when every rule of the policy holds.</summary>
    public sealed class Tracker
    {
        readonly StopPolicy _policy;
        int _last = -1, _unchanged, _steps;

        internal Tracker(StopPolicy policy) => _policy = policy;

        /// <summary>The policy followed.</summary>
        public StopPolicy Policy => _policy;

        /// <summary>Records step t (steps must come in order, 1, 2, …) and says whether to stop now.</summary>
        public bool Observe(in StopSignal signal)
        {
            if (signal.Step != ++_steps) throw new ArgumentException($"step {signal.Step} observed after step {_steps - 1}: one Observe per step, in order");
            // How many steps before this one had the same top-1 class, without a change in between.
            _unchanged = signal.Prediction == _last ? _unchanged + 1 : 0;
            _last = signal.Prediction;
            var p = _policy;
            if (p.IsEmpty) return false;
            return (p.MinConfidence is not double c || signal.Confidence >= c)
                && (p.StableSteps is not int k || _unchanged >= k)
                && (p.MinSteps is not int m || signal.Step >= m)
                && (p.MinMargin is not double margin || signal.Margin >= margin)
                && (p.MinGate is not double g || signal.Gate is float gate && gate >= g);
        }
    }

    /// <summary>The policy a request carries; <see cref="None"/> for an absent message. Not validated here.</summary>
    public static StopPolicy FromProto(V1.StopPolicy? message) => message is null ? None : new StopPolicy
    {
        MinConfidence = message.HasMinConfidence ? message.MinConfidence : null,
        StableSteps = message.HasStableSteps ? (int)Math.Min(message.StableSteps, int.MaxValue) : null,
        MinSteps = message.HasMinSteps ? (int)Math.Min(message.MinSteps, int.MaxValue) : null,
        MinMargin = message.HasMinMargin ? message.MinMargin : null,
        MinGate = message.HasMinGate ? message.MinGate : null,
        IsRecommended = message.Recommended,
    };

    /// <summary>The wire form: each rule that is set, or recommended = true.</summary>
    public V1.StopPolicy ToProto()
    {
        var message = new V1.StopPolicy { Recommended = IsRecommended };
        if (MinConfidence is double p) message.MinConfidence = p;
        if (StableSteps is int k) message.StableSteps = (uint)k;
        if (MinSteps is int m) message.MinSteps = (uint)m;
        if (MinMargin is double margin) message.MinMargin = margin;
        if (MinGate is double g) message.MinGate = g;
        return message;
    }

    static string Invariant(FormattableString text) => text.ToString(CultureInfo.InvariantCulture);
}
