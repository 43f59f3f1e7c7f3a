using Ecmt.Engine.Conversion;
using Ecmt.Engine.Data;
using Ecmt.Engine.Simulation;
using Ecmt.Kernels;
using Ecmt.Kernels.Reference;

namespace Ecmt.Engine.Tests;

/// <summary>The whole spiking model on the reference backend: the properties of ECMT.md section 6.</summary>
public class SimulationTests
{
    static double MaxError(StepOutput output, float[] ann, int image)
    {
        var logits = output.Logits(image);
        int c = output.Classes;
        double worst = 0;
        for (int k = 0; k < c; k++) worst = Math.Max(worst, Math.Abs(logits[k] / output.Step - ann[image * c + k]));
        return worst;
    }

    /// <summary>The paper's neuron, and the nearest-level neuron with the quantile as level 2's value at every calibrated place.</summary>
    public static TheoryData<string> Conversions => ["paper", "nearest, quantile at level 2"];

    static ConversionSettings SettingsFor(string name) => name == "paper"
        ? ConversionSettings.Calibrated()
        : ConversionSettings.Calibrated() with
        {
            Rounding = Rounding.Nearest,
            QuantileLevels = Places.All.ToDictionary(p => p.Key(), _ => 2),
        };

    [Theory]
    [MemberData(nameof(Conversions))]
    public void Accumulated_logits_over_T_converge_to_the_ANN_logits(string conversion)
    {
        var converted = TestModels.TinyConverted(SettingsFor(conversion));
        var model = new SpikingModel(converted);
        const int images = 4;
        var pixels = TestModels.RandomImages(model.Config, images, 21).Normalized(0, images, model.Config);
        var ann = model.Ann.Forward(pixels, images);
        using var session = new SpikingSession(model, new ReferenceBackend(), images);
        session.Reset(pixels);
        var error = new double[65];
        for (int t = 1; t <= 64; t++)
        {
            var output = session.Next();
            error[t] = Enumerable.Range(0, images).Max(i => MaxError(output, ann, i));
        }
        double logitScale = ann.Max(MathF.Abs);
        Assert.True(error[64] < error[4] / 4, $"error at T=4 {error[4]:G3}, at T=64 {error[64]:G3}");
        Assert.True(error[32] < error[8], $"error at T=8 {error[8]:G3}, at T=32 {error[32]:G3}");
        Assert.True(error[64] < 0.05 * logitScale, $"error at T=64 {error[64]:G3} vs logit scale {logitScale:G3}");
    }

    [Fact]
    public void Every_MT_neuron_fires_at_most_once_per_step_and_the_counters_agree_with_the_spikes()
    {
        var converted = TestModels.TinyConverted();
        var model = new SpikingModel(converted);
        var c = model.Config;
        var pixels = TestModels.RandomImages(c, 2, 5).Normalized(0, 2, c);
        using var session = new SpikingSession(model, new ReferenceBackend(), 2);
        session.Reset(pixels);
        long expectedSpikes = 0;
        for (int t = 1; t <= 5; t++)
        {
            var output = session.Next();
            for (int block = 0; block < c.Depth; block++)
            {
                foreach (var place in new[] { Place.FcQkv, Place.Q, Place.S, Place.FcOut, Place.Fc1, Place.Fc2 })
                {
                    var codes = session.SpikeCodes(block, place);
                    int levels = converted.Settings.LevelsAt(place);
                    // A code is one spike or none: |code| ≤ n, and the value it stands for is 0 or ±λ·2^k.
                    Assert.All(codes, code => Assert.InRange((int)code, -levels, levels));
                    expectedSpikes += codes.Count(code => code != 0);
                }
            }
            Assert.Equal(expectedSpikes, output.Spikes.Sum());
        }
    }

