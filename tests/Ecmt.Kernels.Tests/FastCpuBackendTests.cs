using Ecmt.Kernels.Cpu;
using Ecmt.Kernels.Reference;

namespace Ecmt.Kernels.Tests;

/// <summary>The fast CPU backend with its own choice of matmul path (by measured spike density).</summary>
public sealed class FastCpuBackendConformance : BackendConformance
{
    protected override ISpikingBackend CreateBackend() => new FastCpuBackend();
}

/// <summary>The whole suite with every spike-driven linear layer forced onto the event-driven product.</summary>
public sealed class FastCpuEventDrivenConformance : BackendConformance
{
    protected override ISpikingBackend CreateBackend() => new FastCpuBackend { EventDrivenMaxDensity = 1.0 };
}

/// <summary>The whole suite with every spike-driven linear layer forced onto decode + sgemm.</summary>
public sealed class FastCpuDenseConformance : BackendConformance
{
    protected override ISpikingBackend CreateBackend() => new FastCpuBackend { EventDrivenMaxDensity = -1.0 };
}

/// <summary>
/// The fast CPU kernels on shapes the small conformance cases do not reach: vector blocks inside runs of one
/// threshold group (q/k/v thirds, per-head s), per-channel tables, ViT-sized linear layers on both paths, and the
/// direct-form matrix-product EC over many steps with realistic spike trains.
/// </summary>
public sealed class FastCpuKernelTests : IDisposable
{
    readonly ReferenceBackend _reference = new();
    readonly FastCpuBackend _fast = new();

    public void Dispose()
    {
        _reference.Dispose();
        _fast.Dispose();
    }

    (DeviceTensor Expected, DeviceTensor Actual) Tensors(float[]? values, params int[] shape)
    {
        var pair = (_reference.Allocate(shape), _fast.Allocate(shape));
        if (values is not null)
        {
            _reference.Upload(values, pair.Item1);
            _fast.Upload(values, pair.Item2);
        }
        return pair;
    }

    float[] Read(ISpikingBackend backend, DeviceTensor t)
    {
        var values = new float[t.Length];
        backend.Download(t, values);
        return values;
    }

    sbyte[] Codes(ISpikingBackend backend, SpikeTensor s)
    {
        var codes = new sbyte[s.Length];
        backend.DownloadCodes(s, codes);
        return codes;
    }

    public static TheoryData<int, int, int, int[]> Layouts => new()
    {
        // levels, groups, inner, shape: per tensor; q/k/v thirds of (B, N, 3D) rows (runs of D); per head of
        // (B, H, N, N) (runs of N²); per channel (periodic tables); per channel with a period that is not a multiple
        // of the 32-element block; per tensor with more levels than the register search covers (compare per level instead)
        { 8, 1, 1, [2, 17, 200] },
        { 8, 3, 128, [2, 5, 384] },
        { 8, 3, 81, [2, 3, 9, 9] },
        { 8, 384, 1, [2, 7, 384] },
        { 8, 100, 1, [3, 11, 100] },
        { 20, 1, 1, [2, 17, 200] },
    };

    [Theory]
    [MemberData(nameof(Layouts))]
    public void Vectorised_MT_neurons_fire_as_the_scalar_rule(int levels, int groups, int inner, int[] shape)
    {
        var neuron = TestData.Neuron(levels, groups, inner, seed: groups);
        long length = shape.Aggregate(1L, (a, b) => a * b);
        int images = shape[0];
        var (xe, xa) = Tensors(null, shape);
        var (ve, va) = Tensors(new float[length], shape);
        SpikeTensor se = _reference.AllocateSpikes(neuron, shape), sa = _fast.AllocateSpikes(neuron, shape);
        StepCounters ce = _reference.AllocateCounters(images), ca = _fast.AllocateCounters(images);
        _reference.Clear(ce);
        _fast.Clear(ca);
        int totalDiffer = 0;
        for (int step = 1; step <= 10; step++)
        {
            var x = TestData.Normal((int)length, 40 + step, std: 0.3f * step);
            _reference.Upload(x, xe);
            _fast.Upload(x, xa);
            _reference.Fire(xe, ve, se, ce, fanOut: 3);
            _fast.Fire(xa, va, sa, ca, fanOut: 3);
            var expected = Codes(_reference, se);
            var actual = Codes(_fast, sa);
            int differ = expected.Zip(actual).Count(p => p.First != p.Second);
            totalDiffer += differ;
            Assert.True(differ <= length / 1000, $"step {step}: {differ} of {length} codes differ");
            Assert.Contains(actual, c => c > 1);
            Assert.Contains(actual, c => c < -1);
        }
        if (totalDiffer == 0)
        {
            TestData.AssertClose(Read(_reference, ve), Read(_fast, va), "membranes", atol: 1e-4f);
            long[] es = new long[images], eo = new long[images], as_ = new long[images], ao = new long[images];
            _reference.ReadCounters(ce, es, eo);
            _fast.ReadCounters(ca, as_, ao);
            Assert.Equal(es, as_);
            Assert.Equal(eo, ao);
        }
    }

