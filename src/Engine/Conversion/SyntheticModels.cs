using Ecmt.Engine.Data;
using Ecmt.Engine.Model;

namespace Ecmt.Engine.Conversion;

/// <summary>
/// Small converted models with random weights, calibrated on random images: for tests, smoke tests of the server
/// and demos where no trained model is at hand. Their predictions mean nothing; their plumbing is real.
/// </summary>
public static class SyntheticModels
{
    /// <summary>A Fashion-MNIST-shaped ViT (28×28 grey, 10 classes) of the given size.</summary>
    public static VitConfig Config(string name, int embedDim = 16, int depth = 1, int heads = 2, double mlpRatio = 2, int patchSize = 7) =>
        FashionMnist.SmallVit(embedDim, depth, heads, mlpRatio, patchSize) with { Name = name };

    /// <summary>
    /// Random weights, thresholds calibrated (per tensor) on <paramref name="calibrationImages"/> random images; with
    /// <paramref name="fitSteps"/> > 0 also temperatures, a gate and a recommended stop policy fitted on 16 other random
    /// images with random labels over that many steps (the reference backend). Saved to <paramref name="directory"/>.
    /// </summary>
    public static ConvertedModel Create(string directory, VitConfig config, int seed = 1, int calibrationImages = 8, int fitSteps = 0)
    {
        var weights = VitWeights.Random(config, seed);
        var rng = new Random(seed);
        var pixels = new byte[calibrationImages * config.PixelsPerImage];
        rng.NextBytes(pixels);
        var labels = new byte[calibrationImages];
        var images = new ImageSet(pixels, labels, config.InChannels, config.ImageSize, config.ImageSize, $"random(seed {seed})");
        var converted = ConvertedModel.Convert(weights, images, ConversionSettings.Calibrated(), batchSize: calibrationImages);
        if (fitSteps > 0)
        {
            const int count = 16;
            var validationPixels = new byte[count * config.PixelsPerImage];
            rng.NextBytes(validationPixels);
            var validationLabels = Enumerable.Range(0, count).Select(_ => (byte)rng.Next(config.NumClasses)).ToArray();
            var validation = new ImageSet(validationPixels, validationLabels, config.InChannels, config.ImageSize, config.ImageSize, $"random(seed {seed}, validation)");
            converted = Evaluation.ConfidenceFit.Calibrate(converted, validation, () => new Kernels.Reference.ReferenceBackend(), fitSteps, batchSize: count);
        }
        converted.Save(directory);
        return converted;
    }
}
