using System.Buffers.Binary;
using System.IO.Compression;
using Ecmt.Engine.Model;

namespace Ecmt.Engine.Data;

/// <summary>Which part of Fashion-MNIST: training images, the held-out training images, or the test set.</summary>
public enum Split
{
    /// <summary>The first 55,000 training images: used for training only.</summary>
    Train,
    /// <summary>The last 5,000 training images: calibration and validation, never trained on.</summary>
    Holdout,
    /// <summary>The 10,000 test images: evaluation only.</summary>
    Test,
    /// <summary>The first half of <see cref="Holdout"/>: threshold calibration.</summary>
    Calibration,
    /// <summary>The second half of <see cref="Holdout"/>: choosing conversion settings.</summary>
    Validation,
}

/// <summary>A set of 8-bit images with labels: pixels (count, C, H, W) bytes.</summary>
public sealed class ImageSet(byte[] pixels, byte[] labels, int channels, int height, int width, string source)
{
    public byte[] Pixels { get; } = pixels;
    public byte[] Labels { get; } = labels;
    public int Channels { get; } = channels;
    public int Height { get; } = height;
    public int Width { get; } = width;
    public string Source { get; } = source;
    public int Count => Labels.Length;
    public int PixelsPerImage => Channels * Height * Width;

    public ReadOnlySpan<byte> Image(int index) => Pixels.AsSpan(index * PixelsPerImage, PixelsPerImage);

    public ImageSet Slice(int start, int count) => new(
        Pixels.AsSpan(start * PixelsPerImage, count * PixelsPerImage).ToArray(),
        Labels.AsSpan(start, count).ToArray(), Channels, Height, Width, $"{Source}[{start}..{start + count})");

    public ImageSet Take(int count) => count >= Count ? this : Slice(0, count);

    /// <summary>Normalised float images (count, C, H, W) for a range, as the model's config prescribes.</summary>
    public float[] Normalized(int start, int count, VitConfig config)
    {
        if (config.InChannels != Channels || config.ImageSize != Height || config.ImageSize != Width)
            throw new InvalidDataException($"{Source} holds {Channels}×{Height}×{Width} images, the model expects {config.InChannels}×{config.ImageSize}×{config.ImageSize}");
        var result = new float[count * PixelsPerImage];
        int plane = Height * Width;
        for (int i = 0; i < count; i++)
        {
            var image = Image(start + i);
            for (int c = 0; c < Channels; c++)
            {
                float mean = config.Mean[c], invStd = 1f / config.Std[c];
                int o = i * PixelsPerImage + c * plane;
                for (int p = 0; p < plane; p++) result[o + p] = (image[c * plane + p] / 255f - mean) * invStd;
            }
        }
        return result;
    }
}

/// <summary>
/// Fashion-MNIST as Debian's <c>dataset-fashion-mnist</c> installs it (gzipped IDX files under
/// <c>/usr/share/datasets/fashion-mnist</c>; <c>ECMT_FASHION_MNIST_DIR</c> overrides the folder).
/// </summary>
public static class FashionMnist
{
    public const string DefaultDirectory = "/usr/share/datasets/fashion-mnist";
    public const int HoldoutCount = 5_000;
    public const int TrainFileCount = 60_000;

    public static readonly string[] ClassNames =
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

    /// <summary>Per-pixel mean and standard deviation of the 60,000 training images (pixel/255).</summary>
    public const float Mean = 0.2860f, Std = 0.3530f;

    public static string Directory =>
        Environment.GetEnvironmentVariable("ECMT_FASHION_MNIST_DIR") is { Length: > 0 } d ? d : DefaultDirectory;

    public static bool IsAvailable => File.Exists(Path.Combine(Directory, "t10k-labels-idx1-ubyte.gz"));

    public static ImageSet Load(Split split)
    {
        if (!IsAvailable)
            throw new FileNotFoundException(
                $"Fashion-MNIST not found in {Directory}. Install Debian's package: sudo apt-get install dataset-fashion-mnist (scripts/setup.sh does it), or set ECMT_FASHION_MNIST_DIR.");
        string prefix = split == Split.Test ? "t10k" : "train";
        var images = ReadIdx(Path.Combine(Directory, $"{prefix}-images-idx3-ubyte.gz"), 0x803, out var dims);
        var labels = ReadIdx(Path.Combine(Directory, $"{prefix}-labels-idx1-ubyte.gz"), 0x801, out _);
        var set = new ImageSet(images, labels, 1, dims[1], dims[2], $"fashion-mnist/{prefix}");
        return split switch
        {
            Split.Train => set.Slice(0, TrainFileCount - HoldoutCount),
            Split.Holdout => set.Slice(TrainFileCount - HoldoutCount, HoldoutCount),
            Split.Calibration => set.Slice(TrainFileCount - HoldoutCount, HoldoutCount / 2),
            Split.Validation => set.Slice(TrainFileCount - HoldoutCount / 2, HoldoutCount / 2),
            _ => set,
        };
    }

    static byte[] ReadIdx(string path, int magic, out int[] dims)
    {
        using var file = File.OpenRead(path);
        using var gz = new GZipStream(file, CompressionMode.Decompress);
        using var ms = new MemoryStream();
        gz.CopyTo(ms);
        var bytes = ms.GetBuffer().AsSpan(0, (int)ms.Length);
        int found = BinaryPrimitives.ReadInt32BigEndian(bytes);
        if (found != magic) throw new InvalidDataException($"{path}: IDX magic 0x{found:x}, expected 0x{magic:x}");
        int rank = magic & 0xFF;
        dims = new int[rank];
        for (int i = 0; i < rank; i++) dims[i] = BinaryPrimitives.ReadInt32BigEndian(bytes[(4 + 4 * i)..]);
        int header = 4 + 4 * rank;
        long count = dims.Aggregate(1L, (a, b) => a * b);
        if (header + count != bytes.Length) throw new InvalidDataException($"{path}: {bytes.Length - header} data bytes, dimensions need {count}");
        return bytes[header..].ToArray();
    }

    /// <summary>The config of the small ViT trained on Fashion-MNIST, before training decides nothing else.</summary>
    public static VitConfig SmallVit(int embedDim, int depth, int heads, double mlpRatio, int patchSize) => new()
    {
        Name = ModelDirectory.DefaultModelName,
        ImageSize = 28, PatchSize = patchSize, InChannels = 1,
        EmbedDim = embedDim, Depth = depth, NumHeads = heads, MlpRatio = mlpRatio,
        NumClasses = 10, ClassNames = ClassNames, Mean = [Mean], Std = [Std],
    };

    /// <summary>
    /// The EVA / BEiT layout of a small ViT: q/v bias, layer scale (gamma_1/gamma_2), a relative position bias per
    /// block and no absolute position embedding, mean pooling of the patch tokens then fc_norm. Named fmnist-eva.
    /// </summary>
    public static VitConfig EvaLayout(VitConfig config) => config with
    {
        Name = "fmnist-eva",
        QkvBias = QkvBias.QV, LayerScale = LayerScale.Gamma, RelPosBias = RelPosBias.PerBlock,
        AbsPosEmbed = false, Pooling = Pooling.Mean,
    };
}
