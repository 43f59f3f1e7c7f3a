using Ecmt.Kernels.Reference;
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Algorithms.ScanReduceOperations;

namespace Ecmt.Kernels.Ilgpu;

/// <summary>The four tensors of one expectation-compensation module, all shaped like its input.</summary>
readonly struct EcViews
{
    public readonly ArrayView<float> Input, InputSum, OutputSum, Output;

    public EcViews(ArrayView<float> input, ArrayView<float> inputSum, ArrayView<float> outputSum, ArrayView<float> output)
    {
        Input = input;
        InputSum = inputSum;
        OutputSum = outputSum;
        Output = output;
    }

    /// <summary>S(t) = S(t−1) + x(t) at element i; returns S(t).</summary>
    public float Accumulate(int i)
    {
        float sum = InputSum[i] + Input[i];
        InputSum[i] = sum;
        return sum;
    }

    /// <summary>O(t) = t·F(S(t)/t) − (t−1)·F(S(t−1)/(t−1)), with the cumulative output kept in OutputSum.</summary>
    public void Emit(int i, float current)
    {
        Output[i] = current - OutputSum[i];
        OutputSum[i] = current;
    }
}

/// <summary>Where a Fire writes: the spike codes (shaped like the input), the neurons that decode them, and the
/// tensor's own spike count (one int, read by the next spike-driven product to choose its path).</summary>
readonly struct SpikeOutput
{
    public readonly ArrayView<sbyte> Codes;
    public readonly ArrayView<int> Active;
    public readonly NeuronView Neuron;

    public SpikeOutput(ArrayView<sbyte> codes, ArrayView<int> active, NeuronView neuron)
    {
        Codes = codes;
        Active = active;
        Neuron = neuron;
    }
}

/// <summary>
/// The element-wise and row-wise kernels of one spiking step (the matrix products are in <see cref="ProductKernels"/>).
/// Each is a static method over views and scalars, explicitly grouped, and loops grid-stride so that any launch size
/// is correct: a GPU launches enough groups to fill its multiprocessors, ILGPU's CPU accelerator one small group.
/// Buffer layouts are in src/Kernels/README.md.
/// </summary>
static class StepKernels
{
    /// <summary>Elements one thread handles per work item of <see cref="Fire"/>.</summary>
    public const int FireElementsPerThread = 4;

    /// <summary>
    /// What a step hands the host, in one int buffer for one transfer: the counters (B, 2) as (low, high) int pairs,
    /// then the logits' float bits: 2·counters.Length + logits.Length entries.
    /// </summary>
    public static void PackReadout(ArrayView<long> counters, ArrayView<float> logits, ArrayView<int> readout, int counterInts, int n)
    {
        for (int i = Grid.GlobalIndex.X; i < n; i += Grid.DimX * Group.DimX)
        {
            if (i < counterInts)
            {
                long c = counters[i >> 1];
                readout[i] = (i & 1) == 0 ? (int)c : (int)(c >> 32);
            }
            else
            {
                readout[i] = (int)Interop.FloatAsInt(logits[i - counterInts]);
            }
        }
    }

    /// <summary>x (n) += y (n). Thread i handles i, i + stride, …: consecutive threads, consecutive addresses.</summary>
    public static void Add(ArrayView<float> x, ArrayView<float> y, int n)
    {
        for (int i = Grid.GlobalIndex.X; i < n; i += Grid.DimX * Group.DimX) x[i] += y[i];
    }

    /// <summary>output (B, D) = input (B, N, D)[:, token, :]; one thread per output element.</summary>
    public static void SelectToken(ArrayView<float> input, ArrayView<float> output, int images, int tokens, int width, int token)
    {
        for (int i = Grid.GlobalIndex.X; i < images * width; i += Grid.DimX * Group.DimX)
        {
            int b = i / width, c = i % width;
            output[i] = input[(b * tokens + token) * width + c];
        }
    }