    [Theory]
    [InlineData(SpikeRounding.HalfBase)]
    [InlineData(SpikeRounding.Nearest)]
    public void Membranes_exactly_on_a_threshold_fire_as_the_scalar_rule(SpikeRounding rounding)
    {
        // Every threshold of both sides, and its float neighbours, as the input to fresh membranes: the vector
        // compare must treat "reaches" (≥, ≤) exactly as the scalar rule does.
        var neuron = new MultiThresholdNeuron(8, [0.37f], [0.11f], rounding: rounding);
        var inputs = new List<float>();
        for (int k = 0; k < neuron.Levels; k++)
        {
            foreach (var threshold in new[] { MultiThresholdNeuron.Threshold(0.37f, k, rounding), -MultiThresholdNeuron.Threshold(0.11f, k, rounding) })
                inputs.AddRange([threshold, MathF.BitIncrement(threshold), MathF.BitDecrement(threshold)]);
        }
        // and values no threshold decides: infinities, NaN, signed zeros, subnormals, the largest floats
        inputs.AddRange([float.PositiveInfinity, float.NegativeInfinity, float.NaN, 0f, -0f, float.Epsilon, -float.Epsilon, float.MaxValue, float.MinValue, 1e30f, -1e30f]);
        while (inputs.Count % 64 != 0) inputs.Add(0f);
        var x = inputs.ToArray();
        var (xe, xa) = Tensors(x, 1, x.Length);
        var (ve, va) = Tensors(new float[x.Length], 1, x.Length);
        SpikeTensor se = _reference.AllocateSpikes(neuron, 1, x.Length), sa = _fast.AllocateSpikes(neuron, 1, x.Length);
        StepCounters ce = _reference.AllocateCounters(1), ca = _fast.AllocateCounters(1);
        _reference.Fire(xe, ve, se, ce, fanOut: 1);
        _fast.Fire(xa, va, sa, ca, fanOut: 1);
        Assert.Equal(Codes(_reference, se), Codes(_fast, sa));
        Assert.Equal(Read(_reference, ve), Read(_fast, va));
    }

    [Fact]
    public void Vector_exp_and_GELU_follow_the_scalar_formulas()
    {
        var rng = new Random(5);
        var x = Enumerable.Range(0, 4096).Select(i => i < 2048 ? -95f + 190f * i / 2048 : (float)(rng.NextDouble() * 16 - 8)).ToArray();
        var lanes = new float[EcKernels.W];
        for (int i = 0; i < x.Length; i += EcKernels.W)
        {
            var v = System.Runtime.Intrinsics.Vector256.Create(x, i);
            System.Runtime.Intrinsics.Vector256.CopyTo(EcKernels.Exp(v), lanes);
            for (int j = 0; j < EcKernels.W; j++)
            {
                float expected = MathF.Exp(x[i + j]);
                Assert.True(MathF.Abs(lanes[j] - expected) <= 3e-7f * expected + 1.2e-38f, $"exp({x[i + j]}) = {lanes[j]}, MathF.Exp gives {expected}");
            }
            System.Runtime.Intrinsics.Vector256.CopyTo(EcKernels.Gelu(v), lanes);
            for (int j = 0; j < EcKernels.W; j++)
            {
                float expected = ReferenceMath.Gelu(x[i + j]);
                Assert.True(MathF.Abs(lanes[j] - expected) <= 1e-6f * (1 + MathF.Abs(x[i + j])), $"gelu({x[i + j]}) = {lanes[j]}, reference {expected}");
            }
        }
    }

