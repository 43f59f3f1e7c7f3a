namespace Ecmt.Engine.Model;

/// <summary>
/// A model on disk: <c>config.json</c> and <c>model.safetensors</c> side by side in one folder.
/// A converted model adds <c>conversion.json</c> and <c>thresholds.safetensors</c> (see Conversion).
/// </summary>
public static class ModelDirectory
{
    public const string ConfigFile = "config.json";
    public const string WeightsFile = "model.safetensors";

    public static VitWeights Load(string directory)
    {
        string configPath = Path.Combine(directory, ConfigFile);
        string weightsPath = Path.Combine(directory, WeightsFile);
        if (!File.Exists(configPath)) throw new FileNotFoundException($"No {ConfigFile} in model folder '{directory}'", configPath);
        if (!File.Exists(weightsPath)) throw new FileNotFoundException($"No {WeightsFile} in model folder '{directory}'", weightsPath);
        var config = VitConfig.Load(configPath);
        if (config.Name is null) config = config with { Name = Path.GetFileName(Path.GetFullPath(directory).TrimEnd('/')) };
        return VitWeights.Bind(config, SafeTensors.Load(weightsPath));
    }

    public static void Save(string directory, VitWeights weights, StorageType type = StorageType.F32,
        IReadOnlyDictionary<string, string>? metadata = null)
    {
        Directory.CreateDirectory(directory);
        weights.Config.Save(Path.Combine(directory, ConfigFile));
        SafeTensors.Save(Path.Combine(directory, WeightsFile), weights.Tensors, type, metadata);
    }

    /// <summary>
    /// The folder of the shipped default model: <c>ECMT_MODEL_DIR</c> when set, else <c>models/fmnist-vit</c>
    /// next to the program (copied at build) or in the repository.
    /// </summary>
    public static string DefaultModelPath()
    {
        var fromEnv = Environment.GetEnvironmentVariable("ECMT_MODEL_DIR");
        if (!string.IsNullOrEmpty(fromEnv)) return fromEnv;
        foreach (var start in new[] { AppContext.BaseDirectory, Directory.GetCurrentDirectory() })
        {
            for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
            {
                var candidate = Path.Combine(dir.FullName, "models", DefaultModelName);
                if (File.Exists(Path.Combine(candidate, ConfigFile))) return candidate;
            }
        }
        throw new DirectoryNotFoundException($"The default model models/{DefaultModelName} was not found next to the program or above the working directory; pass --model DIR.");
    }

    public const string DefaultModelName = "fmnist-vit";
}