    /// <summary>x (n) += y (perImage) repeated for every image; one thread per element of x.</summary>
    public static void AddBroadcast(ArrayView<float> x, ArrayView<float> y, int n, int perImage)
    {
        for (int i = Grid.GlobalIndex.X; i < n; i += Grid.DimX * Group.DimX) x[i] += y[i % perImage];
    }

    /// <summary>output (B, D) = mean of input (B, N, D) over tokens first … N − 1, summed in token order; one thread per output element.</summary>
    public static void MeanTokens(ArrayView<float> input, ArrayView<float> output, int images, int tokens, int width, int first)
    {
        for (int i = Grid.GlobalIndex.X; i < images * width; i += Grid.DimX * Group.DimX)
        {
            int b = i / width, c = i % width;
            float sum = 0;
            for (int t = first; t < tokens; t++) sum += input[(b * tokens + t) * width + c];
            output[i] = sum / (tokens - first);
        }
    }

    /// <summary>
    /// MT neurons integrate, fire and reset, fused: membrane (B, P) += input (B, P); codes (B, P) = fire(membrane);
    /// membrane −= value(codes). P is the number of neurons per image.
    /// <para>
    /// Work item = (image b, chunk of G·4 neurons of that image); the group's threads take the chunk's elements
    /// strided by G (coalesced). A group takes a contiguous block of work items (<see cref="GroupItems"/>), so its items
    /// belong to one or two images: it counts spikes per thread while the image stays the same, then reduces the count
    /// over the group and adds it with one set of atomics: counters (B, 2) = [spikes, SOPs] per image
    /// (SOPs = spikes · fanOut) and the tensor's own spike count <see cref="SpikeOutput.Active"/> (zeroed by the host).
    /// </para>
    /// </summary>
    public static void Fire(ArrayView<float> input, ArrayView<float> membrane, SpikeOutput spikes, ArrayView<long> counters,
        int images, int perImage, int fanOut)
    {
        int threads = Group.DimX, chunk = threads * FireElementsPerThread;
        int chunksPerImage = (perImage + chunk - 1) / chunk;
        var (first, end) = GroupItems(images * chunksPerImage);
        int image = first / chunksPerImage, fired = 0;
        for (int item = first; item < end; item++)
        {
            int b = item / chunksPerImage;
            if (b != image)
            {
                CountSpikes(spikes, counters, images, image, fanOut, fired);
                image = b;
                fired = 0;
            }
            int start = (item % chunksPerImage) * chunk;
            int stop = Math.Min(start + chunk, perImage);
            for (int j = start + Group.IdxX; j < stop; j += threads)
            {
                int i = b * perImage + j;
                float v = membrane[i] + input[i];
                sbyte code = spikes.Neuron.Fire(ref v, i);
                membrane[i] = v;
                spikes.Codes[i] = code;
                if (code != 0) fired++;
            }
        }
        if (first < end) CountSpikes(spikes, counters, images, image, fanOut, fired);
    }

    /// <summary>Adds one group's spikes of image b to the counters and the tensor's spike count; all threads call it.</summary>
    static void CountSpikes(SpikeOutput spikes, ArrayView<long> counters, int images, int b, int fanOut, int fired)
    {
        int total = GroupExtensions.Reduce<int, AddInt32>(fired);
        if (Group.IdxX == 0 && total != 0)
        {
            Atomic.Add(ref counters[2 * b], total);
            Atomic.Add(ref counters[2 * b + 1], (long)total * fanOut);
            Atomic.Add(ref spikes.Active[0], total);
        }
        // The reduction's shared memory is reused by the next call.
        Group.Barrier();
    }

    /// <summary>
    /// This group's work items [First, End): a contiguous block of ⌈items / groups⌉, rather than every Grid.DimX-th item,
    /// for kernels whose items are counted per image (fewer group reductions and atomics).
    /// </summary>
    public static (int First, int End) GroupItems(int items)
    {
        int perGroup = (items + Grid.DimX - 1) / Grid.DimX, first = Grid.IdxX * perGroup;
        return (first, Math.Min(items, first + perGroup));
    }

