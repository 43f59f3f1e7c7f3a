using Ecmt.Engine.Conversion;
using Ecmt.Engine.Imaging;
using Ecmt.Engine.Simulation;
using Ecmt.Kernels.Reference;
using Ecmt.Protos.V1;
using SkiaSharp;

namespace Ecmt.Server.Tests;

/// <summary>Classify on the in-process server: the stream, its numbers against the engine run directly, inputs, stop policies.</summary>
public sealed class ClassifyTests : IAsyncLifetime
{
    ServerHost _host = null!;

    public async ValueTask InitializeAsync() => _host = await ServerHost.InProcessAsync();

    public async ValueTask DisposeAsync() => await _host.DisposeAsync();

    [Fact]
    public async Task Streams_one_update_per_step_with_top_k_and_cumulative_counts()
    {
        var updates = await _host.Client.RunAsync(Requests.Tensor(TestModels.Tiny, maxSteps: 6, topK: 3));

        Assert.Equal([1u, 2, 3, 4, 5, 6], updates.Select(u => u.Step));
        Assert.All(updates[..^1], u => Assert.Equal(StopReason.Unspecified, u.StopReason));
        Assert.Equal(StopReason.MaxSteps, updates[^1].StopReason);
        foreach (var u in updates)
        {
            Assert.Equal(3, u.Top.Count);
            Assert.True(u.Top[0].Probability >= u.Top[1].Probability && u.Top[1].Probability >= u.Top[2].Probability);
            Assert.Equal(u.Top[0].Probability, u.Confidence);
            Assert.Equal(Engine.Data.FashionMnist.ClassNames[(int)u.Top[0].Index], u.Top[0].Name);
            Assert.True(u.EnergyRatio > 0 && u.FiringRate > 0 && u.StepMs > 0);
        }
        for (int i = 1; i < updates.Count; i++)
        {
            Assert.True(updates[i].SynapticOperations > updates[i - 1].SynapticOperations, "SOPs are cumulative");
            Assert.True(updates[i].EnergyRatio > updates[i - 1].EnergyRatio, "energy is cumulative");
            Assert.True(updates[i].ElapsedMs >= updates[i - 1].ElapsedMs + updates[i].StepMs * 0.99);
        }
    }

    [Fact]
    public async Task Every_number_matches_the_engine_run_directly()
    {
        var updates = await _host.Client.RunAsync(Requests.Tensor(TestModels.Tiny, seed: 11, maxSteps: 5, topK: 10));

        var model = new SpikingModel(ConvertedModel.Load(TestModels.Dir(TestModels.Tiny)));
        Assert.True(model.Converted.Confidence.IsCalibrated);
        var tracker = model.Converted.Confidence.Track(model.Config.NumClasses);
        using var backend = new ReferenceBackend();
        using var session = new SpikingSession(model, backend, 1);
        session.Reset(ImageInput.Normalise(TestModels.Image(11).Intensities, model.Config));
        foreach (var update in updates)
        {
            var output = session.Next();
            var signal = tracker.Observe(output.Logits(0), output.Step);
            var p = tracker.Probabilities;
            Assert.Equal((uint)output.Prediction(0), update.Top[0].Index);
            foreach (var score in update.Top) Assert.Equal(p[(int)score.Index], score.Probability);
            Assert.Equal(signal.Margin, update.Margin);
            Assert.True(update.HasGate);
            Assert.Equal(signal.Gate!.Value, update.Gate);
            Assert.Equal((ulong)output.Sops[0], update.SynapticOperations);
            Assert.Equal(output.EnergyRatio(0), update.EnergyRatio, 12);
            Assert.Equal(output.FiringRate(0), update.FiringRate, 12);
        }
    }

    [Fact]
    public async Task A_png_of_the_model_size_is_read_pixel_for_pixel()
    {
        var fromPng = await _host.Client.RunAsync(Requests.Image(TestModels.Tiny, TestModels.Png(3), maxSteps: 4));
        var fromTensor = await _host.Client.RunAsync(Requests.Tensor(TestModels.Tiny, seed: 3, maxSteps: 4, topK: 5));
        Assert.Equal(fromTensor.Select(u => u.Top.ToString()), fromPng.Select(u => u.Top.ToString()));
        Assert.Equal(fromTensor.Select(u => u.SynapticOperations), fromPng.Select(u => u.SynapticOperations));
    }

