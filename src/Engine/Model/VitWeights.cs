namespace Ecmt.Engine.Model;

/// <summary>A linear layer as timm stores it: weight (Out, In), bias (Out).</summary>
public sealed record LinearWeights(DenseTensor Weight, DenseTensor Bias)
{
    public int In => Weight.Shape[1];
    public int Out => Weight.Shape[0];
}

/// <summary>LayerNorm affine parameters: weight (D), bias (D).</summary>
public sealed record NormWeights(DenseTensor Weight, DenseTensor Bias);

/// <summary>One pre-norm block: x = x + proj(Attn(norm1(x))); x = x + fc2(GELU(fc1(norm2(x)))).</summary>
public sealed record BlockWeights(NormWeights Norm1, LinearWeights Qkv, LinearWeights Proj, NormWeights Norm2, LinearWeights Fc1, LinearWeights Fc2);

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
        PosEmbed = tensors["pos_embed"];
        Blocks = Enumerable.Range(0, config.Depth).Select(i => new BlockWeights(
            NormAt(tensors, $"blocks.{i}.norm1"),
            Linear(tensors, $"blocks.{i}.attn.qkv"),
            Linear(tensors, $"blocks.{i}.attn.proj"),
            NormAt(tensors, $"blocks.{i}.norm2"),
            Linear(tensors, $"blocks.{i}.mlp.fc1"),
            Linear(tensors, $"blocks.{i}.mlp.fc2"))).ToArray();
        Norm = NormAt(tensors, "norm");
        Head = Linear(tensors, "head");
    }

    public VitConfig Config { get; }
    public IReadOnlyDictionary<string, DenseTensor> Tensors { get; }
    /// <summary>The patch convolution; its weight is (D, C, P, P), i.e. a (D, C·P·P) linear map on flattened patches.</summary>
    public LinearWeights PatchEmbed { get; }
    /// <summary>(1, 1, D)</summary>
    public DenseTensor ClsToken { get; }
    /// <summary>(1, N, D)</summary>
    public DenseTensor PosEmbed { get; }
    public IReadOnlyList<BlockWeights> Blocks { get; }
    public NormWeights Norm { get; }
    public LinearWeights Head { get; }

    /// <summary>Every key a timm ViT of this config has, with its shape.</summary>
    public static IReadOnlyDictionary<string, int[]> ExpectedShapes(VitConfig c)
    {
        int d = c.EmbedDim, f = c.MlpDim;
        var shapes = new Dictionary<string, int[]>(StringComparer.Ordinal)
        {
            ["patch_embed.proj.weight"] = [d, c.InChannels, c.PatchSize, c.PatchSize],
            ["patch_embed.proj.bias"] = [d],
            ["cls_token"] = [1, 1, d],
            ["pos_embed"] = [1, c.Tokens, d],
            ["norm.weight"] = [d],
            ["norm.bias"] = [d],
            ["head.weight"] = [c.NumClasses, d],
            ["head.bias"] = [c.NumClasses],
        };
        for (int i = 0; i < c.Depth; i++)
        {
            string b = $"blocks.{i}.";
            shapes[b + "norm1.weight"] = [d];
            shapes[b + "norm1.bias"] = [d];
            shapes[b + "attn.qkv.weight"] = [3 * d, d];
            shapes[b + "attn.qkv.bias"] = [3 * d];
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
        var unexpected = tensors.Keys.Where(k => !expected.ContainsKey(k)).OrderBy(k => k, StringComparer.Ordinal).ToList();
        var misShaped = expected
            .Where(e => tensors.TryGetValue(e.Key, out var t) && !t.Shape.SequenceEqual(e.Value))
            .OrderBy(e => e.Key, StringComparer.Ordinal)
            .Select(e => $"{e.Key} is {tensors[e.Key].ShapeText}, expected {DenseTensor.FormatShape(e.Value)}")
            .ToList();
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
            bool isNormWeight = name.EndsWith("norm1.weight", StringComparison.Ordinal) || name.EndsWith("norm2.weight", StringComparison.Ordinal) || name == "norm.weight";
            float std = name.EndsWith(".bias", StringComparison.Ordinal) ? 0.02f : isNormWeight ? 0.1f : 0.02f;
            float mean = isNormWeight ? 1f : 0f;
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
