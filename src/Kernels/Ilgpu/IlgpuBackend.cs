using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Runtime;

namespace Ecmt.Kernels.Ilgpu;

/// <summary>
/// Runs the spiking step as ILGPU kernels on CUDA, OpenCL or ILGPU's CPU accelerator (which runs the very same kernels
/// on CPU threads). The accelerator, its compiled kernels and the model's uploaded layers are shared by every instance
/// of a kind in the process (<see cref="IlgpuDevice"/>); each instance has its own stream and its own tensors, so
/// instances may run concurrently on different threads, each used by one thread at a time.
/// <para>
/// Work is queued on the instance's stream; nothing waits for the device except the calls that return data
/// (<see cref="ReadStep"/>, one transfer per step, and <see cref="Download"/>, <see cref="DownloadCodes"/>, <see cref="ReadCounters"/>), uploads, and <see cref="Synchronize"/>.
/// </para>
/// <para>
/// Spike-driven products choose between an event-driven and a dense kernel by the density of their input, measured by
/// the Fire that produced it (<see cref="EventDrivenMaxDensity"/>); the choice is made on the device, so no step waits
/// for a count to come back to the host.
/// </para>
/// </summary>
public sealed class IlgpuBackend : ISpikingBackend
{
    /// <summary>
    /// Default density (spikes / input elements) up to which spike-driven products take the event-driven path. An
    /// estimate for a recent NVIDIA GPU, not a measurement: the event path reads one weight (from L2) per spike and
    /// output, the tiled dense path about 1/16 of a shared-memory load per multiply-add, and runs at several times the
    /// event path's rate per operation, so events win only when fewer than about 1 in 8 inputs spiked.
    /// </summary>
    public const double DefaultEventDrivenMaxDensity = 0.125;

    readonly IlgpuDevice _device;
    readonly AcceleratorStream _stream;
    // (2): launches of the spike-driven product that ran, [event-driven, dense].
    readonly MemoryBuffer1D<long, Stride1D.Dense> _paths;
    // Scratch, grown on demand: per-column counts of the SOP kernels (zero between calls) and the event lists.
    MemoryBuffer1D<int, Stride1D.Dense>? _columns, _eventIndex, _eventCount;
    MemoryBuffer1D<float, Stride1D.Dense>? _eventValue;
    // Scratch for ReadStep: counters and logits packed for one transfer, and its host copy.
    MemoryBuffer1D<int, Stride1D.Dense>? _readout;
    int[] _readoutHost = [];
    bool _disposed;

    /// <summary>
    /// Opens the shared accelerator of <paramref name="kind"/> (<see cref="BackendKind.Cuda"/>,
    /// <see cref="BackendKind.OpenCL"/> or <see cref="BackendKind.Cpu"/>); throws <see cref="BackendUnavailableException"/>
    /// when it cannot run here. <paramref name="eventDrivenMaxDensity"/>: 0 or less forces the dense path, 1 the
    /// event-driven path (tests).
    /// </summary>
    public IlgpuBackend(BackendKind kind, double eventDrivenMaxDensity = DefaultEventDrivenMaxDensity)
    {
        _device = IlgpuDevice.Get(kind);
        EventDrivenMaxDensity = eventDrivenMaxDensity;
        _device.Bind();
        _stream = _device.Accelerator.CreateStream();
        _paths = _device.Accelerator.Allocate1D<long>(2);
        _paths.View.MemSetToZero(_stream);
    }

    /// <summary>Whether the accelerator of <paramref name="kind"/> can run here.</summary>
    public static bool IsAvailable(BackendKind kind) => IlgpuDevice.IsAvailable(kind);

    public string Name => _device.Name;
    public double EventDrivenMaxDensity { get; }
    internal IlgpuDevice Device => _device;

    /// <summary>Transfers from the device to the host since this instance was made (a step makes one: <see cref="ReadStep"/>).</summary>
    public long HostReads { get; private set; }

    /// <summary>How many spike-driven products ran event-driven and dense since this instance was made (waits for the stream).</summary>
    public (long EventDriven, long Dense) SpikeLinearPaths()
    {
        Bind();
        var paths = new long[2];
        _paths.View.CopyToCPU(_stream, paths);
        return (paths[0], paths[1]);
    }

