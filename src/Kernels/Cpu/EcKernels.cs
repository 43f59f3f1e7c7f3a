using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Ecmt.Kernels.Reference;

namespace Ecmt.Kernels.Cpu;

/// <summary>
/// Expectation compensation (ECMT.md section 1) fused into one pass per row, in 8-lane vectors (<see cref="Vector256{T}"/>):
/// S(t) = S(t−1) + x(t); cumulative(t) = t·F(S(t)/t); O(t) = cumulative(t) − cumulative(t−1).
/// F is computed with the formulas of <see cref="ReferenceMath"/> in the same operation order (no fused multiply-add),
/// so results differ from the reference only by summation order and the vector exponential's last bits.
/// Every row kernel uses its output row as scratch for the mean input S(t)/t.
/// </summary>
static unsafe class EcKernels
{
    /// <summary>Floats a vector: 8 (256 bits, hardware-accelerated with AVX2 or AVX-512).</summary>
    public const int W = 8;

    /// <summary>x, sum, cumulative, o (d): one row of EC-LayerNorm with gamma, beta (d).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void LayerNormRow(float* x, float* sum, float* cumulative, float* o, int d, float* gamma, float* beta, float eps, int t)
    {
        float tf = t;
        var tv = Vector256.Create(tf);
        int j = 0;
        var acc = Vector256<float>.Zero;
        for (; j + W <= d; j += W)
        {
            var s = Vector256.Load(sum + j) + Vector256.Load(x + j);
            s.Store(sum + j);
            var m = s / tv;
            m.Store(o + j);
            acc += m;
        }
        float total = Vector256.Sum(acc);
        for (; j < d; j++)
        {
            sum[j] += x[j];
            o[j] = sum[j] / tf;
            total += o[j];
        }
        float mean = total / d;
        var meanV = Vector256.Create(mean);
        acc = Vector256<float>.Zero;
        j = 0;
        for (; j + W <= d; j += W)
        {
            var c = Vector256.Load(o + j) - meanV;
            acc += c * c;
        }
        float variance = Vector256.Sum(acc);
        for (; j < d; j++) variance += (o[j] - mean) * (o[j] - mean);
        variance /= d;
        float invStd = 1f / MathF.Sqrt(variance + eps);
        var invV = Vector256.Create(invStd);
        j = 0;
        for (; j + W <= d; j += W)
        {
            var f = (Vector256.Load(o + j) - meanV) * invV * Vector256.Load(gamma + j) + Vector256.Load(beta + j);
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
        var tv = Vector256.Create(tf);
        int j = 0;
        var maxV = Vector256.Create(float.NegativeInfinity);
        for (; j + W <= n; j += W)
        {
            var s = Vector256.Load(sum + j) + Vector256.Load(x + j);
            s.Store(sum + j);
            var m = s / tv;
            m.Store(o + j);
            maxV = Vector256.Max(maxV, m);
        }
        float max = float.NegativeInfinity;
        for (int lane = 0; lane < W; lane++) max = MathF.Max(max, maxV[lane]);
        for (; j < n; j++)
        {
            sum[j] += x[j];
            o[j] = sum[j] / tf;
            max = MathF.Max(max, o[j]);
        }
        var maxB = Vector256.Create(max);
        var acc = Vector256<float>.Zero;
        j = 0;
        for (; j + W <= n; j += W)
        {
            var e = Exp(Vector256.Load(o + j) - maxB);
            e.Store(o + j);
            acc += e;
        }
        float total = Vector256.Sum(acc);
        for (; j < n; j++)
        {
            o[j] = MathF.Exp(o[j] - max);
            total += o[j];
        }
        float inv = 1f / total;
        var invV = Vector256.Create(inv);
        j = 0;
        for (; j + W <= n; j += W) Compensate(Vector256.Load(o + j) * invV * tv, cumulative + j, o + j);
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
        var tv = Vector256.Create(tf);
        long j = 0;
        for (; j + W <= count; j += W)
        {
            var s = Vector256.Load(sum + j) + Vector256.Load(x + j);
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
    static void Compensate(Vector256<float> current, float* cumulative, float* o)
    {
        (current - Vector256.Load(cumulative)).Store(o);
        current.Store(cumulative);
    }

    /// <summary>
    /// e^x on 8 lanes, within about 2 ulp of <see cref="MathF.Exp"/>: x = n·ln 2 + r with |r| ≤ ln 2 / 2 (ln 2 split in
    /// two constants so that n·ln 2 is exact), e^r by the degree-6 minimax polynomial of the Cephes library's expf,
    /// 2^n from exponent bits. Below −87.33 (where 2^n would leave the normal range) the result is 0, off
    /// from the true value by less than 1.2e-38. .NET's own vector Exp was several times slower here.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Exp(Vector256<float> x)
    {
        var underflow = Vector256.LessThan(x, Vector256.Create(-87.33f));
        x = Vector256.Min(Vector256.Max(x, Vector256.Create(-87.33f)), Vector256.Create(88.72f));
        var n = Vector256.Round(x * Vector256.Create(1.44269504088896341f));
        var r = x - n * Vector256.Create(0.693359375f) - n * Vector256.Create(-2.12194440e-4f);
        var p = Vector256.Create(1.9875691500e-4f) * r + Vector256.Create(1.3981999507e-3f);
        p = p * r + Vector256.Create(8.3334519073e-3f);
        p = p * r + Vector256.Create(4.1665795894e-2f);
        p = p * r + Vector256.Create(1.6666665459e-1f);
        p = p * r + Vector256.Create(5.0000001201e-1f);
        p = p * (r * r) + r + Vector256<float>.One;
        // 2^n as two exact factors 2^(n/2)·2^(n−n/2), each a normal float even at n = ±127.
        var k = Vector256.ConvertToInt32(n);
        var half = Vector256.ShiftRightArithmetic(k, 1);
        var bias = Vector256.Create(127);
        var scale1 = Vector256.ShiftLeft(half + bias, 23).AsSingle();
        var scale2 = Vector256.ShiftLeft(k - half + bias, 23).AsSingle();
        return Vector256.AndNot(p * scale1 * scale2, underflow.AsSingle());
    }

    /// <summary><see cref="ReferenceMath.Gelu"/> on 8 lanes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Gelu(Vector256<float> x) =>
        Vector256.Create(0.5f) * x * (Vector256<float>.One + Erf(x * Vector256.Create(0.70710678118654752f)));

    /// <summary><see cref="ReferenceMath.Erf"/> (Abramowitz and Stegun 7.1.26) on 8 lanes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Erf(Vector256<float> x)
    {
        var ax = Vector256.Abs(x);
        var t = Vector256<float>.One / (Vector256<float>.One + Vector256.Create(0.3275911f) * ax);
        var poly = Vector256.Create(1.061405429f) * t + Vector256.Create(-1.453152027f);
        poly = poly * t + Vector256.Create(1.421413741f);
        poly = poly * t + Vector256.Create(-0.284496736f);
        poly = poly * t + Vector256.Create(0.254829592f);
        poly *= t;
        var magnitude = Vector256<float>.One - poly * Exp(-ax * ax);
        // sign · magnitude, with the sign bit of x (negating is exact, as the reference's multiplication by −1 is)
        return Vector256.ConditionalSelect(Vector256.LessThan(x, Vector256<float>.Zero), -magnitude, magnitude);
    }
}
