using System.Buffers;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Ecmt.Kernels.Cpu;

/// <summary>Which product a spike-driven linear layer used (for tests and profiles).</summary>
public enum SpikeLinearPath
{
    /// <summary>Decode the spikes to floats, then one sgemm: the ANN's multiply-accumulates, at BLAS speed.</summary>
    Dense,
    /// <summary>For each non-zero spike add its value times its weight row: work in proportion to the spikes.</summary>
    EventDriven,
}

/// <summary>
/// The fast CPU path: OpenBLAS sgemm for the dense products and fused vector loops (System.Runtime.Intrinsics
/// <see cref="Vector256{T}"/>, 8 floats a vector: hardware-accelerated on AVX2 and on AVX-512 CPUs) for everything
/// elementwise, split over the cores.
/// <para>
/// What differs from <see cref="Reference.ReferenceBackend"/> (results agree up to float summation order):
/// <list type="bullet">
/// <item>MT neurons find their level without the scalar search: from the exponent of V/λ + 1/2, checked against the
/// exact threshold floats, or by counting the thresholds V reaches (<see cref="NeuronTables"/>); same level.</item>
/// <item>The spike-driven linear layer takes the event-driven product (weight rows of the non-zero spikes only)
/// when the measured spike density is at most <see cref="EventDrivenMaxDensity"/>, else decode + sgemm.</item>
/// <item>Matrix-product EC uses the direct form P(t) = S_A(t)·S_B(t), O(t) = P(t)/t − P(t−1)/(t−1): one product a
/// step, the same size as the ANN's, instead of the three of the event-driven form. The products state holds the
/// same P(t) in both forms, and the synaptic operations counted are still those of the three products
/// (Σ_j nnz(X[:, j])·nnz(Y[j, :]) for A·S_B(t−1), S_A(t−1)·B and A·B), from per-column and per-row non-zero counts.</item>
/// </list>
/// </para>
/// Hot loops are marked AggressiveOptimization: compiled optimised at once rather than first as tier-0 code, whose
/// vector loops are many times slower and which a short run (a benchmark, a small model) would spend its time in.
/// Concurrency: an instance is used by one thread at a time (its scratch memory is its own); any number of instances
/// may run at once. Transposed weights and neuron tables are built once per process and shared.
/// </summary>
public sealed unsafe class FastCpuBackend : ISpikingBackend
{
    /// <summary>
    /// Spike density at or below which the event-driven product is used. Measured on the development machine
    /// (docs/benchmarks.md): the event-driven product of a ViT-S/16 layer costs as much as decode + sgemm at a density
    /// of about this value.
    /// </summary>
    public const double DefaultEventDrivenMaxDensity = 0.15;

    /// <summary>Elements below which a loop runs on the calling thread.</summary>
    const long Grain = 16 * 1024;
    /// <summary>Multiply-adds per block of a product split over the threads: about 0.1 ms of one core.</summary>
    const long GemmGrain = 4L << 20;

    PinnedBuffer<float>? _scratch;

    /// <summary>
    /// "fastcpu" and the instruction set its 256-bit vectors run on: "fastcpu (256-bit, AVX-512)", "(256-bit, AVX2)",
    /// or "(256-bit, not accelerated)" where .NET emulates them (slower; e.g. a CPU without AVX2).
    /// </summary>
    public string Name => $"fastcpu (256-bit, {VectorIsa})";

    static string VectorIsa =>
        !Vector256.IsHardwareAccelerated ? "not accelerated" : Avx512F.IsSupported ? "AVX-512" : Avx2.IsSupported ? "AVX2" : "AVX";

    /// <summary>Spike density (non-zero codes over all codes of the input) at or below which <see cref="SpikeLinear"/> goes event-driven.</summary>
    public double EventDrivenMaxDensity { get; set; } = DefaultEventDrivenMaxDensity;

