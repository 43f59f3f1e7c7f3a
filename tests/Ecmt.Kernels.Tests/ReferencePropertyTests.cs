using Ecmt.Kernels.Reference;

namespace Ecmt.Kernels.Tests;

/// <summary>The properties ECMT.md section 6 states, checked on the reference operations.</summary>
public class ReferencePropertyTests
{
    readonly ReferenceBackend _backend = new();

    float[] Read(DeviceTensor t)
    {
        var values = new float[t.Length];
        _backend.Download(t, values);
        return values;
    }

    [Fact]
    public void Erf_matches_known_values()
    {
        // erf values from Abramowitz and Stegun, table 7.1
        Assert.Equal(0f, ReferenceMath.Erf(0f), 6);
        Assert.Equal(0.5204999f, ReferenceMath.Erf(0.5f), 6);
        Assert.Equal(0.8427008f, ReferenceMath.Erf(1f), 6);
        Assert.Equal(0.9953223f, ReferenceMath.Erf(2f), 6);
        Assert.Equal(-0.8427008f, ReferenceMath.Erf(-1f), 6);
    }

    public static TheoryData<string> Nonlinearities => new() { "layernorm", "gelu", "softmax" };

    [Theory]
    [MemberData(nameof(Nonlinearities))]
    public void Expectation_compensation_accumulates_t_times_F_of_the_mean_input(string function)
    {
        const int rows = 6, width = 10, steps = 12;
        var input = _backend.Allocate(2, rows / 2, width);
        var output = _backend.Allocate(2, rows / 2, width);
        using var state = new EcState(_backend.Allocate(2, rows / 2, width), _backend.Allocate(2, rows / 2, width));
        var gamma = TestData.Normal(width, 1, 0.3f, 1f);
        var beta = TestData.Normal(width, 2, 0.1f);
        var norm = new LayerNormLayer(gamma, beta, 1e-6f);
        var sumInput = new double[rows * width];
        var sumOutput = new double[rows * width];
        for (int t = 1; t <= steps; t++)
        {
            var x = TestData.Normal(rows * width, 100 + t, 2f);
            for (int i = 0; i < x.Length; i++) sumInput[i] += x[i];
            _backend.Upload(x, input);
            using var at = TestData.Uniform(_backend, 2, t);
            switch (function)
            {
                case "layernorm": _backend.LayerNormEc(input, state, norm, at, output); break;
                case "gelu": _backend.GeluEc(input, state, at, output); break;
                default: _backend.SoftmaxEc(input, state, at, output); break;
            }
            var o = Read(output);
            for (int i = 0; i < o.Length; i++) sumOutput[i] += o[i];

            // t·F(mean input), computed here row by row with the same F
            var expected = new float[rows * width];
            for (int r = 0; r < rows; r++)
            {
                var mean = new float[width];
                for (int j = 0; j < width; j++) mean[j] = (float)(sumInput[r * width + j] / t);
                var f = new float[width];
                switch (function)
                {
                    case "layernorm": ReferenceMath.LayerNorm(mean, gamma, beta, 1e-6f, f); break;
                    case "gelu": for (int j = 0; j < width; j++) f[j] = ReferenceMath.Gelu(mean[j]); break;
                    default: ReferenceMath.Softmax(mean, f); break;
                }
                for (int j = 0; j < width; j++) expected[r * width + j] = t * f[j];
            }
            TestData.AssertClose(expected, sumOutput.Select(v => (float)v).ToArray(), $"{function} after {t} steps", rtol: 1e-4f, atol: 1e-4f);
        }
    }

