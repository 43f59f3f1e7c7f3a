using Ecmt.Kernels.Reference;

namespace Ecmt.Kernels.Tests;

/// <summary>
/// Every operation of <see cref="ISpikingBackend"/> on a candidate backend, held to <see cref="ReferenceBackend"/>
/// on the same inputs. A backend gets a concrete subclass; one whose device is absent skips every case.
/// Tolerances: float results within 1e-4 relative (summation order differs between backends); spike codes
/// identical except where a membrane sits on a threshold to within float rounding (at most 0.1 % of neurons);
/// counters exact when the spikes are identical.
/// </summary>
public abstract class BackendConformance : IDisposable
{
    readonly ReferenceBackend _reference = new();
    readonly Lazy<ISpikingBackend?> _candidate;
    string? _unavailable;

    protected BackendConformance()
    {
        _candidate = new(() =>
        {
            try
            {
                return CreateBackend();
            }
            catch (BackendUnavailableException e)
            {
                _unavailable = e.Message;
                return null;
            }
        });
    }

    /// <summary>Creates the backend under test; throws <see cref="BackendUnavailableException"/> when its device is absent.</summary>
    protected abstract ISpikingBackend CreateBackend();

    /// <summary>Tensor sizes of the shared operation checks (<see cref="Checks.OperationChecks"/>, which check-backend runs).</summary>
    protected virtual Checks.CheckSizes Sizes => Checks.CheckSizes.Small;

    public static TheoryData<string> SharedChecks => [.. Checks.OperationChecks.Names];

    /// <summary>The checks <c>ecmt check-backend</c> runs, at <see cref="Sizes"/>.</summary>
    [Theory]
    [MemberData(nameof(SharedChecks))]
    public void Shared_operation_check_passes(string check)
    {
        using var checks = new Checks.OperationChecks(Candidate, Sizes);
        checks.Run(check);
    }

    ISpikingBackend Candidate
    {
        get
        {
            var backend = _candidate.Value;
            if (backend is null) Assert.Skip($"backend unavailable here: {_unavailable}");
            return backend;
        }
    }

    public void Dispose()
    {
        if (_candidate.IsValueCreated) _candidate.Value?.Dispose();
        _reference.Dispose();
        GC.SuppressFinalize(this);
    }

    /// <summary>The same tensor on both backends.</summary>
    sealed class Pair(ISpikingBackend reference, ISpikingBackend candidate, int[] shape)
    {
        public readonly DeviceTensor Expected = reference.Allocate(shape), Actual = candidate.Allocate(shape);

        public void Set(float[] values)
        {
            reference.Upload(values, Expected);
            candidate.Upload(values, Actual);
        }

        public void AssertClose(string what, float rtol = 1e-4f, float atol = 1e-5f)
        {
            var e = new float[Expected.Length];
            var a = new float[Actual.Length];
            reference.Download(Expected, e);
            candidate.Download(Actual, a);
            TestData.AssertClose(e, a, what, rtol, atol);
        }
    }

    sealed class SpikePair(ISpikingBackend reference, ISpikingBackend candidate, MultiThresholdNeuron neuron, int[] shape)
    {
        public readonly SpikeTensor Expected = reference.AllocateSpikes(neuron, shape), Actual = candidate.AllocateSpikes(neuron, shape);

        public void Set(sbyte[] codes)
        {
            reference.UploadCodes(codes, Expected);
            candidate.UploadCodes(codes, Actual);
        }

        /// <summary>Returns how many codes differ, after asserting it is at most 0.1 %.</summary>
        public int AssertSame(string what)
        {
            var e = new sbyte[Expected.Length];
            var a = new sbyte[Actual.Length];
            reference.DownloadCodes(Expected, e);
            candidate.DownloadCodes(Actual, a);
            int differ = 0;
            for (int i = 0; i < e.Length; i++) if (e[i] != a[i]) differ++;
            Assert.True(differ <= e.Length / 1000, $"{what}: {differ} of {e.Length} spike codes differ from the reference");
            return differ;
        }
    }

