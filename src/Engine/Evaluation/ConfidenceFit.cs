using Ecmt.Engine.Conversion;
using Ecmt.Engine.Data;
using Ecmt.Engine.Simulation;
using Ecmt.Kernels;
using Ecmt.Protos;

namespace Ecmt.Engine.Evaluation;

/// <summary>How a stop policy did on an image set: top-1 of the stopped predictions, mean steps, mean energy ratio.</summary>
public sealed record PolicyOutcome(StopPolicy Policy, double Top1, double MeanSteps, double EnergyRatio);

/// <summary>
/// What conversion fits on held-out validation images after the thresholds: per-step temperatures (maximum
/// likelihood), the gate (logistic regression for "this top-1 is final") and the recommended stop policy (the fewest
/// mean steps within <see cref="Tolerance"/> of the ANN's top-1 there). The test set plays no part.
/// </summary>
public static class ConfidenceFit
{
    public const int EceBins = 15;
    /// <summary>The recommended policy stays within this much top-1 of the ANN on the validation images (0.5 point).</summary>
    public const double Tolerance = 0.005;
    public const int DefaultSteps = 32;
    /// <summary>Steps with a gate weight vector of their own; later steps share the last one.</summary>
    public const int GateGroups = 3;

    /// <summary>
    /// Simulates <paramref name="validation"/> for <paramref name="steps"/> steps, fits temperatures and the gate,
    /// chooses the recommended policy, and returns the model with them recorded (the thresholds unchanged).
    /// </summary>
    public static ConvertedModel Calibrate(ConvertedModel model, ImageSet validation, Func<ISpikingBackend> backend, int steps = DefaultSteps,
        int batchSize = 100, int workers = 1, IProgress<int>? progress = null)
    {
        var uncalibrated = model.WithConfidence(ConfidenceCalibration.Uncalibrated, null, null);
        var result = Evaluator.Run(new SpikingModel(uncalibrated), backend, validation, steps, batchSize, workers, progress);
        var calibration = Fit(result, validation.Source);
        var recommended = Recommend(result, calibration);
        return model.WithConfidence(calibration, recommended.Policy,
            new RecommendedStopStats(result.Images, Math.Round(result.AnnTop1, 4), Math.Round(recommended.Top1, 4), Math.Round(recommended.MeanSteps, 3), result.Steps));
    }

    /// <summary>Temperatures per step and the gate, fitted on an evaluation's logits.</summary>
    public static ConfidenceCalibration Fit(EvaluationResult result, string source, bool gate = true)
    {
        var temperatures = new float[result.Steps];
        for (int t = 1; t <= result.Steps; t++) temperatures[t - 1] = (float)FitTemperature(result, t);
        var calibration = new ConfidenceCalibration { Temperatures = temperatures, Source = source, Images = result.Images };
        return calibration with
        {
            Gate = gate ? FitGate(result, calibration) : null,
            EceBefore = EceByStep(result, ConfidenceCalibration.Uncalibrated).Select(v => Math.Round(v, 4)).ToArray(),
            EceAfter = EceByStep(result, calibration).Select(v => Math.Round(v, 4)).ToArray(),
        };
    }

    /// <summary>The τ that minimises the mean negative log-likelihood of softmax(z / (t·τ)) at step t (golden section on log τ).</summary>
    public static double FitTemperature(EvaluationResult result, int t)
    {
        double Nll(double logTau)
        {
            double scale = 1 / (t * Math.Exp(logTau)), total = 0;
            for (int i = 0; i < result.Images; i++)
            {
                var z = result.LogitsAt(i, t);
                double max = double.NegativeInfinity;
                foreach (var v in z) max = Math.Max(max, v * scale);
                double sum = 0;
                foreach (var v in z) sum += Math.Exp(v * scale - max);
                total += max + Math.Log(sum) - z[result.Labels[i]] * scale;
            }
            return total / result.Images;
        }
        double a = Math.Log(0.02), b = Math.Log(50), ratio = (Math.Sqrt(5) - 1) / 2;
        double c = b - ratio * (b - a), d = a + ratio * (b - a), fc = Nll(c), fd = Nll(d);
        for (int i = 0; i < 50; i++)
        {
            if (fc < fd)
            {
                (b, d, fd) = (d, c, fc);
                c = b - ratio * (b - a);
                fc = Nll(c);
            }
            else
            {
                (a, c, fc) = (c, d, fd);
                d = a + ratio * (b - a);
                fd = Nll(d);
            }
        }
        return Math.Exp((a + b) / 2);
    }

    /// <summary>Expected calibration error (15 equal-width confidence bins) of the top-1 at every step.</summary>
    public static double[] EceByStep(EvaluationResult result, ConfidenceCalibration calibration)
    {
        var signals = result.Signals(calibration);
        return Enumerable.Range(1, result.Steps).Select(t => Ece(Reliability(result, signals, t), result.Images)).ToArray();
    }

