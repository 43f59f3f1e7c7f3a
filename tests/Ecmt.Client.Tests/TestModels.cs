using Ecmt.Engine.Conversion;
using Ecmt.Engine.Imaging;

namespace Ecmt.Client.Tests;

/// <summary>
/// The models the test server hosts, made once per test run in a temporary folder: <see cref="Tiny"/> (fast steps)
/// and <see cref="Deep"/> (steps slow enough to stop or cancel mid-run). Random weights: the predictions mean nothing,
/// the plumbing is real.
/// </summary>
static class TestModels
{
    public const string Tiny = "tiny", Deep = "deep";
    public const int Size = 28;

    static readonly Lazy<string> _root = new(Make);

    public static string Root => _root.Value;

    static string Make()
    {
        var root = Path.Combine(Path.GetTempPath(), $"ecmt-client-tests-{Environment.ProcessId}");
        if (Directory.Exists(root)) Directory.Delete(root, recursive: true);
        SyntheticModels.Create(Path.Combine(root, Tiny), SyntheticModels.Config(Tiny), seed: 1);
        // The deep model has temperatures, a gate and a recommended policy (fitted on random images); the tiny one has none.
        SyntheticModels.Create(Path.Combine(root, Deep), SyntheticModels.Config(Deep, embedDim: 64, depth: 4, heads: 4, patchSize: 4), seed: 2, fitSteps: 6);
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            foreach (var dir in new[] { root, root + "-images" })
                try { if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true); } catch (IOException) { }
        };
        return root;
    }

    /// <summary>Random 8-bit grey pixels (H, W).</summary>
    public static byte[] Pixels(int seed)
    {
        var bytes = new byte[Size * Size];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    /// <summary>The same pixels as intensities in [0, 1], (1, H, W).</summary>
    public static float[] Intensities(int seed) => Pixels(seed).Select(b => b / 255f).ToArray();

    /// <summary>A 28×28 grey PNG of <see cref="Pixels"/>: the server reads it pixel for pixel.</summary>
    public static byte[] Png(int seed) => ImageInput.EncodePng(Pixels(seed), 1, Size, Size);

    /// <summary>A fresh folder (next to <see cref="Root"/>, removed with it) with <paramref name="count"/> PNG files named 0.png, 1.png, … (seeds 100, 101, …).</summary>
    public static string PngFolder(int count)
    {
        var dir = Path.Combine(Root + "-images", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        for (int i = 0; i < count; i++) File.WriteAllBytes(Path.Combine(dir, $"{i}.png"), Png(100 + i));
        return dir;
    }
}