    [Fact]
    public async Task Colour_jpeg_and_larger_non_square_images_are_converted()
    {
        // 84×56 RGB: converted to luminance, the centred 56×56 square cropped, resized to 28×28.
        var info = new SKImageInfo(84, 56, SKColorType.Rgba8888, SKAlphaType.Opaque);
        using var bitmap = new SKBitmap(info);
        using (var canvas = new SKCanvas(bitmap))
        {
            canvas.Clear(new SKColor(200, 30, 90));
            using var paint = new SKPaint { Color = SKColors.White };
            canvas.DrawRect(30, 10, 20, 30, paint);
        }
        using var jpeg = bitmap.Encode(SKEncodedImageFormat.Jpeg, 90);
        using var png = bitmap.Encode(SKEncodedImageFormat.Png, 100);

        var fromJpeg = await _host.Client.RunAsync(Requests.Image(TestModels.Tiny, jpeg.ToArray(), maxSteps: 3));
        var fromPng = await _host.Client.RunAsync(Requests.Image(TestModels.Tiny, png.ToArray(), maxSteps: 3));
        Assert.Equal(3, fromJpeg.Count);
        Assert.Equal(3, fromPng.Count);

        var config = SyntheticModels.Config("x");
        var pixels = ImageInput.Decode(png.ToArray(), config);
        float red = (0.299f * 200 + 0.587f * 30 + 0.114f * 90) / 255f;
        Assert.Equal(red, pixels[0], 2);                   // top-left: the background's luminance
        Assert.Equal(1f, pixels[14 * 28 + 14], 2);         // centre: inside the white rectangle
    }

    [Fact]
    public async Task Defaults_apply_when_steps_and_top_k_are_zero()
    {
        var updates = await _host.Client.RunAsync(Requests.Tensor(TestModels.Tiny, maxSteps: 0, topK: 0));
        Assert.Equal(8, updates.Count);
        Assert.All(updates, u => Assert.Equal(5, u.Top.Count));
        var clamped = await _host.Client.RunAsync(Requests.Tensor(TestModels.Tiny, maxSteps: 1, topK: 1000));
        Assert.Equal(TestModels.Classes, clamped[0].Top.Count);
    }

    [Fact]
    public async Task Min_confidence_stops_at_the_first_confident_step()
    {
        var full = await _host.Client.RunAsync(Requests.Tensor(TestModels.Deep, seed: 5, maxSteps: 12));
        // A threshold between two steps' confidences: the stream must end at the first step reaching it.
        float threshold = full.Select(u => u.Confidence).Skip(2).Max();
        int expected = full.FindIndex(u => u.Confidence >= threshold) + 1;

        var request = Requests.Tensor(TestModels.Deep, seed: 5, maxSteps: 12);
        request.Stop = new Protos.V1.StopPolicy { MinConfidence = threshold };
        var stopped = await _host.Client.RunAsync(request);

        Assert.Equal(expected, stopped.Count);
        Assert.Equal(StopReason.Confident, stopped[^1].StopReason);
        Assert.True(stopped[^1].Confidence >= threshold);
        Assert.All(stopped[..^1], u => Assert.True(u.Confidence < threshold));
    }

    [Fact]
    public async Task Stable_steps_stops_when_the_top_class_held_for_k_steps()
    {
        const int k = 2, steps = 16;
        var full = await _host.Client.RunAsync(Requests.Tensor(TestModels.Deep, seed: 9, maxSteps: steps));
        var top = full.Select(u => u.Top[0].Index).ToArray();
        int expected = steps;
        for (int t = k; t < steps; t++)
            if (Enumerable.Range(t - k, k).All(s => top[s] == top[t])) { expected = t + 1; break; }

        var request = Requests.Tensor(TestModels.Deep, seed: 9, maxSteps: steps);
        request.Stop = new Protos.V1.StopPolicy { StableSteps = k };
        var stopped = await _host.Client.RunAsync(request);

        Assert.Equal(expected, stopped.Count);
        Assert.Equal(expected < steps || Enumerable.Range(steps - 1 - k, k).All(s => top[s] == top[^1]) ? StopReason.Stable : StopReason.MaxSteps,
            stopped[^1].StopReason);
        Assert.True(expected >= k + 1);
    }

