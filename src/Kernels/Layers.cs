namespace Ecmt.Kernels;

/// <summary>A linear layer in host memory, stored as PyTorch does: Weight (Out, In) row-major, Bias (Out).</summary>
public sealed class LinearLayer
{
    public LinearLayer(float[] weight, float[] bias, int inFeatures, int outFeatures)
    {
        if (weight.Length != (long)inFeatures * outFeatures) throw new ArgumentException($"weight has {weight.Length} values, ({outFeatures}, {inFeatures}) needs {(long)inFeatures * outFeatures}");
        if (bias.Length != outFeatures) throw new ArgumentException($"bias has {bias.Length} values, expected {outFeatures}");
        Weight = weight;
        Bias = bias;
        In = inFeatures;
        Out = outFeatures;
    }

    public float[] Weight { get; }
    public float[] Bias { get; }
    public int In { get; }
    public int Out { get; }
}

/// <summary>LayerNorm's affine parameters over the last dimension D: Gamma (D), Beta (D).</summary>
public sealed class LayerNormLayer(float[] gamma, float[] beta, float eps)
{
    public float[] Gamma { get; } = gamma;
    public float[] Beta { get; } = beta;
    public float Eps { get; } = eps;
    public int Dim => Gamma.Length;
}

/// <summary>
/// The running state of one expectation-compensation module: the sum of its inputs S(t) and its cumulative
/// output t·F(S(t)/t), both shaped like its input.
/// </summary>
public sealed record EcState(DeviceTensor InputSum, DeviceTensor OutputSum) : IDisposable
{
    public void Dispose()
    {
        InputSum.Dispose();
        OutputSum.Dispose();
    }
}