    sealed class CounterPair(ISpikingBackend reference, ISpikingBackend candidate, int images)
    {
        public readonly StepCounters Expected = reference.AllocateCounters(images), Actual = candidate.AllocateCounters(images);

        public void AssertEqual(string what, long tolerance = 0)
        {
            int b = Expected.Images;
            long[] es = new long[b], eo = new long[b], a_s = new long[b], ao = new long[b];
            reference.ReadCounters(Expected, es, eo);
            candidate.ReadCounters(Actual, a_s, ao);
            for (int i = 0; i < b; i++)
            {
                Assert.True(Math.Abs(es[i] - a_s[i]) <= tolerance, $"{what}: image {i} spikes {a_s[i]}, reference {es[i]}");
                Assert.True(Math.Abs(eo[i] - ao[i]) <= tolerance * 1000, $"{what}: image {i} SOPs {ao[i]}, reference {eo[i]}");
            }
        }
    }

    /// <summary>Per-image steps on both backends.</summary>
    sealed class StepsPair(ISpikingBackend reference, ISpikingBackend candidate, int images)
    {
        public readonly ImageSteps Expected = reference.AllocateSteps(images), Actual = candidate.AllocateSteps(images);

        public void Set(params int[] steps)
        {
            reference.UploadSteps(steps, Expected);
            candidate.UploadSteps(steps, Actual);
        }
    }

    /// <summary>
    /// Steps of two images sharing every call: image 0 from iteration 1, image 1 joining at iteration
    /// <see cref="Joins"/> (its state cleared then, without touching image 0's), so the batch mixes steps.
    /// </summary>
    const int Joins = 3;
    static int[] MixedSteps(int iteration) => [iteration, iteration < Joins ? iteration : iteration - Joins + 1];

    void ClearImage(int image, params Pair[] tensors)
    {
        foreach (var t in tensors)
        {
            _reference.ClearImage(t.Expected, image);
            Candidate.ClearImage(t.Actual, image);
        }
    }

    Pair Tensors(params int[] shape) => new(_reference, Candidate, shape);
    StepsPair Steps(int images) => new(_reference, Candidate, images);
    SpikePair Spikes(MultiThresholdNeuron neuron, params int[] shape) => new(_reference, Candidate, neuron, shape);
    CounterPair Counters(int images) => new(_reference, Candidate, images);

    public static TheoryData<int, int, int, SpikeRounding> NeuronLayouts => new()
    {
        // groups, inner, levels, firing offsets: per tensor; per channel; q/k/v thirds of a (…, 3D) row; per head of (B, H, N, N)
        { 1, 1, 8, SpikeRounding.HalfBase }, { 24, 1, 8, SpikeRounding.HalfBase }, { 3, 8, 4, SpikeRounding.HalfBase }, { 2, 36, 1, SpikeRounding.HalfBase },
        { 1, 1, 8, SpikeRounding.Nearest }, { 24, 1, 8, SpikeRounding.Nearest }, { 3, 8, 4, SpikeRounding.Nearest }, { 2, 36, 1, SpikeRounding.Nearest },
    };

