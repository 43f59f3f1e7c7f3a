namespace Ecmt.Kernels.Reference;

/// <summary>
/// The scalar functions of a ViT, written to be read. Every backend computes the same formulas
/// (including this erf), so they differ from each other only by summation order.
/// </summary>
public static class ReferenceMath
{
    /// <summary>
    /// erf(x) by Abramowitz and Stegun, Handbook of Mathematical Functions, formula 7.1.26
    /// (absolute error below 1.5e-7), extended to negative x by symmetry.
    /// </summary>
    public static float Erf(float x)
    {
        const float p = 0.3275911f, a1 = 0.254829592f, a2 = -0.284496736f, a3 = 1.421413741f, a4 = -1.453152027f, a5 = 1.061405429f;
        float sign = x < 0 ? -1f : 1f;
        float ax = MathF.Abs(x);
        float t = 1f / (1f + p * ax);
        float poly = ((((a5 * t + a4) * t + a3) * t + a2) * t + a1) * t;
        return sign * (1f - poly * MathF.Exp(-ax * ax));
    }

    /// <summary>Exact GELU: x·Φ(x) = x/2·(1 + erf(x/√2)).</summary>
    public static float Gelu(float x) => 0.5f * x * (1f + Erf(x * 0.70710678118654752f));

    /// <summary>y = (x − mean) / sqrt(var + eps) · gamma + beta over one row; y may alias x.</summary>
    public static void LayerNorm(ReadOnlySpan<float> x, ReadOnlySpan<float> gamma, ReadOnlySpan<float> beta, float eps, Span<float> y)
    {
        int d = x.Length;
        float mean = 0;
        for (int i = 0; i < d; i++) mean += x[i];
        mean /= d;
        float variance = 0;
        for (int i = 0; i < d; i++) variance += (x[i] - mean) * (x[i] - mean);
        variance /= d;
        float invStd = 1f / MathF.Sqrt(variance + eps);
        for (int i = 0; i < d; i++) y[i] = (x[i] - mean) * invStd * gamma[i] + beta[i];
    }

    /// <summary>Softmax over one row, shifted by the row maximum; y may alias x.</summary>
    public static void Softmax(ReadOnlySpan<float> x, Span<float> y)
    {
        float max = float.NegativeInfinity;
        for (int i = 0; i < x.Length; i++) max = MathF.Max(max, x[i]);
        float sum = 0;
        for (int i = 0; i < x.Length; i++)
        {
            y[i] = MathF.Exp(x[i] - max);
            sum += y[i];
        }
        float inv = 1f / sum;
        for (int i = 0; i < x.Length; i++) y[i] *= inv;
    }
}
