using System.Runtime.CompilerServices;
using Ecmt.Kernels.Checks;
using Ecmt.Kernels.Ilgpu;
using Ecmt.Kernels.Reference;
using ILGPU;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.OpenCL;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using ILGPU.Runtime.OpenCL;

namespace Ecmt.Kernels.Tests;

/// <summary>ILGPU's CPU accelerator: runs every kernel of the CUDA backend on CPU threads; always available.</summary>
public sealed class IlgpuCpuConformance : BackendConformance
{
    protected override ISpikingBackend CreateBackend() => Backends.Create(BackendKind.Cpu);
}

/// <summary>
/// ILGPU's CPU accelerator with CUDA's launch shape (groups of 256, 64 × 64 tiles, up to 32 groups, 2 running at once)
/// on tensors that need several groups: every path of a GPU launch but the driver.
/// </summary>
public sealed class IlgpuCpuCudaShapeConformance : BackendConformance
{
    protected override ISpikingBackend CreateBackend() => Backends.Create(BackendKind.CpuCudaShape);
    protected override CheckSizes Sizes => CheckSizes.Large;
}

/// <summary>The same kernels on an NVIDIA GPU, at both sizes; skips where there is none, fails where it is broken.</summary>
public sealed class IlgpuCudaConformance : BackendConformance
{
    protected override ISpikingBackend CreateBackend() => Backends.Create(BackendKind.Cuda);
}

public sealed class IlgpuCudaLargeConformance : BackendConformance
{
    protected override ISpikingBackend CreateBackend() => Backends.Create(BackendKind.Cuda);
    protected override CheckSizes Sizes => CheckSizes.Large;
}

/// <summary>The same kernels on an OpenCL device ILGPU accepts; skips where there is none.</summary>
public sealed class IlgpuOpenCLConformance : BackendConformance
{
    protected override ISpikingBackend CreateBackend() => Backends.Create(BackendKind.OpenCL);
}

/// <summary>
/// What the conformance suite does not reach on the ILGPU backend: both spike-linear paths forced and held to the
/// reference on shapes that span several tiles, slices and column blocks; the density choice; attention products over
/// several tiles; concurrent instances sharing one accelerator and one upload of the model; the device-absent errors;
/// and code generation for CUDA (PTX) and OpenCL, which needs no device.
/// </summary>
public sealed class IlgpuBackendTests
{
    // Shapes larger than one CPU-accelerator tile (16), one k-slice (16), one event slice (4·16 channels) and one
    // event column block (64 outputs), so every loop of the product kernels takes more than one turn.
    const int Images = 2, Tokens = 19, InFeatures = 72, OutFeatures = 70;

    static readonly LinearLayer Layer = new(TestData.Normal(OutFeatures * InFeatures, 11, 0.3f), TestData.Normal(OutFeatures, 12), InFeatures, OutFeatures);

    static float[] Run(ISpikingBackend backend, MultiThresholdNeuron neuron, sbyte[] codes, LinearLayer layer, int rows)
    {
        using var spikes = backend.AllocateSpikes(neuron, Images, rows / Images, layer.In);
        using var output = backend.Allocate(Images, rows / Images, layer.Out);
        backend.UploadCodes(codes, spikes);
        backend.SpikeLinear(spikes, layer, output);
        var result = new float[output.Length];
        backend.Download(output, result);
        return result;
    }

    [Theory]
    [InlineData(1.0, "event-driven")]
    [InlineData(-1.0, "dense")]
    public void Forced_spike_linear_path_matches_the_reference(double eventDrivenMaxDensity, string path)
    {
        using var reference = new ReferenceBackend();
        using var backend = new IlgpuBackend(BackendKind.Cpu, eventDrivenMaxDensity);
        var neuron = TestData.Neuron(6, InFeatures, 1, seed: 3);
        int rows = Images * Tokens;
        var densities = new[] { 0.0, 0.03, 0.3, 1.0 };
        foreach (var density in densities)
        {
            var codes = TestData.Codes(rows * InFeatures, 6, seed: 40 + (int)(density * 100), density);
            TestData.AssertClose(Run(reference, neuron, codes, Layer, rows), Run(backend, neuron, codes, Layer, rows),
                $"{path} spike linear at density {density}");
        }
        var (eventDriven, dense) = backend.SpikeLinearPaths();
        Assert.Equal(path == "event-driven" ? (densities.Length, 0L) : (0L, densities.Length), (eventDriven, dense));
    }