    [Theory]
    [MemberData(nameof(NeuronLayouts))]
    public void Fire_matches_the_reference(int groups, int inner, int levels, SpikeRounding rounding)
    {
        int[] shape = [3, 6, 24];
        var neuron = TestData.Neuron(levels, groups, inner, seed: groups + inner, rounding);
        var input = Tensors(shape);
        var membrane = Tensors(shape);
        var spikes = Spikes(neuron, shape);
        var counters = Counters(3);
        _reference.Clear(membrane.Expected);
        Candidate.Clear(membrane.Actual);
        _reference.Clear(counters.Expected);
        Candidate.Clear(counters.Actual);
        for (int step = 1; step <= 6; step++)
        {
            // Inputs span silence to the top level so every level fires.
            input.Set(TestData.Normal(3 * 6 * 24, step, std: 0.1f * (1 << levels)));
            _reference.Fire(input.Expected, membrane.Expected, spikes.Expected, counters.Expected, fanOut: 7);
            Candidate.Fire(input.Actual, membrane.Actual, spikes.Actual, counters.Actual, fanOut: 7);
            int differ = spikes.AssertSame($"spikes at step {step}");
            if (differ == 0) membrane.AssertClose($"membranes at step {step}", atol: 1e-4f);
            counters.AssertEqual($"counters at step {step}", tolerance: differ);
        }
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(16, 1)]
    public void SpikeLinear_matches_the_reference(int groups, int inner)
    {
        const int images = 2, rows = 5, inFeatures = 16, outFeatures = 12;
        var neuron = TestData.Neuron(6, groups, inner, seed: 5);
        var layer = new LinearLayer(TestData.Normal(outFeatures * inFeatures, 1, 0.3f), TestData.Normal(outFeatures, 2), inFeatures, outFeatures);
        var spikes = Spikes(neuron, images, rows, inFeatures);
        var output = Tensors(images, rows, outFeatures);
        foreach (var density in new[] { 0.0, 0.05, 0.5, 1.0 })
        {
            spikes.Set(TestData.Codes(images * rows * inFeatures, 6, seed: (int)(density * 100), density));
            _reference.SpikeLinear(spikes.Expected, layer, output.Expected);
            Candidate.SpikeLinear(spikes.Actual, layer, output.Actual);
            output.AssertClose($"spike linear at density {density}");
        }
    }

    [Fact]
    public void Linear_matches_the_reference()
    {
        var layer = new LinearLayer(TestData.Normal(10 * 24, 1, 0.3f), TestData.Normal(10, 2), 24, 10);
        var input = Tensors(4, 24);
        var output = Tensors(4, 10);
        input.Set(TestData.Normal(4 * 24, 3));
        _reference.Linear(input.Expected, layer, output.Expected);
        Candidate.Linear(input.Actual, layer, output.Actual);
        output.AssertClose("linear");
    }

    public static TheoryData<string> Nonlinearities => new() { "layernorm", "gelu", "softmax" };

    [Theory]
    [MemberData(nameof(Nonlinearities))]
    public void Expectation_compensation_matches_the_reference(string function)
    {
        int[] shape = function == "softmax" ? [2, 3, 7, 7] : [2, 7, 20];
        var input = Tensors(shape);
        var output = Tensors(shape);
        var inputSum = Tensors(shape);
        var outputSum = Tensors(shape);
        var norm = new LayerNormLayer(TestData.Normal(20, 1, 0.2f, 1f), TestData.Normal(20, 2, 0.1f), 1e-6f);
        var expectedState = new EcState(inputSum.Expected, outputSum.Expected);
        var actualState = new EcState(inputSum.Actual, outputSum.Actual);
        foreach (var s in new[] { inputSum, outputSum })
        {
            _reference.Clear(s.Expected);
            Candidate.Clear(s.Actual);
        }
        var steps = Steps(2);
        for (int t = 1; t <= 8; t++)
        {
            // Image 1 starts over at iteration Joins: the two images run at different steps from then on.
            if (t == Joins) ClearImage(1, inputSum, outputSum);
            steps.Set(MixedSteps(t));
            input.Set(TestData.Normal((int)input.Expected.Length, 30 + t, std: 1.5f));
            switch (function)
            {
                case "layernorm":
                    _reference.LayerNormEc(input.Expected, expectedState, norm, steps.Expected, output.Expected);
                    Candidate.LayerNormEc(input.Actual, actualState, norm, steps.Actual, output.Actual);
                    break;
                case "gelu":
                    _reference.GeluEc(input.Expected, expectedState, steps.Expected, output.Expected);
                    Candidate.GeluEc(input.Actual, actualState, steps.Actual, output.Actual);
                    break;
                default:
                    _reference.SoftmaxEc(input.Expected, expectedState, steps.Expected, output.Expected);
                    Candidate.SoftmaxEc(input.Actual, actualState, steps.Actual, output.Actual);
                    break;
            }
            output.AssertClose($"{function} output at t = {t}", atol: 1e-4f);
            inputSum.AssertClose($"{function} input sum at t = {t}", atol: 1e-4f);
            outputSum.AssertClose($"{function} cumulative output at t = {t}", atol: 1e-4f);
        }
    }

