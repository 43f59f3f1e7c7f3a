using Ecmt.Engine.Ann;
using Ecmt.Engine.Conversion;
using Ecmt.Engine.Model;
using Ecmt.Kernels;

namespace Ecmt.Engine.Simulation;

/// <summary>The layers and MT neurons of one block, in the form backends take.</summary>
public sealed record SpikingBlock(
    LayerNormLayer Norm1, MultiThresholdNeuron FcQkvNeuron, LinearLayer Qkv, MultiThresholdNeuron QkvNeuron,
    MultiThresholdNeuron SNeuron, MultiThresholdNeuron FcOutNeuron, LinearLayer Proj,
    LayerNormLayer Norm2, MultiThresholdNeuron Fc1Neuron, LinearLayer Fc1, MultiThresholdNeuron Fc2Neuron, LinearLayer Fc2);

/// <summary>
/// A converted model laid out for simulation: every layer as a backend <see cref="LinearLayer"/> or
/// <see cref="LayerNormLayer"/>, every place's thresholds as a <see cref="MultiThresholdNeuron"/>.
/// Immutable and shared by all sessions on all backends.
/// </summary>
public sealed class SpikingModel
{
    public SpikingModel(ConvertedModel converted)
    {
        Converted = converted;
        var c = converted.Config;
        var w = converted.Weights;
        Ann = new ReferenceVit(w);
        Blocks = Enumerable.Range(0, c.Depth).Select(i =>
        {
            var b = w.Blocks[i];
            return new SpikingBlock(
                Norm(b.Norm1, c), Neuron(converted, i, Place.FcQkv, 1), Linear(b.Qkv), QkvNeuron(converted, i),
                Neuron(converted, i, Place.S, c.Tokens * c.Tokens), Neuron(converted, i, Place.FcOut, 1), Linear(b.Proj),
                Norm(b.Norm2, c), Neuron(converted, i, Place.Fc1, 1), Linear(b.Fc1), Neuron(converted, i, Place.Fc2, 1), Linear(b.Fc2));
        }).ToArray();
        FinalNorm = Norm(w.Norm, c);
        Head = Linear(w.Head);
        DenseOperationsPerStep = DenseOperations(c);
    }

    public ConvertedModel Converted { get; }
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

    static LinearLayer Linear(LinearWeights w) => new(w.Weight.Data, w.Bias.Data, w.In, w.Out);

    static LayerNormLayer Norm(NormWeights w, VitConfig c) => new(w.Weight.Data, w.Bias.Data, c.LayerNormEps);

    static MultiThresholdNeuron Neuron(ConvertedModel m, int block, Place place, int perTensorInner)
    {
        var t = m.Thresholds[block, place];
        // Per channel: groups are the last dimension (inner 1), except at s where they are heads (inner N·N).
        int inner = t.Groups == 1 ? 1 : perTensorInner;
        return new MultiThresholdNeuron(m.Settings.LevelsAt(place), t.Pos, t.Neg, inner);
    }

    /// <summary>q, k and v spike in one (B, N, 3D) tensor: three groups of D channels, or 3D per-channel groups.</summary>
    static MultiThresholdNeuron QkvNeuron(ConvertedModel m, int block)
    {
        var parts = new[] { Place.Q, Place.K, Place.V }.Select(p => m.Thresholds[block, p]).ToArray();
        var levels = new[] { Place.Q, Place.K, Place.V }.Select(m.Settings.LevelsAt).Distinct().ToArray();
        if (levels.Length != 1) throw new NotSupportedException("q, k and v must have the same number of levels");
        int d = m.Config.EmbedDim;
        return new MultiThresholdNeuron(levels[0], parts.SelectMany(p => p.Pos).ToArray(), parts.SelectMany(p => p.Neg).ToArray(),
            inner: parts[0].Groups == 1 ? d : 1);
    }
}
