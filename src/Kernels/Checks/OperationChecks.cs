using System.Diagnostics;
using Ecmt.Kernels.Reference;

namespace Ecmt.Kernels.Checks;

/// <summary>
/// Tensor sizes of the operation checks. <see cref="Small"/>: a few groups of ILGPU's CPU accelerator, quick on every
/// backend. <see cref="Large"/>: big enough that a GPU launch shape (256-thread groups, 64 × 64 tiles, up to 32 groups
/// on the CUDA-shaped CPU device) needs several groups per launch and per image (cross-group atomics on the per-image
/// counters), several output tiles and k-slices, rows wider than a group, and grid-stride turns; kept to the fewest
/// group barriers that do so, and to <see cref="Steps"/> time steps, since ILGPU's CPU accelerator pays for every
/// barrier of a 256-thread group with 256 OS threads.
/// </summary>
public sealed record CheckSizes(
    string Name,
    int[] Fire,
    (int Images, int Rows, int In, int Out) SpikeLinear,
    (int Rows, int In, int Out) Linear,
    int[] RowWise,
    int[] Softmax,
    (int Images, int Tokens, int Dim, int Heads) Attention,
    int[] Elementwise,
    int Steps)
{
    public static CheckSizes Small { get; } = new("small", [3, 6, 24], (2, 5, 16, 12), (4, 24, 10), [2, 7, 20], [2, 3, 7, 7], (2, 9, 16, 2), [2, 5, 8], Steps: 8);

    public static CheckSizes Large { get; } = new("large", [2, 9, 256], (2, 20, 40, 130), (70, 40, 130), [2, 2, 300], [2, 1, 2, 300], (2, 20, 64, 2), [2, 70, 300], Steps: 2);

    public static CheckSizes Parse(string name) => name.ToLowerInvariant() switch
    {
        "small" => Small,
        "large" => Large,
        _ => throw new ArgumentException($"unknown check size '{name}' (choose small or large)"),
    };
}

/// <summary>The outcome of one operation check.</summary>
public sealed record CheckResult(string Name, bool Passed, string? Failure, double Seconds);

/// <summary>
/// Every operation of <see cref="ISpikingBackend"/> on a candidate backend, held to <see cref="ReferenceBackend"/> on the
/// same seeded random inputs. Used by the conformance tests and by <c>ecmt check-backend</c>.
/// Tolerances: float results within 1e-4 relative (summation order differs between backends); spike codes identical
/// except where a membrane sits on a threshold to within float rounding (at most 0.1 % of neurons); counters exact when
/// the spikes are identical.
/// </summary>
public sealed class OperationChecks(ISpikingBackend candidate, CheckSizes sizes) : IDisposable
{
    readonly ReferenceBackend _reference = new();
    readonly ISpikingBackend _candidate = candidate;

    /// <summary>Neuron layouts of the Fire check: (groups, inner, levels, rounding).</summary>
    public static IReadOnlyList<(int Groups, int Inner, int Levels, SpikeRounding Rounding)> NeuronLayouts { get; } =
    [
        // per tensor; per channel; q/k/v thirds of a (…, 3D) row; per head of (B, H, N, N)
        (1, 1, 8, SpikeRounding.HalfBase), (24, 1, 8, SpikeRounding.HalfBase), (3, 8, 4, SpikeRounding.HalfBase), (2, 36, 1, SpikeRounding.HalfBase),
        (1, 1, 8, SpikeRounding.Nearest), (24, 1, 8, SpikeRounding.Nearest), (3, 8, 4, SpikeRounding.Nearest), (2, 36, 1, SpikeRounding.Nearest),
    ];

    /// <summary>Names of every check, in the order <see cref="RunAll"/> runs them.</summary>
    public static IReadOnlyList<string> Names { get; } =
    [
        .. NeuronLayouts.Select(FireName),
        "spike-linear/per-tensor", "spike-linear/per-channel",
        "linear",
        "layernorm-ec", "gelu-ec", "softmax-ec",
        "attention-ec",
        "elementwise",
        "per-image-views",
        "layout-ops",
    ];

