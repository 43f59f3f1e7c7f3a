namespace Ecmt.Engine.Model;

/// <summary>A linear layer as timm stores it: weight (Out, In), bias (Out).</summary>
public sealed record LinearWeights(DenseTensor Weight, DenseTensor Bias)
{
    public int In => Weight.Shape[1];
    public int Out => Weight.Shape[0];
}

/// <summary>LayerNorm affine parameters: weight (D), bias (D).</summary>
public sealed record NormWeights(DenseTensor Weight, DenseTensor Bias);

/// <summary>
/// One block. Pre-norm: x = x + γ₁ ⊙ proj(Attn(norm1(x))); x = x + γ₂ ⊙ fc2(GELU(fc1(norm2(x)))).
/// Post-norm: x = x + γ₁ ⊙ norm1(proj(Attn(x))); x = x + γ₂ ⊙ norm2(fc2(GELU(fc1(x)))).
/// <paramref name="Qkv"/>'s bias is always (3D): the checkpoint's full bias, (q_bias, 0, v_bias), or zeros.
/// <paramref name="Gamma1"/>, <paramref name="Gamma2"/> (D) are null without layer scale; <paramref name="RelPosBias"/>
/// (H, N, N) is the relative position bias added to this block's attention logits, null without one.
/// </summary>
public sealed record BlockWeights(
    NormWeights Norm1, LinearWeights Qkv, LinearWeights Proj, NormWeights Norm2, LinearWeights Fc1, LinearWeights Fc2,
    DenseTensor? Gamma1 = null, DenseTensor? Gamma2 = null, DenseTensor? RelPosBias = null);

/// <summary>
/// The weights of a ViT bound by timm's key names, with every shape checked against the config.
/// <see cref="Bind"/> is strict: missing, unexpected and mis-shaped tensors are all named in one error.
/// </summary>
public sealed class VitWeights
{
    VitWeights(VitConfig config, IReadOnlyDictionary<string, DenseTensor> tensors)
    {
        Config = config;
        Tensors = tensors;
        PatchEmbed = new LinearWeights(tensors["patch_embed.proj.weight"], tensors["patch_embed.proj.bias"]);
        ClsToken = tensors["cls_token"];
        PosEmbed = config.AbsPosEmbed ? tensors["pos_embed"] : null;
        var sharedBias = config.RelPosBias == RelPosBias.Shared
            ? RelativePosition.Bias(config, tensors[SharedRelPosTable]) : null;
        Blocks = Enumerable.Range(0, config.Depth).Select(i => new BlockWeights(
            NormAt(tensors, $"blocks.{i}.norm1"),
            QkvLinear(config, tensors, $"blocks.{i}.attn."),
            Linear(tensors, $"blocks.{i}.attn.proj"),
            NormAt(tensors, $"blocks.{i}.norm2"),
            Linear(tensors, $"blocks.{i}.mlp.fc1"),
            Linear(tensors, $"blocks.{i}.mlp.fc2"),
            config.HasLayerScale ? tensors[GammaKey(config, i, 1)] : null,
            config.HasLayerScale ? tensors[GammaKey(config, i, 2)] : null,
            config.RelPosBias switch
            {
                RelPosBias.PerBlock => RelativePosition.Bias(config, tensors[$"blocks.{i}.attn.relative_position_bias_table"]),
                RelPosBias.Shared => sharedBias,
                _ => null,
            })).ToArray();
        Norm = config.Pooling == Pooling.ClassToken ? NormAt(tensors, "norm") : null;
        FcNorm = config.Pooling == Pooling.Mean ? NormAt(tensors, "fc_norm") : null;
        Head = Linear(tensors, "head");
    }

    public VitConfig Config { get; }
    public IReadOnlyDictionary<string, DenseTensor> Tensors { get; }
    /// <summary>The patch convolution; its weight is (D, C, P, P), i.e. a (D, C·P·P) linear map on flattened patches.</summary>
    public LinearWeights PatchEmbed { get; }
    /// <summary>(1, 1, D)</summary>
    public DenseTensor ClsToken { get; }
    /// <summary>(1, N, D); null when the model has no absolute position embedding.</summary>
    public DenseTensor? PosEmbed { get; }
    public IReadOnlyList<BlockWeights> Blocks { get; }
    /// <summary>The final LayerNorm of a class-token model; null with mean pooling.</summary>
    public NormWeights? Norm { get; }
    /// <summary>The LayerNorm after mean pooling; null for a class-token model.</summary>
    public NormWeights? FcNorm { get; }
    public LinearWeights Head { get; }