    // A view (Prefix) addresses the first images of its owner's buffer and frees nothing.
    sealed class Tensor : DeviceTensor
    {
        public readonly IlgpuBackend Owner;
        readonly MemoryBuffer1D<float, Stride1D.Dense> _buffer;
        readonly bool _isView;

        public Tensor(IlgpuBackend owner, int[] shape, Tensor? of = null) : base(shape)
        {
            Owner = owner;
            _isView = of is not null;
            _buffer = of?._buffer ?? owner._device.Accelerator.Allocate1D<float>(CheckedLength(Length));
            if (!_isView) _buffer.View.MemSetToZero(owner._stream);
        }

        /// <summary>This tensor's elements (the whole buffer, or a view's first Length).</summary>
        public ArrayView<float> View => _buffer.View.SubView(0, Length);

        public override void Dispose()
        {
            if (!_isView) _buffer.Dispose();
        }
    }

    sealed class Spikes : SpikeTensor
    {
        public readonly IlgpuBackend Owner;
        readonly MemoryBuffer1D<sbyte, Stride1D.Dense> _codes;
        // (1): spikes in Codes, written by the Fire (or upload) that set them.
        public readonly MemoryBuffer1D<int, Stride1D.Dense> Active;
        readonly bool _isView;

        public Spikes(IlgpuBackend owner, MultiThresholdNeuron neuron, int[] shape, Spikes? of = null) : base(shape, neuron)
        {
            Owner = owner;
            _isView = of is not null;
            _codes = of?._codes ?? owner._device.Accelerator.Allocate1D<sbyte>(CheckedLength(Length));
            Active = of?.Active ?? owner._device.Accelerator.Allocate1D<int>(1);
            if (_isView) return;
            _codes.View.MemSetToZero(owner._stream);
            Active.View.MemSetToZero(owner._stream);
        }

        public ArrayView<sbyte> Codes => _codes.View.SubView(0, Length);

        public override void Dispose()
        {
            if (_isView) return;
            _codes.Dispose();
            Active.Dispose();
        }
    }

    sealed class Steps : ImageSteps
    {
        public readonly IlgpuBackend Owner;
        // (B): t per image, resident on the device; uploaded once per step.
        public readonly MemoryBuffer1D<int, Stride1D.Dense> Buffer;

        public Steps(IlgpuBackend owner, int images) : base(images)
        {
            Owner = owner;
            Buffer = owner._device.Accelerator.Allocate1D<int>(images);
            Buffer.View.MemSetToZero(owner._stream);
        }

        public override void Dispose() => Buffer.Dispose();
    }

    sealed class Counters : StepCounters
    {
        public readonly IlgpuBackend Owner;
        // (B, 2): [spikes, SOPs] per image, so that the first images of a larger buffer serve a smaller batch.
        public readonly MemoryBuffer1D<long, Stride1D.Dense> Buffer;

        public Counters(IlgpuBackend owner, int images) : base(images)
        {
            Owner = owner;
            Buffer = owner._device.Accelerator.Allocate1D<long>(2L * images);
            Buffer.View.MemSetToZero(owner._stream);
        }

        public override void Dispose() => Buffer.Dispose();
    }

    static int CheckedLength(long length) => length is > 0 and <= int.MaxValue
        ? (int)length
        : throw new ArgumentOutOfRangeException(nameof(length), length, "ILGPU tensors hold 1 … 2³¹ − 1 elements");