    static string FireName((int Groups, int Inner, int Levels, SpikeRounding Rounding) l) =>
        $"fire/groups={l.Groups},inner={l.Inner},levels={l.Levels},{l.Rounding}";

    public void Dispose() => _reference.Dispose();

    /// <summary>Runs one check by name; throws <see cref="CheckFailedException"/> on a disagreement.</summary>
    public void Run(string name)
    {
        int fire = NeuronLayouts.Select(FireName).ToList().IndexOf(name);
        if (fire >= 0)
        {
            var l = NeuronLayouts[fire];
            Fire(l.Groups, l.Inner, l.Levels, l.Rounding);
            return;
        }
        switch (name)
        {
            case "spike-linear/per-tensor": SpikeLinear(1); break;
            case "spike-linear/per-channel": SpikeLinear(sizes.SpikeLinear.In); break;
            case "linear": Linear(); break;
            case "layernorm-ec": ExpectationCompensation("layernorm"); break;
            case "gelu-ec": ExpectationCompensation("gelu"); break;
            case "softmax-ec": ExpectationCompensation("softmax"); break;
            case "attention-ec": Attention(); break;
            case "elementwise": Elementwise(); break;
            case "per-image-views": PerImageViews(); break;
            case "layout-ops": LayoutOps(); break;
            default: throw new ArgumentException($"unknown check '{name}' (choose one of: {string.Join(", ", Names)})");
        }
    }

    /// <summary>Runs every check (or those named in <paramref name="only"/>), catching disagreements (and any other error of the candidate) as failed results.</summary>
    public IReadOnlyList<CheckResult> RunAll(IEnumerable<string>? only = null)
    {
        var results = new List<CheckResult>();
        var chosen = only?.ToList() ?? [.. Names];
        foreach (var unknown in chosen.Except(Names)) throw new ArgumentException($"unknown check '{unknown}' (choose from: {string.Join(", ", Names)})");
        foreach (var name in chosen)
        {
            var clock = Stopwatch.StartNew();
            try
            {
                Run(name);
                results.Add(new CheckResult(name, true, null, clock.Elapsed.TotalSeconds));
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                results.Add(new CheckResult(name, false, e is CheckFailedException ? e.Message : $"{e.GetType().Name}: {e.Message}", clock.Elapsed.TotalSeconds));
            }
        }
        return results;
    }

    /// <summary>The same tensor on both backends; freed with the pair.</summary>
    sealed class Pair(ISpikingBackend reference, ISpikingBackend candidate, int[] shape) : IDisposable
    {
        public readonly DeviceTensor Expected = reference.Allocate(shape), Actual = candidate.Allocate(shape);

        public void Set(float[] values)
        {
            reference.Upload(values, Expected);
            candidate.Upload(values, Actual);
        }

        public void Clear()
        {
            reference.Clear(Expected);
            candidate.Clear(Actual);
        }

        public void AssertClose(string what, float rtol = 1e-4f, float atol = 1e-5f)
        {
            var e = new float[Expected.Length];
            var a = new float[Actual.Length];
            reference.Download(Expected, e);
            candidate.Download(Actual, a);
            CheckData.AssertClose(e, a, what, rtol, atol);
        }

        public void Dispose()
        {
            Expected.Dispose();
            Actual.Dispose();
        }
    }

    sealed class SpikePair(ISpikingBackend reference, ISpikingBackend candidate, MultiThresholdNeuron neuron, int[] shape) : IDisposable
    {
        public readonly SpikeTensor Expected = reference.AllocateSpikes(neuron, shape), Actual = candidate.AllocateSpikes(neuron, shape);

        public void Set(sbyte[] codes)
        {
            reference.UploadCodes(codes, Expected);
            candidate.UploadCodes(codes, Actual);
        }

