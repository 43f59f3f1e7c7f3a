using Ecmt.Engine.Ann;
using Ecmt.Engine.Data;
using Ecmt.Engine.Model;
using Ecmt.Torch;
using static TorchSharp.torch;

namespace Ecmt.Engine.Tests;

/// <summary>The readable C# forward pass against libtorch on the same weights and inputs.</summary>
public class ReferenceVitTests
{
    static float MaxLogitDifference(VitWeights weights, float[] images, int count)
    {
        var reference = new ReferenceVit(weights).Forward(images, count);
        var expected = TestModels.TorchLogits(weights, images, count);
        Assert.Equal(expected.Length, reference.Length);
        return expected.Zip(reference, (a, b) => MathF.Abs(a - b)).Max();
    }

    [Fact]
    public void Matches_libtorch_on_random_weights_and_inputs()
    {
        foreach (var channels in new[] { 1, 3 })
        {
            var config = TestModels.Tiny(depth: 3, channels: channels);
            var weights = TestModels.RandomWeights(config, seed: channels);
            var images = TestModels.RandomImages(config, 16, seed: 5).Normalized(0, 16, config);
            float error = MaxLogitDifference(weights, images, 16);
            Assert.True(error <= 1e-4f, $"{channels} channels: max |logit difference| {error}");
        }
    }

    [Fact]
    public void Matches_libtorch_on_the_shipped_model_and_real_images()
    {
        var path = TestModels.ShippedModel();
        Assert.SkipWhen(path is null, "the shipped model is not built yet");
        var weights = ModelDirectory.Load(path!);
        var test = FashionMnist.Load(Split.Test).Take(64);
        float error = MaxLogitDifference(weights, test.Normalized(0, 64, weights.Config), 64);
        Assert.True(error <= 1e-4f, $"max |logit difference| {error}");
    }

    [Fact]
    public void Weights_survive_a_trip_through_libtorch_unchanged()
    {
        var config = TestModels.Tiny();
        var weights = VitWeights.Random(config, 7);
        using var torchVit = new TorchVit(config);
        torchVit.LoadWeights(weights);
        var back = torchVit.ExportWeights();
        foreach (var (name, t) in weights.Tensors) Assert.Equal(t.Data, back.Tensors[name].Data);
    }
}