    void Bind()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        _device.Bind();
    }

    Tensor Own(DeviceTensor t) => t is Tensor own && own.Owner == this
        ? own
        : throw new ArgumentException($"{t} does not belong to this {Name} backend");

    Spikes Own(SpikeTensor s) => s is Spikes own && own.Owner == this
        ? own
        : throw new ArgumentException($"spike tensor [{string.Join(", ", s.Shape)}] does not belong to this {Name} backend");

    Steps Own(ImageSteps steps, int images)
    {
        var own = steps is Steps s && s.Owner == this ? s : throw new ArgumentException($"steps do not belong to this {Name} backend");
        if (own.Images < images) throw new ArgumentException($"{own.Images} steps given for {images} images");
        return own;
    }

    Counters Own(StepCounters c) => c is Counters own && own.Owner == this
        ? own
        : throw new ArgumentException($"counters do not belong to this {Name} backend");

    static void SameLength(long expected, long actual, string what)
    {
        if (expected != actual) throw new ArgumentException($"{what}: {actual} elements, expected {expected}");
    }

    NeuronView Neuron(Spikes s) => _device.Neuron(s.Neuron);

    public DeviceTensor Allocate(params int[] shape)
    {
        Bind();
        return new Tensor(this, shape);
    }

    public SpikeTensor AllocateSpikes(MultiThresholdNeuron neuron, params int[] shape)
    {
        if (neuron.Lossless) throw new NotSupportedException("lossless neurons (a diagnostic) run on the reference backend only");
        Bind();
        return new Spikes(this, neuron, shape);
    }

    public StepCounters AllocateCounters(int images)
    {
        Bind();
        return new Counters(this, images);
    }

    public ImageSteps AllocateSteps(int images)
    {
        Bind();
        return new Steps(this, images);
    }

    public void UploadSteps(ReadOnlySpan<int> steps, ImageSteps destination)
    {
        Bind();
        var s = Own(destination, steps.Length);
        foreach (var t in steps) ArgumentOutOfRangeException.ThrowIfLessThan(t, 1, nameof(steps));
        s.Buffer.View.SubView(0, steps.Length).CopyFromCPU(_stream, steps);
    }

    public DeviceTensor Prefix(DeviceTensor tensor, int images)
    {
        Bind();
        return new Tensor(this, Reference.ReferenceBackend.PrefixShape(tensor.Shape, images), Own(tensor));
    }

    public SpikeTensor Prefix(SpikeTensor spikes, int images)
    {
        Bind();
        return new Spikes(this, spikes.Neuron, Reference.ReferenceBackend.PrefixShape(spikes.Shape, images), Own(spikes));
    }

    public void ClearImage(DeviceTensor tensor, int image)
    {
        Bind();
        ImageView(Own(tensor), image).MemSetToZero(_stream);
    }

    public void CopyImage(DeviceTensor tensor, int from, int to)
    {
        Bind();
        var t = Own(tensor);
        ImageView(t, from).CopyTo(_stream, ImageView(t, to));
    }

    static ArrayView<float> ImageView(Tensor t, int image)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)image, (uint)t.Images, nameof(image));
        long perImage = t.Length / t.Images;
        return t.View.SubView(image * perImage, perImage);
    }

    public void Upload(ReadOnlySpan<float> source, DeviceTensor destination)
    {
        Bind();
        var t = Own(destination);
        SameLength(t.Length, source.Length, "upload");
        t.View.CopyFromCPU(_stream, source);
    }

    public void Download(DeviceTensor source, Span<float> destination)
    {
        Bind();
        var t = Own(source);
        SameLength(t.Length, destination.Length, "download");
        t.View.CopyToCPU(_stream, destination);
        HostReads++;
    }

    public void DownloadCodes(SpikeTensor source, Span<sbyte> destination)
    {
        Bind();
        var s = Own(source);
        SameLength(s.Length, destination.Length, "download of spike codes");
        s.Codes.CopyToCPU(_stream, destination);
        HostReads++;
    }

    public void UploadCodes(ReadOnlySpan<sbyte> source, SpikeTensor destination)
    {
        Bind();
        var s = Own(destination);
        SameLength(s.Length, source.Length, "upload of spike codes");
        int active = 0;
        foreach (var code in source) if (code != 0) active++;
        s.Codes.CopyFromCPU(_stream, source);
        s.Active.View.CopyFromCPU(_stream, [active]);
    }

    public void ReadCounters(StepCounters counters, Span<long> spikes, Span<long> sops)
    {
        Bind();
        var c = Own(counters);
        var totals = new long[2 * c.Images];
        c.Buffer.View.CopyToCPU(_stream, totals);
        HostReads++;
        SplitCounters(totals, c.Images, spikes, sops);
    }

    static void SplitCounters(ReadOnlySpan<long> totals, int images, Span<long> spikes, Span<long> sops)
    {
        for (int b = 0; b < images; b++)
        {
            spikes[b] = totals[2 * b];
            sops[b] = totals[2 * b + 1];
        }
    }

    public void ReadStep(DeviceTensor logits, StepCounters counters, Span<float> logitsOut, Span<long> spikes, Span<long> sops)
    {
        Bind();
        Tensor l = Own(logits);
        Counters c = Own(counters);
        SameLength(l.Length, logitsOut.Length, "download");
        int counterInts = 4 * c.Images, n = CheckedLength(counterInts + l.Length);
        if (_readout is null || _readout.Length < n)
        {
            _readout?.Dispose();
            _readout = _device.Accelerator.Allocate1D<int>(n);
            _readoutHost = new int[n];
        }
        _device.Kernels.PackReadout(_stream, _device.Elements(n), c.Buffer.View, l.View, _readout.View, counterInts, n);
        _readout.View.SubView(0, n).CopyToCPU(_stream, _readoutHost.AsSpan(0, n));
        HostReads++;
        // (low, high) int pairs read back as longs: little-endian hosts (x86-64, ARM64), as .NET runs on.
        SplitCounters(MemoryMarshal.Cast<int, long>(_readoutHost.AsSpan(0, counterInts)), c.Images, spikes, sops);
        MemoryMarshal.Cast<int, float>(_readoutHost.AsSpan(counterInts, (int)l.Length)).CopyTo(logitsOut);
    }

    public void Clear(DeviceTensor tensor)
    {
        Bind();
        Own(tensor).View.MemSetToZero(_stream);
    }

    public void Clear(StepCounters counters)
    {
        Bind();
        Own(counters).Buffer.View.MemSetToZero(_stream);
    }

    public void Copy(DeviceTensor source, DeviceTensor destination)
    {
        Bind();
        Tensor s = Own(source), d = Own(destination);
        SameLength(d.Length, s.Length, "copy");
        s.View.CopyTo(_stream, d.View);
    }

    public void Add(DeviceTensor x, DeviceTensor y)
    {
        Bind();
        Tensor a = Own(x), b = Own(y);
        SameLength(a.Length, b.Length, "add");
        _device.Kernels.Add(_stream, _device.Elements(a.Length), a.View, b.View, (int)a.Length);
    }

    public void SelectToken(DeviceTensor input, int token, DeviceTensor output)
    {
        Bind();
        Tensor i = Own(input), o = Own(output);
        // input (B, N, D) → output (B, D)
        int images = input.Shape[0], tokens = input.Shape[1], width = input.Shape[2];
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)token, (uint)tokens, nameof(token));
        SameLength((long)images * width, o.Length, "selected token");
        _device.Kernels.SelectToken(_stream, _device.Elements(o.Length), i.View, o.View, images, tokens, width, token);
    }

    public void AddBroadcast(DeviceTensor x, DeviceTensor y)
    {
        Bind();
        Tensor a = Own(x), b = Own(y);
        // x (B, …) += y (1, …)
        SameLength(a.Length, x.Images * b.Length, "broadcast add");
        _device.Kernels.AddBroadcast(_stream, _device.Elements(a.Length), a.View, b.View, (int)a.Length, (int)b.Length);
    }

    public void MeanTokens(DeviceTensor input, int first, DeviceTensor output)
    {
        Bind();
        Tensor i = Own(input), o = Own(output);
        // input (B, N, D) → output (B, D)
        int images = input.Shape[0], tokens = input.Shape[1], width = input.Shape[2];
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)first, (uint)tokens, nameof(first));
        SameLength((long)images * width, o.Length, "mean of tokens");
        _device.Kernels.MeanTokens(_stream, _device.Elements(o.Length), i.View, o.View, images, tokens, width, first);
    }

    public void Fire(DeviceTensor input, DeviceTensor membrane, SpikeTensor spikes, StepCounters counters, int fanOut)
    {
        Bind();
        Tensor x = Own(input), v = Own(membrane);
        Spikes s = Own(spikes);
        Counters c = Own(counters);
        SameLength(x.Length, v.Length, "membrane");
        SameLength(x.Length, s.Length, "spikes");
        if (c.Images < x.Images) throw new ArgumentException($"counters for {c.Images} images, given {x.Images}");
        int images = x.Images, perImage = (int)(x.Length / images);
        long chunksPerImage = (perImage + (long)_device.GroupSize * StepKernels.FireElementsPerThread - 1) / (_device.GroupSize * StepKernels.FireElementsPerThread);
        s.Active.View.MemSetToZero(_stream);
        _device.Kernels.Fire(_stream, _device.Groups(images * chunksPerImage, _device.GroupSize),
            x.View, v.View, new SpikeOutput(s.Codes, s.Active.View, Neuron(s)), c.Buffer.View, images, perImage, fanOut);
    }

    /// <summary>
    /// Both spike-linear kernels are queued; each reads the input's spike count on the device and only the one its
    /// density selects does any work (the other's groups return at once). Density = spikes / (rows · In), compared
    /// with <see cref="EventDrivenMaxDensity"/> as a spike-count limit.
    /// </summary>
    public void SpikeLinear(SpikeTensor input, LinearLayer layer, DeviceTensor output)
    {
        Bind();
        Spikes s = Own(input);
        Tensor o = Own(output);
        SameLength(layer.In, s.Columns, "spike-linear input features");
        SameLength(s.Rows * layer.Out, o.Length, "spike-linear output");
        var (weightT, bias) = _device.Linear(layer);
        int rows = (int)s.Rows;
        int maxEventActive = EventDrivenMaxDensity <= 0 ? -1 : (int)Math.Min(int.MaxValue, Math.Floor(EventDrivenMaxDensity * rows * layer.In));
        var args = new SpikeLinearArgs(s.Codes, Neuron(s), weightT, bias, o.View, s.Active.View, _paths.View, rows, layer.In, layer.Out, maxEventActive);
        var events = Events((long)rows * layer.In, rows);
        int width = _device.GroupSize * ProductKernels.EventOutputsPerThread;
        _device.Kernels.CompactEvents(_stream, _device.Groups(rows, _device.GroupSize), args, events);
        _device.Kernels.AccumulateEvents(_stream, _device.Groups((long)rows * ((layer.Out + width - 1) / width), _device.GroupSize), args, events);
        var dense = new DenseSpikeLinear(args);
        _device.Kernels.DenseSpikeLinear(_stream, TileLaunch(1, rows, layer.Out), dense, _device.TileSide);
    }

    public void Linear(DeviceTensor input, LinearLayer layer, DeviceTensor output)
    {
        Bind();
        Tensor i = Own(input), o = Own(output);
        SameLength(layer.In, i.Columns, "linear input features");
        SameLength(i.Rows * layer.Out, o.Length, "linear output");
        var (weightT, bias) = _device.Linear(layer);
        int rows = (int)i.Rows;
        _device.Kernels.FloatLinear(_stream, TileLaunch(1, rows, layer.Out),
            new FloatLinear(i.View, weightT, bias, o.View, rows, layer.In, layer.Out), _device.TileSide);
    }

    /// <summary>Launch shape of a tiled product: one group of S×S threads per (block, 4S × 4S output tile).</summary>
    KernelConfig TileLaunch(long blocks, int rows, int columns) => _device.Shape.Tiles(blocks, rows, columns);

    EcViews Ec(Tensor input, EcState state, Tensor output)
    {
        Tensor sum = Own(state.InputSum), cumulative = Own(state.OutputSum);
        SameLength(input.Length, sum.Length, "EC input sum");
        SameLength(input.Length, cumulative.Length, "EC cumulative output");
        SameLength(input.Length, output.Length, "EC output");
        return new EcViews(input.View, sum.View, cumulative.View, output.View);
    }

    /// <summary>Threads per group for a row-wise kernel over rows of <paramref name="width"/>: enough to cover a row, at most the device's group.</summary>
    int RowGroupSize(int width) => _device.Shape.RowGroupSize(width);

    // The steps stay on the device (uploaded once per step by the session); kernels read t of the row's image.
    public void LayerNormEc(DeviceTensor input, EcState state, LayerNormLayer norm, ImageSteps steps, DeviceTensor output)
    {
        Bind();
        Tensor x = Own(input);
        var ec = Ec(x, state, Own(output));
        SameLength(norm.Dim, x.Columns, "LayerNorm channels");
        var t = Own(steps, x.Images);
        var (gamma, beta) = _device.LayerNorm(norm);
        int rows = (int)x.Rows, width = x.Columns;
        _device.Kernels.LayerNormEc(_stream, _device.Groups(rows, RowGroupSize(width)), ec, gamma, beta, norm.Eps, rows, width,
            t.Buffer.View, rows / x.Images);
    }

    public void GeluEc(DeviceTensor input, EcState state, ImageSteps steps, DeviceTensor output)
    {
        Bind();
        Tensor x = Own(input);
        var ec = Ec(x, state, Own(output));
        var t = Own(steps, x.Images);
        _device.Kernels.GeluEc(_stream, _device.Elements(x.Length), ec, t.Buffer.View, (int)(x.Length / x.Images), (int)x.Length);
    }

    public void SoftmaxEc(DeviceTensor input, EcState state, ImageSteps steps, DeviceTensor output)
    {
        Bind();
        Tensor x = Own(input);
        var ec = Ec(x, state, Own(output));
        var t = Own(steps, x.Images);
        int rows = (int)x.Rows, width = x.Columns;
        _device.Kernels.SoftmaxEc(_stream, _device.Groups(rows, RowGroupSize(width)), ec, rows, width, t.Buffer.View, rows / x.Images);
    }

    public void AttentionScoresEc(SpikeTensor qkv, DeviceTensor qkvSums, DeviceTensor products, int heads, float scale, ImageSteps steps,
        DeviceTensor scores, StepCounters counters)
    {
        Bind();
        Spikes s = Own(qkv);
        Tensor sums = Own(qkvSums), p = Own(products), o = Own(scores);
        Counters c = Own(counters);
        int images = s.Images, tokens = s.Shape[1], dim = s.Columns / 3;
        CheckAttention(s, sums, heads, c);
        var t = Own(steps, images);
        SameLength((long)images * heads * tokens * tokens, p.Length, "score products");
        SameLength(p.Length, o.Length, "scores");
        var product = new ScoresProduct(s.Codes, Neuron(s), sums.View, p.View, o.View, images, heads, tokens, dim, scale, t.Buffer.View);
        _device.Kernels.Scores(_stream, TileLaunch((long)images * heads, tokens, tokens), product, _device.TileSide);
        // SOPs of the three products from the sums before this step, then S_Q += Q, S_K += K (SopKernels).
        var columns = Scratch((long)images * dim * 4);
        long channelChunks = (dim + _device.GroupSize - 1) / _device.GroupSize;
        _device.Kernels.ScoreColumns(_stream, _device.Groups(images * TokenChunks(tokens) * channelChunks, _device.GroupSize), product, columns);
        _device.Kernels.ScoreOperations(_stream, _device.Groups(images * channelChunks, _device.GroupSize), product, columns, c.Buffer.View);
    }

    public void AttentionValuesEc(SpikeTensor probs, DeviceTensor probSums, SpikeTensor qkv, DeviceTensor qkvSums, DeviceTensor products,
        int heads, ImageSteps steps, DeviceTensor output, StepCounters counters)
    {
        Bind();
        Spikes a = Own(probs), s = Own(qkv);
        Tensor aSums = Own(probSums), sums = Own(qkvSums), p = Own(products), o = Own(output);
        Counters c = Own(counters);
        int images = s.Images, tokens = s.Shape[1], dim = s.Columns / 3;
        CheckAttention(s, sums, heads, c);
        var t = Own(steps, images);
        SameLength((long)images * heads * tokens * tokens, a.Length, "probabilities");
        SameLength(a.Length, aSums.Length, "probability sums");
        SameLength((long)images * tokens * dim, p.Length, "value products");
        SameLength(p.Length, o.Length, "attention output");
        var product = new ValuesProduct(a.Codes, Neuron(a), aSums.View, s.Codes, Neuron(s), sums.View, p.View, o.View,
            images, heads, tokens, dim, t.Buffer.View);
        _device.Kernels.Values(_stream, TileLaunch((long)images * heads, tokens, dim / heads), product, _device.TileSide);
        // SOPs of the three products from the sums before this step, then S_A += A, S_V += V (SopKernels).
        var columns = Scratch((long)images * heads * tokens * 4);
        long keyChunks = (tokens + _device.GroupSize - 1) / _device.GroupSize;
        _device.Kernels.ProbColumns(_stream, _device.Groups((long)images * heads * TokenChunks(tokens) * keyChunks, _device.GroupSize), product, columns);
        _device.Kernels.ValueRows(_stream, _device.Groups((long)images * tokens, _device.GroupSize), product, columns);
        _device.Kernels.ValueOperations(_stream, _device.Groups((long)images * heads * keyChunks, _device.GroupSize), product, columns, c.Buffer.View);
    }

    /// <summary>Scratch for the event lists of the event-driven spike-linear path; grown on demand.</summary>
    EventLists Events(long entries, int rows)
    {
        if (_eventIndex is null || _eventIndex.Length < entries)
        {
            _eventIndex?.Dispose();
            _eventValue?.Dispose();
            _eventIndex = _device.Accelerator.Allocate1D<int>(CheckedLength(entries));
            _eventValue = _device.Accelerator.Allocate1D<float>(CheckedLength(entries));
            // Only entries below each row's count are read; zeroed anyway so that no launch ever sees garbage.
            _eventIndex.View.MemSetToZero(_stream);
            _eventValue.View.MemSetToZero(_stream);
        }
        if (_eventCount is null || _eventCount.Length < rows)
        {
            _eventCount?.Dispose();
            _eventCount = _device.Accelerator.Allocate1D<int>(rows);
        }
        return new EventLists(_eventIndex.View, _eventValue!.View, _eventCount.View);
    }

    static long TokenChunks(int tokens) => (tokens + SopKernels.TokensPerItem - 1) / SopKernels.TokensPerItem;

    /// <summary>
    /// The SOP kernels' scratch of per-column counts, at least <paramref name="length"/> ints, all zero between calls
    /// (the kernels zero what they used); grown on demand, reused by every attention call of this instance.
    /// </summary>
    ArrayView<int> Scratch(long length)
    {
        if (_columns is null || _columns.Length < length)
        {
            _columns?.Dispose();
            _columns = _device.Accelerator.Allocate1D<int>(CheckedLength(length));
            _columns.View.MemSetToZero(_stream);
        }
        return _columns.View;
    }

    static void CheckAttention(Spikes qkv, Tensor sums, int heads, Counters counters)
    {
        if (qkv.Shape.Length != 3 || qkv.Columns % 3 != 0) throw new ArgumentException("qkv must be (B, N, 3D)");
        ArgumentOutOfRangeException.ThrowIfLessThan(heads, 1);
        if (qkv.Columns / 3 % heads != 0) throw new ArgumentException($"D = {qkv.Columns / 3} is not divisible by {heads} heads");
        ArgumentOutOfRangeException.ThrowIfGreaterThan(heads, SopKernels.MaxHeads);
        SameLength(qkv.Length, sums.Length, "qkv sums");
        if (counters.Images < qkv.Images) throw new ArgumentException($"counters for {counters.Images} images, given {qkv.Images}");
    }

    public void Synchronize()
    {
        Bind();
        _stream.Synchronize();
    }

    public void Dispose()
    {
        if (_disposed) return;
        _device.Bind();
        _stream.Synchronize();
        _paths.Dispose();
        foreach (var scratch in new MemoryBuffer?[] { _columns, _eventIndex, _eventValue, _eventCount, _readout }) scratch?.Dispose();
        _stream.Dispose();
        _disposed = true;
    }
}
