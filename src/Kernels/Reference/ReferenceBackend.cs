using Ecmt.Kernels.Cpu;

namespace Ecmt.Kernels.Reference;

/// <summary>
/// The readable reference of every operation, in host arrays: plain loops that follow ECMT.md line by line, with
/// OpenBLAS for the matrix products. Every other backend is tested against this one.
/// </summary>
public sealed class ReferenceBackend : ISpikingBackend
{
    public string Name => "reference";

    sealed class Tensor(int[] shape) : DeviceTensor(shape)
    {
        public readonly float[] Data = new float[shape.Aggregate(1L, (a, b) => a * b)];
        public override void Dispose() { }
    }

    sealed class Spikes(MultiThresholdNeuron neuron, int[] shape) : SpikeTensor(shape, neuron)
    {
        public readonly sbyte[] Codes = new sbyte[shape.Aggregate(1L, (a, b) => a * b)];
        /// <summary>A lossless neuron's exact outputs (its codes only mark which are non-zero).</summary>
        public readonly float[]? Exact = neuron.Lossless ? new float[shape.Aggregate(1L, (a, b) => a * b)] : null;

        /// <summary>The value of every spike, as floats shaped like the codes.</summary>
        public float[] Values()
        {
            if (Exact is not null) return (float[])Exact.Clone();
            var values = new float[Codes.Length];
            for (long i = 0; i < Codes.Length; i++) values[i] = Neuron.Value(Codes[i], Neuron.GroupOf(i));
            return values;
        }

        public override void Dispose() { }
    }

    sealed class Counters(int images) : StepCounters(images)
    {
        public readonly long[] Spikes = new long[images];
        public readonly long[] Sops = new long[images];
        public override void Dispose() { }
    }

    static float[] Data(DeviceTensor t) => ((Tensor)t).Data;

    public DeviceTensor Allocate(params int[] shape) => new Tensor(shape);
    public SpikeTensor AllocateSpikes(MultiThresholdNeuron neuron, params int[] shape) => new Spikes(neuron, shape);
    public StepCounters AllocateCounters(int images) => new Counters(images);

    public void Upload(ReadOnlySpan<float> source, DeviceTensor destination) => source.CopyTo(Data(destination));
    public void Download(DeviceTensor source, Span<float> destination) => Data(source).CopyTo(destination);
    public void DownloadCodes(SpikeTensor source, Span<sbyte> destination) => ((Spikes)source).Codes.CopyTo(destination);
    public void UploadCodes(ReadOnlySpan<sbyte> source, SpikeTensor destination) => source.CopyTo(((Spikes)destination).Codes);

    public void ReadCounters(StepCounters counters, Span<long> spikes, Span<long> sops)
    {
        var c = (Counters)counters;
        c.Spikes.CopyTo(spikes);
        c.Sops.CopyTo(sops);
    }

    public void Clear(DeviceTensor tensor) => Array.Clear(Data(tensor));

    public void Clear(StepCounters counters)
    {
        var c = (Counters)counters;
        Array.Clear(c.Spikes);
        Array.Clear(c.Sops);
    }

    public void Copy(DeviceTensor source, DeviceTensor destination) => Data(source).CopyTo(Data(destination), 0);

    public void Add(DeviceTensor x, DeviceTensor y)
    {
        float[] a = Data(x), b = Data(y);
        for (long i = 0; i < a.Length; i++) a[i] += b[i];
    }

    public void SelectToken(DeviceTensor input, int token, DeviceTensor output)
    {
        // input (B, N, D) -> output (B, D)
        int n = input.Shape[1], d = input.Shape[2];
        for (int b = 0; b < input.Images; b++)
            Array.Copy(Data(input), ((long)b * n + token) * d, Data(output), (long)b * d, d);
    }

    public void AddBroadcast(DeviceTensor x, DeviceTensor y)
    {
        // x (B, …) += y (1, …)
        float[] a = Data(x), b = Data(y);
        if (a.Length != (long)x.Images * b.Length) throw new ArgumentException($"cannot add {b.Length} values to every image of {x.Images}×{a.Length / x.Images}");
        for (long i = 0; i < a.Length; i++) a[i] += b[i % b.Length];
    }

    public void MeanTokens(DeviceTensor input, int first, DeviceTensor output)
    {
        // input (B, N, D) -> output (B, D): the mean of tokens first … N − 1, summed in token order
        int n = input.Shape[1], d = input.Shape[2];
        float[] x = Data(input), y = Data(output);
        for (int b = 0; b < input.Images; b++)
        {
            for (int c = 0; c < d; c++)
            {
                float sum = 0;
                for (int t = first; t < n; t++) sum += x[((long)b * n + t) * d + c];
                y[(long)b * d + c] = sum / (n - first);
            }
        }
    }

