using Ecmt.Engine.Data;
using Ecmt.Engine.Imaging;
using Ecmt.Engine.Model;

namespace Ecmt.Server.Tests;

/// <summary>The shipped models/fmnist-vit through the server, when it is present (skipped otherwise).</summary>
public sealed class ShippedModelTests
{
    [Fact]
    public async Task The_default_model_classifies_fashion_mnist_pngs()
    {
        string path;
        try
        {
            path = ModelDirectory.DefaultModelPath();
        }
        catch (DirectoryNotFoundException)
        {
            Assert.Skip("models/fmnist-vit is not in this checkout");
            return;
        }
        if (!Engine.Conversion.ConvertedModel.IsConvertedModel(path)) Assert.Skip($"{path} is not converted yet");
        if (!FashionMnist.IsAvailable) Assert.Skip("Fashion-MNIST is not installed (dataset-fashion-mnist)");

        await using var host = await ServerHost.DefaultModelAsync();
        var model = Assert.Single(host.Models.Models);
        Assert.Equal(ModelDirectory.DefaultModelName, model.Name);

        var test = FashionMnist.Load(Split.Test).Take(20);
        int correct = 0;
        for (int i = 0; i < test.Count; i++)
        {
            var png = ImageInput.EncodePng(test.Image(i), 1, 28, 28);
            var updates = await host.Client.RunAsync(Requests.Image(model.Name, png, maxSteps: 16));
            Assert.Equal(16, updates.Count);
            if (updates[^1].Top[0].Index == test.Labels[i]) correct++;
        }
        Assert.True(correct >= 14, $"{correct} of 20 test images right after 16 steps");
    }
}