    [Fact]
    public void Attention_matrix_product_EC_matches_the_reference()
    {
        const int images = 2, n = 9, d = 16, heads = 2, steps = 6;
        var qkvNeuron = TestData.Neuron(5, 3, d, seed: 1);
        var probNeuron = TestData.Neuron(5, 1, 1, seed: 2);
        var qkv = Spikes(qkvNeuron, images, n, 3 * d);
        var probs = Spikes(probNeuron, images, heads, n, n);
        var qkvSums = Tensors(images, n, 3 * d);
        var probSums = Tensors(images, heads, n, n);
        var scoreProducts = Tensors(images, heads, n, n);
        var valueProducts = Tensors(images, n, d);
        var scores = Tensors(images, heads, n, n);
        var output = Tensors(images, n, d);
        var counters = Counters(images);
        foreach (var t in new[] { qkvSums, probSums, scoreProducts, valueProducts })
        {
            _reference.Clear(t.Expected);
            Candidate.Clear(t.Actual);
        }
        _reference.Clear(counters.Expected);
        Candidate.Clear(counters.Actual);
        float scale = 1f / MathF.Sqrt(d / heads);
        var imageSteps = Steps(images);
        for (int t = 1; t <= steps; t++)
        {
            // Image 1 starts over at iteration Joins (its sums and products cleared): mixed steps in one call.
            if (t == Joins) ClearImage(1, qkvSums, probSums, scoreProducts, valueProducts);
            imageSteps.Set(MixedSteps(t));
            qkv.Set(TestData.Codes(images * n * 3 * d, 5, seed: t, density: 0.1 * t));
            probs.Set(TestData.Codes(images * heads * n * n, 5, seed: 100 + t, density: 0.3));
            _reference.AttentionScoresEc(qkv.Expected, qkvSums.Expected, scoreProducts.Expected, heads, scale, imageSteps.Expected, scores.Expected, counters.Expected);
            Candidate.AttentionScoresEc(qkv.Actual, qkvSums.Actual, scoreProducts.Actual, heads, scale, imageSteps.Actual, scores.Actual, counters.Actual);
            scores.AssertClose($"scores at t = {t}", atol: 1e-4f);
            counters.AssertEqual($"counters after scores at t = {t}");
            _reference.AttentionValuesEc(probs.Expected, probSums.Expected, qkv.Expected, qkvSums.Expected, valueProducts.Expected, heads, imageSteps.Expected, output.Expected, counters.Expected);
            Candidate.AttentionValuesEc(probs.Actual, probSums.Actual, qkv.Actual, qkvSums.Actual, valueProducts.Actual, heads, imageSteps.Actual, output.Actual, counters.Actual);
            output.AssertClose($"A·V at t = {t}", atol: 1e-4f);
            qkvSums.AssertClose($"qkv sums at t = {t}");
            probSums.AssertClose($"probability sums at t = {t}");
            scoreProducts.AssertClose($"score products at t = {t}", atol: 1e-4f);
            valueProducts.AssertClose($"value products at t = {t}", atol: 1e-4f);
            counters.AssertEqual($"counters after A·V at t = {t}");
        }
    }

    [Fact]
    public void Elementwise_helpers_match_the_reference()
    {
        var x = Tensors(2, 5, 8);
        var y = Tensors(2, 5, 8);
        var token = Tensors(2, 8);
        x.Set(TestData.Normal(80, 1));
        y.Set(TestData.Normal(80, 2));
        _reference.Add(x.Expected, y.Expected);
        Candidate.Add(x.Actual, y.Actual);
        x.AssertClose("add");
        _reference.SelectToken(x.Expected, 3, token.Expected);
        Candidate.SelectToken(x.Actual, 3, token.Actual);
        token.AssertClose("select token");
        _reference.Copy(y.Expected, x.Expected);
        Candidate.Copy(y.Actual, x.Actual);
        x.AssertClose("copy");
        _reference.Clear(x.Expected);
        Candidate.Clear(x.Actual);
        x.AssertClose("clear");
    }

