using Ecmt.Engine.Ann;
using Ecmt.Engine.Conversion;
using Ecmt.Engine.Model;
using Ecmt.Kernels;

namespace Ecmt.Engine.Simulation;

/// <summary>
/// The layers and MT neurons of one block, in the form backends take. Layer scale is folded in (exact, it is linear):
/// γ₁ into Proj and γ₂ into Fc2 for pre-norm blocks, into Norm1's and Norm2's affine parameters for post-norm blocks.
/// <paramref name="RelPosBias"/> (H, N, N): the relative position bias added to the score increment at every step, or null.
/// </summary>
public sealed record SpikingBlock(
    LayerNormLayer Norm1, MultiThresholdNeuron FcQkvNeuron, LinearLayer Qkv, MultiThresholdNeuron QkvNeuron,
    MultiThresholdNeuron SNeuron, MultiThresholdNeuron FcOutNeuron, LinearLayer Proj,
    LayerNormLayer Norm2, MultiThresholdNeuron Fc1Neuron, LinearLayer Fc1, MultiThresholdNeuron Fc2Neuron, LinearLayer Fc2,
    float[]? RelPosBias = null);

/// <summary>The expectation-compensation modules whose output an <see cref="Ablation"/> can replace by the ANN's value.</summary>
public enum EcModule
{
    /// <summary>EC-LN1, whose output the fc_qkv neurons spike.</summary>
    Ln1,
    /// <summary>EC-softmax, whose output the s neurons spike.</summary>
    Softmax,
    /// <summary>EC(A·V), whose output the fc_out neurons spike.</summary>
    AttentionValues,
    /// <summary>EC-LN2, whose output the fc1 neurons spike.</summary>
    Ln2,
    /// <summary>EC-GELU, whose output the fc2 neurons spike.</summary>
    Gelu,
}

/// <summary>
/// A diagnostic: places made exact, one kind of error removed at a time, in every block.
/// <para>
/// An exact neuron place is lossless: its neurons pass their whole membrane on at every step instead of one spike of
/// one level (the reference backend only), so the place adds no quantisation error; what reaches it still carries
/// every error made before it. An exact EC module emits the ANN's value of its output at every step (so its running
/// output is exactly t × the ANN's activation there), which removes every error made before that point in the
/// branch it feeds; the neurons after it still quantise. The residual stream, the Q·Kᵀ product and the final
/// LayerNorm are not replaced.
/// </para>
/// </summary>
public sealed record Ablation(IReadOnlySet<Place> LosslessPlaces, IReadOnlySet<EcModule> AnnValues)
{
    public static readonly Ablation None = new(new HashSet<Place>(), new HashSet<EcModule>());

    public bool IsNone => LosslessPlaces.Count == 0 && AnnValues.Count == 0;

    /// <summary>The neuron place whose input an EC module produces (the ANN observes its values there).</summary>
    public static Place PlaceAfter(EcModule module) => module switch
    {
        EcModule.Ln1 => Place.FcQkv,
        EcModule.Softmax => Place.S,
        EcModule.AttentionValues => Place.FcOut,
        EcModule.Ln2 => Place.Fc1,
        _ => Place.Fc2,
    };

    public override string ToString() => IsNone ? "none" : string.Join(", ",
        LosslessPlaces.Order().Select(p => p.Key()).Concat(AnnValues.Order().Select(m => $"EC {m}")));
}

/// <summary>
/// A converted model laid out for simulation: every layer as a backend <see cref="LinearLayer"/> or
/// <see cref="LayerNormLayer"/>, every place's thresholds as a <see cref="MultiThresholdNeuron"/>.
/// Immutable and shared by all sessions on all backends.
/// </summary>
public sealed class SpikingModel
{
    public SpikingModel(ConvertedModel converted, Ablation? ablation = null)
    {
        Converted = converted;
        Ablation = ablation ?? Ablation.None;
        var c = converted.Config;
        var w = converted.Weights;
        Ann = new ReferenceVit(w);
        Blocks = Enumerable.Range(0, c.Depth).Select(i =>
        {
            var b = w.Blocks[i];
            // Layer scale multiplies the branch's last linear map (pre-norm) or its LayerNorm (post-norm).
            var (projGamma, fc2Gamma) = c.PostNorm ? (null, null) : (b.Gamma1, b.Gamma2);
            var (norm1Gamma, norm2Gamma) = c.PostNorm ? (b.Gamma1, b.Gamma2) : (null, null);
            return new SpikingBlock(
                Norm(b.Norm1, c, norm1Gamma), Neuron(i, Place.FcQkv, 1), Linear(b.Qkv), QkvNeuron(i),
                Neuron(i, Place.S, c.Tokens * c.Tokens), Neuron(i, Place.FcOut, 1), Linear(b.Proj, projGamma),
                Norm(b.Norm2, c, norm2Gamma), Neuron(i, Place.Fc1, 1), Linear(b.Fc1), Neuron(i, Place.Fc2, 1), Linear(b.Fc2, fc2Gamma),
                b.RelPosBias?.Data);
        }).ToArray();
        // The head's LayerNorm: the final norm on the class token, or fc_norm on the mean of the patch tokens.
        FinalNorm = Norm((w.Norm ?? w.FcNorm)!, c);
        Head = Linear(w.Head);
        DenseOperationsPerStep = DenseOperations(c);
    }