        /// <summary>Returns how many codes differ, after checking it is at most 0.1 %.</summary>
        public int AssertSame(string what)
        {
            var e = new sbyte[Expected.Length];
            var a = new sbyte[Actual.Length];
            reference.DownloadCodes(Expected, e);
            candidate.DownloadCodes(Actual, a);
            int differ = 0;
            for (int i = 0; i < e.Length; i++) if (e[i] != a[i]) differ++;
            CheckData.That(differ <= e.Length / 1000, $"{what}: {differ} of {e.Length} spike codes differ from the reference");
            return differ;
        }

        public void Dispose()
        {
            Expected.Dispose();
            Actual.Dispose();
        }
    }

    sealed class CounterPair(ISpikingBackend reference, ISpikingBackend candidate, int images) : IDisposable
    {
        public readonly StepCounters Expected = reference.AllocateCounters(images), Actual = candidate.AllocateCounters(images);

        public void Clear()
        {
            reference.Clear(Expected);
            candidate.Clear(Actual);
        }

        public void AssertEqual(string what, long tolerance = 0)
        {
            int b = Expected.Images;
            long[] es = new long[b], eo = new long[b], a_s = new long[b], ao = new long[b];
            reference.ReadCounters(Expected, es, eo);
            candidate.ReadCounters(Actual, a_s, ao);
            for (int i = 0; i < b; i++)
            {
                CheckData.That(Math.Abs(es[i] - a_s[i]) <= tolerance, $"{what}: image {i} spikes {a_s[i]}, reference {es[i]}");
                CheckData.That(Math.Abs(eo[i] - ao[i]) <= tolerance * 1000, $"{what}: image {i} SOPs {ao[i]}, reference {eo[i]}");
            }
        }

        public void Dispose()
        {
            Expected.Dispose();
            Actual.Dispose();
        }
    }

    /// <summary>Per-image steps on both backends.</summary>
    sealed class StepsPair(ISpikingBackend reference, ISpikingBackend candidate, int images) : IDisposable
    {
        public readonly ImageSteps Expected = reference.AllocateSteps(images), Actual = candidate.AllocateSteps(images);

        public void Set(params int[] steps)
        {
            reference.UploadSteps(steps, Expected);
            candidate.UploadSteps(steps, Actual);
        }

        public void Dispose()
        {
            Expected.Dispose();
            Actual.Dispose();
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
            _candidate.ClearImage(t.Actual, image);
        }
    }

    StepsPair Steps(int images) => new(_reference, _candidate, images);
    Pair Tensors(params int[] shape) => new(_reference, _candidate, shape);
    SpikePair Spikes(MultiThresholdNeuron neuron, params int[] shape) => new(_reference, _candidate, neuron, shape);
    CounterPair Counters(int images) => new(_reference, _candidate, images);

    static int Count(int[] shape) => shape.Aggregate(1, (a, b) => a * b);

    void Fire(int groups, int inner, int levels, SpikeRounding rounding)
    {
        int[] shape = sizes.Fire;
        int images = shape[0], count = Count(shape);
        var neuron = CheckData.Neuron(levels, groups, inner, seed: groups + inner, rounding);
        using var input = Tensors(shape);
        using var membrane = Tensors(shape);
        using var spikes = Spikes(neuron, shape);
        using var counters = Counters(images);
        membrane.Clear();
        counters.Clear();
        for (int step = 1; step <= Math.Min(6, sizes.Steps); step++)
        {
            // Inputs span silence to the top level so every level fires.
            input.Set(CheckData.Normal(count, step, std: 0.1f * (1 << levels)));
            _reference.Fire(input.Expected, membrane.Expected, spikes.Expected, counters.Expected, fanOut: 7);
            _candidate.Fire(input.Actual, membrane.Actual, spikes.Actual, counters.Actual, fanOut: 7);
            int differ = spikes.AssertSame($"spikes at step {step}");
            if (differ == 0) membrane.AssertClose($"membranes at step {step}", atol: 1e-4f);
            counters.AssertEqual($"counters at step {step}", tolerance: differ);
        }
    }

