using Ecmt.Engine.Conversion;
using Ecmt.Engine.Data;
using Ecmt.Engine.Imaging;
using Ecmt.Engine.Model;
using Ecmt.Protos.V1;

namespace Ecmt.Server.Tests;

/// <summary>A ViT and an EVA-layout model hosted by one server at once.</summary>
public sealed class LayoutModelTests
{
    [Fact]
    public async Task A_vit_and_an_eva_model_are_served_side_by_side()
    {
        var root = Path.Combine(Path.GetTempPath(), $"ecmt-layout-tests-{Guid.NewGuid():N}");
        SyntheticModels.Create(Path.Combine(root, "vit"), SyntheticModels.Config("vit"), seed: 3);
        SyntheticModels.Create(Path.Combine(root, "eva"), FashionMnist.EvaLayout(SyntheticModels.Config("eva")) with { Name = "eva" }, seed: 4);
        try
        {
            await using var host = await ServerHost.InProcessOnAsync(root);
            var list = await host.Client.ListModelsAsync(new ListModelsRequest());
            Assert.Equal(["eva", "vit"], list.Models.Select(m => m.Name));
            Assert.All(list.Models, m => Assert.True(m.Ready, $"{m.Name} is not ready"));
            var eva = list.Models.Single(m => m.Name == "eva");
            Assert.Contains("qkv bias q_v", eva.Layout, StringComparison.Ordinal);
            Assert.Contains("mean pooling", eva.Layout, StringComparison.Ordinal);
            Assert.Contains("class token", list.Models.Single(m => m.Name == "vit").Layout, StringComparison.Ordinal);

            // Both classify, interleaved, and each gives what its own engine session gives.
            foreach (var name in new[] { "vit", "eva", "vit", "eva" })
            {
                var updates = await host.Client.RunAsync(Requests.Tensor(name, seed: 5, maxSteps: 3));
                Assert.Equal(3, updates.Count);
                var expected = ExpectedTop1(Path.Combine(root, name), TestModels.Image(5).Intensities, 3);
                Assert.Equal(expected, (int)updates[^1].Top[0].Index);
            }
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    /// <summary>The shipped models/ folder (fmnist-vit and fmnist-eva) served by one server, when both are converted.</summary>
    [Fact]
    public async Task The_shipped_vit_and_eva_are_served_together_and_classify_fashion_mnist()
    {
        string vit;
        try
        {
            vit = ModelDirectory.DefaultModelPath();
        }
        catch (DirectoryNotFoundException)
        {
            Assert.Skip("models/fmnist-vit is not in this checkout");
            return;
        }
        var models = Path.GetDirectoryName(vit)!;
        if (!ConvertedModel.IsConvertedModel(Path.Combine(models, "fmnist-eva"))) Assert.Skip("models/fmnist-eva is not converted in this checkout");
        if (!FashionMnist.IsAvailable) Assert.Skip("Fashion-MNIST is not installed (dataset-fashion-mnist)");

        await using var host = await ServerHost.InProcessOnAsync(models);
        var names = (await host.Client.ListModelsAsync(new ListModelsRequest())).Models.Select(m => m.Name).ToList();
        Assert.Contains("fmnist-vit", names);
        Assert.Contains("fmnist-eva", names);
        var test = FashionMnist.Load(Split.Test).Take(10);
        foreach (var name in new[] { "fmnist-vit", "fmnist-eva" })
        {
            int correct = 0;
            for (int i = 0; i < test.Count; i++)
            {
                var png = ImageInput.EncodePng(test.Image(i), 1, 28, 28);
                var updates = await host.Client.RunAsync(Requests.Image(name, png, maxSteps: 8));
                if (updates[^1].Top[0].Index == test.Labels[i]) correct++;
            }
            Assert.True(correct >= 7, $"{name}: {correct} of 10 test images right after 8 steps");
        }
    }

    static int ExpectedTop1(string directory, float[] intensities, int steps)
    {
        var model = new Engine.Simulation.SpikingModel(ConvertedModel.Load(directory));
        var c = model.Config;
        var pixels = intensities.Select(v => (v - c.Mean[0]) / c.Std[0]).ToArray();
        using var backend = new Kernels.Reference.ReferenceBackend();
        using var session = new Engine.Simulation.SpikingSession(model, backend, 1);
        session.Reset(pixels);
        Engine.Simulation.StepOutput? last = null;
        for (int t = 0; t < steps; t++) last = session.Next();
        return last!.Prediction(0);
    }
}
