using System.Text.Json;
using System.Text.Json.Serialization;

namespace Ecmt.Engine.Model;

/// <summary>How the qkv linear carries its bias.</summary>
public enum QkvBias
{
    /// <summary>timm: <c>attn.qkv.bias</c> (3D).</summary>
    [JsonStringEnumMemberName("full")] Full,
    /// <summary>BEiT / EVA: <c>attn.q_bias</c> and <c>attn.v_bias</c> (D each), no k bias: the qkv bias is (q, 0, v).</summary>
    [JsonStringEnumMemberName("q_v")] QV,
    /// <summary>No bias on qkv.</summary>
    [JsonStringEnumMemberName("none")] None,
}

/// <summary>Per-channel scales on the two residual branches of every block.</summary>
public enum LayerScale
{
    [JsonStringEnumMemberName("none")] None,
    /// <summary>BEiT / EVA names: <c>blocks.N.gamma_1</c>, <c>blocks.N.gamma_2</c> (D each).</summary>
    [JsonStringEnumMemberName("gamma")] Gamma,
    /// <summary>timm names: <c>blocks.N.ls1.gamma</c>, <c>blocks.N.ls2.gamma</c> (D each).</summary>
    [JsonStringEnumMemberName("timm")] Timm,
}

/// <summary>A learned relative position bias added to the attention logits (BEiT's definition, class-token rows included).</summary>
public enum RelPosBias
{
    [JsonStringEnumMemberName("none")] None,
    /// <summary>One table per block: <c>blocks.N.attn.relative_position_bias_table</c>.</summary>
    [JsonStringEnumMemberName("per_block")] PerBlock,
    /// <summary>One table for every block: <c>rel_pos_bias.relative_position_bias_table</c>.</summary>
    [JsonStringEnumMemberName("shared")] Shared,
}

/// <summary>What the head reads.</summary>
public enum Pooling
{
    /// <summary>The class token after the final <c>norm</c> (timm's default).</summary>
    [JsonStringEnumMemberName("class_token")] ClassToken,
    /// <summary>The mean of the patch tokens, then <c>fc_norm</c>; the final <c>norm</c> is absent (BEiT / EVA).</summary>
    [JsonStringEnumMemberName("mean")] Mean,
}

