using Ecmt.Engine.Conversion;
using Ecmt.Engine.Imaging;

namespace Ecmt.Server.Tests;

/// <summary>
/// The models every test serves, made once per test run in a temporary folder: <see cref="Tiny"/> (fast steps;
/// temperatures, a gate and a recommended stop policy),
/// <see cref="Deep"/> (steps slow enough to cancel mid-run), <see cref="Broken"/> (weights cut short: fails to load),
/// and a folder with an unconverted model that the server must skip.
/// </summary>
static class TestModels
{
    public const string Tiny = "tiny", Deep = "deep", Broken = "broken", Unconverted = "unconverted";
    public const int Classes = 10, Size = 28;

    static readonly Lazy<string> _root = new(Make);

    public static string Root => _root.Value;

    public static string Dir(string name) => Path.Combine(Root, name);

    static string Make()
    {
        var root = Path.Combine(Path.GetTempPath(), $"ecmt-server-tests-{Environment.ProcessId}");
        if (Directory.Exists(root)) Directory.Delete(root, recursive: true);
        // The tiny model has per-step temperatures, a gate and a recommended policy (fitted on random images); the deep one has none.
        SyntheticModels.Create(Path.Combine(root, Tiny), SyntheticModels.Config(Tiny), seed: 1, fitSteps: 6);
        SyntheticModels.Create(Path.Combine(root, Deep), SyntheticModels.Config(Deep, embedDim: 64, depth: 4, heads: 4, patchSize: 4), seed: 2);

        var broken = Path.Combine(root, Broken);
        Directory.CreateDirectory(broken);
        foreach (var file in Directory.GetFiles(Path.Combine(root, Tiny))) File.Copy(file, Path.Combine(broken, Path.GetFileName(file)));
        var weights = Path.Combine(broken, "model.safetensors");
        File.WriteAllBytes(weights, File.ReadAllBytes(weights)[..100]);

        var unconverted = Path.Combine(root, Unconverted);
        Directory.CreateDirectory(unconverted);
        File.Copy(Path.Combine(root, Tiny, "config.json"), Path.Combine(unconverted, "config.json"));
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            try { Directory.Delete(root, recursive: true); } catch (IOException) { }
        };
        return root;
    }

    /// <summary>Random 8-bit grey pixels (H, W) and the same as intensities in [0, 1].</summary>
    public static (byte[] Bytes, float[] Intensities) Image(int seed)
    {
        var bytes = new byte[Size * Size];
        new Random(seed).NextBytes(bytes);
        return (bytes, bytes.Select(b => b / 255f).ToArray());
    }

    public static byte[] Png(int seed) => ImageInput.EncodePng(Image(seed).Bytes, 1, Size, Size);
}
