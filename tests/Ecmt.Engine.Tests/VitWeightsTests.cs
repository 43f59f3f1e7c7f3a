using Ecmt.Engine.Model;

namespace Ecmt.Engine.Tests;

public class VitWeightsTests
{
    [Fact]
    public void Binds_every_timm_key_of_the_config()
    {
        var config = TestModels.Tiny(depth: 3);
        var weights = VitWeights.Random(config, 1);
        var bound = VitWeights.Bind(config, weights.Tensors);
        Assert.Equal(3, bound.Blocks.Count);
        Assert.Equal([48, 16], bound.Blocks[2].Qkv.Weight.Shape);
        Assert.Equal(8 + 3 * 12, VitWeights.ExpectedShapes(config).Count);
        Assert.Contains("blocks.2.mlp.fc2.bias", VitWeights.ExpectedShapes(config).Keys);
    }

    [Fact]
    public void Names_missing_unexpected_and_misshaped_tensors_in_one_error()
    {
        var config = TestModels.Tiny();
        var tensors = new Dictionary<string, DenseTensor>(VitWeights.Random(config, 1).Tensors);
        tensors.Remove("blocks.1.attn.proj.bias");
        tensors.Remove("head.weight");
        tensors["blocks.0.ls1.gamma"] = new DenseTensor(16);
        tensors["pos_embed"] = new DenseTensor(1, 4, 16);
        var e = Assert.Throws<WeightMismatchException>(() => VitWeights.Bind(config, tensors));
        Assert.Equal(["blocks.1.attn.proj.bias", "head.weight"], e.Missing);
        Assert.Equal(["blocks.0.ls1.gamma"], e.Unexpected);
        Assert.Single(e.MisShaped);
        Assert.Contains("pos_embed is [1, 4, 16], expected [1, 5, 16]", e.Message, StringComparison.Ordinal);
        Assert.Contains("head.weight", e.Message, StringComparison.Ordinal);
        Assert.Contains("blocks.0.ls1.gamma", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Model_directory_round_trips_and_rejects_an_inconsistent_config()
    {
        var config = TestModels.Tiny();
        var dir = TestModels.TempDirectory();
        ModelDirectory.Save(dir, VitWeights.Random(config, 4), StorageType.BF16);
        var loaded = ModelDirectory.Load(dir);
        Assert.Equal(config.EmbedDim, loaded.Config.EmbedDim);
        Assert.Equal(config.ClassNames, loaded.Config.ClassNames);

        File.WriteAllText(Path.Combine(dir, ModelDirectory.ConfigFile), File.ReadAllText(Path.Combine(dir, ModelDirectory.ConfigFile)).Replace("\"num_heads\": 2", "\"num_heads\": 3", StringComparison.Ordinal));
        var e = Assert.Throws<InvalidDataException>(() => ModelDirectory.Load(dir));
        Assert.Contains("multiple of num_heads 3", e.Message, StringComparison.Ordinal);
    }
}