    [Fact]
    public void Synaptic_operations_at_the_first_step_follow_from_the_spikes()
    {
        var converted = TestModels.TinyConverted();
        var model = new SpikingModel(converted);
        var c = model.Config;
        int n = c.Tokens, d = c.EmbedDim, f = c.MlpDim, h = c.NumHeads, dh = c.HeadDim;
        var pixels = TestModels.RandomImages(c, 1, 6).Normalized(0, 1, c);
        using var session = new SpikingSession(model, new ReferenceBackend(), 1);
        session.Reset(pixels);
        var output = session.Next();
        long expected = 0;
        for (int block = 0; block < c.Depth; block++)
        {
            long Nnz(Place p) => session.SpikeCodes(block, p).LongCount(code => code != 0);
            expected += Nnz(Place.FcQkv) * 3 * d + Nnz(Place.FcOut) * d + Nnz(Place.Fc1) * f + Nnz(Place.Fc2) * d;
            // At t = 1 the running sums are zero, so only A·B counts: Σ_j nnz(A[:, j]) · nnz(B[j, :]).
            var qkv = session.SpikeCodes(block, Place.Q);
            var s = session.SpikeCodes(block, Place.S);
            for (int head = 0; head < h; head++)
            {
                for (int j = 0; j < dh; j++)
                {
                    long q = 0, k = 0;
                    for (int token = 0; token < n; token++)
                    {
                        if (qkv[token * 3 * d + head * dh + j] != 0) q++;
                        if (qkv[token * 3 * d + d + head * dh + j] != 0) k++;
                    }
                    expected += q * k;
                }
                for (int key = 0; key < n; key++)
                {
                    long a = 0, v = 0;
                    for (int query = 0; query < n; query++) if (s[(head * n + query) * n + key] != 0) a++;
                    for (int j = 0; j < dh; j++) if (qkv[key * 3 * d + 2 * d + head * dh + j] != 0) v++;
                    expected += a * v;
                }
            }
        }
        Assert.Equal(expected, output.Sops[0]);
        Assert.Equal(Energy.AccumulateOverMac * output.FiringRate(0), output.EnergyRatio(0), 12);
        Assert.Equal((double)expected / model.DenseOperationsPerStep, output.FiringRate(0), 12);
    }

    [Fact]
    public void Images_in_a_batch_are_independent_and_reset_starts_afresh()
    {
        var model = new SpikingModel(TestModels.TinyConverted());
        var c = model.Config;
        var pixels = TestModels.RandomImages(c, 3, 8).Normalized(0, 3, c);
        using var batch = new SpikingSession(model, new ReferenceBackend(), 3);
        using var single = new SpikingSession(model, new ReferenceBackend(), 1);
        batch.Reset(pixels);
        single.Reset(pixels.AsSpan(c.PixelsPerImage, c.PixelsPerImage));
        var first = new List<float[]>();
        for (int t = 0; t < 4; t++)
        {
            var b = batch.Next();
            var s = single.Next();
            TestLogits(s.Logits(0).ToArray(), b.Logits(1).ToArray());
            Assert.Equal(s.Sops[0], b.Sops[1]);
            first.Add(b.AccumulatedLogits.ToArray());
        }
        batch.Reset(pixels);
        for (int t = 0; t < 4; t++) Assert.Equal(first[t], batch.Next().AccumulatedLogits);
    }

    static void TestLogits(float[] expected, float[] actual)
    {
        for (int i = 0; i < expected.Length; i++) Assert.Equal(expected[i], actual[i], 4);
    }

    [Fact]
    public void Shipped_model_converges_to_its_ANN_on_real_images()
    {
        var path = TestModels.ShippedModel();
        Assert.SkipWhen(path is null, "the shipped model is not built yet");
        var model = new SpikingModel(ConvertedModel.Load(path!));
        var test = FashionMnist.Load(Split.Test).Take(16);
        var pixels = test.Normalized(0, 16, model.Config);
        var ann = model.Ann.Forward(pixels, 16);
        using var session = new SpikingSession(model, Backends.Create(BackendKind.Reference), 16);
        session.Reset(pixels);
        var error = new double[33];
        for (int t = 1; t <= 32; t++)
        {
            var output = session.Next();
            error[t] = Enumerable.Range(0, 16).Average(i => MaxError(output, ann, i));
        }
        Assert.True(error[32] < error[8] && error[8] < error[2], $"mean max logit error at T=2 {error[2]:G3}, 8 {error[8]:G3}, 32 {error[32]:G3}");
    }
}