    void SpikeLinear(int groups)
    {
        var (images, rows, inFeatures, outFeatures) = sizes.SpikeLinear;
        var neuron = CheckData.Neuron(6, groups, 1, seed: 5);
        var layer = new LinearLayer(CheckData.Normal(outFeatures * inFeatures, 1, 0.3f), CheckData.Normal(outFeatures, 2), inFeatures, outFeatures);
        using var spikes = Spikes(neuron, images, rows, inFeatures);
        using var output = Tensors(images, rows, outFeatures);
        foreach (var density in new[] { 0.0, 0.05, 0.5, 1.0 })
        {
            spikes.Set(CheckData.Codes(images * rows * inFeatures, 6, seed: (int)(density * 100), density));
            _reference.SpikeLinear(spikes.Expected, layer, output.Expected);
            _candidate.SpikeLinear(spikes.Actual, layer, output.Actual);
            output.AssertClose($"spike linear at density {density}");
        }
    }

    void Linear()
    {
        var (rows, inFeatures, outFeatures) = sizes.Linear;
        var layer = new LinearLayer(CheckData.Normal(outFeatures * inFeatures, 1, 0.3f), CheckData.Normal(outFeatures, 2), inFeatures, outFeatures);
        using var input = Tensors(rows, inFeatures);
        using var output = Tensors(rows, outFeatures);
        input.Set(CheckData.Normal(rows * inFeatures, 3));
        _reference.Linear(input.Expected, layer, output.Expected);
        _candidate.Linear(input.Actual, layer, output.Actual);
        output.AssertClose("linear");
    }

    void ExpectationCompensation(string function)
    {
        int[] shape = function == "softmax" ? sizes.Softmax : sizes.RowWise;
        int width = sizes.RowWise[^1];
        using var input = Tensors(shape);
        using var output = Tensors(shape);
        using var inputSum = Tensors(shape);
        using var outputSum = Tensors(shape);
        var norm = new LayerNormLayer(CheckData.Normal(width, 1, 0.2f, 1f), CheckData.Normal(width, 2, 0.1f), 1e-6f);
        var expectedState = new EcState(inputSum.Expected, outputSum.Expected);
        var actualState = new EcState(inputSum.Actual, outputSum.Actual);
        inputSum.Clear();
        outputSum.Clear();
        using var steps = Steps(2);
        for (int t = 1; t <= sizes.Steps; t++)
        {
            // Image 1 starts over at iteration Joins: the two images run at different steps from then on.
            if (t == Joins) ClearImage(1, inputSum, outputSum);
            steps.Set(MixedSteps(t));
            input.Set(CheckData.Normal(Count(shape), 30 + t, std: 1.5f));
            switch (function)
            {
                case "layernorm":
                    _reference.LayerNormEc(input.Expected, expectedState, norm, steps.Expected, output.Expected);
                    _candidate.LayerNormEc(input.Actual, actualState, norm, steps.Actual, output.Actual);
                    break;
                case "gelu":
                    _reference.GeluEc(input.Expected, expectedState, steps.Expected, output.Expected);
                    _candidate.GeluEc(input.Actual, actualState, steps.Actual, output.Actual);
                    break;
                default:
                    _reference.SoftmaxEc(input.Expected, expectedState, steps.Expected, output.Expected);
                    _candidate.SoftmaxEc(input.Actual, actualState, steps.Actual, output.Actual);
                    break;
            }
            output.AssertClose($"{function} output at t = {t}", atol: 1e-4f);
            inputSum.AssertClose($"{function} input sum at t = {t}", atol: 1e-4f);
            outputSum.AssertClose($"{function} cumulative output at t = {t}", atol: 1e-4f);
        }
    }