    [Fact]
    public void Matrix_product_EC_accumulates_the_product_of_the_running_sums_over_t()
    {
        const int images = 2, n = 5, d = 8, heads = 2, dh = d / heads, steps = 10;
        var neuron = TestData.Neuron(4, 1, 1, 3);
        var probsNeuron = TestData.Neuron(4, 1, 1, 4);
        var qkv = _backend.AllocateSpikes(neuron, images, n, 3 * d);
        var probs = _backend.AllocateSpikes(probsNeuron, images, heads, n, n);
        var qkvSums = _backend.Allocate(images, n, 3 * d);
        var probSums = _backend.Allocate(images, heads, n, n);
        var scoreProducts = _backend.Allocate(images, heads, n, n);
        var valueProducts = _backend.Allocate(images, n, d);
        var scores = _backend.Allocate(images, heads, n, n);
        var values = _backend.Allocate(images, n, d);
        var counters = _backend.AllocateCounters(images);
        float scale = 1f / MathF.Sqrt(dh);
        var qkvTotal = new double[images * n * 3 * d];
        var probTotal = new double[images * heads * n * n];
        var scoreSum = new double[scores.Length];
        var valueSum = new double[values.Length];
        for (int t = 1; t <= steps; t++)
        {
            var qkvCodes = TestData.Codes(qkv.Length, 4, 10 + t);
            var probCodes = TestData.Codes(probs.Length, 4, 50 + t);
            _backend.UploadCodes(qkvCodes, qkv);
            _backend.UploadCodes(probCodes, probs);
            for (int i = 0; i < qkvCodes.Length; i++) qkvTotal[i] += neuron.Value(qkvCodes[i], 0);
            for (int i = 0; i < probCodes.Length; i++) probTotal[i] += probsNeuron.Value(probCodes[i], 0);
            using var at = TestData.Uniform(_backend, images, t);
            _backend.AttentionScoresEc(qkv, qkvSums, scoreProducts, heads, scale, at, scores, counters);
            _backend.AttentionValuesEc(probs, probSums, qkv, qkvSums, valueProducts, heads, at, values, counters);
            var s = Read(scores);
            var v = Read(values);
            for (int i = 0; i < s.Length; i++) scoreSum[i] += s[i];
            for (int i = 0; i < v.Length; i++) valueSum[i] += v[i];

            var expectedScores = new float[scores.Length];
            var expectedValues = new float[values.Length];
            for (int b = 0; b < images; b++)
                for (int h = 0; h < heads; h++)
                    for (int i = 0; i < n; i++)
                    {
                        for (int j = 0; j < n; j++)
                        {
                            double dot = 0;
                            for (int k = 0; k < dh; k++)
                                dot += qkvTotal[(b * n + i) * 3 * d + h * dh + k] * qkvTotal[(b * n + j) * 3 * d + d + h * dh + k];
                            expectedScores[((b * heads + h) * n + i) * n + j] = (float)(scale * dot / t);
                        }
                        for (int k = 0; k < dh; k++)
                        {
                            double dot = 0;
                            for (int j = 0; j < n; j++)
                                dot += probTotal[((b * heads + h) * n + i) * n + j] * qkvTotal[(b * n + j) * 3 * d + 2 * d + h * dh + k];
                            expectedValues[(b * n + i) * d + h * dh + k] = (float)(dot / t);
                        }
                    }
            TestData.AssertClose(expectedScores, scoreSum.Select(x => (float)x).ToArray(), $"Σ scores after {t} steps", atol: 1e-4f);
            TestData.AssertClose(expectedValues, valueSum.Select(x => (float)x).ToArray(), $"Σ A·V after {t} steps", atol: 1e-4f);
        }
    }

    [Fact]
    public void MT_neuron_emits_at_most_one_spike_of_a_valid_value_per_step()
    {
        var neuron = TestData.Neuron(8, 3, 4, 7);
        var x = TestData.Normal(3 * 4 * 10, 8, 20f);
        var membrane = new float[x.Length];
        for (int step = 0; step < 5; step++)
        {
            for (int i = 0; i < x.Length; i++)
            {
                membrane[i] += x[i];
                float before = membrane[i];
                sbyte code = neuron.Fire(ref membrane[i], neuron.GroupOf(i));
                int g = neuron.GroupOf(i);
                float value = neuron.Value(code, g);
                // The code is one spike: silence, or exactly one level on one side.
                Assert.InRange(Math.Abs((int)code), 0, neuron.Levels);
                var allowed = Enumerable.Range(0, neuron.Levels)
                    .SelectMany(k => new[] { neuron.LambdaPos[g] * MathF.Pow(2, k), -neuron.LambdaNeg[g] * MathF.Pow(2, k) })
                    .Append(0f);
                Assert.Contains(value, allowed);
                Assert.Equal(before - value, membrane[i], 5);
            }
        }
    }

