using System.Text.Json;
using System.Text.Json.Serialization;

namespace Ecmt.Engine.Model;

/// <summary>
/// Shape and preprocessing of a Vision Transformer in timm's layout (pre-norm blocks, class token,
/// learned position embedding, linear head on the class token). Stored as <c>config.json</c>.
/// </summary>
public sealed record VitConfig
{
    public required int ImageSize { get; init; }
    public required int PatchSize { get; init; }
    public required int InChannels { get; init; }
    public required int EmbedDim { get; init; }
    public required int Depth { get; init; }
    public required int NumHeads { get; init; }
    public required double MlpRatio { get; init; }
    public required int NumClasses { get; init; }
    public required IReadOnlyList<string> ClassNames { get; init; }
    /// <summary>Per-channel input normalisation: x = (pixel/255 − mean) / std.</summary>
    public required IReadOnlyList<float> Mean { get; init; }
    public required IReadOnlyList<float> Std { get; init; }
    public float LayerNormEps { get; init; } = 1e-6f;
    public string? Name { get; init; }

    [JsonIgnore] public int GridSize => ImageSize / PatchSize;
    [JsonIgnore] public int NumPatches => GridSize * GridSize;
    /// <summary>N: tokens per image, the class token plus one per patch.</summary>
    [JsonIgnore] public int Tokens => NumPatches + 1;
    [JsonIgnore] public int HeadDim => EmbedDim / NumHeads;
    [JsonIgnore] public int MlpDim => (int)Math.Round(EmbedDim * MlpRatio);
    [JsonIgnore] public int PatchVectorLength => InChannels * PatchSize * PatchSize;
    [JsonIgnore] public int PixelsPerImage => InChannels * ImageSize * ImageSize;

    public static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        WriteIndented = true,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        ReadCommentHandling = JsonCommentHandling.Skip,
        AllowTrailingCommas = true,
    };

    /// <summary>Throws with every inconsistency named when the numbers cannot describe a ViT.</summary>
    public void Validate()
    {
        var errors = new List<string>();
        if (ImageSize <= 0 || PatchSize <= 0 || ImageSize % PatchSize != 0)
            errors.Add($"image_size {ImageSize} must be a positive multiple of patch_size {PatchSize}");
        if (InChannels <= 0) errors.Add($"in_channels {InChannels} must be positive");
        if (EmbedDim <= 0 || NumHeads <= 0 || EmbedDim % NumHeads != 0)
            errors.Add($"embed_dim {EmbedDim} must be a positive multiple of num_heads {NumHeads}");
        if (Depth <= 0) errors.Add($"depth {Depth} must be positive");
        if (MlpRatio <= 0) errors.Add($"mlp_ratio {MlpRatio} must be positive");
        if (NumClasses <= 0) errors.Add($"num_classes {NumClasses} must be positive");
        if (ClassNames.Count != NumClasses) errors.Add($"class_names has {ClassNames.Count} names for {NumClasses} classes");
        if (Mean.Count != InChannels || Std.Count != InChannels) errors.Add($"mean and std need {InChannels} values each");
        if (Std.Any(s => s <= 0)) errors.Add("std values must be positive");
        if (errors.Count > 0) throw new InvalidDataException("Invalid ViT config: " + string.Join("; ", errors) + ".");
    }

    public static VitConfig Load(string path)
    {
        var config = JsonSerializer.Deserialize<VitConfig>(File.ReadAllText(path), Json)
            ?? throw new InvalidDataException($"{path}: empty config");
        config.Validate();
        return config;
    }

    public void Save(string path) => File.WriteAllText(path, JsonSerializer.Serialize(this, Json) + "\n");

    /// <summary>The ViT-S/16 shape used by the speed benchmark (timm's vit_small_patch16_224).</summary>
    public static VitConfig VitSmall16(int numClasses = 1000) => new()
    {
        Name = "vit-s16",
        ImageSize = 224, PatchSize = 16, InChannels = 3, EmbedDim = 384, Depth = 12, NumHeads = 6, MlpRatio = 4,
        NumClasses = numClasses,
        ClassNames = Enumerable.Range(0, numClasses).Select(i => $"class_{i}").ToArray(),
        Mean = [0.485f, 0.456f, 0.406f], Std = [0.229f, 0.224f, 0.225f],
    };
}