    /// <summary>One bin of a reliability diagram: how many top-1s fell in it, their mean confidence and their accuracy.</summary>
    public sealed record ReliabilityBin(double Lower, double Upper, int Count, double Confidence, double Accuracy);

    /// <summary>The 15 bins of the top-1 confidence at step t (1-based) of an evaluation, from its stop signals.</summary>
    public static ReliabilityBin[] Reliability(EvaluationResult result, StopSignal[,] signals, int t)
    {
        var confidence = new float[result.Images];
        var correct = new bool[result.Images];
        for (int i = 0; i < result.Images; i++)
        {
            confidence[i] = signals[i, t - 1].Confidence;
            correct[i] = signals[i, t - 1].Prediction == result.Labels[i];
        }
        return Reliability(confidence, correct);
    }

    /// <summary>Equal-width bins (k/bins, (k+1)/bins] of the confidences, with the accuracy of the answers in each.</summary>
    public static ReliabilityBin[] Reliability(ReadOnlySpan<float> confidence, ReadOnlySpan<bool> correct, int bins = EceBins)
    {
        var count = new int[bins];
        var hits = new double[bins];
        var sum = new double[bins];
        for (int i = 0; i < confidence.Length; i++)
        {
            int b = Math.Clamp((int)Math.Ceiling(confidence[i] * bins) - 1, 0, bins - 1);
            count[b]++;
            sum[b] += confidence[i];
            if (correct[i]) hits[b]++;
        }
        return Enumerable.Range(0, bins).Select(b => new ReliabilityBin((double)b / bins, (b + 1.0) / bins, count[b],
            count[b] == 0 ? 0 : sum[b] / count[b], count[b] == 0 ? 0 : hits[b] / count[b])).ToArray();
    }

    /// <summary>Σ over bins (|bin| / n) · |accuracy − mean confidence|, bins (k/15, (k+1)/15].</summary>
    public static double Ece(ReadOnlySpan<float> confidence, ReadOnlySpan<bool> correct, int bins = EceBins) =>
        Ece(Reliability(confidence, correct, bins), confidence.Length);

    static double Ece(IEnumerable<ReliabilityBin> bins, int n) => bins.Sum(b => (double)b.Count / n * Math.Abs(b.Accuracy - b.Confidence));

    /// <summary>
    /// The gate: per group of steps, a logistic regression (Newton's method, a little L2 on standardised features)
    /// from <see cref="StopGate.Features"/> to "the top-1 after step t equals the top-1 at every later step up to the
    /// last simulated one". Standardisation is folded into the stored weights.
    /// </summary>
    public static StopGate FitGate(EvaluationResult result, ConfidenceCalibration calibration)
    {
        int features = StopGate.Features.Length, images = result.Images, steps = result.Steps;
        var x = new float[images, steps, features];
        var predictions = new int[images, steps];
        for (int i = 0; i < images; i++)
        {
            var tracker = calibration.Track(result.Classes);
            for (int t = 1; t <= steps; t++)
            {
                predictions[i, t - 1] = tracker.Observe(result.LogitsAt(i, t), t).Prediction;
                for (int f = 0; f < features; f++) x[i, t - 1, f] = tracker.Features[f];
            }
        }
        // final[i, t]: the top-1 after step t + 1 never changes again.
        var final = new bool[images, steps];
        for (int i = 0; i < images; i++)
        {
            bool same = true;
            for (int t = steps - 1; t >= 0; t--)
            {
                same &= predictions[i, t] == predictions[i, steps - 1];
                final[i, t] = same;
            }
        }
        int groups = Math.Min(GateGroups, steps);
        var weights = new float[groups][];
        for (int g = 0; g < groups; g++)
        {
            var rows = new List<(float[] X, bool Y)>();
            for (int t = g; t < (g == groups - 1 ? steps : g + 1); t++)
                for (int i = 0; i < images; i++)
                {
                    var row = new float[features];
                    for (int f = 0; f < features; f++) row[f] = x[i, t, f];
                    rows.Add((row, final[i, t]));
                }
            weights[g] = Logistic(rows, features);
        }
        return new StopGate { Weights = weights };
    }