    /// <summary>
    /// Threads every operation's loops and products are split over. OpenBLAS has its own, process-wide thread count
    /// (<see cref="OpenBlas.Threads"/>), which <see cref="Backends.Create"/> sets to 1: its threads and these would compete
    /// for the cores (measured: a batch-1 step of the shipped model 30 % slower on 2 cores with OpenBLAS threaded too).
    /// </summary>
    public int Threads { get; set; } = Environment.ProcessorCount;

    /// <summary>The path the last <see cref="SpikeLinear"/> call took.</summary>
    public SpikeLinearPath LastSpikeLinearPath { get; private set; }

    /// <summary>The spike density (non-zero codes over codes) the last <see cref="SpikeLinear"/> call measured.</summary>
    public double LastSpikeLinearDensity { get; private set; }

    // A view (Prefix) shares its owner's buffer (and keeps it alive) with a shorter shape.
    sealed class Tensor(int[] shape, Tensor? owner = null) : DeviceTensor(shape)
    {
        readonly PinnedBuffer<float> _buffer = owner?._buffer ?? new(shape.Aggregate(1L, (a, b) => a * b));
        public float* P => _buffer.Pointer;
        public Span<float> Span => new(P, checked((int)Length));
        public override void Dispose() { }
    }

    sealed class Spikes(MultiThresholdNeuron neuron, int[] shape, Spikes? owner = null) : SpikeTensor(shape, neuron)
    {
        readonly PinnedBuffer<sbyte> _buffer = owner?._buffer ?? new(shape.Aggregate(1L, (a, b) => a * b));
        public readonly NeuronTables Tables = owner?.Tables ?? NeuronTables.For(neuron);
        public sbyte* P => _buffer.Pointer;
        public Span<sbyte> Span => new(P, checked((int)Length));
        public override void Dispose() { }
    }

    sealed class Counters(int images) : StepCounters(images)
    {
        public readonly long[] Spikes = new long[images];
        public readonly long[] Sops = new long[images];
        public override void Dispose() { }
    }

    static Tensor T(DeviceTensor t) => (Tensor)t;
    static Spikes S(SpikeTensor s) => (Spikes)s;

    public DeviceTensor Allocate(params int[] shape) => new Tensor(shape);
    public SpikeTensor AllocateSpikes(MultiThresholdNeuron neuron, params int[] shape) =>
        neuron.Lossless ? throw new NotSupportedException("lossless neurons (a diagnostic) run on the reference backend only") : new Spikes(neuron, shape);
    public StepCounters AllocateCounters(int images) => new Counters(images);
    public ImageSteps AllocateSteps(int images) => new HostImageSteps(images);
    public void UploadSteps(ReadOnlySpan<int> steps, ImageSteps destination) => steps.CopyTo(((HostImageSteps)destination).T);
    public DeviceTensor Prefix(DeviceTensor tensor, int images) => new Tensor(Reference.ReferenceBackend.PrefixShape(tensor.Shape, images), T(tensor));
    public SpikeTensor Prefix(SpikeTensor spikes, int images) => new Spikes(spikes.Neuron, Reference.ReferenceBackend.PrefixShape(spikes.Shape, images), S(spikes));

    public void Upload(ReadOnlySpan<float> source, DeviceTensor destination) => source.CopyTo(T(destination).Span);
    public void Download(DeviceTensor source, Span<float> destination) => T(source).Span.CopyTo(destination);
    public void DownloadCodes(SpikeTensor source, Span<sbyte> destination) => S(source).Span.CopyTo(destination);
    public void UploadCodes(ReadOnlySpan<sbyte> source, SpikeTensor destination) => source.CopyTo(S(destination).Span);

    public void ReadCounters(StepCounters counters, Span<long> spikes, Span<long> sops)
    {
        var c = (Counters)counters;
        c.Spikes.CopyTo(spikes);
        c.Sops.CopyTo(sops);
    }

    public void Clear(DeviceTensor tensor)
    {
        var x = T(tensor);
        Parallelism.For(Threads, x.Length, 4 * Grain, (a, b) => new Span<float>(x.P + a, (int)(b - a)).Clear());
    }

