using System.Text.Json.Serialization;
using Ecmt.Protos;

namespace Ecmt.Engine.Conversion;

/// <summary>How the recommended stop policy measured on the validation images at conversion (at most MaxSteps steps).</summary>
public sealed record RecommendedStopStats(int Images, double AnnTop1, double Top1, double MeanSteps, int MaxSteps);

/// <summary>
/// The gate: a logistic regression, fitted at conversion on validation images, that estimates from one step's
/// prediction and how it moved whether the top-1 class is final (the same at every later step). One weight vector per
/// step for the first steps and one shared by every later step; each holds a weight per <see cref="Features"/>
/// entry and a bias last.
/// </summary>
public sealed record StopGate
{
    /// <summary>What the gate reads after step t, in the order of each weight vector.</summary>
    public static readonly string[] Features =
    [
        "log_odds_confidence",      // log(p1 / (1 − p1)), p1 the calibrated top-1 probability
        "margin",                   // p1 − p2
        "stable_steps",             // steps before t with the same top-1, without a change in between, at most 3
        "log_previous_probability", // log of the calibrated probability step t − 1 gave today's top-1 (1/C before step 1)
        "log_logit_change",         // log ‖z(t)/t − z(t−1)/(t−1)‖₂, z the accumulated logits (z(0)/0 taken as 0)
        "entropy",                  // of the calibrated probabilities
    ];

    public const int MaxStableSteps = 3;

    /// <summary>(groups, features + 1): group g serves step g + 1; the last group serves every later step too.</summary>
    public required float[][] Weights { get; init; }

    public void Validate()
    {
        if (Weights.Length == 0 || Weights.Any(w => w.Length != Features.Length + 1 || w.Any(v => !float.IsFinite(v))))
            throw new InvalidDataException($"the gate needs at least one weight vector of {Features.Length + 1} finite numbers");
    }

    /// <summary>The estimated probability that the top-1 class after step t is final.</summary>
    public float Score(int t, ReadOnlySpan<float> features)
    {
        var w = Weights[Math.Min(t, Weights.Length) - 1];
        double z = w[^1];
        for (int i = 0; i < features.Length; i++) z += w[i] * features[i];
        return (float)(1 / (1 + Math.Exp(-z)));
    }
}

/// <summary>
/// How a converted model turns accumulated logits into the probabilities everyone reports: temperatures τ_t per step,
/// fitted at conversion on validation images, and the optional <see cref="StopGate"/>. The probability after step t is
/// softmax(accumulated logits / (t · τ_t)); steps past the fitted ones use the last τ (the logits have converged).
/// A model converted without it uses τ = 1.
/// </summary>
public sealed record ConfidenceCalibration
{
    public static readonly ConfidenceCalibration Uncalibrated = new() { Temperatures = [1f], Source = "none" };

    /// <summary>τ_t for t = 1 … Temperatures.Length.</summary>
    public required float[] Temperatures { get; init; }
    public StopGate? Gate { get; init; }
    /// <summary>The images the temperatures and the gate were fitted on, e.g. "fashion-mnist/train[57500..60000)".</summary>
    public required string Source { get; init; }
    public int Images { get; init; }
    /// <summary>Expected calibration error (15 bins) per fitted step on those images, with τ = 1 and with τ_t.</summary>
    public double[]? EceBefore { get; init; }
    public double[]? EceAfter { get; init; }

    [JsonIgnore]
    public bool IsCalibrated => !ReferenceEquals(this, Uncalibrated) && Source != "none";

    public float Temperature(int t) => Temperatures[Math.Clamp(t, 1, Temperatures.Length) - 1];

    public void Validate()
    {
        if (Temperatures.Length == 0 || Temperatures.Any(v => !(v > 0) || !float.IsFinite(v)))
            throw new InvalidDataException("temperatures must be positive and finite, at least one");
        Gate?.Validate();
    }

    /// <summary>
    /// The calibrated probabilities after step <paramref name="t"/> of one image: softmax(accumulated / (t · τ_t)).
    /// The one place they are computed (eval, the server, fitting); accumulated and probabilities are (classes).
    /// </summary>
    public void Probabilities(ReadOnlySpan<float> accumulated, int t, Span<float> probabilities)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(t, 1);
        float scale = 1f / (t * Temperature(t));
        for (int c = 0; c < accumulated.Length; c++) probabilities[c] = accumulated[c] * scale;
        Kernels.Reference.ReferenceMath.Softmax(probabilities, probabilities);
    }

    /// <summary>A tracker for one image: one <see cref="PredictionTracker.Observe"/> per step.</summary>
    public PredictionTracker Track(int classes) => new(this, classes);
}

/// <summary>
/// Follows one image's accumulated logits step by step and turns each step into what clients see and stop policies
/// read: calibrated probabilities, the top-1 class, its probability, the margin and the gate. Not thread-safe.
/// </summary>
public sealed class PredictionTracker(ConfidenceCalibration calibration, int classes)
{
    readonly float[] _probabilities = new float[classes];
    readonly float[] _previous = new float[classes];
    readonly float[] _previousMean = new float[classes];
    readonly float[] _features = new float[StopGate.Features.Length];
    int _step, _lastPrediction = -1, _unchanged;

    /// <summary>(classes): the calibrated probabilities after the last observed step.</summary>
    public ReadOnlySpan<float> Probabilities => _probabilities;

    /// <summary>Records step t's accumulated logits (classes); steps must come in order 1, 2, ….</summary>
    public StopSignal Observe(ReadOnlySpan<float> accumulated, int t)
    {
        if (t != _step + 1) throw new ArgumentException($"step {t} observed after step {_step}: one Observe per step, in order");
        if (accumulated.Length != classes) throw new ArgumentException($"expected {classes} logits, got {accumulated.Length}");
        _step = t;
        if (t == 1) Array.Fill(_previous, 1f / classes);
        else _probabilities.CopyTo(_previous, 0);
        calibration.Probabilities(accumulated, t, _probabilities);
        int top = 0, second = -1;
        for (int c = 1; c < classes; c++)
        {
            if (accumulated[c] > accumulated[top]) (second, top) = (top, c);
            else if (second < 0 || accumulated[c] > accumulated[second]) second = c;
        }
        float p1 = _probabilities[top], p2 = second < 0 ? 0f : _probabilities[second];
        _unchanged = top == _lastPrediction ? _unchanged + 1 : 0;
        _lastPrediction = top;

        double change = 0, entropy = 0;
        for (int c = 0; c < classes; c++)
        {
            float mean = accumulated[c] / t;
            change += (mean - _previousMean[c]) * (double)(mean - _previousMean[c]);
            _previousMean[c] = mean;
            if (_probabilities[c] > 0) entropy -= _probabilities[c] * Math.Log(_probabilities[c]);
        }
        const double tiny = 1e-6;
        _features[0] = (float)Math.Log((p1 + tiny) / (1 - p1 + tiny));
        _features[1] = p1 - p2;
        _features[2] = Math.Min(_unchanged, StopGate.MaxStableSteps);
        _features[3] = (float)Math.Log(_previous[top] + tiny);
        _features[4] = (float)Math.Log(Math.Sqrt(change) + tiny);
        _features[5] = (float)entropy;
        return new StopSignal(t, top, p1, p1 - p2, calibration.Gate?.Score(t, _features));
    }

    /// <summary>The gate's inputs for the last observed step (fitting reads them).</summary>
    internal ReadOnlySpan<float> Features => _features;
}