    public const string SharedRelPosTable = "rel_pos_bias.relative_position_bias_table";

    /// <summary>The layer-scale key of block <paramref name="block"/>, branch 1 (attention) or 2 (MLP).</summary>
    public static string GammaKey(VitConfig c, int block, int branch) => c.LayerScale switch
    {
        LayerScale.Gamma => $"blocks.{block}.gamma_{branch}",
        LayerScale.Timm => $"blocks.{block}.ls{branch}.gamma",
        _ => throw new InvalidOperationException("the model has no layer scale"),
    };

    /// <summary>Keys a checkpoint may hold besides the expected ones: BEiT's stored relative position indices (checked).</summary>
    static IEnumerable<string> OptionalIndexKeys(VitConfig c) => c.RelPosBias switch
    {
        RelPosBias.PerBlock => Enumerable.Range(0, c.Depth).Select(i => $"blocks.{i}.attn.relative_position_index"),
        RelPosBias.Shared => ["rel_pos_bias.relative_position_index"],
        _ => [],
    };

    /// <summary>Every key a timm ViT of this config has, with its shape.</summary>
    public static IReadOnlyDictionary<string, int[]> ExpectedShapes(VitConfig c)
    {
        int d = c.EmbedDim, f = c.MlpDim;
        var shapes = new Dictionary<string, int[]>(StringComparer.Ordinal)
        {
            ["patch_embed.proj.weight"] = [d, c.InChannels, c.PatchSize, c.PatchSize],
            ["patch_embed.proj.bias"] = [d],
            ["cls_token"] = [1, 1, d],
            ["head.weight"] = [c.NumClasses, d],
            ["head.bias"] = [c.NumClasses],
        };
        if (c.AbsPosEmbed) shapes["pos_embed"] = [1, c.Tokens, d];
        string finalNorm = c.Pooling == Pooling.Mean ? "fc_norm" : "norm";
        shapes[finalNorm + ".weight"] = [d];
        shapes[finalNorm + ".bias"] = [d];
        if (c.RelPosBias == RelPosBias.Shared) shapes[SharedRelPosTable] = [c.RelPosDistances, c.NumHeads];
        for (int i = 0; i < c.Depth; i++)
        {
            string b = $"blocks.{i}.";
            shapes[b + "norm1.weight"] = [d];
            shapes[b + "norm1.bias"] = [d];
            shapes[b + "attn.qkv.weight"] = [3 * d, d];
            switch (c.QkvBias)
            {
                case QkvBias.Full: shapes[b + "attn.qkv.bias"] = [3 * d]; break;
                case QkvBias.QV: shapes[b + "attn.q_bias"] = [d]; shapes[b + "attn.v_bias"] = [d]; break;
            }
            if (c.HasLayerScale)
            {
                shapes[GammaKey(c, i, 1)] = [d];
                shapes[GammaKey(c, i, 2)] = [d];
            }
            if (c.RelPosBias == RelPosBias.PerBlock) shapes[b + "attn.relative_position_bias_table"] = [c.RelPosDistances, c.NumHeads];
            shapes[b + "attn.proj.weight"] = [d, d];
            shapes[b + "attn.proj.bias"] = [d];
            shapes[b + "norm2.weight"] = [d];
            shapes[b + "norm2.bias"] = [d];
            shapes[b + "mlp.fc1.weight"] = [f, d];
            shapes[b + "mlp.fc1.bias"] = [f];
            shapes[b + "mlp.fc2.weight"] = [d, f];
            shapes[b + "mlp.fc2.bias"] = [d];
        }
        return shapes;
    }

