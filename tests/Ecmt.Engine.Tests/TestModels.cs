using Ecmt.Engine.Conversion;
using Ecmt.Engine.Data;
using Ecmt.Engine.Model;
using Ecmt.Kernels;
using Ecmt.Torch;
using static TorchSharp.torch;

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

    /// <summary>The backend of that name; the test skips when its device is absent here.</summary>
    public static ISpikingBackend BackendOrSkip(string name)
    {
        try
        {
            return Backends.Create(Backends.Parse(name));
        }
        catch (BackendUnavailableException e)
        {
            Assert.Skip($"{name} is not available here: {e.Message}");
            throw;
        }
    }

    /// <summary>libtorch's logits (count, classes) for the weights on images (count, C, H, W).</summary>
    public static float[] TorchLogits(VitWeights weights, float[] images, int count)
    {
        using var torchVit = new TorchVit(weights.Config);
        torchVit.LoadWeights(weights);
        torchVit.eval();
        using var _ = no_grad();
        var c = weights.Config;
        using var input = tensor(images, [count, c.InChannels, c.ImageSize, c.ImageSize]);
        using var logits = torchVit.forward(input);
        return logits.data<float>().ToArray();
    }

    /// <summary>
    /// Tiny models of every layout the engine takes (names used by the per-layout tests): timm's plain ViT; EVA (q/v
    /// bias, layer scale gamma_1/gamma_2, a relative position bias per block, no absolute position embedding, mean
    /// pooling + fc_norm); BEiT with one shared relative position table and timm's layer-scale names; DeiT-like without
    /// qkv bias and an MLP width that is no multiple of D; EVA's post-norm option. Patch 2 on 8×8 images: a 4×4 grid.
    /// </summary>
    public static readonly IReadOnlyDictionary<string, Func<VitConfig, VitConfig>> Layouts = new Dictionary<string, Func<VitConfig, VitConfig>>
    {
        ["vit"] = c => c,
        ["eva"] = c => c with
        {
            QkvBias = QkvBias.QV, LayerScale = LayerScale.Gamma, RelPosBias = RelPosBias.PerBlock, AbsPosEmbed = false, Pooling = Pooling.Mean,
        },
        ["beit-shared"] = c => c with { QkvBias = QkvBias.QV, LayerScale = LayerScale.Timm, RelPosBias = RelPosBias.Shared, Pooling = Pooling.Mean },
        ["no-qkv-bias"] = c => c with { QkvBias = QkvBias.None, LayerScale = LayerScale.Timm, MlpHidden = 24 },
        ["post-norm"] = c => c with
        {
            PostNorm = true, QkvBias = QkvBias.QV, LayerScale = LayerScale.Gamma, RelPosBias = RelPosBias.PerBlock, AbsPosEmbed = false,
            Pooling = Pooling.Mean, MlpHidden = 40,
        },
    };

    /// <summary>The names of <see cref="Layouts"/>, one theory case each.</summary>
    public static TheoryData<string> LayoutNames => [.. Layouts.Keys];

    /// <summary>A tiny model of a layout: 8×8 images, patch 2 (a 4×4 grid, N = 17), D = 16, 2 heads.</summary>
    public static VitConfig TinyLayout(string layout, int depth = 2, int channels = 1) =>
        Layouts[layout](Tiny(depth, channels) with { PatchSize = 2, Name = $"tiny-{layout}" });

    /// <summary>Random weights scaled like a trained small model (norm weights near 1, linear weights ~ 1/√fan-in).</summary>
    public static VitWeights RandomWeights(VitConfig config, int seed)
    {
        var w = VitWeights.Random(config, seed);
        var rng = new Random(seed + 1);
        foreach (var (name, t) in w.Tensors)
        {
            if (name.EndsWith("relative_position_bias_table", StringComparison.Ordinal))
            {
                for (int i = 0; i < t.Length; i++) t.Data[i] = (float)(rng.NextDouble() - 0.5) * 2f;
            }
            else if (t.Rank == 2 || t.Rank == 4)
            {
                float scale = 1f / MathF.Sqrt(t.Length / t.Shape[0]);
                for (int i = 0; i < t.Length; i++) t.Data[i] = t.Data[i] / 0.02f * scale;
            }
            else if (name.EndsWith("bias", StringComparison.Ordinal) || name.Contains("embed", StringComparison.Ordinal) || name == "cls_token")
            {
                for (int i = 0; i < t.Length; i++) t.Data[i] = (float)(rng.NextDouble() - 0.5) * 0.5f;
            }
        }
        // derived tensors (the (3D) qkv bias, the (H, N, N) relative position bias) are made at binding
        return VitWeights.Bind(config, w.Tensors);
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
