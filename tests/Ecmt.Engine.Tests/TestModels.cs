using Ecmt.Engine.Conversion;
using Ecmt.Engine.Data;
using Ecmt.Engine.Model;

namespace Ecmt.Engine.Tests;

/// <summary>Small models and data for tests.</summary>
static class TestModels
{
    /// <summary>A tiny ViT: 8×8 grey images, patch 4 (N = 5 tokens), D = 16, 2 heads, depth 2, 3 classes.</summary>
    public static VitConfig Tiny(int depth = 2, int channels = 1) => new()
    {
        Name = "tiny",
        ImageSize = 8, PatchSize = 4, InChannels = channels, EmbedDim = 16, Depth = depth, NumHeads = 2, MlpRatio = 2,
        NumClasses = 3, ClassNames = ["a", "b", "c"],
        Mean = Enumerable.Repeat(0.5f, channels).ToArray(), Std = Enumerable.Repeat(0.25f, channels).ToArray(),
    };

    /// <summary>Random weights scaled like a trained small model (norm weights near 1, linear weights ~ 1/√fan-in).</summary>
    public static VitWeights RandomWeights(VitConfig config, int seed)
    {
        var w = VitWeights.Random(config, seed);
        var rng = new Random(seed + 1);
        foreach (var (name, t) in w.Tensors)
        {
            if (t.Rank == 2 || t.Rank == 4)
            {
                float scale = 1f / MathF.Sqrt(t.Length / t.Shape[0]);
                for (int i = 0; i < t.Length; i++) t.Data[i] = t.Data[i] / 0.02f * scale;
            }
            else if (name.EndsWith("bias", StringComparison.Ordinal) || name.Contains("embed", StringComparison.Ordinal) || name == "cls_token")
            {
                for (int i = 0; i < t.Length; i++) t.Data[i] = (float)(rng.NextDouble() - 0.5) * 0.5f;
            }
        }
        return w;
    }

    public static ImageSet RandomImages(VitConfig config, int count, int seed)
    {
        var rng = new Random(seed);
        var pixels = new byte[count * config.PixelsPerImage];
        rng.NextBytes(pixels);
        var labels = new byte[count];
        for (int i = 0; i < count; i++) labels[i] = (byte)rng.Next(config.NumClasses);
        return new ImageSet(pixels, labels, config.InChannels, config.ImageSize, config.ImageSize, $"random({seed})");
    }

    public static ConvertedModel TinyConverted(ConversionSettings? settings = null, int seed = 1)
    {
        var config = Tiny();
        return ConvertedModel.Convert(RandomWeights(config, seed), RandomImages(config, 40, seed), settings ?? ConversionSettings.Calibrated(), batchSize: 20);
    }

    public static string? ShippedModel()
    {
        try
        {
            var path = ModelDirectory.DefaultModelPath();
            return ConvertedModel.IsConvertedModel(path) ? path : null;
        }
        catch (DirectoryNotFoundException)
        {
            return null;
        }
    }

    public static string TempDirectory()
    {
        var dir = Path.Combine(Path.GetTempPath(), "ecmt-tests", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        return dir;
    }
}
