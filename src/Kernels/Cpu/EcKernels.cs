using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Ecmt.Kernels.Reference;

namespace Ecmt.Kernels.Cpu;

/// <summary>
/// Expectation compensation (ECMT.md section 1) fused into one pass per row, in 16-lane vectors:
/// S(t) = S(t−1) + x(t); cumulative(t) = t·F(S(t)/t); O(t) = cumulative(t) − cumulative(t−1).
/// F is computed with the formulas of <see cref="ReferenceMath"/> in the same operation order (no fused multiply-add),
/// so results differ from the reference only by summation order and the vector exponential's last bits.
/// Every row kernel uses its output row as scratch for the mean input S(t)/t.
/// </summary>
static unsafe class EcKernels
{
    const int W = 16;

    /// <summary>x, sum, cumulative, o (d): one row of EC-LayerNorm with gamma, beta (d).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void LayerNormRow(float* x, float* sum, float* cumulative, float* o, int d, float* gamma, float* beta, float eps, int t)
    {
        float tf = t;
        var tv = Vector512.Create(tf);
        int j = 0;
        var acc = Vector512<float>.Zero;
        for (; j + W <= d; j += W)
        {
            var s = Vector512.Load(sum + j) + Vector512.Load(x + j);
            s.Store(sum + j);
            var m = s / tv;
            m.Store(o + j);
            acc += m;
        }
        float total = Vector512.Sum(acc);
        for (; j < d; j++)
        {
            sum[j] += x[j];
            o[j] = sum[j] / tf;
            total += o[j];
        }
        float mean = total / d;
        var meanV = Vector512.Create(mean);
        acc = Vector512<float>.Zero;
        j = 0;
        for (; j + W <= d; j += W)
        {
            var c = Vector512.Load(o + j) - meanV;
            acc += c * c;
        }
        float variance = Vector512.Sum(acc);
        for (; j < d; j++) variance += (o[j] - mean) * (o[j] - mean);
        variance /= d;
        float invStd = 1f / MathF.Sqrt(variance + eps);
        var invV = Vector512.Create(invStd);
        j = 0;
        for (; j + W <= d; j += W)
        {
            var f = (Vector512.Load(o + j) - meanV) * invV * Vector512.Load(gamma + j) + Vector512.Load(beta + j);
            Compensate(f * tv, cumulative + j, o + j);
        }
        for (; j < d; j++)
        {
            float current = tf * ((o[j] - mean) * invStd * gamma[j] + beta[j]);
            o[j] = current - cumulative[j];
            cumulative[j] = current;
        }
    }

    /// <summary>x, sum, cumulative, o (n): one row of EC-softmax over n keys.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void SoftmaxRow(float* x, float* sum, float* cumulative, float* o, int n, int t)
    {
        float tf = t;
        var tv = Vector512.Create(tf);
        int j = 0;
        var maxV = Vector512.Create(float.NegativeInfinity);
        for (; j + W <= n; j += W)
        {
            var s = Vector512.Load(sum + j) + Vector512.Load(x + j);
            s.Store(sum + j);
            var m = s / tv;
            m.Store(o + j);
            maxV = Vector512.Max(maxV, m);
        }
        float max = float.NegativeInfinity;
        for (int lane = 0; lane < W; lane++) max = MathF.Max(max, maxV[lane]);
        for (; j < n; j++)
        {
            sum[j] += x[j];
            o[j] = sum[j] / tf;
            max = MathF.Max(max, o[j]);
        }
        var maxB = Vector512.Create(max);
        var acc = Vector512<float>.Zero;
        j = 0;
        for (; j + W <= n; j += W)
        {
            var e = Exp(Vector512.Load(o + j) - maxB);
            e.Store(o + j);
            acc += e;
        }
        float total = Vector512.Sum(acc);
        for (; j < n; j++)
        {
            o[j] = MathF.Exp(o[j] - max);
            total += o[j];
        }
        float inv = 1f / total;
        var invV = Vector512.Create(inv);
        j = 0;
        for (; j + W <= n; j += W) Compensate(Vector512.Load(o + j) * invV * tv, cumulative + j, o + j);
        for (; j < n; j++)
        {
            float current = tf * (o[j] * inv);
            o[j] = current - cumulative[j];
            cumulative[j] = current;
        }
    }