    /// <summary>Weights (features + bias) of an L2-regularised logistic regression, in the original feature scale.</summary>
    static float[] Logistic(List<(float[] X, bool Y)> rows, int features)
    {
        int n = rows.Count, k = features + 1;
        var mean = new double[features];
        var sd = new double[features];
        foreach (var (xs, _) in rows) for (int f = 0; f < features; f++) mean[f] += xs[f] / (double)n;
        foreach (var (xs, _) in rows) for (int f = 0; f < features; f++) sd[f] += (xs[f] - mean[f]) * (xs[f] - mean[f]) / n;
        for (int f = 0; f < features; f++) sd[f] = Math.Sqrt(sd[f]) + 1e-9;
        var w = new double[k];
        const double l2 = 1e-3;
        var z = new double[k];
        for (int iteration = 0; iteration < 50; iteration++)
        {
            var gradient = new double[k];
            var hessian = new double[k, k];
            foreach (var (xs, y) in rows)
            {
                for (int f = 0; f < features; f++) z[f] = (xs[f] - mean[f]) / sd[f];
                z[features] = 1;
                double a = 0;
                for (int j = 0; j < k; j++) a += w[j] * z[j];
                double p = 1 / (1 + Math.Exp(-a)), r = p - (y ? 1 : 0), s = p * (1 - p);
                for (int j = 0; j < k; j++)
                {
                    gradient[j] += r * z[j] / n;
                    for (int m = 0; m < k; m++) hessian[j, m] += s * z[j] * z[m] / n;
                }
            }
            for (int j = 0; j < k; j++)
            {
                gradient[j] += l2 * w[j];
                hessian[j, j] += l2;
            }
            var step = Solve(hessian, gradient);
            double largest = 0;
            for (int j = 0; j < k; j++)
            {
                w[j] -= step[j];
                largest = Math.Max(largest, Math.Abs(step[j]));
            }
            if (largest < 1e-8) break;
        }
        var result = new float[k];
        double bias = w[features];
        for (int f = 0; f < features; f++)
        {
            result[f] = (float)(w[f] / sd[f]);
            bias -= w[f] * mean[f] / sd[f];
        }
        result[features] = (float)bias;
        return result;
    }

    /// <summary>Solves A·x = b (A symmetric positive definite, small) by Gaussian elimination with partial pivoting.</summary>
    static double[] Solve(double[,] a, double[] b)
    {
        int n = b.Length;
        var m = (double[,])a.Clone();
        var x = (double[])b.Clone();
        for (int col = 0; col < n; col++)
        {
            int pivot = col;
            for (int r = col + 1; r < n; r++) if (Math.Abs(m[r, col]) > Math.Abs(m[pivot, col])) pivot = r;
            if (pivot != col)
            {
                for (int c = 0; c < n; c++) (m[col, c], m[pivot, c]) = (m[pivot, c], m[col, c]);
                (x[col], x[pivot]) = (x[pivot], x[col]);
            }
            for (int r = col + 1; r < n; r++)
            {
                double factor = m[r, col] / m[col, col];
                for (int c = col; c < n; c++) m[r, c] -= factor * m[col, c];
                x[r] -= factor * x[col];
            }
        }
        for (int r = n - 1; r >= 0; r--)
        {
            for (int c = r + 1; c < n; c++) x[r] -= m[r, c] * x[c];
            x[r] /= m[r, r];
        }
        return x;
    }

    /// <summary>
    /// The policies conversion chooses among: the classic rules and their combinations (calibrated confidence, top-1
    /// stable for k steps, at least m steps, a margin), and the gate at thresholds 0.50 … 0.99 with or without a
    /// minimum step count and a one-step stability.
    /// </summary>
    public static IEnumerable<StopPolicy> Candidates(bool gate)
    {
        double?[] confidences = [null, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95];
        int?[] stables = [null, 1, 2, 3];
        int?[] minSteps = [null, 2, 3];
        double?[] margins = [null, 0.2, 0.4, 0.6];
        foreach (var p in confidences)
            foreach (var k in stables)
                foreach (var m in minSteps)
                    foreach (var margin in margins)
                        yield return new StopPolicy { MinConfidence = p, StableSteps = k, MinSteps = m, MinMargin = margin };
        if (!gate) yield break;
        for (int g = 50; g <= 99; g++)
            foreach (var m in minSteps)
                foreach (var k in new int?[] { null, 1 })
                    yield return new StopPolicy { MinGate = g / 100.0, MinSteps = m, StableSteps = k };
    }

    /// <summary>The candidate with the fewest mean steps whose top-1 stays within <see cref="Tolerance"/> of the ANN (ties: higher top-1).</summary>
    public static PolicyOutcome Recommend(EvaluationResult result, ConfidenceCalibration calibration)
    {
        var signals = result.Signals(calibration);
        double floor = result.AnnTop1 - Tolerance;
        PolicyOutcome? best = null;
        foreach (var policy in Candidates(calibration.Gate is not null))
        {
            var outcome = result.EarlyExit(policy, signals);
            if (outcome.Top1 < floor - 1e-12) continue;
            if (best is null || outcome.MeanSteps < best.MeanSteps - 1e-12 || (Math.Abs(outcome.MeanSteps - best.MeanSteps) <= 1e-12 && outcome.Top1 > best.Top1))
                best = outcome;
        }
        // Running every step always qualifies when the last step is as good as the ANN; otherwise say so plainly.
        return best ?? result.EarlyExit(StopPolicy.None, signals);
    }
}