    public void Fire(DeviceTensor input, DeviceTensor membrane, SpikeTensor spikes, StepCounters counters, int fanOut)
    {
        float[] x = Data(input), v = Data(membrane);
        var s = (Spikes)spikes;
        var c = (Counters)counters;
        long perImage = x.Length / input.Images;
        // Images are independent: one task each.
        Parallel.For(0, input.Images, image =>
        {
            long fired = 0;
            for (long i = image * perImage; i < (image + 1) * perImage; i++)
            {
                v[i] += x[i];
                if (s.Exact is not null)
                {
                    (s.Exact[i], v[i]) = (v[i], 0f);
                    s.Codes[i] = (sbyte)(s.Exact[i] == 0 ? 0 : 1);
                }
                else s.Codes[i] = s.Neuron.Fire(ref v[i], s.Neuron.GroupOf(i));
                if (s.Codes[i] != 0) fired++;
            }
            c.Spikes[image] += fired;
            c.Sops[image] += fired * fanOut;
        });
    }

    public void SpikeLinear(SpikeTensor input, LinearLayer layer, DeviceTensor output) =>
        OpenBlas.Linear(((Spikes)input).Values(), (int)input.Rows, layer.In, layer.Weight, layer.Bias, layer.Out, Data(output));

    public void Linear(DeviceTensor input, LinearLayer layer, DeviceTensor output) =>
        OpenBlas.Linear(Data(input), (int)input.Rows, layer.In, layer.Weight, layer.Bias, layer.Out, Data(output));

    // Expectation compensation (ECMT.md section 1), row by row:
    //   S(t) = S(t−1) + x(t);  cumulative(t) = t·F(S(t)/t);  O(t) = cumulative(t) − cumulative(t−1).
    void ExpectationCompensation(DeviceTensor input, EcState state, int t, DeviceTensor output, Action<float[], float[]> f)
    {
        float[] x = Data(input), sum = Data(state.InputSum), cumulative = Data(state.OutputSum), o = Data(output);
        int width = input.Columns;
        long rowsPerImage = input.Rows / input.Images;
        Parallel.For(0, input.Images, image =>
        {
            var mean = new float[width];
            var fOfMean = new float[width];
            for (long row = image * rowsPerImage; row < (image + 1) * rowsPerImage; row++)
            {
                long start = row * width;
                for (int j = 0; j < width; j++)
                {
                    sum[start + j] += x[start + j];
                    mean[j] = sum[start + j] / t;
                }
                f(mean, fOfMean);
                for (int j = 0; j < width; j++)
                {
                    float current = t * fOfMean[j];
                    o[start + j] = current - cumulative[start + j];
                    cumulative[start + j] = current;
                }
            }
        });
    }

    public void LayerNormEc(DeviceTensor input, EcState state, LayerNormLayer norm, int t, DeviceTensor output) =>
        ExpectationCompensation(input, state, t, output, (x, y) => ReferenceMath.LayerNorm(x, norm.Gamma, norm.Beta, norm.Eps, y));

    public void GeluEc(DeviceTensor input, EcState state, int t, DeviceTensor output) =>
        ExpectationCompensation(input, state, t, output, (x, y) =>
        {
            for (int j = 0; j < x.Length; j++) y[j] = ReferenceMath.Gelu(x[j]);
        });

    public void SoftmaxEc(DeviceTensor input, EcState state, int t, DeviceTensor output) =>
        ExpectationCompensation(input, state, t, output, (x, y) => ReferenceMath.Softmax(x, y));

    // Matrix-product EC (ECMT.md section 2) in its event-driven form, for one image and head:
    //   P(t) = P(t−1) + A·S_B(t−1) + S_A(t−1)·B + A·B        (so P(t) = S_A(t)·S_B(t))
    //   O(t) = P(t)/t − P(t−1)/(t−1),  O(1) = A·B
    // A, B are this step's spike values; the three products are what neuromorphic hardware would compute.
    static void MatrixProductEc(float[] a, float[] sumA, float[] b, float[] sumB, float[] p, int m, int k, int n, int t, float scale, Span<float> o)
    {
        // a, sumA (m, k); b, sumB (k, n); p, o (m, n)
        var previous = (float[])p.Clone();
        OpenBlas.Gemm(m, n, k, a, k, sumB, n, transposeB: false, p, n, beta: 1f);
        OpenBlas.Gemm(m, n, k, sumA, k, b, n, transposeB: false, p, n, beta: 1f);
        OpenBlas.Gemm(m, n, k, a, k, b, n, transposeB: false, p, n, beta: 1f);
        for (int i = 0; i < m * n; i++)
            o[i] = scale * (t == 1 ? p[i] : p[i] / t - previous[i] / (t - 1));
        for (int i = 0; i < a.Length; i++) sumA[i] += a[i];
        for (int i = 0; i < b.Length; i++) sumB[i] += b[i];
    }

    /// <summary>
    /// Synaptic operations of X (m, k) · Y (k, n): one accumulate per pair of non-zero factors,
    /// Σ_j nnz(X[:, j]) · nnz(Y[j, :]).
    /// </summary>
    static long ProductOperations(float[] x, float[] y, int m, int k, int n)
    {
        long total = 0;
        for (int j = 0; j < k; j++)
        {
            long left = 0, right = 0;
            for (int i = 0; i < m; i++) if (x[i * k + j] != 0) left++;
            for (int i = 0; i < n; i++) if (y[j * n + i] != 0) right++;
            total += left * right;
        }
        return total;
    }