    /// <summary>x, sum, cumulative, o (count): EC-GELU elementwise.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Gelu(float* x, float* sum, float* cumulative, float* o, long count, int t)
    {
        float tf = t;
        var tv = Vector512.Create(tf);
        long j = 0;
        for (; j + W <= count; j += W)
        {
            var s = Vector512.Load(sum + j) + Vector512.Load(x + j);
            s.Store(sum + j);
            Compensate(Gelu(s / tv) * tv, cumulative + j, o + j);
        }
        for (; j < count; j++)
        {
            sum[j] += x[j];
            float current = tf * ReferenceMath.Gelu(sum[j] / tf);
            o[j] = current - cumulative[j];
            cumulative[j] = current;
        }
    }

    /// <summary>o = current − cumulative; cumulative = current.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Compensate(Vector512<float> current, float* cumulative, float* o)
    {
        (current - Vector512.Load(cumulative)).Store(o);
        current.Store(cumulative);
    }

    /// <summary>
    /// e^x on 16 lanes, within about 2 ulp of <see cref="MathF.Exp"/>: x = n·ln 2 + r with |r| ≤ ln 2 / 2 (ln 2 split in
    /// two constants so that n·ln 2 is exact), e^r by the degree-6 minimax polynomial of the Cephes library's expf,
    /// 2^n from exponent bits. Below −87.33 (where 2^n would leave the normal range) the result is 0, off
    /// from the true value by less than 1.2e-38. .NET's own Vector512.Exp is several times slower here.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Exp(Vector512<float> x)
    {
        var underflow = Vector512.LessThan(x, Vector512.Create(-87.33f));
        x = Vector512.Min(Vector512.Max(x, Vector512.Create(-87.33f)), Vector512.Create(88.72f));
        var n = Vector512.Round(x * Vector512.Create(1.44269504088896341f));
        var r = x - n * Vector512.Create(0.693359375f) - n * Vector512.Create(-2.12194440e-4f);
        var p = Vector512.Create(1.9875691500e-4f) * r + Vector512.Create(1.3981999507e-3f);
        p = p * r + Vector512.Create(8.3334519073e-3f);
        p = p * r + Vector512.Create(4.1665795894e-2f);
        p = p * r + Vector512.Create(1.6666665459e-1f);
        p = p * r + Vector512.Create(5.0000001201e-1f);
        p = p * (r * r) + r + Vector512<float>.One;
        // 2^n as two exact factors 2^(n/2)·2^(n−n/2), each a normal float even at n = ±127.
        var k = Vector512.ConvertToInt32(n);
        var half = Vector512.ShiftRightArithmetic(k, 1);
        var bias = Vector512.Create(127);
        var scale1 = Vector512.ShiftLeft(half + bias, 23).AsSingle();
        var scale2 = Vector512.ShiftLeft(k - half + bias, 23).AsSingle();
        return Vector512.AndNot(p * scale1 * scale2, underflow.AsSingle());
    }

    /// <summary><see cref="ReferenceMath.Gelu"/> on 16 lanes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Gelu(Vector512<float> x) =>
        Vector512.Create(0.5f) * x * (Vector512<float>.One + Erf(x * Vector512.Create(0.70710678118654752f)));

    /// <summary><see cref="ReferenceMath.Erf"/> (Abramowitz and Stegun 7.1.26) on 16 lanes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Erf(Vector512<float> x)
    {
        var ax = Vector512.Abs(x);
        var t = Vector512<float>.One / (Vector512<float>.One + Vector512.Create(0.3275911f) * ax);
        var poly = Vector512.Create(1.061405429f) * t + Vector512.Create(-1.453152027f);
        poly = poly * t + Vector512.Create(1.421413741f);
        poly = poly * t + Vector512.Create(-0.284496736f);
        poly = poly * t + Vector512.Create(0.254829592f);
        poly *= t;
        var magnitude = Vector512<float>.One - poly * Exp(-ax * ax);
        // sign · magnitude, with the sign bit of x (negating is exact, as the reference's multiplication by −1 is)
        return Vector512.ConditionalSelect(Vector512.LessThan(x, Vector512<float>.Zero), -magnitude, magnitude);
    }
}