    public static TheoryData<string, double> LinearCases => new()
    {
        // Out a multiple of 32 (register blocks only) and not (8-wide and scalar tails); densities around the switch
        { "event", 0.02 }, { "event", 0.3 }, { "event", 1.0 },
        { "dense", 0.02 }, { "dense", 0.3 }, { "dense", 1.0 },
    };

    [Theory]
    [MemberData(nameof(LinearCases))]
    public void Both_matmul_paths_match_the_reference_on_vit_sized_layers(string path, double density)
    {
        _fast.EventDrivenMaxDensity = path == "event" ? 1.0 : -1.0;
        foreach (var (inFeatures, outFeatures, groups) in new[] { (384, 1152, 1), (96, 211, 96) })
        {
            var neuron = TestData.Neuron(8, groups, 1, seed: 9);
            var layer = new LinearLayer(TestData.Normal(outFeatures * inFeatures, 3, 0.05f), TestData.Normal(outFeatures, 4, 0.1f), inFeatures, outFeatures);
            int[] shape = [2, 37, inFeatures];
            var codes = TestData.Codes(2 * 37 * inFeatures, 8, seed: (int)(density * 1000), density);
            SpikeTensor se = _reference.AllocateSpikes(neuron, shape), sa = _fast.AllocateSpikes(neuron, shape);
            _reference.UploadCodes(codes, se);
            _fast.UploadCodes(codes, sa);
            var (ye, ya) = Tensors(null, 2, 37, outFeatures);
            _reference.SpikeLinear(se, layer, ye);
            _fast.SpikeLinear(sa, layer, ya);
            Assert.Equal(path == "event" ? SpikeLinearPath.EventDriven : SpikeLinearPath.Dense, _fast.LastSpikeLinearPath);
            // Spike values reach λ·2^7 ≈ 70, so sums are large: the tolerance is relative to the size of the terms.
            TestData.AssertClose(Read(_reference, ye), Read(_fast, ya), $"{path} product {inFeatures}→{outFeatures} at density {density}", rtol: 1e-4f, atol: 2e-4f);
        }
    }

    [Fact]
    public void The_path_follows_the_measured_density()
    {
        var neuron = TestData.Neuron(4, 1, 1, seed: 1);
        var layer = new LinearLayer(TestData.Normal(64 * 32, 1), new float[64], 32, 64);
        var spikes = _fast.AllocateSpikes(neuron, 4, 32);
        var output = _fast.Allocate(4, 64);
        _fast.EventDrivenMaxDensity = 0.25;
        foreach (var (density, path) in new[] { (0.0, SpikeLinearPath.EventDriven), (0.1, SpikeLinearPath.EventDriven), (0.6, SpikeLinearPath.Dense) })
        {
            var codes = TestData.Codes(4 * 32, 4, seed: 3, density);
            _fast.UploadCodes(codes, spikes);
            _fast.SpikeLinear(spikes, layer, output);
            Assert.Equal(path, _fast.LastSpikeLinearPath);
        }
    }