    /// <summary>Where the engine's own tracker, run over an uninterrupted stream, says the policy holds first (else the last step).</summary>
    static int FirstStop(List<ClassifyUpdate> full, Ecmt.Protos.StopPolicy policy)
    {
        var tracker = policy.Track();
        for (int i = 0; i < full.Count; i++)
            if (tracker.Observe(new Ecmt.Protos.StopSignal((int)full[i].Step, (int)full[i].Top[0].Index, full[i].Confidence, full[i].Margin,
                    full[i].HasGate ? full[i].Gate : null))) return i + 1;
        return full.Count;
    }

    [Fact]
    public async Task Combined_rules_stop_where_every_one_holds()
    {
        const int steps = 16;
        var full = await _host.Client.RunAsync(Requests.Tensor(TestModels.Deep, seed: 9, maxSteps: steps));
        // Stable for one step, and at least as late as one step after the first stable step.
        var stable = new Ecmt.Protos.StopPolicy { StableSteps = 1 };
        int firstStable = FirstStop(full, stable);
        var policy = stable with { MinSteps = firstStable + 1 };
        int expected = FirstStop(full, policy);
        Assert.True(expected > firstStable);

        var request = Requests.Tensor(TestModels.Deep, seed: 9, maxSteps: steps);
        request.Stop = policy.ToProto();
        var stopped = await _host.Client.RunAsync(request);
        Assert.Equal(expected, stopped.Count);
        if (expected < steps) Assert.Equal(StopReason.Policy, stopped[^1].StopReason);
    }

    [Fact]
    public async Task The_recommended_policy_is_the_one_model_info_reports()
    {
        var info = await _host.Client.GetModelAsync(new GetModelRequest { Name = TestModels.Tiny });
        Assert.True(info.TemperaturesCalibrated);
        Assert.True(info.Gate);
        Assert.NotNull(info.RecommendedStop);
        Assert.False(info.RecommendedStop.Recommended);
        Assert.Equal(16u, info.RecommendedStopStats.Images);
        Assert.Equal(6u, info.RecommendedStopStats.MaxSteps);
        var policy = Ecmt.Protos.StopPolicy.FromProto(info.RecommendedStop);
        var deep = await _host.Client.GetModelAsync(new GetModelRequest { Name = TestModels.Deep });
        Assert.False(deep.TemperaturesCalibrated);
        Assert.False(deep.Gate);
        Assert.Null(deep.RecommendedStop);

        for (int seed = 1; seed <= 4; seed++)
        {
            var full = await _host.Client.RunAsync(Requests.Tensor(TestModels.Tiny, seed: seed, maxSteps: 12));
            var request = Requests.Tensor(TestModels.Tiny, seed: seed, maxSteps: 12);
            request.Stop = new Protos.V1.StopPolicy { Recommended = true };
            var stopped = await _host.Client.RunAsync(request);
            Assert.Equal(FirstStop(full, policy), stopped.Count);
        }
    }

    [Fact]
    public async Task Models_are_listed_and_described()
    {
        var list = await _host.Client.ListModelsAsync(new ListModelsRequest());
        Assert.Equal([TestModels.Broken, TestModels.Deep, TestModels.Tiny], list.Models.Select(m => m.Name));

        var tiny = await _host.Client.GetModelAsync(new GetModelRequest { Name = TestModels.Tiny });
        Assert.True(tiny.Ready);
        Assert.Equal(1u, tiny.Channels);
        Assert.Equal(28u, tiny.ImageSize);
        Assert.Equal(7u, tiny.PatchSize);
        Assert.Equal(Engine.Data.FashionMnist.ClassNames, tiny.ClassNames);
        Assert.Equal("calibrated", tiny.Preset);
        Assert.Equal("per-tensor", tiny.Thresholds);
        Assert.Equal(8u, tiny.Levels["fc2"]);
        Assert.Equal(8u, tiny.DefaultSteps);
        Assert.Equal(128u, tiny.MaxSteps);
        Assert.Equal("reference", tiny.Backend);
        Assert.Equal("ecmt.v1.Classifier/tiny", tiny.HealthService);

        var broken = list.Models.Single(m => m.Name == TestModels.Broken);
        Assert.False(broken.Ready);
    }
}
