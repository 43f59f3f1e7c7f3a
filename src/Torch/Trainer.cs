using System.Diagnostics;
using Ecmt.Engine.Data;
using Ecmt.Engine.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Ecmt.Torch;

public sealed record TrainOptions
{
    public int Epochs { get; init; } = 30;
    public int BatchSize { get; init; } = 128;
    public double LearningRate { get; init; } = 1e-3;
    public double WeightDecay { get; init; } = 0.05;
    public int WarmupEpochs { get; init; } = 2;
    public double LabelSmoothing { get; init; } = 0.1;
    /// <summary>Random shifts of up to this many pixels and horizontal flips; 0 turns augmentation off.</summary>
    public int MaxShift { get; init; } = 2;
    public int Seed { get; init; } = 1;
    /// <summary>Train on only the first N training images (tests); null for all 55,000.</summary>
    public int? Limit { get; init; }
}

public sealed record EpochReport(int Epoch, double Loss, double HoldoutTop1, double Seconds);

/// <summary>
/// Trains a ViT on Fashion-MNIST with AdamW, linear warm-up then cosine decay, label smoothing and
/// shift/flip augmentation. Uses only the training split; the held-out 5,000 images report progress.
/// </summary>
public static class Trainer
{
    public static VitWeights Train(VitConfig config, ImageSet train, ImageSet holdout, TrainOptions options, Action<EpochReport>? onEpoch = null)
    {
        TorchRuntime.EnsureLoaded();
        torch.manual_seed(options.Seed);
        var rng = new Random(options.Seed);
        using var model = new TorchVit(config);
        if (options.Limit is int limit) train = train.Take(limit);

        var optimizer = optim.AdamW(model.parameters(), lr: options.LearningRate, weight_decay: options.WeightDecay);
        int stepsPerEpoch = (train.Count + options.BatchSize - 1) / options.BatchSize;
        int totalSteps = stepsPerEpoch * options.Epochs, warmupSteps = stepsPerEpoch * options.WarmupEpochs;
        int step = 0;
        var order = Enumerable.Range(0, train.Count).ToArray();
        for (int epoch = 1; epoch <= options.Epochs; epoch++)
        {
            var clock = Stopwatch.StartNew();
            model.train();
            rng.Shuffle(order);
            double lossSum = 0;
            for (int start = 0; start < train.Count; start += options.BatchSize)
            {
                int count = Math.Min(options.BatchSize, train.Count - start);
                using var scope = NewDisposeScope();
                var (images, labels) = Batch(train, order.AsSpan(start, count), config, rng, options.MaxShift);
                double lr = step < warmupSteps
                    ? options.LearningRate * (step + 1) / warmupSteps
                    : 0.5 * options.LearningRate * (1 + Math.Cos(Math.PI * (step - warmupSteps) / Math.Max(1, totalSteps - warmupSteps)));
                foreach (var group in optimizer.ParamGroups) group.LearningRate = lr;
                optimizer.zero_grad();
                var logits = model.forward(images);
                var loss = nn.functional.cross_entropy(logits, labels, label_smoothing: options.LabelSmoothing);
                loss.backward();
                optimizer.step();
                lossSum += loss.item<float>() * count;
                step++;
            }
            var top1 = Evaluate(model, holdout);
            onEpoch?.Invoke(new EpochReport(epoch, lossSum / train.Count, top1, clock.Elapsed.TotalSeconds));
        }
        return model.ExportWeights();
    }

    /// <summary>Top-1 of a libtorch model on an image set.</summary>
    public static double Evaluate(TorchVit model, ImageSet set, int batchSize = 500)
    {
        model.eval();
        using var _ = no_grad();
        int correct = 0;
        for (int start = 0; start < set.Count; start += batchSize)
        {
            int count = Math.Min(batchSize, set.Count - start);
            using var scope = NewDisposeScope();
            var images = tensor(set.Normalized(start, count, model.Config), [count, set.Channels, set.Height, set.Width]);
            var predicted = model.forward(images).argmax(1).data<long>().ToArray();
            for (int i = 0; i < count; i++) if (predicted[i] == set.Labels[start + i]) correct++;
        }
        return (double)correct / set.Count;
    }

    static (Tensor Images, Tensor Labels) Batch(ImageSet set, ReadOnlySpan<int> indices, VitConfig config, Random rng, int maxShift)
    {
        int h = set.Height, w = set.Width, plane = h * w;
        float mean = config.Mean[0], invStd = 1f / config.Std[0];
        float background = (0 - mean) * invStd;
        var pixels = new float[indices.Length * plane];
        var labels = new long[indices.Length];
        for (int i = 0; i < indices.Length; i++)
        {
            var image = set.Image(indices[i]);
            int dy = maxShift == 0 ? 0 : rng.Next(-maxShift, maxShift + 1);
            int dx = maxShift == 0 ? 0 : rng.Next(-maxShift, maxShift + 1);
            bool flip = maxShift > 0 && rng.Next(2) == 1;
            for (int y = 0; y < h; y++)
            {
                for (int x = 0; x < w; x++)
                {
                    int sy = y - dy, sx = flip ? w - 1 - (x - dx) : x - dx;
                    pixels[i * plane + y * w + x] = sy < 0 || sy >= h || sx < 0 || sx >= w
                        ? background
                        : (image[sy * w + sx] / 255f - mean) * invStd;
                }
            }
            labels[i] = set.Labels[indices[i]];
        }
        return (tensor(pixels, [indices.Length, 1, h, w]), tensor(labels));
    }
}