    /// <summary>
    /// EC-GELU, element-wise over n elements: S += x; cumulative = t·GELU(S/t); output = cumulative − previous cumulative.
    /// Uses <see cref="ReferenceMath.Gelu"/> itself (the same erf). t = steps[i / perImage], the element's image's step.
    /// </summary>
    public static void GeluEc(EcViews ec, ArrayView<int> steps, int perImage, int n)
    {
        for (int i = Grid.GlobalIndex.X; i < n; i += Grid.DimX * Group.DimX)
        {
            int t = steps[i / perImage];
            float mean = ec.Accumulate(i) / t;
            ec.Emit(i, t * ReferenceMath.Gelu(mean));
        }
    }

    /// <summary>
    /// EC-LayerNorm over rows (R, D): one group per row, its threads strided over the D channels (coalesced); mean and
    /// variance of S/t by two group reductions (two passes, as <see cref="ReferenceMath.LayerNorm"/>), then
    /// y = (S/t − mean)·invStd·γ + β and output = t·y − previous cumulative; t = steps[row / rowsPerImage].
    /// </summary>
    public static void LayerNormEc(EcViews ec, ArrayView<float> gamma, ArrayView<float> beta, float eps, int rows, int width,
        ArrayView<int> steps, int rowsPerImage)
    {
        for (int row = Grid.IdxX; row < rows; row += Grid.DimX)
        {
            int t = steps[row / rowsPerImage];
            int start = row * width;
            float partial = 0f;
            for (int j = Group.IdxX; j < width; j += Group.DimX) partial += ec.Accumulate(start + j) / t;
            float mean = GroupExtensions.AllReduce<float, AddFloat>(partial) / width;
            // Consecutive group reductions: no thread may start the next before all have read this one's result.
            Group.Barrier();
            partial = 0f;
            for (int j = Group.IdxX; j < width; j += Group.DimX)
            {
                float centred = ec.InputSum[start + j] / t - mean;
                partial += centred * centred;
            }
            float variance = GroupExtensions.AllReduce<float, AddFloat>(partial) / width;
            float invStd = 1f / MathF.Sqrt(variance + eps);
            for (int j = Group.IdxX; j < width; j += Group.DimX)
            {
                float y = (ec.InputSum[start + j] / t - mean) * invStd * gamma[j] + beta[j];
                ec.Emit(start + j, t * y);
            }
            Group.Barrier();
        }
    }

    /// <summary>
    /// EC-softmax over rows (R, N keys): one group per row; the row maximum and the sum of exp(S/t − max) by group
    /// reductions, as <see cref="ReferenceMath.Softmax"/>; exp is recomputed in the last pass rather than stored.
    /// </summary>
    public static void SoftmaxEc(EcViews ec, int rows, int width, ArrayView<int> steps, int rowsPerImage)
    {
        for (int row = Grid.IdxX; row < rows; row += Grid.DimX)
        {
            int t = steps[row / rowsPerImage];
            int start = row * width;
            float max = float.NegativeInfinity;
            for (int j = Group.IdxX; j < width; j += Group.DimX) max = MathF.Max(max, ec.Accumulate(start + j) / t);
            max = GroupExtensions.AllReduce<float, MaxFloat>(max);
            Group.Barrier();
            float partial = 0f;
            for (int j = Group.IdxX; j < width; j += Group.DimX) partial += MathF.Exp(ec.InputSum[start + j] / t - max);
            float inv = 1f / GroupExtensions.AllReduce<float, AddFloat>(partial);
            for (int j = Group.IdxX; j < width; j += Group.DimX)
                ec.Emit(start + j, t * (MathF.Exp(ec.InputSum[start + j] / t - max) * inv));
            Group.Barrier();
        }
    }
}