    [Fact]
    public void MT_neuron_fires_the_largest_reachable_level_and_rounds_to_nearest()
    {
        var neuron = MultiThresholdNeuron.PerTensor(4, 1f, 0.5f);
        (float Input, sbyte Code)[] cases =
        [
            (0.49f, 0), (0.5f, 1), (1.49f, 1), (1.5f, 2), (3.5f, 3), (7.5f, 4), (100f, 4),
            (-0.24f, 0), (-0.25f, -1), (-0.75f, -2), (-100f, -4),
        ];
        foreach (var (input, code) in cases)
        {
            float v = input;
            Assert.Equal(code, neuron.Fire(ref v, 0));
        }
    }

    [Fact]
    public void Nearest_rounding_fires_the_level_nearest_the_membrane()
    {
        var neuron = new MultiThresholdNeuron(4, [1f], [0.5f], rounding: SpikeRounding.Nearest);
        // Positive side λ = 1: levels 1, 2, 4, 8 fire from 0.5, 1.5, 3, 6; negative λ = 0.5: from 0.25, 0.75, 1.5, 3.
        (float Input, sbyte Code)[] cases =
        [
            (0.49f, 0), (0.5f, 1), (1.49f, 1), (1.5f, 2), (2.99f, 2), (3f, 3), (5.99f, 3), (6f, 4), (100f, 4),
            (-0.24f, 0), (-0.25f, -1), (-0.74f, -1), (-0.75f, -2), (-1.49f, -2), (-1.5f, -3), (-3f, -4),
        ];
        foreach (var (input, code) in cases)
        {
            float v = input;
            Assert.Equal(code, neuron.Fire(ref v, 0));
            Assert.Equal(input - neuron.Value(code, 0), v, 6);
        }
    }

    [Fact]
    public void Nearest_rounding_with_constant_input_stays_bounded_and_its_mean_converges_like_one_over_t()
    {
        const float lambda = 1f;
        var neuron = new MultiThresholdNeuron(8, [lambda], [lambda], rounding: SpikeRounding.Nearest);
        foreach (var x in new[] { 0.3f, -0.3f, 0.77f, 1.3f, -2.6f, 5.1f, 37.9f, -60.2f, 63.4f })
        {
            float v = 0;
            double emitted = 0;
            float bound = MathF.Max(2 * MathF.Abs(x), lambda / 2);
            for (int t = 1; t <= 64; t++)
            {
                v += x;
                emitted += neuron.Value(neuron.Fire(ref v, 0), 0);
                Assert.True(MathF.Abs(v) <= bound + 1e-4f, $"x = {x}: |V({t})| = {MathF.Abs(v)} exceeds {bound}");
            }
            Assert.True(Math.Abs(emitted / 64 - x) <= bound / 64 + 1e-4);
        }
    }

    [Fact]
    public void MT_neuron_with_constant_input_stays_bounded_and_its_mean_converges_like_one_over_t()
    {
        const float lambda = 1f;
        const int levels = 8;
        var neuron = MultiThresholdNeuron.PerTensor(levels, lambda, lambda);
        foreach (var x in new[] { 0.3f, -0.3f, 0.77f, 1.3f, -2.6f, 5.1f, 37.9f, -100.2f, 127.4f })
        {
            float v = 0;
            double emitted = 0;
            for (int t = 1; t <= 64; t++)
            {
                v += x;
                var code = neuron.Fire(ref v, 0);
                emitted += neuron.Value(code, 0);
                float bound = MathF.Max(MathF.Abs(x), lambda / 2);
                Assert.True(MathF.Abs(v) <= bound + 1e-4f, $"x = {x}: |V({t})| = {MathF.Abs(v)} exceeds {bound}");
                // The emitted mean misses x by exactly what the membrane still holds.
                Assert.True(Math.Abs(Math.Abs(v) / t - Math.Abs(emitted / t - x)) <= 1e-5 * Math.Abs(x) + 1e-6,
                    $"x = {x}, t = {t}: |V|/t = {Math.Abs(v) / t}, |mean − x| = {Math.Abs(emitted / t - x)}");
            }
            Assert.True(Math.Abs(emitted / 64 - x) <= MathF.Max(MathF.Abs(x), lambda / 2) / 64 + 1e-4);
        }
    }
}