    [Fact]
    public void Spike_linear_takes_the_event_driven_path_only_for_sparse_input()
    {
        using var backend = new IlgpuBackend(BackendKind.Cpu);
        var neuron = TestData.Neuron(4, 1, 1, seed: 4);
        int rows = Images * Tokens;
        // Below and above the default density limit of 1/8.
        Run(backend, neuron, TestData.Codes(rows * InFeatures, 4, seed: 1, density: 0.02), Layer, rows);
        Assert.Equal((1L, 0L), backend.SpikeLinearPaths());
        Run(backend, neuron, TestData.Codes(rows * InFeatures, 4, seed: 2, density: 0.6), Layer, rows);
        Assert.Equal((1L, 1L), backend.SpikeLinearPaths());
    }

    [Fact]
    public void Spike_linear_reads_the_density_the_fire_measured()
    {
        using var backend = new IlgpuBackend(BackendKind.Cpu);
        var neuron = MultiThresholdNeuron.PerTensor(4, 1f, 1f);
        int[] shape = [Images, Tokens, InFeatures];
        using var input = backend.Allocate(shape);
        using var membrane = backend.Allocate(shape);
        using var spikes = backend.AllocateSpikes(neuron, shape);
        using var counters = backend.AllocateCounters(Images);
        using var output = backend.Allocate(Images, Tokens, OutFeatures);
        // Inputs of ±2 fire everywhere; inputs of 0.1 stay under the first threshold (0.5) and fire nowhere.
        foreach (var (value, expected) in new[] { (2f, (0L, 1L)), (0.1f, (1L, 1L)) })
        {
            backend.Upload(Enumerable.Repeat(value, Images * Tokens * InFeatures).ToArray(), input);
            backend.Clear(membrane);
            backend.Fire(input, membrane, spikes, counters, fanOut: OutFeatures);
            backend.SpikeLinear(spikes, Layer, output);
            Assert.Equal(expected, backend.SpikeLinearPaths());
        }
    }

    [Fact]
    public void Linear_over_several_tiles_matches_the_reference()
    {
        using var reference = new ReferenceBackend();
        using var backend = new IlgpuBackend(BackendKind.Cpu);
        var input = TestData.Normal(Images * Tokens * InFeatures, 5);
        float[] Head(ISpikingBackend b)
        {
            using var x = b.Allocate(Images * Tokens, InFeatures);
            using var y = b.Allocate(Images * Tokens, OutFeatures);
            b.Upload(input, x);
            b.Linear(x, Layer, y);
            var result = new float[y.Length];
            b.Download(y, result);
            return result;
        }
        TestData.AssertClose(Head(reference), Head(backend), "linear");
    }