    public ConvertedModel Converted { get; }
    /// <summary>Places made exact for a diagnostic; <see cref="Ablation.None"/> for the model as converted.</summary>
    public Ablation Ablation { get; }
    public VitConfig Config => Converted.Config;
    public string Name => Converted.Name;
    public ReferenceVit Ann { get; }
    public IReadOnlyList<SpikingBlock> Blocks { get; }
    public LayerNormLayer FinalNorm { get; }
    public LinearLayer Head { get; }

    /// <summary>
    /// Multiply-accumulates of one ANN inference over the layers the SOP count covers: the four linear layers
    /// of every block (N·(3D² + D² + 2·D·F)) and the two attention products (2·N²·D). Leaves out the patch
    /// embedding, the head, LayerNorm, GELU and softmax arithmetic.
    /// </summary>
    public long DenseOperationsPerStep { get; }

    public static long DenseOperations(VitConfig c)
    {
        long n = c.Tokens, d = c.EmbedDim, f = c.MlpDim;
        return c.Depth * (n * (3 * d * d + d * d + 2 * d * f) + 2 * n * n * d);
    }

    /// <summary>The layer, its output channels scaled by γ when given (γ ⊙ (W x + b) = (diag(γ) W) x + γ ⊙ b).</summary>
    static LinearLayer Linear(LinearWeights w, DenseTensor? gamma = null)
    {
        if (gamma is null) return new(w.Weight.Data, w.Bias.Data, w.In, w.Out);
        var weight = new float[w.Weight.Length];
        var bias = new float[w.Out];
        for (int o = 0; o < w.Out; o++)
        {
            float g = gamma.Data[o];
            for (int i = 0; i < w.In; i++) weight[o * w.In + i] = g * w.Weight.Data[o * w.In + i];
            bias[o] = g * w.Bias.Data[o];
        }
        return new(weight, bias, w.In, w.Out);
    }

    /// <summary>The LayerNorm, its affine parameters scaled by γ when given.</summary>
    static LayerNormLayer Norm(NormWeights w, VitConfig c, DenseTensor? gamma = null) => gamma is null
        ? new(w.Weight.Data, w.Bias.Data, c.LayerNormEps)
        : new(w.Weight.Data.Select((v, i) => v * gamma.Data[i]).ToArray(), w.Bias.Data.Select((v, i) => v * gamma.Data[i]).ToArray(), c.LayerNormEps);

    MultiThresholdNeuron Neuron(int block, Place place, int perTensorInner)
    {
        var m = Converted;
        var t = m.Thresholds[block, place];
        // Per channel: groups are the last dimension (inner 1), except at s where they are heads (inner N·N).
        int inner = t.Groups == 1 ? 1 : perTensorInner;
        return new MultiThresholdNeuron(m.Settings.LevelsAt(place), t.Pos, t.Neg, inner, m.Settings.SpikeRounding) { Lossless = Ablation.LosslessPlaces.Contains(place) };
    }

    /// <summary>q, k and v spike in one (B, N, 3D) tensor: three groups of D channels, or 3D per-channel groups.</summary>
    MultiThresholdNeuron QkvNeuron(int block)
    {
        var m = Converted;
        var parts = new[] { Place.Q, Place.K, Place.V }.Select(p => m.Thresholds[block, p]).ToArray();
        var levels = new[] { Place.Q, Place.K, Place.V }.Select(m.Settings.LevelsAt).Distinct().ToArray();
        if (levels.Length != 1) throw new NotSupportedException("q, k and v must have the same number of levels");
        int d = m.Config.EmbedDim;
        var lossless = new[] { Place.Q, Place.K, Place.V }.Count(Ablation.LosslessPlaces.Contains);
        if (lossless is 1 or 2) throw new NotSupportedException("q, k and v spike in one tensor: make all three lossless or none");
        return new MultiThresholdNeuron(levels[0], parts.SelectMany(p => p.Pos).ToArray(), parts.SelectMany(p => p.Neg).ToArray(),
            inner: parts[0].Groups == 1 ? d : 1, m.Settings.SpikeRounding) { Lossless = lossless == 3 };
    }
}