    [Fact]
    public void Direct_form_attention_EC_matches_the_event_driven_reference_over_many_steps()
    {
        // ViT-like head width (Dh = 64) and a token count that is not a multiple of 16
        const int images = 2, n = 37, d = 128, heads = 2, steps = 12;
        var qkvNeuron = TestData.Neuron(8, 3, d, seed: 11);
        var probNeuron = TestData.Neuron(8, heads, n * n, seed: 12);
        SpikeTensor qe = _reference.AllocateSpikes(qkvNeuron, images, n, 3 * d), qa = _fast.AllocateSpikes(qkvNeuron, images, n, 3 * d);
        SpikeTensor pe = _reference.AllocateSpikes(probNeuron, images, heads, n, n), pa = _fast.AllocateSpikes(probNeuron, images, heads, n, n);
        var qkvSums = Tensors(new float[images * n * 3 * d], images, n, 3 * d);
        var probSums = Tensors(new float[images * heads * n * n], images, heads, n, n);
        var scoreProducts = Tensors(new float[images * heads * n * n], images, heads, n, n);
        var valueProducts = Tensors(new float[images * n * d], images, n, d);
        var scores = Tensors(null, images, heads, n, n);
        var values = Tensors(null, images, n, d);
        StepCounters ce = _reference.AllocateCounters(images), ca = _fast.AllocateCounters(images);
        _reference.Clear(ce);
        _fast.Clear(ca);
        float scale = 1f / MathF.Sqrt(d / heads);
        for (int t = 1; t <= steps; t++)
        {
            // Dense early, sparse later, as EC increments shrink.
            var qkvCodes = TestData.Codes(images * n * 3 * d, 3, seed: t, density: 0.6 / t);
            var probCodes = TestData.Codes(images * heads * n * n, 3, seed: 50 + t, density: 0.5 / t);
            _reference.UploadCodes(qkvCodes, qe);
            _fast.UploadCodes(qkvCodes, qa);
            _reference.UploadCodes(probCodes, pe);
            _fast.UploadCodes(probCodes, pa);
            using ImageSteps se = TestData.Uniform(_reference, images, t), sa = TestData.Uniform(_fast, images, t);
            _reference.AttentionScoresEc(qe, qkvSums.Expected, scoreProducts.Expected, heads, scale, se, scores.Expected, ce);
            _fast.AttentionScoresEc(qa, qkvSums.Actual, scoreProducts.Actual, heads, scale, sa, scores.Actual, ca);
            _reference.AttentionValuesEc(pe, probSums.Expected, qe, qkvSums.Expected, valueProducts.Expected, heads, se, values.Expected, ce);
            _fast.AttentionValuesEc(pa, probSums.Actual, qa, qkvSums.Actual, valueProducts.Actual, heads, sa, values.Actual, ca);
            // P(t) grows like t²; its increments are differences of O(t²) terms, so the tolerance scales with t.
            float atol = 1e-4f * t;
            TestData.AssertClose(Read(_reference, scores.Expected), Read(_fast, scores.Actual), $"scores at t = {t}", rtol: 1e-4f, atol: atol);
            TestData.AssertClose(Read(_reference, values.Expected), Read(_fast, values.Actual), $"A·V at t = {t}", rtol: 1e-4f, atol: atol);
            TestData.AssertClose(Read(_reference, scoreProducts.Expected), Read(_fast, scoreProducts.Actual), $"score products at t = {t}", rtol: 1e-5f, atol: 1e-4f);
            TestData.AssertClose(Read(_reference, valueProducts.Expected), Read(_fast, valueProducts.Actual), $"value products at t = {t}", rtol: 1e-5f, atol: 1e-4f);
            Assert.Equal(Read(_reference, qkvSums.Expected), Read(_fast, qkvSums.Actual));
            Assert.Equal(Read(_reference, probSums.Expected), Read(_fast, probSums.Actual));
            long[] es = new long[images], eo = new long[images], as_ = new long[images], ao = new long[images];
            _reference.ReadCounters(ce, es, eo);
            _fast.ReadCounters(ca, as_, ao);
            Assert.Equal(eo, ao);
            Assert.All(ao, sops => Assert.True(sops > 0));
        }
    }

    [Fact]
    public void Concurrent_instances_on_one_layer_agree_with_the_reference()
    {
        var neuron = TestData.Neuron(6, 1, 1, seed: 2);
        var layer = new LinearLayer(TestData.Normal(256 * 128, 1, 0.1f), TestData.Normal(256, 2), 128, 256);
        var codes = TestData.Codes(16 * 128, 6, seed: 4, density: 0.05);
        float[] expected = new float[16 * 256];
        {
            var s = _reference.AllocateSpikes(neuron, 16, 128);
            var y = _reference.Allocate(16, 256);
            _reference.UploadCodes(codes, s);
            _reference.SpikeLinear(s, layer, y);
            _reference.Download(y, expected);
        }
        Parallel.For(0, 8, i =>
        {
            using var backend = new FastCpuBackend { EventDrivenMaxDensity = i % 2 == 0 ? 1.0 : -1.0 };
            var s = backend.AllocateSpikes(neuron, 16, 128);
            var y = backend.Allocate(16, 256);
            backend.UploadCodes(codes, s);
            for (int repeat = 0; repeat < 5; repeat++)
            {
                backend.SpikeLinear(s, layer, y);
                var actual = new float[y.Length];
                backend.Download(y, actual);
                TestData.AssertClose(expected, actual, $"instance {i}, repeat {repeat}", atol: 1e-4f);
            }
        });
    }
}