/// <summary>
/// Shape, layout and preprocessing of a Vision Transformer in timm's / BEiT's / EVA's layout. The layout fields
/// default to timm's plain ViT (pre-norm blocks, class token, learned position embedding, qkv with a full bias,
/// linear head on the class token after the final LayerNorm). Stored as <c>config.json</c>.
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

    /// <summary>MLP hidden width F when it is not a multiple of D (EVA-g: 6144 for D 1408); null: round(D · mlp_ratio).</summary>
    public int? MlpHidden { get; init; }
    [JsonConverter(typeof(JsonStringEnumConverter<QkvBias>))] public QkvBias QkvBias { get; init; } = QkvBias.Full;
    [JsonConverter(typeof(JsonStringEnumConverter<LayerScale>))] public LayerScale LayerScale { get; init; } = LayerScale.None;
    [JsonConverter(typeof(JsonStringEnumConverter<RelPosBias>))] public RelPosBias RelPosBias { get; init; } = RelPosBias.None;
    /// <summary>A learned absolute position embedding <c>pos_embed</c> (1, N, D) added to the tokens.</summary>
    public bool AbsPosEmbed { get; init; } = true;
    [JsonConverter(typeof(JsonStringEnumConverter<Pooling>))] public Pooling Pooling { get; init; } = Pooling.ClassToken;
    /// <summary>Post-norm blocks (EVA's option): x = x + γ ⊙ LN1(Attn(x)), x = x + γ ⊙ LN2(MLP(x)).</summary>
    public bool PostNorm { get; init; }

    [JsonIgnore] public int GridSize => ImageSize / PatchSize;
    [JsonIgnore] public int NumPatches => GridSize * GridSize;
    /// <summary>N: tokens per image, the class token plus one per patch.</summary>
    [JsonIgnore] public int Tokens => NumPatches + 1;
    [JsonIgnore] public int HeadDim => EmbedDim / NumHeads;
    [JsonIgnore] public int MlpDim => MlpHidden ?? (int)Math.Round(EmbedDim * MlpRatio);
    /// <summary>Rows of a relative position bias table: (2G−1)² patch offsets plus class→patch, patch→class, class→class.</summary>
    [JsonIgnore] public int RelPosDistances => (2 * GridSize - 1) * (2 * GridSize - 1) + 3;
    [JsonIgnore] public bool HasLayerScale => LayerScale != LayerScale.None;
    [JsonIgnore] public bool HasRelPosBias => RelPosBias != RelPosBias.None;
    /// <summary>One line naming the layout, e.g. "pre-norm, qkv bias q_v, layer scale gamma, rel pos per_block, mean pooling".</summary>
    [JsonIgnore] public string LayoutText => string.Join(", ",
        PostNorm ? "post-norm" : "pre-norm",
        $"qkv bias {EnumName(QkvBias)}",
        $"layer scale {EnumName(LayerScale)}",
        $"rel pos bias {EnumName(RelPosBias)}",
        AbsPosEmbed ? "abs pos embed" : "no abs pos embed",
        Pooling == Pooling.Mean ? "mean pooling + fc_norm" : "class token + norm",
        $"mlp {MlpDim}");

    static string EnumName<T>(T value) where T : struct, Enum =>
        typeof(T).GetField(value.ToString())!.GetCustomAttributes(typeof(JsonStringEnumMemberNameAttribute), false)
            .OfType<JsonStringEnumMemberNameAttribute>().First().Name;
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
        if (MlpHidden is null && MlpRatio <= 0) errors.Add($"mlp_ratio {MlpRatio} must be positive");
        if (MlpHidden is <= 0) errors.Add($"mlp_hidden {MlpHidden} must be positive");
        if (!Enum.IsDefined(QkvBias) || !Enum.IsDefined(LayerScale) || !Enum.IsDefined(RelPosBias) || !Enum.IsDefined(Pooling))
            errors.Add("unknown layout value");
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
    public static VitConfig VitSmall16(int numClasses = 1000) => ImageNet("vit-s16", 16, 384, 12, 6, numClasses);

    /// <summary>
    /// Named ImageNet shapes (224 px, 3 channels, ImageNet mean/std) for benchmarks and tests. ViT-Ti/S/B/L-16 as in
    /// "An Image is Worth 16x16 Words" and timm (timm's ViT layout); DeiT-S/B-16 have the ViT-S/B shapes (DeiT without
    /// its distillation token is that architecture); EVA-g/14 has EVA's giant shape (D 1408, depth 40, 16 heads,
    /// MLP 6144, patch 14, N = 257) in the EVA layout this project ships (q/v bias, layer scale, a relative position
    /// bias per block, mean pooling + fc_norm).
    /// </summary>
    public static readonly IReadOnlyDictionary<string, Func<VitConfig>> NamedShapes = new Dictionary<string, Func<VitConfig>>(StringComparer.Ordinal)
    {
        ["vit-ti16"] = () => ImageNet("vit-ti16", 16, 192, 12, 3),
        ["vit-s16"] = () => VitSmall16(),
        ["vit-b16"] = () => ImageNet("vit-b16", 16, 768, 12, 12),
        ["vit-l16"] = () => ImageNet("vit-l16", 16, 1024, 24, 16),
        ["deit-s16"] = () => ImageNet("deit-s16", 16, 384, 12, 6),
        ["deit-b16"] = () => ImageNet("deit-b16", 16, 768, 12, 12),
        ["eva-g14"] = () => ImageNet("eva-g14", 14, 1408, 40, 16) with
        {
            MlpHidden = 6144, QkvBias = QkvBias.QV, LayerScale = LayerScale.Gamma, RelPosBias = RelPosBias.PerBlock,
            AbsPosEmbed = false, Pooling = Pooling.Mean,
        },
    };

    static VitConfig ImageNet(string name, int patch, int dim, int depth, int heads, int numClasses = 1000) => new()
    {
        Name = name,
        ImageSize = 224, PatchSize = patch, InChannels = 3, EmbedDim = dim, Depth = depth, NumHeads = heads, MlpRatio = 4,
        NumClasses = numClasses,
        ClassNames = Enumerable.Range(0, numClasses).Select(i => $"class_{i}").ToArray(),
        Mean = [0.485f, 0.456f, 0.406f], Std = [0.229f, 0.224f, 0.225f],
    };
}
