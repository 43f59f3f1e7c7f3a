using Ecmt.Engine.Conversion;
using Ecmt.Engine.Simulation;
using Ecmt.Kernels.Reference;

namespace Ecmt.Engine.Tests;

public class ConvertedModelTests
{
    [Fact]
    public void Saved_conversion_loads_without_recalibrating_and_simulates_identically()
    {
        var settings = ConversionSettings.Reference(ThresholdGranularity.PerChannel) with { Levels = new Dictionary<string, int> { ["fc2"] = 6 } };
        var model = TestModels.TinyConverted(settings);
        var dir = TestModels.TempDirectory();
        model.Save(dir);
        Assert.True(ConvertedModel.IsConvertedModel(dir));
        var loaded = ConvertedModel.Load(dir);
        Assert.Equal(6, loaded.Settings.LevelsAt(Place.Fc2));
        Assert.Equal(ThresholdGranularity.PerChannel, loaded.Settings.Granularity);
        Assert.Equal("reference", loaded.Settings.Preset);
        Assert.Equal(model.Record.Calibration, loaded.Record.Calibration);
        for (int block = 0; block < 2; block++)
            foreach (var place in Places.All)
                Assert.Equal(model.Thresholds[block, place].Pos, loaded.Thresholds[block, place].Pos);

        var images = TestModels.RandomImages(model.Config, 2, 9).Normalized(0, 2, model.Config);
        using var a = new SpikingSession(new SpikingModel(model), new ReferenceBackend(), 2);
        using var b = new SpikingSession(new SpikingModel(loaded), new ReferenceBackend(), 2);
        a.Reset(images);
        b.Reset(images);
        for (int t = 0; t < 4; t++) Assert.Equal(a.Next().AccumulatedLogits, b.Next().AccumulatedLogits);
    }

    [Fact]
    public void Broken_threshold_files_are_refused_with_the_reason()
    {
        var model = TestModels.TinyConverted();
        var dir = TestModels.TempDirectory();
        model.Save(dir);
        var path = Path.Combine(dir, ConvertedModel.ThresholdsFile);
        var tensors = Model.SafeTensors.Load(path);
        tensors["blocks.1.fc1.lambda_neg"] = new Model.DenseTensor([1], [-0.5f]);
        Model.SafeTensors.Save(path, tensors);
        var e = Assert.Throws<InvalidDataException>(() => ConvertedModel.Load(dir));
        Assert.Contains("block 1 place fc1", e.Message, StringComparison.Ordinal);

        tensors.Remove("blocks.1.fc1.lambda_neg");
        Model.SafeTensors.Save(path, tensors);
        e = Assert.Throws<InvalidDataException>(() => ConvertedModel.Load(dir));
        Assert.Contains("blocks.1.fc1.lambda_neg", e.Message, StringComparison.Ordinal);
    }
}