    [Fact]
    public void Layout_helpers_match_the_reference()
    {
        // The relative position bias: (1, H, N, N) added to every image's scores (B, H, N, N).
        var scores = Tensors(3, 2, 5, 5);
        var bias = Tensors(1, 2, 5, 5);
        var expectedScores = TestData.Normal(150, 3);
        var biasValues = TestData.Normal(50, 4);
        scores.Set(expectedScores);
        bias.Set(biasValues);
        _reference.AddBroadcast(scores.Expected, bias.Expected);
        Candidate.AddBroadcast(scores.Actual, bias.Actual);
        scores.AssertClose("broadcast add");
        // and the reference does what it says
        var reference = new float[150];
        _reference.Download(scores.Expected, reference);
        Assert.Equal(expectedScores[2 * 50 + 17] + biasValues[17], reference[2 * 50 + 17], 5);
        // over a view of the first two images (a batched session's occupied slots) the third is left as it was
        _reference.AddBroadcast(_reference.Prefix(scores.Expected, 2), bias.Expected);
        Candidate.AddBroadcast(Candidate.Prefix(scores.Actual, 2), bias.Actual);
        scores.AssertClose("broadcast add over a prefix view");
        _reference.Download(scores.Expected, reference);
        Assert.Equal(expectedScores[2 * 50 + 17] + biasValues[17], reference[2 * 50 + 17], 5);
        Assert.Equal(expectedScores[17] + 2 * biasValues[17], reference[17], 4);

        // Mean pooling of the patch tokens: (B, N, D) -> (B, D) over tokens 1 … N − 1.
        var x = Tensors(2, 5, 8);
        var mean = Tensors(2, 8);
        var values = TestData.Normal(80, 5);
        x.Set(values);
        _reference.MeanTokens(x.Expected, 1, mean.Expected);
        Candidate.MeanTokens(x.Actual, 1, mean.Actual);
        mean.AssertClose("mean of tokens");
        var pooled = new float[16];
        _reference.Download(mean.Expected, pooled);
        Assert.Equal((values[40 + 8 + 3] + values[40 + 16 + 3] + values[40 + 24 + 3] + values[40 + 32 + 3]) / 4, pooled[8 + 3], 5);
    }

    [Fact]
    public void Per_image_clear_copy_and_prefix_views_match_the_reference()
    {
        var x = Tensors(3, 4, 8);
        var y = Tensors(3, 4, 8);
        x.Set(TestData.Normal(96, 5));
        y.Set(TestData.Normal(96, 6));
        _reference.ClearImage(x.Expected, 1);
        Candidate.ClearImage(x.Actual, 1);
        x.AssertClose("clear image 1");
        _reference.CopyImage(x.Expected, 2, 0);
        Candidate.CopyImage(x.Actual, 2, 0);
        x.AssertClose("copy image 2 over image 0");
        // An operation on views of the first two images leaves the third as it was.
        DeviceTensor ex = _reference.Prefix(x.Expected, 2), ey = _reference.Prefix(y.Expected, 2);
        DeviceTensor ax = Candidate.Prefix(x.Actual, 2), ay = Candidate.Prefix(y.Actual, 2);
        Assert.Equal([2, 4, 8], ax.Shape);
        _reference.Add(ex, ey);
        Candidate.Add(ax, ay);
        x.AssertClose("add over a prefix view");
        var all = new float[96];
        Candidate.Download(x.Actual, all);
        var before = TestData.Normal(96, 5);
        Assert.Equal(before.AsSpan(64, 32).ToArray(), all.AsSpan(64, 32).ToArray());
        var head = new float[64];
        Candidate.Download(ax, head);
        Assert.Equal(all.AsSpan(0, 64).ToArray(), head);
    }
}