    void Attention()
    {
        var (images, n, d, heads) = sizes.Attention;
        int steps = Math.Min(6, sizes.Steps);
        var qkvNeuron = CheckData.Neuron(5, 3, d, seed: 1);
        var probNeuron = CheckData.Neuron(5, 1, 1, seed: 2);
        using var qkv = Spikes(qkvNeuron, images, n, 3 * d);
        using var probs = Spikes(probNeuron, images, heads, n, n);
        using var qkvSums = Tensors(images, n, 3 * d);
        using var probSums = Tensors(images, heads, n, n);
        using var scoreProducts = Tensors(images, heads, n, n);
        using var valueProducts = Tensors(images, n, d);
        using var scores = Tensors(images, heads, n, n);
        using var output = Tensors(images, n, d);
        using var counters = Counters(images);
        foreach (var t in new[] { qkvSums, probSums, scoreProducts, valueProducts }) t.Clear();
        counters.Clear();
        float scale = 1f / MathF.Sqrt(d / heads);
        using var imageSteps = Steps(images);
        for (int t = 1; t <= steps; t++)
        {
            // Image 1 starts over at iteration Joins (its sums and products cleared): mixed steps in one call.
            if (t == Joins) ClearImage(1, qkvSums, probSums, scoreProducts, valueProducts);
            imageSteps.Set(MixedSteps(t));
            qkv.Set(CheckData.Codes(images * n * 3 * d, 5, seed: t, density: 0.1 * t));
            probs.Set(CheckData.Codes(images * heads * n * n, 5, seed: 100 + t, density: 0.3));
            _reference.AttentionScoresEc(qkv.Expected, qkvSums.Expected, scoreProducts.Expected, heads, scale, imageSteps.Expected, scores.Expected, counters.Expected);
            _candidate.AttentionScoresEc(qkv.Actual, qkvSums.Actual, scoreProducts.Actual, heads, scale, imageSteps.Actual, scores.Actual, counters.Actual);
            scores.AssertClose($"scores at t = {t}", atol: 1e-4f);
            counters.AssertEqual($"counters after scores at t = {t}");
            _reference.AttentionValuesEc(probs.Expected, probSums.Expected, qkv.Expected, qkvSums.Expected, valueProducts.Expected, heads, imageSteps.Expected, output.Expected, counters.Expected);
            _candidate.AttentionValuesEc(probs.Actual, probSums.Actual, qkv.Actual, qkvSums.Actual, valueProducts.Actual, heads, imageSteps.Actual, output.Actual, counters.Actual);
            output.AssertClose($"A·V at t = {t}", atol: 1e-4f);
            qkvSums.AssertClose($"qkv sums at t = {t}");
            probSums.AssertClose($"probability sums at t = {t}");
            scoreProducts.AssertClose($"score products at t = {t}", atol: 1e-4f);
            valueProducts.AssertClose($"value products at t = {t}", atol: 1e-4f);
            counters.AssertEqual($"counters after A·V at t = {t}");
        }
    }

    void Elementwise()
    {
        int[] shape = sizes.Elementwise;
        int count = Count(shape);
        using var x = Tensors(shape);
        using var y = Tensors(shape);
        using var token = Tensors(shape[0], shape[2]);
        x.Set(CheckData.Normal(count, 1));
        y.Set(CheckData.Normal(count, 2));
        _reference.Add(x.Expected, y.Expected);
        _candidate.Add(x.Actual, y.Actual);
        x.AssertClose("add");
        _reference.SelectToken(x.Expected, 3, token.Expected);
        _candidate.SelectToken(x.Actual, 3, token.Actual);
        token.AssertClose("select token");
        _reference.Copy(y.Expected, x.Expected);
        _candidate.Copy(y.Actual, x.Actual);
        x.AssertClose("copy");
        _reference.Clear(x.Expected);
        _candidate.Clear(x.Actual);
        x.AssertClose("clear");
        }