    /// <summary>Binds named tensors to the config, or throws naming every missing, unexpected and mis-shaped tensor.</summary>
    public static VitWeights Bind(VitConfig config, IReadOnlyDictionary<string, DenseTensor> tensors)
    {
        config.Validate();
        var expected = ExpectedShapes(config);
        var missing = expected.Keys.Where(k => !tensors.ContainsKey(k)).OrderBy(k => k, StringComparer.Ordinal).ToList();
        var optional = OptionalIndexKeys(config).ToHashSet(StringComparer.Ordinal);
        var unexpected = tensors.Keys.Where(k => !expected.ContainsKey(k) && !optional.Contains(k)).OrderBy(k => k, StringComparer.Ordinal).ToList();
        var misShaped = expected
            .Where(e => tensors.TryGetValue(e.Key, out var t) && !t.Shape.SequenceEqual(e.Value))
            .OrderBy(e => e.Key, StringComparer.Ordinal)
            .Select(e => $"{e.Key} is {tensors[e.Key].ShapeText}, expected {DenseTensor.FormatShape(e.Value)}")
            .ToList();
        // A stored relative position index must be BEiT's (the bias would otherwise be read from other table rows).
        var index = optional.Count > 0 ? RelativePosition.Index(config) : null;
        foreach (var key in optional.Where(tensors.ContainsKey).Order(StringComparer.Ordinal))
        {
            var t = tensors[key];
            if (!t.Shape.SequenceEqual([config.Tokens, config.Tokens]))
                misShaped.Add($"{key} is {t.ShapeText}, expected {DenseTensor.FormatShape([config.Tokens, config.Tokens])}");
            else if (Enumerable.Range(0, index!.Length).Any(i => t.Data[i] != index[i]))
                misShaped.Add($"{key} differs from BEiT's relative position index");
        }
        if (missing.Count + unexpected.Count + misShaped.Count > 0)
        {
            var parts = new List<string>();
            if (missing.Count > 0) parts.Add($"missing {missing.Count}: {string.Join(", ", missing)}");
            if (unexpected.Count > 0) parts.Add($"unexpected {unexpected.Count}: {string.Join(", ", unexpected)}");
            if (misShaped.Count > 0) parts.Add($"mis-shaped {misShaped.Count}: {string.Join("; ", misShaped)}");
            throw new WeightMismatchException(
                $"Checkpoint does not match the ViT config ({config.Depth} blocks, dim {config.EmbedDim}, {config.NumClasses} classes): "
                + string.Join(". ", parts) + ".", missing, unexpected, misShaped);
        }
        return new VitWeights(config, tensors);
    }

    /// <summary>Random weights with timm-like initialisation, for speed tests and unit tests.</summary>
    public static VitWeights Random(VitConfig config, int seed)
    {
        var rng = new Random(seed);
        var tensors = new Dictionary<string, DenseTensor>(StringComparer.Ordinal);
        foreach (var (name, shape) in ExpectedShapes(config))
        {
            var t = new DenseTensor(shape);
            bool isNormWeight = name.EndsWith("norm1.weight", StringComparison.Ordinal) || name.EndsWith("norm2.weight", StringComparison.Ordinal)
                || name is "norm.weight" or "fc_norm.weight";
            bool isGamma = name.Contains("gamma", StringComparison.Ordinal);
            float std = name.EndsWith(".bias", StringComparison.Ordinal) ? 0.02f : isNormWeight || isGamma ? 0.1f : 0.02f;
            float mean = isNormWeight ? 1f : isGamma ? 0.5f : 0f;
            if (name.EndsWith("relative_position_bias_table", StringComparison.Ordinal)) std = 0.5f;
            for (int i = 0; i < t.Length; i++) t.Data[i] = mean + std * Gaussian(rng);
            tensors[name] = t;
        }
        return new VitWeights(config, tensors);
    }

    static float Gaussian(Random rng)
    {
        double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
        return (float)(Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
    }

    static LinearWeights Linear(IReadOnlyDictionary<string, DenseTensor> t, string prefix) => new(t[prefix + ".weight"], t[prefix + ".bias"]);

    /// <summary>The qkv linear with its bias as (3D) whatever the checkpoint stores: full, (q, 0, v) or zeros.</summary>
    static LinearWeights QkvLinear(VitConfig c, IReadOnlyDictionary<string, DenseTensor> t, string prefix)
    {
        int d = c.EmbedDim;
        var weight = t[prefix + "qkv.weight"];
        if (c.QkvBias == QkvBias.Full) return new(weight, t[prefix + "qkv.bias"]);
        var bias = new DenseTensor([3 * d]);
        if (c.QkvBias == QkvBias.QV)
        {
            t[prefix + "q_bias"].Data.CopyTo(bias.Data, 0);
            t[prefix + "v_bias"].Data.CopyTo(bias.Data, 2 * d);
        }
        return new(weight, bias);
    }
    static NormWeights NormAt(IReadOnlyDictionary<string, DenseTensor> t, string prefix) => new(t[prefix + ".weight"], t[prefix + ".bias"]);
}

/// <summary>A checkpoint whose tensors do not match the config; lists every difference.</summary>
public sealed class WeightMismatchException(string message, IReadOnlyList<string> missing, IReadOnlyList<string> unexpected, IReadOnlyList<string> misShaped)
    : FormatException(message)
{
    public IReadOnlyList<string> Missing { get; } = missing;
    public IReadOnlyList<string> Unexpected { get; } = unexpected;
    public IReadOnlyList<string> MisShaped { get; } = misShaped;
}
