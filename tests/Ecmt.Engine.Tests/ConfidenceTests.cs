using Ecmt.Engine.Conversion;
using Ecmt.Engine.Evaluation;
using Ecmt.Engine.Simulation;
using Ecmt.Kernels.Reference;
using Ecmt.Protos;

namespace Ecmt.Engine.Tests;

/// <summary>Per-step temperatures, ECE, the gate and the recommended policy: fitted on validation images, stored with the conversion.</summary>
public class ConfidenceTests
{
    /// <summary>
    /// Images whose labels are drawn from softmax(z / τ*) with z = t · (true logits): the maximum-likelihood temperature
    /// at each step must come out near τ* (here 2 at every step).
    /// </summary>
    static EvaluationResult Synthetic(int images, int steps, double trueTemperature, int seed)
    {
        const int classes = 4;
        var rng = new Random(seed);
        var r = new EvaluationResult(images, steps, classes) { DenseOperationsPerStep = 10 };
        for (int i = 0; i < images; i++)
        {
            var z = Enumerable.Range(0, classes).Select(_ => (float)(3 * rng.NextDouble())).ToArray();
            var p = z.Select(v => Math.Exp(v / trueTemperature)).ToArray();
            double u = rng.NextDouble() * p.Sum(), acc = 0;
            int label = 0;
            for (; label < classes - 1; label++)
            {
                acc += p[label];
                if (u < acc) break;
            }
            r.Labels[i] = (byte)label;
            for (int t = 1; t <= steps; t++)
                for (int c = 0; c < classes; c++) r.Logits[((long)i * steps + t - 1) * classes + c] = t * z[c];
        }
        return r;
    }

    [Fact]
    public void Maximum_likelihood_recovers_the_temperature_at_every_step()
    {
        var r = Synthetic(4000, 3, trueTemperature: 2, seed: 3);
        for (int t = 1; t <= 3; t++) Assert.InRange(ConfidenceFit.FitTemperature(r, t), 1.75, 2.3);
    }

    [Fact]
    public void Probabilities_divide_the_accumulated_logits_by_t_times_the_steps_temperature()
    {
        var calibration = new ConfidenceCalibration { Temperatures = [2f, 0.5f], Source = "test" };
        var p = new float[2];
        calibration.Probabilities([4f, 0f], t: 1, p);     // softmax([2, 0])
        Assert.Equal(1 / (1 + Math.Exp(-2)), p[0], 5);
        calibration.Probabilities([4f, 0f], t: 2, p);     // softmax([4, 0])
        Assert.Equal(1 / (1 + Math.Exp(-4)), p[0], 5);
        calibration.Probabilities([6f, 0f], t: 3, p);     // later steps keep the last τ: softmax([4, 0])
        Assert.Equal(1 / (1 + Math.Exp(-4)), p[0], 5);
        ConfidenceCalibration.Uncalibrated.Probabilities([3f, 0f], t: 3, p);
        Assert.Equal(1 / (1 + Math.Exp(-1)), p[0], 5);
    }

    [Fact]
    public void Ece_is_the_weighted_gap_between_accuracy_and_confidence_per_bin()
    {
        // Bin (0.6, 0.667]: two images at 0.65, one right (gap 0.15); bin (0.933, 1]: two at 0.95, both right (gap 0.05).
        float[] confidence = [0.65f, 0.65f, 0.95f, 0.95f];
        bool[] correct = [true, false, true, true];
        Assert.Equal(0.5 * 0.15 + 0.5 * 0.05, ConfidenceFit.Ece(confidence, correct), 6);
        Assert.Equal(0, ConfidenceFit.Ece([0.5f, 0.5f], [true, false]), 6);
    }

    [Fact]
    public void Fitting_lowers_the_calibration_error_where_the_logits_are_miscalibrated()
    {
        var r = Synthetic(3000, 2, trueTemperature: 2.5, seed: 4);
        var fitted = ConfidenceFit.Fit(r, "synthetic", gate: false);
        for (int t = 0; t < 2; t++)
            Assert.True(fitted.EceAfter![t] < fitted.EceBefore![t] / 2, $"t = {t + 1}: ECE {fitted.EceBefore[t]} → {fitted.EceAfter[t]}");
    }

