using Ecmt.Kernels.Cpu;

namespace Ecmt.Kernels.Reference;

/// <summary>
/// The readable reference of every operation, in host arrays: plain loops that follow ECMT.md line by line, with
/// OpenBLAS for the matrix products. Every other backend is tested against this one.
/// </summary>
public sealed class ReferenceBackend : ISpikingBackend
{
    public string Name => "reference";

    // A view (Prefix) shares its owner's arrays and has a shorter shape: every loop below runs to the tensor's own
    // Length, never to the array's.
    sealed class Tensor(int[] shape, float[]? data = null) : DeviceTensor(shape)
    {
        public readonly float[] Data = data ?? new float[shape.Aggregate(1L, (a, b) => a * b)];
        public Span<float> Span => Data.AsSpan(0, (int)Length);
        public override void Dispose() { }
    }

    sealed class Spikes(MultiThresholdNeuron neuron, int[] shape, Spikes? owner = null) : SpikeTensor(shape, neuron)
    {
        public readonly sbyte[] Codes = owner?.Codes ?? new sbyte[shape.Aggregate(1L, (a, b) => a * b)];
        /// <summary>A lossless neuron's exact outputs (its codes only mark which are non-zero).</summary>
        public readonly float[]? Exact = owner is not null ? owner.Exact : neuron.Lossless ? new float[shape.Aggregate(1L, (a, b) => a * b)] : null;

        /// <summary>The value of every spike, as floats shaped like the codes.</summary>
        public float[] Values()
        {
            if (Exact is not null) return Exact.AsSpan(0, (int)Length).ToArray();
            var values = new float[Length];
            for (long i = 0; i < Length; i++) values[i] = Neuron.Value(Codes[i], Neuron.GroupOf(i));
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
    public ImageSteps AllocateSteps(int images) => new HostImageSteps(images);
    public void UploadSteps(ReadOnlySpan<int> steps, ImageSteps destination) => steps.CopyTo(((HostImageSteps)destination).T);

    public DeviceTensor Prefix(DeviceTensor tensor, int images) => new Tensor(PrefixShape(tensor.Shape, images), ((Tensor)tensor).Data);
    public SpikeTensor Prefix(SpikeTensor spikes, int images) => new Spikes(spikes.Neuron, PrefixShape(spikes.Shape, images), (Spikes)spikes);

    internal static int[] PrefixShape(int[] shape, int images)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(images, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(images, shape[0]);
        var prefix = (int[])shape.Clone();
        prefix[0] = images;
        return prefix;
    }

    public void Upload(ReadOnlySpan<float> source, DeviceTensor destination) => source.CopyTo(((Tensor)destination).Span);
    public void Download(DeviceTensor source, Span<float> destination) => ((Tensor)source).Span.CopyTo(destination);
    public void DownloadCodes(SpikeTensor source, Span<sbyte> destination) => ((Spikes)source).Codes.AsSpan(0, (int)source.Length).CopyTo(destination);
    public void UploadCodes(ReadOnlySpan<sbyte> source, SpikeTensor destination) => source.CopyTo(((Spikes)destination).Codes.AsSpan(0, (int)destination.Length));

    public void ReadCounters(StepCounters counters, Span<long> spikes, Span<long> sops)
    {
        var c = (Counters)counters;
        c.Spikes.CopyTo(spikes);
        c.Sops.CopyTo(sops);
    }

    public void Clear(DeviceTensor tensor) => ((Tensor)tensor).Span.Clear();

    public void ClearImage(DeviceTensor tensor, int image) => ImageSpan(tensor, image).Clear();

    public void CopyImage(DeviceTensor tensor, int from, int to) => ImageSpan(tensor, from).CopyTo(ImageSpan(tensor, to));

    static Span<float> ImageSpan(DeviceTensor tensor, int image)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)image, (uint)tensor.Images, nameof(image));
        long perImage = tensor.Length / tensor.Images;
        return Data(tensor).AsSpan((int)(image * perImage), (int)perImage);
    }

    public void Clear(StepCounters counters)
    {
        var c = (Counters)counters;
        Array.Clear(c.Spikes);
        Array.Clear(c.Sops);
    }

    public void Copy(DeviceTensor source, DeviceTensor destination) => ((Tensor)source).Span.CopyTo(((Tensor)destination).Span);

    public void Add(DeviceTensor x, DeviceTensor y)
    {
        float[] a = Data(x), b = Data(y);
        for (long i = 0; i < x.Length; i++) a[i] += b[i];
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
        long per = y.Length;
        if (x.Length != x.Images * per) throw new ArgumentException($"cannot add {per} values to every image of {x.Images}×{x.Length / x.Images}");
        for (long i = 0; i < x.Length; i++) a[i] += b[i % per];
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
        long perImage = input.Length / input.Images;
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
    // t is the image's own step.
    void ExpectationCompensation(DeviceTensor input, EcState state, ImageSteps steps, DeviceTensor output, Action<float[], float[]> f)
    {
        float[] x = Data(input), sum = Data(state.InputSum), cumulative = Data(state.OutputSum), o = Data(output);
        int width = input.Columns;
        long rowsPerImage = input.Rows / input.Images;
        var ts = HostImageSteps.Of(steps, input.Images);
        Parallel.For(0, input.Images, image =>
        {
            int t = ts[image];
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

    public void LayerNormEc(DeviceTensor input, EcState state, LayerNormLayer norm, ImageSteps steps, DeviceTensor output) =>
        ExpectationCompensation(input, state, steps, output, (x, y) => ReferenceMath.LayerNorm(x, norm.Gamma, norm.Beta, norm.Eps, y));

    public void GeluEc(DeviceTensor input, EcState state, ImageSteps steps, DeviceTensor output) =>
        ExpectationCompensation(input, state, steps, output, (x, y) =>
        {
            for (int j = 0; j < x.Length; j++) y[j] = ReferenceMath.Gelu(x[j]);
        });

    public void SoftmaxEc(DeviceTensor input, EcState state, ImageSteps steps, DeviceTensor output) =>
        ExpectationCompensation(input, state, steps, output, (x, y) => ReferenceMath.Softmax(x, y));

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

    public void AttentionScoresEc(SpikeTensor qkv, DeviceTensor qkvSums, DeviceTensor products, int heads, float scale, ImageSteps steps,
        DeviceTensor scores, StepCounters counters)
    {
        int images = qkv.Images, n = qkv.Shape[1], d = qkv.Columns / 3, dh = d / heads;
        var ts = HostImageSteps.Of(steps, images);
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
                MatrixProductEc(q, sumQ, kT, sumKT, pBlock, n, dh, n, ts[image], scale, o.AsSpan((int)block, n * n));
                pBlock.CopyTo(p, block);
                Scatter(sumQ, sums, image, n, 3 * d, h * dh, dh);
                Scatter(Transpose(sumKT, dh, n), sums, image, n, 3 * d, d + h * dh, dh);
            }
        });
    }

    public void AttentionValuesEc(SpikeTensor probs, DeviceTensor probSums, SpikeTensor qkv, DeviceTensor qkvSums, DeviceTensor products,
        int heads, ImageSteps steps, DeviceTensor output, StepCounters counters)
    {
        int images = qkv.Images, n = qkv.Shape[1], d = qkv.Columns / 3, dh = d / heads;
        var ts = HostImageSteps.Of(steps, images);
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
                MatrixProductEc(aBlock, sumA, v, sumV, pBlock, n, n, dh, ts[image], 1f, oBlock);
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
