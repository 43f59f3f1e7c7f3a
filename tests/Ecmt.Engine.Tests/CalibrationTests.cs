using Ecmt.Engine.Ann;
using Ecmt.Engine.Conversion;

namespace Ecmt.Engine.Tests;

public class CalibrationTests
{
    [Fact]
    public void Quantile_interpolates_between_order_statistics_like_torch_quantile()
    {
        var rng = new Random(2);
        foreach (var count in new[] { 1, 2, 7, 100, 1001 })
        {
            var values = Enumerable.Range(0, count).Select(_ => (float)(rng.NextDouble() * 10 - 5)).ToArray();
            var sorted = values.OrderBy(v => v).ToArray();
            foreach (var q in new[] { 0.0, 0.01, 0.25, 0.5, 0.99, 1.0 })
            {
                double position = q * (count - 1);
                int lower = (int)Math.Floor(position);
                double expected = lower + 1 < count ? sorted[lower] + (position - lower) * (sorted[lower + 1] - sorted[lower]) : sorted[lower];
                Assert.Equal(expected, Calibration.Quantile((float[])values.Clone(), q), 5);
            }
        }
    }

    [Fact]
    public void Per_tensor_thresholds_are_batch_quantiles_averaged_over_batches()
    {
        var config = TestModels.Tiny();
        var weights = TestModels.RandomWeights(config, 3);
        var images = TestModels.RandomImages(config, 30, 4);
        var settings = ConversionSettings.Calibrated(quantile: 0.95);
        var thresholds = Calibration.Calibrate(new ReferenceVit(weights), images, settings, batchSize: 10);

        // Recompute λp at fc1 of block 1 and λn at q of block 0 from the activations, batch by batch.
        var ann = new ReferenceVit(weights);
        double fc1Pos = 0, qNeg = 0;
        for (int start = 0; start < 30; start += 10)
        {
            ann.Forward(images.Normalized(start, 10, config), 10, (block, place, values, _) =>
            {
                var sorted = values.ToArray().OrderBy(v => v).ToArray();
                double At(double q) => Calibration.Quantile((float[])sorted.Clone(), q);
                if (block == 1 && place == Place.Fc1) fc1Pos += At(0.95) / 3;
                if (block == 0 && place == Place.Q) qNeg += -At(0.05) / 3;
            });
        }
        Assert.Equal(fc1Pos, thresholds[1, Place.Fc1].Pos[0], 4);
        Assert.Equal(qNeg, thresholds[0, Place.Q].Neg[0], 4);
    }

    [Fact]
    public void Thresholds_are_positive_and_the_probability_side_without_negatives_borrows_the_positive_side()
    {
        var model = TestModels.TinyConverted();
        for (int block = 0; block < 2; block++)
        {
            foreach (var place in Places.All)
            {
                var t = model.Thresholds[block, place];
                Assert.All(t.Pos.Concat(t.Neg), v => Assert.True(v > 0, $"{place} threshold {v}"));
            }
            // Softmax probabilities are never negative, so their (1−p)-quantile is 0 and λn takes λp.
            Assert.Equal(model.Thresholds[block, Place.S].Pos, model.Thresholds[block, Place.S].Neg);
        }
    }

    [Fact]
    public void Reference_preset_pins_s_and_fc2_and_calibrates_the_rest()
    {
        var reference = TestModels.TinyConverted(ConversionSettings.Reference());
        var calibrated = TestModels.TinyConverted(ConversionSettings.Calibrated());
        Assert.Equal([0.0125f], reference.Thresholds[1, Place.S].Pos);
        Assert.Equal([0.0125f], reference.Thresholds[1, Place.S].Neg);
        Assert.Equal([0.25f], reference.Thresholds[0, Place.Fc2].Pos);
        Assert.Equal([0.08f], reference.Thresholds[0, Place.Fc2].Neg);
        Assert.Equal(calibrated.Thresholds[0, Place.Fc1].Pos, reference.Thresholds[0, Place.Fc1].Pos);
        Assert.NotEqual(calibrated.Thresholds[0, Place.Fc2].Pos, reference.Thresholds[0, Place.Fc2].Pos);
    }

    [Fact]
    public void Per_channel_thresholds_have_one_pair_per_channel_and_per_head_at_s()
    {
        var model = TestModels.TinyConverted(ConversionSettings.Calibrated(ThresholdGranularity.PerChannel));
        var c = model.Config;
        Assert.Equal(c.EmbedDim, model.Thresholds[0, Place.FcQkv].Groups);
        Assert.Equal(c.EmbedDim, model.Thresholds[0, Place.V].Groups);
        Assert.Equal(c.MlpDim, model.Thresholds[1, Place.Fc2].Groups);
        Assert.Equal(c.NumHeads, model.Thresholds[1, Place.S].Groups);
        // Channels differ, so per-channel values are not all equal.
        Assert.True(model.Thresholds[0, Place.Fc1].Pos.Distinct().Count() > 1);
    }

    [Fact]
    public void Settings_reject_nonsense()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => ConversionSettings.Calibrated(quantile: 1.2).Validate());
        Assert.Throws<ArgumentOutOfRangeException>(() => (ConversionSettings.Calibrated() with { Levels = new Dictionary<string, int> { ["fc1"] = 0 } }).Validate());
        Assert.Throws<FormatException>(() => (ConversionSettings.Calibrated() with { Levels = new Dictionary<string, int> { ["fc9"] = 4 } }).Validate());
        Assert.Throws<ArgumentOutOfRangeException>(() => (ConversionSettings.Calibrated() with { Fixed = new Dictionary<string, ThresholdPair> { ["s"] = new(0, 1) } }).Validate());
    }
}
