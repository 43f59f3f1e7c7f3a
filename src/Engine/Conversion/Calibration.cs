using Ecmt.Engine.Ann;
using Ecmt.Engine.Data;

namespace Ecmt.Engine.Conversion;

/// <summary>Which images calibrated a conversion.</summary>
public sealed record CalibrationSource(string Source, int Images, int BatchSize);

/// <summary>
/// Threshold calibration (ECMT.md section 4): run the ANN on calibration images; at every place of every block take,
/// per batch, the p-quantile of the values as λp and minus the (1−p)-quantile as λn (per channel, or per head at s,
/// when asked); average over batches; divide by 2^j where the settings make the quantile level j's value. Places
/// with fixed thresholds are not calibrated.
/// </summary>
public static class Calibration
{
    public const int DefaultBatchSize = 100;

    public static ModelThresholds Calibrate(ReferenceVit ann, ImageSet images, ConversionSettings settings, int batchSize = DefaultBatchSize,
        IProgress<int>? progress = null)
    {
        settings.Validate();
        var config = ann.Config;
        int depth = config.Depth, places = Places.All.Length;
        var sumPos = new double[depth, places][];
        var sumNeg = new double[depth, places][];
        int batches = 0;
        for (int start = 0; start < images.Count; start += batchSize)
        {
            int count = Math.Min(batchSize, images.Count - start);
            ann.Forward(images.Normalized(start, count, config), count, (block, place, values, shape) =>
            {
                if (settings.FixedAt(place) is not null) return;
                var (pos, neg) = BatchThresholds(values, shape, place, settings);
                sumPos[block, (int)place] ??= new double[pos.Length];
                sumNeg[block, (int)place] ??= new double[neg.Length];
                for (int g = 0; g < pos.Length; g++)
                {
                    sumPos[block, (int)place][g] += pos[g];
                    sumNeg[block, (int)place][g] += neg[g];
                }
            });
            batches++;
            progress?.Report(start + count);
        }

        var result = new ModelThresholds(depth);
        for (int block = 0; block < depth; block++)
        {
            foreach (var place in Places.All)
            {
                int groups = GroupCount(place, config, settings.Granularity);
                // The quantile (or fixed value) is level j's value: λ = q / 2^j.
                float down = 1f / Kernels.MultiThresholdNeuron.Pow2(settings.QuantileLevelAt(place));
                if (settings.FixedAt(place) is { } pair)
                {
                    result[block, place] = new PlaceThresholds(Enumerable.Repeat(pair.Pos * down, groups).ToArray(), Enumerable.Repeat(pair.Neg * down, groups).ToArray());
                    continue;
                }
                var pos = sumPos[block, (int)place].Select(s => (float)(s / batches) * down).ToArray();
                var neg = sumNeg[block, (int)place].Select(s => (float)(s / batches) * down).ToArray();
                result[block, place] = Sanitize(pos, neg);
            }
        }
        return result;
    }

    /// <summary>Thresholds groups at a place: 1 per tensor; channels, or heads at s, per channel.</summary>
    public static int GroupCount(Place place, Model.VitConfig config, ThresholdGranularity granularity) =>
        granularity == ThresholdGranularity.PerTensor ? 1
        : place switch
        {
            Place.S => config.NumHeads,
            Place.Fc2 => config.MlpDim,
            _ => config.EmbedDim,
        };

    /// <summary>λp, λn of one batch of values at one place, per group.</summary>
    static (double[] Pos, double[] Neg) BatchThresholds(ReadOnlySpan<float> values, int[] shape, Place place, ConversionSettings settings)
    {
        double p = settings.QuantileAt(place);
        if (settings.Granularity == ThresholdGranularity.PerTensor)
        {
            var all = values.ToArray();
            return ([Quantile(all, p)], [-Quantile(all, 1 - p)]);
        }
        // Per channel: the last dimension; at s (B, H, N, N) per head.
        bool byHead = place == Place.S;
        int groups = byHead ? shape[1] : shape[^1];
        int inner = byHead ? shape[2] * shape[3] : 1;
        var buckets = new List<float>[groups];
        for (int g = 0; g < groups; g++) buckets[g] = new List<float>(values.Length / groups);
        for (int i = 0; i < values.Length; i++) buckets[i / inner % groups].Add(values[i]);
        var pos = new double[groups];
        var neg = new double[groups];
        for (int g = 0; g < groups; g++)
        {
            var bucket = buckets[g].ToArray();
            pos[g] = Quantile(bucket, p);
            neg[g] = -Quantile(bucket, 1 - p);
        }
        return (pos, neg);
    }

    /// <summary>
    /// Thresholds must be positive. A side whose quantile is not (the negative side of softmax probabilities, a
    /// channel that never goes below zero) takes the other side's value, so that the negative increments EC
    /// modules emit can still be represented; a group with neither takes the mean of the others.
    /// </summary>
    static PlaceThresholds Sanitize(float[] pos, float[] neg)
    {
        const float tiny = 1e-6f;
        for (int g = 0; g < pos.Length; g++)
        {
            if (!(pos[g] > tiny) && neg[g] > tiny) pos[g] = neg[g];
            if (!(neg[g] > tiny) && pos[g] > tiny) neg[g] = pos[g];
        }
        var valid = pos.Where(v => v > tiny).ToArray();
        float fallback = valid.Length > 0 ? valid.Average() : 1f;
        for (int g = 0; g < pos.Length; g++)
        {
            if (!(pos[g] > tiny)) pos[g] = fallback;
            if (!(neg[g] > tiny)) neg[g] = fallback;
        }
        return new PlaceThresholds(pos, neg);
    }

    /// <summary>The q-quantile with linear interpolation between order statistics (as torch.quantile); reorders the array.</summary>
    public static double Quantile(float[] values, double q)
    {
        if (values.Length == 0) throw new ArgumentException("no values");
        double position = q * (values.Length - 1);
        int lower = (int)Math.Floor(position);
        double fraction = position - lower;
        double low = Select(values, 0, values.Length - 1, lower);
        if (fraction == 0 || lower + 1 >= values.Length) return low;
        // After selection everything right of `lower` is ≥ it; the next order statistic is their minimum.
        float next = float.PositiveInfinity;
        for (int i = lower + 1; i < values.Length; i++) next = MathF.Min(next, values[i]);
        return low + fraction * (next - low);
    }

    /// <summary>Hoare's selection: the k-th smallest of values[left..right], leaving smaller ones left of it.</summary>
    static float Select(float[] values, int left, int right, int k)
    {
        var rng = new Random(k);
        while (left < right)
        {
            float pivot = values[left + rng.Next(right - left + 1)];
            int i = left, j = right;
            while (i <= j)
            {
                while (values[i] < pivot) i++;
                while (values[j] > pivot) j--;
                if (i <= j)
                {
                    (values[i], values[j]) = (values[j], values[i]);
                    i++;
                    j--;
                }
            }
            if (k <= j) right = j;
            else if (k >= i) left = i;
            else break;
        }
        return values[k];
    }
}
