using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using ILGPU.Runtime.OpenCL;

namespace Ecmt.Kernels.Ilgpu;

/// <summary>
/// One ILGPU accelerator shared by every <see cref="IlgpuBackend"/> of its kind in the process: the context, the
/// accelerator, the loaded kernels and the model's layers uploaded once (weights, LayerNorm parameters, thresholds).
/// Created lazily and thread-safely on first use; never disposed (it lives as long as the process). Backend instances
/// each bring their own stream and buffers.
/// </summary>
sealed class IlgpuDevice
{
    static readonly Lazy<IlgpuDevice> CudaDevice = new(() => Open(BackendKind.Cuda));
    static readonly Lazy<IlgpuDevice> OpenCLDevice = new(() => Open(BackendKind.OpenCL));
    static readonly Lazy<IlgpuDevice> CpuDevice = new(() => Open(BackendKind.Cpu));
    static readonly Lazy<IlgpuDevice> CpuCudaShapeDevice = new(() => Open(BackendKind.CpuCudaShape));

    /// <summary>The shared device of an ILGPU kind; throws <see cref="BackendUnavailableException"/> when it cannot run here.</summary>
    public static IlgpuDevice Get(BackendKind kind) => kind switch
    {
        BackendKind.Cuda => CudaDevice.Value,
        BackendKind.OpenCL => OpenCLDevice.Value,
        BackendKind.Cpu => CpuDevice.Value,
        BackendKind.CpuCudaShape => CpuCudaShapeDevice.Value,
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "not an ILGPU accelerator kind"),
    };

    /// <summary>Whether the device of <paramref name="kind"/> can run here (opens it on first call).</summary>
    public static bool IsAvailable(BackendKind kind)
    {
        try
        {
            Get(kind);
            return true;
        }
        catch (BackendUnavailableException)
        {
            return false;
        }
        catch (BackendFaultException)
        {
            return false;
        }
    }

    /// <summary>The ILGPU context of this accelerator (one per kind, so that one kind's driver cannot disturb another's).</summary>
    public Context Context { get; }
    readonly Lock _uploadLock = new();
    readonly ConditionalWeakTable<LinearLayer, Resident> _linears = [];
    readonly ConditionalWeakTable<LayerNormLayer, Resident> _norms = [];
    readonly ConditionalWeakTable<MultiThresholdNeuron, Resident> _neurons = [];
    // Buffers of uploaded layers, held here (not by the cache entries) so that only this class frees them, on a thread
    // that has bound the accelerator; entries whose layer was collected queue their id in _released.
    readonly Dictionary<long, MemoryBuffer1D<float, Stride1D.Dense>[]> _resident = [];
    readonly ConcurrentQueue<long> _released = new();
    long _nextId;

    IlgpuDevice(BackendKind kind, Context context, Accelerator accelerator)
    {
        Kind = kind;
        Context = context;
        Accelerator = accelerator;
        Name = $"{Backends.NameOf(kind)} ({accelerator.Name})";
        // The GPU shape everywhere but on ILGPU's ordinary CPU accelerator (LaunchShape): the CUDA-shaped CPU device
        // runs exactly the launches a GPU gets.
        Shape = kind == BackendKind.Cpu ? LaunchShape.Cpu(accelerator) : LaunchShape.Gpu(accelerator);
        Kernels = new KernelSet(accelerator);
    }

    public BackendKind Kind { get; }
    public string Name { get; }
    public Accelerator Accelerator { get; }
    public KernelSet Kernels { get; }

    /// <summary>The launch configuration of every kernel on this accelerator.</summary>
    public LaunchShape Shape { get; }
    /// <summary>Threads per group of the one-dimensional kernels.</summary>
    public int GroupSize => Shape.GroupSize;
    /// <summary>S: the tiled products run S×S threads per group on tiles of 4S × 4S outputs.</summary>
    public int TileSide => Shape.TileSide;

    /// <summary>Launch shape for <paramref name="items"/> work items of one group each.</summary>
    public KernelConfig Groups(long items, int groupSize) => Shape.Groups(items, groupSize);

    /// <summary>Launch shape for <paramref name="elements"/> independent elements, one thread each.</summary>
    public KernelConfig Elements(long elements) => Shape.Elements(elements);

    static IlgpuDevice Open(BackendKind kind) => Open(kind, kind switch
    {
        BackendKind.Cuda => OpenCuda,
        BackendKind.OpenCL => OpenOpenCL,
        // Parallel: every thread of a group is an OS thread (ILGPU's sequential mode, which hands one thread on to the
        // next at each barrier, took minutes of system time for what this does in seconds). The 2 multiprocessors run
        // 2 groups at once, so cross-group atomics race as on a GPU.
        BackendKind.CpuCudaShape => context => context.GetCPUDevice(0).CreateCPUAccelerator(context, CPUAcceleratorMode.Parallel),
        _ => context => context.GetCPUDevice(0).CreateCPUAccelerator(context, CPUAcceleratorMode.Parallel),
    });

    /// <summary>
    /// Opens a device of <paramref name="kind"/> with <paramref name="openAccelerator"/>, which finds the device and
    /// opens it: it throws <see cref="BackendUnavailableException"/> when there is none (no driver library, no device);
    /// anything else it throws, and any failure to compile the kernels, is a device that is present but broken and
    /// becomes <see cref="BackendFaultException"/> with the driver's message. Tests pass their own opener to simulate a
    /// driver that lists a device which then fails.
    /// </summary>
    internal static IlgpuDevice Open(BackendKind kind, Func<Context, Accelerator> openAccelerator)
    {
        Context? context = null;
        Accelerator? accelerator = null;
        try
        {
            context = kind switch
            {
                BackendKind.Cuda => Context.Create(b => b.Cuda().EnableAlgorithms()),
                // Every OpenCL device, not only those ILGPU deems compatible, so that a refusal can say why.
                BackendKind.OpenCL => Context.Create(b => b.OpenCL(_ => true).EnableAlgorithms()),
                BackendKind.CpuCudaShape => Context.Create(b => b.CPU(LaunchShape.CudaShapedCpuDevice).EnableAlgorithms()),
                _ => Context.Create(b => b.CPU(CPUDevice.Default).EnableAlgorithms()),
            };
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // ILGPU could not even enumerate the devices (e.g. a driver library it cannot use): nothing to run on.
            throw new BackendUnavailableException($"{Backends.NameOf(kind)}: ILGPU could not list the devices: {e.Message}", e);
        }
        try
        {
            accelerator = openAccelerator(context);
            return new IlgpuDevice(kind, context, accelerator);
        }
        catch (BackendUnavailableException)
        {
            context.Dispose();
            throw;
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            accelerator?.Dispose();
            context.Dispose();
            throw new BackendFaultException(
                $"{Backends.NameOf(kind)}: the device is present but could not be opened or could not compile the kernels: {e.GetType().Name}: {e.Message}", e);
        }
    }

    static Accelerator OpenCuda(Context context)
    {
        var devices = context.GetCudaDevices();
        if (devices.Count > 0) return devices[0].CreateAccelerator(context);
        bool driver = NativeLibrary.TryLoad("libcuda.so.1", out var handle) || NativeLibrary.TryLoad("nvcuda.dll", out handle);
        if (driver) NativeLibrary.Free(handle);
        throw new BackendUnavailableException(driver
            ? "no CUDA device: the NVIDIA driver loaded but ILGPU found no CUDA device"
            : "no CUDA device: the NVIDIA driver library (libcuda.so.1) is not installed");
    }

    static Accelerator OpenOpenCL(Context context)
    {
        var devices = context.GetCLDevices();
        if (devices.Count == 0)
            throw new BackendUnavailableException(
                "no OpenCL device: ILGPU found none (it needs libOpenCL.so and an installed ICD driver)");
        var refusals = new List<string>();
        foreach (var device in devices)
        {
            try
            {
                return device.CreateAccelerator(context);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                // ILGPU refuses devices without the features its OpenCL code needs, e.g. PoCL's CPU device:
                // "GenericAddressSpace feature is not supported".
                refusals.Add($"{device.Name}: {e.Message}");
            }
        }
        throw new BackendUnavailableException("no usable OpenCL device: " + string.Join("; ", refusals));
    }

    /// <summary>Makes the accelerator current on the calling thread (CUDA contexts are per thread); frees released layers.</summary>
    public void Bind()
    {
        Accelerator.Bind();
        while (_released.TryDequeue(out long id))
        {
            MemoryBuffer1D<float, Stride1D.Dense>[]? buffers;
            lock (_uploadLock)
            {
                if (!_resident.Remove(id, out buffers)) continue;
            }
            foreach (var buffer in buffers) buffer.Dispose();
        }
    }

    /// <summary>A layer's device copy, keyed by the host object; its finalizer hands the buffers back for freeing.</summary>
    sealed class Resident(IlgpuDevice device, long id, MemoryBuffer1D<float, Stride1D.Dense>[] buffers)
    {
        public readonly long Id = id;
        public readonly MemoryBuffer1D<float, Stride1D.Dense>[] Buffers = buffers;

        ~Resident() => device._released.Enqueue(Id);
    }

    Resident Upload<TLayer>(ConditionalWeakTable<TLayer, Resident> table, TLayer layer, Func<TLayer, float[][]> parts) where TLayer : class
    {
        if (table.TryGetValue(layer, out var resident)) return resident;
        lock (_uploadLock)
        {
            if (table.TryGetValue(layer, out resident)) return resident;
            var buffers = parts(layer).Select(p => Accelerator.Allocate1D(p)).ToArray();
            resident = new Resident(this, ++_nextId, buffers);
            _resident.Add(resident.Id, buffers);
            table.Add(layer, resident);
            return resident;
        }
    }

    /// <summary>Wt (In, Out): the weight transposed so that one input channel's weights are contiguous; bias (Out).</summary>
    public (ArrayView<float> WeightT, ArrayView<float> Bias) Linear(LinearLayer layer)
    {
        var r = Upload(_linears, layer, l => [Transpose(l.Weight, l.Out, l.In), l.Bias]);
        return (r.Buffers[0].View, r.Buffers[1].View);
    }

    /// <summary>γ (D), β (D).</summary>
    public (ArrayView<float> Gamma, ArrayView<float> Beta) LayerNorm(LayerNormLayer norm)
    {
        var r = Upload(_norms, norm, n => [n.Gamma, n.Beta]);
        return (r.Buffers[0].View, r.Buffers[1].View);
    }

    public NeuronView Neuron(MultiThresholdNeuron neuron)
    {
        var r = Upload(_neurons, neuron, n => [n.LambdaPos, n.LambdaNeg]);
        return new NeuronView(r.Buffers[0].View, r.Buffers[1].View, neuron.Levels, neuron.Inner, neuron.Groups, neuron.Rounding);
    }

    /// <summary>The cache entry id of a layer's device copy, or −1 when it has none (tests).</summary>
    internal long ResidentId(object layer) => layer switch
    {
        LinearLayer l when _linears.TryGetValue(l, out var r) => r.Id,
        LayerNormLayer n when _norms.TryGetValue(n, out var r) => r.Id,
        MultiThresholdNeuron n when _neurons.TryGetValue(n, out var r) => r.Id,
        _ => -1,
    };

    /// <summary>Whether the buffers of cache entry <paramref name="id"/> are still held (tests).</summary>
    internal bool HoldsResident(long id)
    {
        lock (_uploadLock) return _resident.ContainsKey(id);
    }

    static float[] Transpose(float[] m, int rows, int columns)
    {
        var t = new float[m.Length];
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < columns; j++)
                t[(long)j * rows + i] = m[(long)i * columns + j];
        return t;
    }
}
