using Ecmt.Engine.Conversion;
using Ecmt.Engine.Model;

namespace Ecmt.Engine.Serving;

/// <summary>A converted model found on disk, under the name it is served as (its folder's name).</summary>
public sealed record ModelLocation(string Name, string Directory);

/// <summary>
/// Finds the converted models to serve: a folder that is itself a converted model serves that model; otherwise
/// every immediate subfolder that is a converted model is served, in name order.
/// </summary>
public static class ModelCatalog
{
    /// <summary>The models under <paramref name="directory"/>; <paramref name="skipped"/> names model folders that are not converted.</summary>
    public static IReadOnlyList<ModelLocation> Discover(string directory, out IReadOnlyList<string> skipped)
    {
        var full = Path.GetFullPath(directory);
        if (!System.IO.Directory.Exists(full)) throw new DirectoryNotFoundException($"model directory '{directory}' does not exist");
        var notConverted = new List<string>();
        skipped = notConverted;
        if (ConvertedModel.IsConvertedModel(full)) return [new ModelLocation(NameOf(full), full)];
        var found = new List<ModelLocation>();
        foreach (var sub in System.IO.Directory.EnumerateDirectories(full).Order(StringComparer.Ordinal))
        {
            if (ConvertedModel.IsConvertedModel(sub)) found.Add(new ModelLocation(NameOf(sub), sub));
            else if (File.Exists(Path.Combine(sub, ModelDirectory.ConfigFile))) notConverted.Add(sub);
        }
        return found;
    }

    static string NameOf(string directory) => Path.GetFileName(directory.TrimEnd(Path.DirectorySeparatorChar));
}