    /// <summary>Scores and A·V over several tiles and k-slices (N = 19 tokens, Dh = 20) for three steps, with SOP counts.</summary>
    [Fact]
    public void Attention_products_over_several_tiles_match_the_reference()
    {
        const int n = Tokens, d = 40, heads = 2, steps = 3;
        var qkvNeuron = TestData.Neuron(4, 3 * d, 1, seed: 6);
        var probNeuron = TestData.Neuron(4, heads, n * n, seed: 7);
        float[][] Run(ISpikingBackend b)
        {
            using var qkv = b.AllocateSpikes(qkvNeuron, Images, n, 3 * d);
            using var probs = b.AllocateSpikes(probNeuron, Images, heads, n, n);
            using var qkvSums = b.Allocate(Images, n, 3 * d);
            using var probSums = b.Allocate(Images, heads, n, n);
            using var scoreProducts = b.Allocate(Images, heads, n, n);
            using var valueProducts = b.Allocate(Images, n, d);
            using var scores = b.Allocate(Images, heads, n, n);
            using var output = b.Allocate(Images, n, d);
            using var counters = b.AllocateCounters(Images);
            var results = new List<float[]>();
            for (int t = 1; t <= steps; t++)
            {
                b.UploadCodes(TestData.Codes(Images * n * 3 * d, 4, seed: 60 + t, density: 0.25), qkv);
                b.UploadCodes(TestData.Codes(Images * heads * n * n, 4, seed: 70 + t, density: 0.2), probs);
                using var at = TestData.Uniform(b, Images, t);
                b.AttentionScoresEc(qkv, qkvSums, scoreProducts, heads, 0.3f, at, scores, counters);
                b.AttentionValuesEc(probs, probSums, qkv, qkvSums, valueProducts, heads, at, output, counters);
                foreach (var tensor in new[] { scores, output, qkvSums, probSums })
                {
                    var values = new float[tensor.Length];
                    b.Download(tensor, values);
                    results.Add(values);
                }
                long[] spikes = new long[Images], sops = new long[Images];
                b.ReadCounters(counters, spikes, sops);
                results.Add(sops.Select(s => (float)s).ToArray());
            }
            return [.. results];
        }
        using var reference = new ReferenceBackend();
        using var backend = new IlgpuBackend(BackendKind.Cpu);
        float[][] expected = Run(reference), actual = Run(backend);
        for (int i = 0; i < expected.Length; i++)
        {
            bool isSops = i % 5 == 4;
            Assert.True(!isSops || expected[i].All(s => s > 0), "the SOP counts should be non-trivial");
            TestData.AssertClose(expected[i], actual[i], $"result {i % 5} at step {i / 5 + 1}", rtol: isSops ? 0f : 1e-4f, atol: isSops ? 0f : 1e-4f);
        }
    }