    [Fact]
    public void Conversion_fits_a_gate_and_a_policy_that_round_trip_through_conversion_json()
    {
        var converted = TestModels.TinyConverted();
        var validation = TestModels.RandomImages(converted.Config, 24, 9);
        var calibrated = ConfidenceFit.Calibrate(converted, validation, () => new ReferenceBackend(), steps: 6, batchSize: 12);
        var confidence = calibrated.Confidence;
        Assert.True(confidence.IsCalibrated);
        Assert.Equal(6, confidence.Temperatures.Length);
        Assert.Equal(validation.Source, confidence.Source);
        Assert.NotNull(confidence.Gate);
        Assert.Equal(Math.Min(ConfidenceFit.GateGroups, 6), confidence.Gate!.Weights.Length);
        Assert.NotNull(calibrated.Record.RecommendedStop);
        var stats = calibrated.Record.RecommendedStopValidation!;
        Assert.Equal(24, stats.Images);
        Assert.Equal(6, stats.MaxSteps);

        // The stats are what the policy does on those images, as eval computes it.
        var result = Evaluator.Run(new SpikingModel(calibrated), () => new ReferenceBackend(), validation, 6, 12);
        var outcome = result.EarlyExit(calibrated.Record.RecommendedStop!, result.Signals(confidence));
        Assert.Equal(stats.MeanSteps, outcome.MeanSteps, 3);
        Assert.Equal(stats.Top1, outcome.Top1, 4);
        Assert.True(stats.Top1 >= stats.AnnTop1 - ConfidenceFit.Tolerance || calibrated.Record.RecommendedStop!.IsEmpty);

        var dir = TestModels.TempDirectory();
        calibrated.Save(dir);
        var loaded = ConvertedModel.Load(dir);
        Assert.Equal(confidence.Temperatures, loaded.Confidence.Temperatures);
        Assert.Equal(confidence.Gate.Weights.SelectMany(w => w), loaded.Confidence.Gate!.Weights.SelectMany(w => w));
        Assert.Equal(calibrated.Record.RecommendedStop, loaded.Record.RecommendedStop);
        Assert.Equal(stats, loaded.Record.RecommendedStopValidation);

        // A conversion without them (an older conversion.json) reports τ = 1 and no gate.
        converted.Save(dir);
        Assert.False(ConvertedModel.Load(dir).Confidence.IsCalibrated);
        Assert.Null(ConvertedModel.Load(dir).Record.RecommendedStop);
    }

    [Fact]
    public void Bad_temperatures_or_a_policy_needing_a_missing_gate_are_refused_at_load()
    {
        var converted = TestModels.TinyConverted();
        var dir = TestModels.TempDirectory();
        converted.WithConfidence(new ConfidenceCalibration { Temperatures = [1f, -2f], Source = "test" }, null, null).Save(dir);
        Assert.Contains("temperatures", Assert.Throws<InvalidDataException>(() => ConvertedModel.Load(dir)).Message);
        converted.WithConfidence(new ConfidenceCalibration { Temperatures = [1f], Source = "test" }, new StopPolicy { MinGate = 0.9 }, null).Save(dir);
        Assert.Contains("gate", Assert.Throws<InvalidDataException>(() => ConvertedModel.Load(dir)).Message);
    }

    [Fact]
    public void The_tracker_reports_the_calibrated_top1_its_margin_and_the_gate()
    {
        var gate = new StopGate { Weights = [[0, 0, 0, 0, 0, 0, 1f]] };   // bias 1 only: σ(1) at every step
        var calibration = new ConfidenceCalibration { Temperatures = [0.5f], Source = "test", Gate = gate };
        var tracker = calibration.Track(3);
        var s1 = tracker.Observe([1f, 0f, 0f], 1);
        Assert.Equal(0, s1.Prediction);
        double e2 = Math.Exp(2);
        Assert.Equal(e2 / (e2 + 2), s1.Confidence, 5);
        Assert.Equal((e2 - 1) / (e2 + 2), s1.Margin, 5);
        Assert.Equal(1 / (1 + Math.Exp(-1)), s1.Gate!.Value, 5);
        var s2 = tracker.Observe([1f, 3f, 0f], 2);
        Assert.Equal(1, s2.Prediction);
        Assert.Throws<ArgumentException>(() => tracker.Observe([0f, 0f, 0f], 4));
        Assert.Null(ConfidenceCalibration.Uncalibrated.Track(3).Observe([1f, 0f, 0f], 1).Gate);
    }
}