    static long MatrixProductOperations(float[] a, float[] sumA, float[] b, float[] sumB, int m, int k, int n) =>
        ProductOperations(a, sumB, m, k, n) + ProductOperations(sumA, b, m, k, n) + ProductOperations(a, b, m, k, n);

    public void AttentionScoresEc(SpikeTensor qkv, DeviceTensor qkvSums, DeviceTensor products, int heads, float scale, int t,
        DeviceTensor scores, StepCounters counters)
    {
        int images = qkv.Images, n = qkv.Shape[1], d = qkv.Columns / 3, dh = d / heads;
        float[] values = ((Spikes)qkv).Values(), sums = Data(qkvSums), p = Data(products), o = Data(scores);
        var c = (Counters)counters;
        Parallel.For(0, images, image =>
        {
            for (int h = 0; h < heads; h++)
            {
                // Q, S_Q (N, Dh); Kᵀ, S_Kᵀ (Dh, N)
                float[] q = Gather(values, image, n, 3 * d, h * dh, dh), sumQ = Gather(sums, image, n, 3 * d, h * dh, dh);
                float[] kT = Transpose(Gather(values, image, n, 3 * d, d + h * dh, dh), n, dh);
                float[] sumKT = Transpose(Gather(sums, image, n, 3 * d, d + h * dh, dh), n, dh);
                long block = ((long)image * heads + h) * n * n;
                var pBlock = p.AsSpan((int)block, n * n).ToArray();
                c.Sops[image] += MatrixProductOperations(q, sumQ, kT, sumKT, n, dh, n);
                MatrixProductEc(q, sumQ, kT, sumKT, pBlock, n, dh, n, t, scale, o.AsSpan((int)block, n * n));
                pBlock.CopyTo(p, block);
                Scatter(sumQ, sums, image, n, 3 * d, h * dh, dh);
                Scatter(Transpose(sumKT, dh, n), sums, image, n, 3 * d, d + h * dh, dh);
            }
        });
    }

    public void AttentionValuesEc(SpikeTensor probs, DeviceTensor probSums, SpikeTensor qkv, DeviceTensor qkvSums, DeviceTensor products,
        int heads, int t, DeviceTensor output, StepCounters counters)
    {
        int images = qkv.Images, n = qkv.Shape[1], d = qkv.Columns / 3, dh = d / heads;
        float[] a = ((Spikes)probs).Values(), sumsA = Data(probSums);
        float[] values = ((Spikes)qkv).Values(), sums = Data(qkvSums), p = Data(products), o = Data(output);
        var c = (Counters)counters;
        Parallel.For(0, images, image =>
        {
            for (int h = 0; h < heads; h++)
            {
                // A, S_A (N, N); V, S_V (N, Dh); the result goes to channels h·Dh … of output (N, D)
                long block = ((long)image * heads + h) * n * n;
                float[] aBlock = a.AsSpan((int)block, n * n).ToArray(), sumA = sumsA.AsSpan((int)block, n * n).ToArray();
                float[] v = Gather(values, image, n, 3 * d, 2 * d + h * dh, dh), sumV = Gather(sums, image, n, 3 * d, 2 * d + h * dh, dh);
                float[] pBlock = Gather(p, image, n, d, h * dh, dh);
                var oBlock = new float[n * dh];
                c.Sops[image] += MatrixProductOperations(aBlock, sumA, v, sumV, n, n, dh);
                MatrixProductEc(aBlock, sumA, v, sumV, pBlock, n, n, dh, t, 1f, oBlock);
                sumA.CopyTo(sumsA, block);
                Scatter(sumV, sums, image, n, 3 * d, 2 * d + h * dh, dh);
                Scatter(pBlock, p, image, n, d, h * dh, dh);
                Scatter(oBlock, o, image, n, d, h * dh, dh);
            }
        });
    }

    /// <summary>The (N, width) block of columns [offset, offset + width) of one image of a (B, N, rowLength) tensor.</summary>
    static float[] Gather(float[] source, int image, int n, int rowLength, int offset, int width)
    {
        var block = new float[n * width];
        for (int i = 0; i < n; i++)
            Array.Copy(source, ((long)image * n + i) * rowLength + offset, block, i * width, width);
        return block;
    }

    static void Scatter(float[] block, float[] destination, int image, int n, int rowLength, int offset, int width)
    {
        for (int i = 0; i < n; i++)
            Array.Copy(block, i * width, destination, ((long)image * n + i) * rowLength + offset, width);
    }

    static float[] Transpose(float[] m, int rows, int columns)
    {
        var result = new float[m.Length];
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < columns; j++)
                result[j * rows + i] = m[i * columns + j];
        return result;
    }

    public void Synchronize() { }

    public void Dispose() { }
}