    /// <summary>Backends.Create called on several threads: instances share the accelerator and the uploaded layers, and run concurrently.</summary>
    [Fact]
    public void Concurrent_instances_share_the_model_and_agree_with_the_reference()
    {
        var neuron = TestData.Neuron(5, 1, 1, seed: 8);
        var norm = new LayerNormLayer(TestData.Normal(InFeatures, 1, 0.2f, 1f), TestData.Normal(InFeatures, 2, 0.1f), 1e-6f);
        int[] shape = [Images, Tokens, InFeatures];
        float[] Steps(ISpikingBackend b, int seed)
        {
            using var x = b.Allocate(shape);
            using var h = b.Allocate(shape);
            using var sum = b.Allocate(shape);
            using var cumulative = b.Allocate(shape);
            using var membrane = b.Allocate(shape);
            using var spikes = b.AllocateSpikes(neuron, shape);
            using var counters = b.AllocateCounters(Images);
            using var output = b.Allocate(Images, Tokens, OutFeatures);
            var state = new EcState(sum, cumulative);
            for (int t = 1; t <= 3; t++)
            {
                b.Upload(TestData.Normal((int)x.Length, seed + t), x);
                using var at = TestData.Uniform(b, Images, t);
                b.LayerNormEc(x, state, norm, at, h);
                b.Fire(h, membrane, spikes, counters, fanOut: OutFeatures);
                b.SpikeLinear(spikes, Layer, output);
            }
            var result = new float[output.Length];
            b.Download(output, result);
            return result;
        }
        using var reference = new ReferenceBackend();
        var expected = Enumerable.Range(0, 3).Select(i => Steps(reference, 100 * i)).ToArray();
        var backends = Enumerable.Range(0, 3).Select(_ => Backends.Create(BackendKind.Cpu)).ToArray();
        try
        {
            var actual = new float[3][];
            Parallel.For(0, 3, new ParallelOptions { MaxDegreeOfParallelism = 3 }, i => actual[i] = Steps(backends[i], 100 * i));
            for (int i = 0; i < 3; i++) TestData.AssertClose(expected[i], actual[i], $"instance {i}", atol: 1e-4f);
            var device = ((IlgpuBackend)backends[0]).Device;
            Assert.All(backends, b => Assert.Same(device, ((IlgpuBackend)b).Device));
            Assert.NotEqual(-1, device.ResidentId(Layer));
        }
        finally
        {
            foreach (var b in backends) b.Dispose();
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    static long UseThrowawayLayer(IlgpuBackend backend)
    {
        var layer = new LinearLayer(TestData.Normal(8 * 4, 1), new float[8], 4, 8);
        using var spikes = backend.AllocateSpikes(MultiThresholdNeuron.PerTensor(2, 1f, 1f), 1, 4);
        using var output = backend.Allocate(1, 8);
        backend.SpikeLinear(spikes, layer, output);
        backend.Synchronize();
        return backend.Device.ResidentId(layer);
    }

    [Fact]
    public void A_collected_layer_frees_its_device_copy()
    {
        using var backend = new IlgpuBackend(BackendKind.Cpu);
        long id = UseThrowawayLayer(backend);
        Assert.True(backend.Device.HoldsResident(id));
        for (int i = 0; i < 5 && backend.Device.HoldsResident(id); i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            backend.Synchronize();
        }
        Assert.False(backend.Device.HoldsResident(id), "the weights of a collected layer are still on the device");
    }

    /// <summary>The CUDA-shaped CPU device launches exactly as a GPU does, and the large checks need several groups there.</summary>
    [Fact]
    public void The_CUDA_shaped_CPU_device_has_the_GPU_launch_shape()
    {
        using var backend = new IlgpuBackend(BackendKind.CpuCudaShape);
        var shape = backend.Device.Shape;
        Assert.Equal(new LaunchShape(256, 16, 32, 32), shape);
        var large = CheckSizes.Large;
        var (images, tokens, dim, heads) = large.Attention;
        Assert.True(shape.Tiles((long)images * heads, tokens, tokens).GridDim.X > 1, "scores fit one group");
        Assert.True(shape.Tiles(1, large.Linear.Rows, large.Linear.Out).GridDim.X > 1, "linear fits one group");
        Assert.True(large.Fire[1] * large.Fire[2] > shape.GroupSize * StepKernels.FireElementsPerThread, "fire fits one group per image");
        Assert.True(shape.Elements(large.Elementwise.Aggregate(1, (a, b) => a * b)).GridDim.X == shape.MaxGroups, "no grid-stride turns");
        Assert.True(large.Linear.In > ProductKernels.ChunkK, "linear fits one k-slice");
        Assert.True(large.RowWise[^1] > shape.GroupSize, "LayerNorm rows fit one group");
        using var cpu = new IlgpuBackend(BackendKind.Cpu);
        Assert.Equal(16, cpu.Device.Shape.GroupSize);
    }

    [Fact]
    public void Absent_accelerators_raise_a_clear_BackendUnavailableException()
    {
        if (!IlgpuBackend.IsAvailable(BackendKind.Cuda))
        {
            var e = Assert.Throws<BackendUnavailableException>(() => Backends.Create(BackendKind.Cuda));
            Assert.StartsWith("no CUDA device", e.Message);
            // auto falls back to the fast CPU path, never to an ILGPU accelerator.
            try
            {
                using var auto = Backends.Create(BackendKind.Auto);
                Assert.IsNotType<IlgpuBackend>(auto);
            }
            catch (BackendUnavailableException fallback)
            {
                Assert.Contains("fastcpu", fallback.Message);
            }
        }
        else
        {
            using var auto = Backends.Create(BackendKind.Auto);
            Assert.StartsWith("cuda", auto.Name);
        }
        if (!IlgpuBackend.IsAvailable(BackendKind.OpenCL))
        {
            var e = Assert.Throws<BackendUnavailableException>(() => Backends.Create(BackendKind.OpenCL));
            Assert.Contains("OpenCL", e.Message);
        }
        Assert.True(IlgpuBackend.IsAvailable(BackendKind.Cpu));
    }

    /// <summary>
    /// "No device" and "present but broken" are told apart: an opener that finds nothing raises
    /// <see cref="BackendUnavailableException"/> (tests skip), one that finds a device which then fails to open raises
    /// <see cref="BackendFaultException"/> with the driver's message (tests fail); kernels that fail to compile at open
    /// take the same path. Simulated on the CPU accelerator's context, since no driver is needed to fail.
    /// </summary>
    [Fact]
    public void A_present_but_broken_device_is_a_fault_not_an_absence()
    {
        var absent = Assert.Throws<BackendUnavailableException>(() =>
            IlgpuDevice.Open(BackendKind.Cpu, _ => throw new BackendUnavailableException("no CUDA device: the NVIDIA driver library (libcuda.so.1) is not installed")));
        Assert.Contains("libcuda.so.1", absent.Message);

        var broken = Assert.Throws<BackendFaultException>(() =>
            IlgpuDevice.Open(BackendKind.Cpu, _ => throw new InvalidOperationException("CUDA_ERROR_NO_DEVICE: simulated driver failure at open")));
        Assert.Contains("CUDA_ERROR_NO_DEVICE: simulated driver failure at open", broken.Message);
        Assert.IsNotType<BackendUnavailableException>(broken);
    }

    /// <summary>auto falls back to the fast CPU path from a broken CUDA device, but records why; from an absent one, silently.</summary>
    [Fact]
    public void Auto_reports_a_broken_CUDA_device_instead_of_falling_back_silently()
    {
        string? reported = null;
        void OnFallback(string reason) => reported = reason;
        Backends.AutoFellBack += OnFallback;
        try
        {
            using (var absent = Backends.CreateAuto(() => throw new BackendUnavailableException("no CUDA device")))
                Assert.Equal("fastcpu", absent.Name.Split(' ')[0]);
            Assert.Null(reported);
            using var broken = Backends.CreateAuto(() => throw new BackendFaultException("cuda: the device is present but could not be opened: CUDA_ERROR_LAUNCH_FAILED"));
            Assert.Equal("fastcpu", broken.Name.Split(' ')[0]);
            Assert.Contains("CUDA_ERROR_LAUNCH_FAILED", Backends.AutoFallbackReason);
            Assert.Contains("CUDA_ERROR_LAUNCH_FAILED", reported);
        }
        finally
        {
            Backends.AutoFellBack -= OnFallback;
        }
    }

    /// <summary>Every kernel compiles to PTX for sm_90 (H200) and to OpenCL C, here, without a device.</summary>
    [Fact]
    public void Every_kernel_compiles_for_CUDA_and_OpenCL()
    {
        using var context = Context.Create(b => b.EnableAlgorithms());
        using var ptx = new PTXBackend(context, new CudaCapabilityContext(CudaArchitecture.SM_90), CudaArchitecture.SM_90, CudaInstructionSet.ISA_80, null);
        using var cl = new CLBackend(context, new CLCapabilityContext(false, false, true, true, true), CLDeviceVendor.Nvidia, CLCVersion.CL20);
        foreach (var method in KernelSet.EntryPoints)
        {
            var entry = EntryPointDescription.FromExplicitlyGroupedKernel(method);
            var kernel = (PTXCompiledKernel)ptx.Compile(entry, default(KernelSpecialization));
            Assert.Contains(".entry", kernel.PTXAssembly);
            // Operand access and helpers inline into the kernel, and per-thread accumulators stay in registers.
            var lines = kernel.PTXAssembly.Split('\n').Select(l => l.Trim()).ToArray();
            Assert.DoesNotContain(lines, l => l.StartsWith("call", StringComparison.Ordinal));
            Assert.DoesNotContain(lines, l => l.StartsWith(".local", StringComparison.Ordinal));
            var source = (CLCompiledKernel)cl.Compile(entry, default(KernelSpecialization));
            Assert.Contains("kernel", source.Source);
        }
    }
}