    public void ClearImage(DeviceTensor tensor, int image) => ImageSpan(tensor, image).Clear();

    public void CopyImage(DeviceTensor tensor, int from, int to) => ImageSpan(tensor, from).CopyTo(ImageSpan(tensor, to));

    static Span<float> ImageSpan(DeviceTensor tensor, int image)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)image, (uint)tensor.Images, nameof(image));
        long perImage = tensor.Length / tensor.Images;
        return new Span<float>(T(tensor).P + image * perImage, checked((int)perImage));
    }

    public void Clear(StepCounters counters)
    {
        var c = (Counters)counters;
        Array.Clear(c.Spikes);
        Array.Clear(c.Sops);
    }

    public void Copy(DeviceTensor source, DeviceTensor destination)
    {
        Tensor from = T(source), to = T(destination);
        Parallelism.For(Threads, from.Length, 4 * Grain, (a, b) => new Span<float>(from.P + a, (int)(b - a)).CopyTo(new Span<float>(to.P + a, (int)(b - a))));
    }

    public void Add(DeviceTensor x, DeviceTensor y)
    {
        Tensor a = T(x), b = T(y);
        Parallelism.For(Threads, a.Length, 4 * Grain, (s, e) =>
        {
            var target = new Span<float>(a.P + s, (int)(e - s));
            System.Numerics.Tensors.TensorPrimitives.Add(target, new ReadOnlySpan<float>(b.P + s, (int)(e - s)), target);
        });
    }

    public void SelectToken(DeviceTensor input, int token, DeviceTensor output)
    {
        // input (B, N, D) -> output (B, D)
        int n = input.Shape[1], d = input.Shape[2];
        float* x = T(input).P, y = T(output).P;
        for (int b = 0; b < input.Images; b++)
            new Span<float>(x + ((long)b * n + token) * d, d).CopyTo(new Span<float>(y + (long)b * d, d));
    }

    public void AddBroadcast(DeviceTensor x, DeviceTensor y)
    {
        // x (B, …) += y (1, …): one image per work item
        Tensor a = T(x), b = T(y);
        long per = b.Length;
        if (a.Length != x.Images * per) throw new ArgumentException($"cannot add {per} values to every image of {x.Images}×{a.Length / x.Images}");
        Parallelism.For(Threads, x.Images, 1, (s, e) =>
        {
            for (long image = s; image < e; image++)
            {
                var target = new Span<float>(a.P + image * per, (int)per);
                System.Numerics.Tensors.TensorPrimitives.Add(target, new ReadOnlySpan<float>(b.P, (int)per), target);
            }
        });
    }

    public void MeanTokens(DeviceTensor input, int first, DeviceTensor output)
    {
        // input (B, N, D) -> output (B, D): tokens first … N − 1 summed in token order, then divided
        int n = input.Shape[1], d = input.Shape[2];
        float* x = T(input).P, y = T(output).P;
        for (int b = 0; b < input.Images; b++)
        {
            var mean = new Span<float>(y + (long)b * d, d);
            mean.Clear();
            for (int t = first; t < n; t++)
                System.Numerics.Tensors.TensorPrimitives.Add(mean, new ReadOnlySpan<float>(x + ((long)b * n + t) * d, d), mean);
            System.Numerics.Tensors.TensorPrimitives.Divide(mean, n - first, mean);
        }
    }

    public void Fire(DeviceTensor input, DeviceTensor membrane, SpikeTensor spikes, StepCounters counters, int fanOut)
    {
        // input, membrane, spikes (B, …): one range of each image per work item, so the counts stay per image
        float* x = T(input).P, v = T(membrane).P;
        var s = S(spikes);
        long perImage = input.Length / input.Images;
        var fired = Parallelism.ForImages(Threads, input.Images, perImage, Grain, (image, start, end) =>
        {
            long offset = image * perImage + start;
            return s.Tables.Fire(x + offset, v + offset, s.P + offset, offset, end - start);
        }, align: NeuronTables.Block);
        var c = (Counters)counters;
        for (int b = 0; b < fired.Length; b++)
        {
            c.Spikes[b] += fired[b];
            c.Sops[b] += fired[b] * fanOut;
        }
    }

    public void SpikeLinear(SpikeTensor input, LinearLayer layer, DeviceTensor output)
    {
        // input (…, In) codes; output (…, Out)
        var s = S(input);
        var y = T(output);
        if (input.Columns != layer.In || output.Columns != layer.Out || input.Rows != output.Rows)
            throw new ArgumentException($"spike linear ({layer.Out}, {layer.In}) does not fit input {input} and output {output}");
        long nonZero = NeuronTables.CountNonZero(s.P, s.Length);
        LastSpikeLinearDensity = (double)nonZero / s.Length;
        LastSpikeLinearPath = LastSpikeLinearDensity <= EventDrivenMaxDensity ? SpikeLinearPath.EventDriven : SpikeLinearPath.Dense;
        if (LastSpikeLinearPath == SpikeLinearPath.EventDriven) EventDrivenLinear(s, layer, y);
        else DenseLinear(s, layer, y);
    }

    /// <summary>Decode every spike to its value (rows, In), then y = values · Wᵀ + bias in one sgemm.</summary>
    void DenseLinear(Spikes s, LinearLayer layer, Tensor y)
    {
        float* values = Scratch(s.Length);
        Parallelism.For(Threads, s.Length, Grain, (a, b) => s.Tables.Decode(s.P + a, values + a, a, b - a), align: NeuronTables.Block);
        SplitLinear(values, s.Rows, layer, y.P);
    }

    /// <summary>
    /// y (rows, out) = x (rows, in) · Wᵀ + bias, in blocks of rows over <see cref="Threads"/>, one sgemm each: the
    /// backend's own threads split the product (OpenBLAS runs single-threaded beside them, <see cref="Threads"/>), and a
    /// product too small to repay a split (a batch-1 step of a small model) runs whole on the calling thread.
    /// </summary>
    void SplitLinear(float* x, long rows, LinearLayer layer, float* y)
    {
        int inFeatures = layer.In, outFeatures = layer.Out;
        var weight = layer.Weight;
        var bias = layer.Bias;
        Parallelism.For(Threads, rows, Math.Max(1, GemmGrain / ((long)inFeatures * outFeatures)), (r0, r1) =>
            OpenBlas.Linear(new ReadOnlySpan<float>(x + r0 * inFeatures, checked((int)((r1 - r0) * inFeatures))), (int)(r1 - r0), inFeatures,
                weight, bias, outFeatures, new Span<float>(y + r0 * outFeatures, checked((int)((r1 - r0) * outFeatures)))));
    }

    /// <summary>
    /// y[r, :] = bias + Σ over non-zero spikes i of row r: value(i) · Wᵀ[i, :]. Outputs are kept in registers
    /// 32 at a time while the weight rows of the row's spikes stream past, so each weight is loaded once per row.
    /// </summary>
    void EventDrivenLinear(Spikes s, LinearLayer layer, Tensor y)
    {
        float* wt = PackedWeights.TransposedWeight(layer).Pointer;
        int inFeatures = layer.In, outFeatures = layer.Out;
        long rows = s.Rows;
        var bias = layer.Bias;
        // Grain in rows: about Grain multiply-adds at a density of a few percent.
        long grain = Math.Max(1, Grain * 16 / ((long)inFeatures * outFeatures / 16 + 1));
        Parallelism.For(Threads, rows, grain, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (r0, r1) =>
        {
            float[] values = ArrayPool<float>.Shared.Rent(inFeatures);
            int[] index = ArrayPool<int>.Shared.Rent(inFeatures);
            float[] weight = ArrayPool<float>.Shared.Rent(inFeatures);
            try
            {
                fixed (float* v = values, w = weight, b = bias)
                fixed (int* ix = index)
                {
                    for (long r = r0; r < r1; r++)
                    {
                        long start = r * inFeatures;
                        s.Tables.Decode(s.P + start, v, start, inFeatures);
                        int count = 0;
                        for (int i = 0; i < inFeatures; i++)
                        {
                            if (v[i] == 0) continue;
                            ix[count] = i;
                            w[count++] = v[i];
                        }
                        AccumulateRows(y.P + r * outFeatures, b, wt, outFeatures, ix, w, count);
                    }
                }
            }
            finally
            {
                ArrayPool<float>.Shared.Return(values);
                ArrayPool<int>.Shared.Return(index);
                ArrayPool<float>.Shared.Return(weight);
            }
        });
    }

    /// <summary>y (out) = bias (out) + Σ_m value[m] · wt[index[m], :], wt (In, out) row-major.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void AccumulateRows(float* y, float* bias, float* wt, int outFeatures, int* index, float* value, int count)
    {
        int o = 0;
        for (; o + 32 <= outFeatures; o += 32)
        {
            Vector256<float> a0 = Vector256.Load(bias + o), a1 = Vector256.Load(bias + o + 8), a2 = Vector256.Load(bias + o + 16), a3 = Vector256.Load(bias + o + 24);
            for (int m = 0; m < count; m++)
            {
                float* w = wt + (long)index[m] * outFeatures + o;
                var scale = Vector256.Create(value[m]);
                a0 = Vector256.FusedMultiplyAdd(scale, Vector256.Load(w), a0);
                a1 = Vector256.FusedMultiplyAdd(scale, Vector256.Load(w + 8), a1);
                a2 = Vector256.FusedMultiplyAdd(scale, Vector256.Load(w + 16), a2);
                a3 = Vector256.FusedMultiplyAdd(scale, Vector256.Load(w + 24), a3);
            }
            a0.Store(y + o);
            a1.Store(y + o + 8);
            a2.Store(y + o + 16);
            a3.Store(y + o + 24);
        }
        for (; o + 8 <= outFeatures; o += 8)
        {
            var a = Vector256.Load(bias + o);
            for (int m = 0; m < count; m++)
                a = Vector256.FusedMultiplyAdd(Vector256.Create(value[m]), Vector256.Load(wt + (long)index[m] * outFeatures + o), a);
            a.Store(y + o);
        }
        for (; o < outFeatures; o++)
        {
            float a = bias[o];
            for (int m = 0; m < count; m++) a += value[m] * wt[(long)index[m] * outFeatures + o];
            y[o] = a;
        }
    }

    public void Linear(DeviceTensor input, LinearLayer layer, DeviceTensor output) =>
        SplitLinear(T(input).P, input.Rows, layer, T(output).P);

    public void LayerNormEc(DeviceTensor input, EcState state, LayerNormLayer norm, ImageSteps steps, DeviceTensor output)
    {
        var ts = HostImageSteps.Of(steps, input.Images);
        long rowsPerImage = input.Rows / input.Images;
        // input, sums, output (rows, D)
        float* x = T(input).P, sum = T(state.InputSum).P, cumulative = T(state.OutputSum).P, o = T(output).P;
        int d = input.Columns;
        if (norm.Dim != d) throw new ArgumentException($"LayerNorm over {norm.Dim} channels given rows of {d}");
        float eps = norm.Eps;
        var gamma = norm.Gamma;
        var beta = norm.Beta;
        Parallelism.For(Threads, input.Rows, Grain / d + 1, (r0, r1) =>
        {
            fixed (float* g = gamma, b = beta)
            {
                for (long r = r0; r < r1; r++)
                {
                    long e = r * d;
                    EcKernels.LayerNormRow(x + e, sum + e, cumulative + e, o + e, d, g, b, eps, ts[r / rowsPerImage]);
                }
            }
        });
    }

    public void GeluEc(DeviceTensor input, EcState state, ImageSteps steps, DeviceTensor output)
    {
        float* x = T(input).P, sum = T(state.InputSum).P, cumulative = T(state.OutputSum).P, o = T(output).P;
        var ts = HostImageSteps.Of(steps, input.Images);
        long perImage = input.Length / input.Images;
        Parallelism.ForImages(Threads, input.Images, perImage, Grain, (image, a, b) =>
        {
            long e = image * perImage + a;
            EcKernels.Gelu(x + e, sum + e, cumulative + e, o + e, b - a, ts[image]);
            return 0;
        }, align: EcKernels.W);
    }

    public void SoftmaxEc(DeviceTensor input, EcState state, ImageSteps steps, DeviceTensor output)
    {
        var ts = HostImageSteps.Of(steps, input.Images);
        long rowsPerImage = input.Rows / input.Images;
        // input, sums, output (rows, keys)
        float* x = T(input).P, sum = T(state.InputSum).P, cumulative = T(state.OutputSum).P, o = T(output).P;
        int n = input.Columns;
        Parallelism.For(Threads, input.Rows, Grain / n + 1, (r0, r1) =>
        {
            for (long r = r0; r < r1; r++)
            {
                long e = r * n;
                EcKernels.SoftmaxRow(x + e, sum + e, cumulative + e, o + e, n, ts[r / rowsPerImage]);
            }
        });
    }

    public void AttentionScoresEc(SpikeTensor qkv, DeviceTensor qkvSums, DeviceTensor products, int heads, float scale, ImageSteps steps,
        DeviceTensor scores, StepCounters counters)
    {
        var ts = HostImageSteps.Of(steps, qkv.Images);
        // qkv codes, sums (B, N, 3D); products, scores (B, H, N, N)
        var spikes = S(qkv);
        int images = qkv.Images, n = qkv.Shape[1], d3 = qkv.Columns, d = d3 / 3, dh = d / heads;
        float* sums = T(qkvSums).P, p = T(products).P, o = T(scores).P;

        // 1. S_Q, S_K += this step's q, k; count per channel the tokens where Q, K (this step) and S_Q, S_K (before it)
        //    are non-zero. Channel c of q and channel D + c of k meet in one head, so
        //    SOPs = Σ_c nnz(Q_c)·nnz(S_K(t−1)_c) + nnz(S_Q(t−1)_c)·nnz(K_c) + nnz(Q_c)·nnz(K_c).
        var sops = Parallelism.ForImages(Threads, images, 1, 1, (image, _, _) =>
        {
            int[] counts = ArrayPool<int>.Shared.Rent(4 * d);
            float[] row = ArrayPool<float>.Shared.Rent(2 * d);
            try
            {
                fixed (int* c = counts)
                fixed (float* values = row)
                {
                    int* nowCount = c, beforeCount = c + 2 * d;
                    new Span<int>(c, 4 * d).Clear();
                    for (int token = 0; token < n; token++)
                    {
                        long e = ((long)image * n + token) * d3;
                        spikes.Tables.Decode(spikes.P + e, values, e, 2 * d);
                        AdvanceAndCount(sums + e, values, 2 * d, nowCount, beforeCount);
                    }
                    long total = 0;
                    for (int ch = 0; ch < d; ch++)
                        total += (long)nowCount[ch] * beforeCount[d + ch] + (long)beforeCount[ch] * nowCount[d + ch] + (long)nowCount[ch] * nowCount[d + ch];
                    return total;
                }
            }
            finally
            {
                ArrayPool<int>.Shared.Return(counts);
                ArrayPool<float>.Shared.Return(row);
            }
        });
        AddSops(counters, sops);

        // 2. P(t) = S_Q(t)·S_K(t)ᵀ per image and head, written to the scores buffer, and while it is still in cache
        // 3. scores = scale · (P(t)/t − P(t−1)/(t−1)); the state keeps P(t).
        long nn = (long)n * n;
        for (int image = 0; image < images; image++)
        {
            for (int h = 0; h < heads; h++)
            {
                float* sq = sums + (long)image * n * d3 + h * dh, sk = sq + d;
                long block = ((long)image * heads + h) * nn;
                OpenBlas.Gemm(n, n, dh, new ReadOnlySpan<float>(sq, (n - 1) * d3 + dh), d3, new ReadOnlySpan<float>(sk, (n - 1) * d3 + dh), d3,
                    transposeB: true, new Span<float>(o + block, (int)nn), n);
                Compensate(o + block, p + block, nn, ts[image], scale);
            }
        }
    }

    public void AttentionValuesEc(SpikeTensor probs, DeviceTensor probSums, SpikeTensor qkv, DeviceTensor qkvSums, DeviceTensor products,
        int heads, ImageSteps steps, DeviceTensor output, StepCounters counters)
    {
        var ts = HostImageSteps.Of(steps, qkv.Images);
        // probs codes, probSums (B, H, N, N); qkv codes, qkvSums (B, N, 3D); products, output (B, N, D)
        var a = S(probs);
        var spikes = S(qkv);
        int images = qkv.Images, n = qkv.Shape[1], d3 = qkv.Columns, d = d3 / 3, dh = d / heads;
        float* sumA = T(probSums).P, sums = T(qkvSums).P, p = T(products).P, o = T(output).P;
        long nn = (long)n * n;

        // 1. S_A += A and count per key column j the queries where A (now) and S_A (before) are non-zero.
        //    aCounts (B, H, 2, N): [now, before].
        var aCounts = new int[images * heads * 2 * n];
        Parallelism.For(Threads, images * heads, 1, (i0, i1) =>
        {
            // One (N, N) block at a time, decoded whole (long vector runs) into a buffer that stays in cache.
            float[] block = ArrayPool<float>.Shared.Rent((int)nn);
            try
            {
                fixed (float* values = block)
                fixed (int* counts = aCounts)
                {
                    for (long item = i0; item < i1; item++)
                    {
                        int* now = counts + item * 2 * n, before = now + n;
                        long e = item * nn;
                        a.Tables.Decode(a.P + e, values, e, nn);
                        for (int query = 0; query < n; query++)
                            AdvanceAndCount(sumA + e + (long)query * n, values + (long)query * n, n, now, before);
                    }
                }
            }
            finally
            {
                ArrayPool<float>.Shared.Return(block);
            }
        });

        // 2. S_V += V and count per token j and head the channels where V (now) and S_V (before) are non-zero,
        //    then SOPs = Σ_h Σ_j nnz(A[:, j])·nnz(S_V(t−1)[j, :]) + nnz(S_A(t−1)[:, j])·nnz(V[j, :]) + nnz(A[:, j])·nnz(V[j, :]).
        var sops = Parallelism.ForImages(Threads, images, 1, 1, (image, _, _) =>
        {
            float[] row = ArrayPool<float>.Shared.Rent(d);
            try
            {
                fixed (float* values = row)
                fixed (int* counts = aCounts)
                {
                    long total = 0;
                    for (int token = 0; token < n; token++)
                    {
                        long e = ((long)image * n + token) * d3 + 2 * d;
                        spikes.Tables.Decode(spikes.P + e, values, e, d);
                        float* s = sums + e;
                        for (int h = 0; h < heads; h++)
                        {
                            var (now, before) = AdvanceAndCountAll(s + h * dh, values + h * dh, dh);
                            int* column = counts + ((long)image * heads + h) * 2 * n;
                            total += (long)column[token] * before + (long)column[n + token] * now + (long)column[token] * now;
                        }
                    }
                    return total;
                }
            }
            finally
            {
                ArrayPool<float>.Shared.Return(row);
            }
        });
        AddSops(counters, sops);

        // 3. P(t) = S_A(t)·S_V(t) per image and head, into the head's channels of the output buffer, then per image
        // 4. output = P(t)/t − P(t−1)/(t−1); the state keeps P(t).
        for (int image = 0; image < images; image++)
        {
            for (int h = 0; h < heads; h++)
            {
                float* sa = sumA + ((long)image * heads + h) * nn, sv = sums + (long)image * n * d3 + 2 * d + h * dh;
                OpenBlas.Gemm(n, dh, n, new ReadOnlySpan<float>(sa, (int)nn), n, new ReadOnlySpan<float>(sv, (n - 1) * d3 + dh), d3,
                    transposeB: false, new Span<float>(o + (long)image * n * d + h * dh, (n - 1) * d + dh), d);
            }
            Compensate(o + (long)image * n * d, p + (long)image * n * d, (long)n * d, ts[image], 1f);
        }
    }

    /// <summary>
    /// sums (count) += values (count); per element, now[i] counts values ≠ 0 and before[i] counts sums ≠ 0 before the add.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void AdvanceAndCount(float* sums, float* values, int count, int* now, int* before)
    {
        int i = 0;
        for (; i + 8 <= count; i += 8)
        {
            var v = Vector256.Load(values + i);
            var s = Vector256.Load(sums + i);
            // Equals gives −1 (all ones) where zero: counting non-zeros is adding 1 + that.
            (Vector256.Load(now + i) + Vector256<int>.One + Vector256.Equals(v, Vector256<float>.Zero).AsInt32()).Store(now + i);
            (Vector256.Load(before + i) + Vector256<int>.One + Vector256.Equals(s, Vector256<float>.Zero).AsInt32()).Store(before + i);
            (s + v).Store(sums + i);
        }
        for (; i < count; i++)
        {
            if (values[i] != 0) now[i]++;
            if (sums[i] != 0) before[i]++;
            sums[i] += values[i];
        }
    }

    /// <summary>sums (count) += values (count); returns how many values are non-zero and how many sums were before the add.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static (int Now, int Before) AdvanceAndCountAll(float* sums, float* values, int count)
    {
        int now = 0, before = 0, i = 0;
        for (; i + 8 <= count; i += 8)
        {
            var v = Vector256.Load(values + i);
            var s = Vector256.Load(sums + i);
            now += 8 - BitOperations.PopCount(Vector256.Equals(v, Vector256<float>.Zero).ExtractMostSignificantBits());
            before += 8 - BitOperations.PopCount(Vector256.Equals(s, Vector256<float>.Zero).ExtractMostSignificantBits());
            (s + v).Store(sums + i);
        }
        for (; i < count; i++)
        {
            if (values[i] != 0) now++;
            if (sums[i] != 0) before++;
            sums[i] += values[i];
        }
        return (now, before);
    }

    /// <summary>
    /// Matrix-product EC from the direct products: o holds P(t) on entry and scale·(P(t)/t − P(t−1)/(t−1)) on exit
    /// (scale·P(1) at t = 1); state holds P(t−1) on entry and P(t) on exit.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Compensate(float* o, float* state, long count, int t, float scale)
    {
        long i = 0;
        if (t == 1)
        {
            var sv = Vector256.Create(scale);
            for (; i + 8 <= count; i += 8)
            {
                var now = Vector256.Load(o + i);
                now.Store(state + i);
                (sv * now).Store(o + i);
            }
            for (; i < count; i++)
            {
                state[i] = o[i];
                o[i] = scale * o[i];
            }
            return;
        }
        float tf = t, previous = t - 1;
        Vector256<float> tv = Vector256.Create(tf), pv = Vector256.Create(previous), scaleV = Vector256.Create(scale);
        for (; i + 8 <= count; i += 8)
        {
            var now = Vector256.Load(o + i);
            (scaleV * (now / tv - Vector256.Load(state + i) / pv)).Store(o + i);
            now.Store(state + i);
        }
        for (; i < count; i++)
        {
            float now = o[i];
            o[i] = scale * (now / tf - state[i] / previous);
            state[i] = now;
        }
    }

    static void AddSops(StepCounters counters, long[] sops)
    {
        var c = (Counters)counters;
        for (int b = 0; b < sops.Length; b++) c.Sops[b] += sops[b];
    }

    /// <summary>This instance's scratch floats, grown on demand (one user thread at a time, so one buffer suffices).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    float* Scratch(long length)
    {
        if (_scratch is null || _scratch.Length < length) _scratch = new PinnedBuffer<float>(length);
        return _scratch.Pointer;
    }

    public void Synchronize() { }

    public void Dispose() => _scratch = null;
}