    /// <summary>Per-image clear and copy, and an operation on a prefix view of the first images, which leaves the rest alone.</summary>
    void PerImageViews()
    {
        int[] shape = [3, sizes.Elementwise[1], sizes.Elementwise[2]];
        int count = Count(shape), perImage = count / 3;
        using var x = Tensors(shape);
        using var y = Tensors(shape);
        x.Set(CheckData.Normal(count, 5));
        y.Set(CheckData.Normal(count, 6));
        _reference.ClearImage(x.Expected, 1);
        _candidate.ClearImage(x.Actual, 1);
        x.AssertClose("clear image 1");
        _reference.CopyImage(x.Expected, 2, 0);
        _candidate.CopyImage(x.Actual, 2, 0);
        x.AssertClose("copy image 2 over image 0");
        DeviceTensor ex = _reference.Prefix(x.Expected, 2), ey = _reference.Prefix(y.Expected, 2);
        DeviceTensor ax = _candidate.Prefix(x.Actual, 2), ay = _candidate.Prefix(y.Actual, 2);
        CheckData.That(ax.Shape.SequenceEqual([2, shape[1], shape[2]]), $"prefix view shape [{string.Join(", ", ax.Shape)}]");
        _reference.Add(ex, ey);
        _candidate.Add(ax, ay);
        x.AssertClose("add over a prefix view");
        var all = new float[count];
        _candidate.Download(x.Actual, all);
        CheckData.AssertClose(CheckData.Normal(count, 5).AsSpan(2 * perImage), all.AsSpan(2 * perImage), "the image outside the prefix view", 0, 0);
        var head = new float[2 * perImage];
        _candidate.Download(ax, head);
        CheckData.AssertClose(all.AsSpan(0, 2 * perImage), head, "download of a prefix view", 0, 0);
    }
    /// <summary>
    /// The operations of the other ViT layouts: the relative position bias (1, H, N, N) added to every image's scores
    /// (B, H, N, N), also over a prefix view; mean pooling of the patch tokens (B, N, D) → (B, D) over tokens 1 … N − 1.
    /// </summary>
    void LayoutOps()
    {
        var (images, tokens, dim, heads) = sizes.Attention;
        int[] scoreShape = [images + 1, heads, tokens, tokens];
        int count = Count(scoreShape), perImage = count / (images + 1);
        using var scores = Tensors(scoreShape);
        using var bias = Tensors(1, heads, tokens, tokens);
        var before = CheckData.Normal(count, 3);
        var biasValues = CheckData.Normal(perImage, 4);
        scores.Set(before);
        bias.Set(biasValues);
        _reference.AddBroadcast(scores.Expected, bias.Expected);
        _candidate.AddBroadcast(scores.Actual, bias.Actual);
        scores.AssertClose("broadcast add");
        var reference = new float[count];
        _reference.Download(scores.Expected, reference);
        int last = images * perImage + perImage / 3;
        CheckData.That(Math.Abs(reference[last] - (before[last] + biasValues[perImage / 3])) < 1e-5f, "the reference's broadcast add");
        // over a view of all images but the last (a batched session's occupied slots) the last is left as it was
        _reference.AddBroadcast(_reference.Prefix(scores.Expected, images), bias.Expected);
        _candidate.AddBroadcast(_candidate.Prefix(scores.Actual, images), bias.Actual);
        scores.AssertClose("broadcast add over a prefix view");

        int[] tokenShape = [images, tokens, dim];
        int tokenCount = Count(tokenShape);
        using var x = Tensors(tokenShape);
        using var mean = Tensors(images, dim);
        var values = CheckData.Normal(tokenCount, 5);
        x.Set(values);
        _reference.MeanTokens(x.Expected, 1, mean.Expected);
        _candidate.MeanTokens(x.Actual, 1, mean.Actual);
        mean.AssertClose("mean of tokens");
        var pooled = new float[images * dim];
        _reference.Download(mean.Expected, pooled);
        float expected = 0;
        for (int n = 1; n < tokens; n++) expected += values[(long)n * dim + 3];
        CheckData.That(Math.Abs(pooled[3] - expected / (tokens - 1)) < 1e-4f, "the reference's mean of tokens");
    }
}
