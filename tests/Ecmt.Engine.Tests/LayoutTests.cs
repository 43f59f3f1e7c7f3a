using Ecmt.Engine.Ann;
using Ecmt.Engine.Model;
using Ecmt.Torch;
using TorchSharp.PyBridge;
using static TorchSharp.torch;

namespace Ecmt.Engine.Tests;

/// <summary>Every layout (TestModels.Layouts): the C# ANN against libtorch, import of checkpoints written with timm / BEiT / EVA names, strict binding.</summary>
public class LayoutTests
{
    static string Json(VitConfig c) => System.Text.Json.JsonSerializer.Serialize(c, VitConfig.Json);

    static float MaxDifference(float[] a, float[] b)
    {
        Assert.Equal(a.Length, b.Length);
        return a.Zip(b, (x, y) => MathF.Abs(x - y)).Max();
    }

    [Theory]
    [MemberData(nameof(TestModels.LayoutNames), MemberType = typeof(TestModels))]
    public void ReferenceVit_matches_libtorch(string layout)
    {
        foreach (int channels in new[] { 1, 3 })
        {
            var config = TestModels.TinyLayout(layout, channels: channels);
            var weights = TestModels.RandomWeights(config, seed: 3 + channels);
            var images = TestModels.RandomImages(config, 8, seed: 11).Normalized(0, 8, config);
            var reference = new ReferenceVit(weights).Forward(images, 8);
            var torchLogits = TestModels.TorchLogits(weights, images, 8);
            float error = MaxDifference(torchLogits, reference);
            Assert.True(error <= 1e-4f, $"{layout}, {channels} channels: max |logit difference| {error}");
            // the layout's own parts change the output (so the comparison is not blind to them)
            Assert.True(torchLogits.Max(MathF.Abs) > 0.05f, $"{layout}: logits too small to compare");
        }
    }

    [Fact]
    public void The_shipped_eva_model_matches_libtorch_on_real_images()
    {
        string? dir = null;
        try
        {
            dir = Path.Combine(Path.GetDirectoryName(ModelDirectory.DefaultModelPath())!, "fmnist-eva");
        }
        catch (DirectoryNotFoundException)
        {
        }
        Assert.SkipWhen(dir is null || !File.Exists(Path.Combine(dir, ModelDirectory.WeightsFile)), "models/fmnist-eva is not in this checkout");
        Assert.SkipUnless(Data.FashionMnist.IsAvailable, "Fashion-MNIST is not installed (dataset-fashion-mnist)");
        var weights = ModelDirectory.Load(dir!);
        Assert.Equal((QkvBias.QV, LayerScale.Gamma, RelPosBias.PerBlock, false, Pooling.Mean),
            (weights.Config.QkvBias, weights.Config.LayerScale, weights.Config.RelPosBias, weights.Config.AbsPosEmbed, weights.Config.Pooling));
        var test = Data.FashionMnist.Load(Data.Split.Test).Take(64);
        var images = test.Normalized(0, 64, weights.Config);
        float error = MaxDifference(TestModels.TorchLogits(weights, images, 64), new ReferenceVit(weights).Forward(images, 64));
        Assert.True(error <= 1e-4f, $"max |logit difference| {error}");
    }

    [Fact]
    public void Each_layout_option_changes_the_output()
    {
        var baseConfig = TestModels.TinyLayout("eva");
        var weights = TestModels.RandomWeights(baseConfig, seed: 2);
        var images = TestModels.RandomImages(baseConfig, 4, seed: 1).Normalized(0, 4, baseConfig);
        var logits = new ReferenceVit(weights).Forward(images, 4);
        // Zeroing the relative position tables or setting gammas to one must move the logits.
        foreach (var part in new[] { "relative_position_bias_table", "gamma_" })
        {
            var changed = weights.Tensors.ToDictionary(p => p.Key, p => p.Value.Clone());
            foreach (var (name, t) in changed.Where(p => p.Key.Contains(part, StringComparison.Ordinal)))
                Array.Fill(t.Data, part == "gamma_" ? 1f : 0f);
            var other = new ReferenceVit(VitWeights.Bind(baseConfig, changed)).Forward(images, 4);
            Assert.True(MaxDifference(logits, other) > 1e-3f, $"{part} did not change the logits");
        }
    }

    [Theory]
    [MemberData(nameof(TestModels.LayoutNames), MemberType = typeof(TestModels))]
    public void Imports_a_checkpoint_written_with_the_layouts_tensor_names(string layout)
    {
        var config = TestModels.TinyLayout(layout);
        var weights = TestModels.RandomWeights(config, seed: 5);
        var path = Path.Combine(TestModels.TempDirectory(), $"{layout}.pth");
        using (var torchVit = new TorchVit(config))
        {
            torchVit.LoadWeights(weights);
            torchVit.save_py(path); // PyTorch's zip format; the state dict includes BEiT's relative_position_index buffers
        }
        var tensors = PthImport.Load(path);
        if (config.RelPosBias == RelPosBias.PerBlock) Assert.Contains("blocks.1.attn.relative_position_index", tensors.Keys);
        if (config.QkvBias == QkvBias.QV) Assert.Contains("blocks.0.attn.q_bias", tensors.Keys);
        var imported = VitWeights.Bind(config, tensors);
        foreach (var (name, t) in weights.Tensors) Assert.Equal(t.Data, imported.Tensors[name].Data);
        var images = TestModels.RandomImages(config, 4, seed: 3).Normalized(0, 4, config);
        Assert.Equal(new ReferenceVit(weights).Forward(images, 4), new ReferenceVit(imported).Forward(images, 4));

        // A model folder written from it loads back with its layout.
        var dir = TestModels.TempDirectory();
        ModelDirectory.Save(dir, imported);
        var loaded = ModelDirectory.Load(dir);
        Assert.Equal(Json(config with { Name = loaded.Config.Name }), Json(loaded.Config));
    }

    [Fact]
    public void Binding_names_every_missing_unexpected_and_mis_shaped_tensor_of_a_layout()
    {
        // A plain ViT checkpoint offered as an EVA model.
        var vit = TestModels.TinyLayout("vit");
        var eva = TestModels.TinyLayout("eva");
        var tensors = VitWeights.Random(vit, 1).Tensors.ToDictionary(p => p.Key, p => p.Value);
        tensors["blocks.0.attn.relative_position_bias_table"] = new DenseTensor(5, 2);
        var e = Assert.Throws<WeightMismatchException>(() => VitWeights.Bind(eva, tensors));
        Assert.Contains("blocks.0.attn.q_bias", e.Missing);
        Assert.Contains("blocks.1.gamma_2", e.Missing);
        Assert.Contains("blocks.1.attn.relative_position_bias_table", e.Missing);
        Assert.Contains("fc_norm.weight", e.Missing);
        Assert.Contains("blocks.0.attn.qkv.bias", e.Unexpected);
        Assert.Contains("pos_embed", e.Unexpected);
        Assert.Contains("norm.weight", e.Unexpected);
        Assert.Contains(e.MisShaped, m => m.StartsWith("blocks.0.attn.relative_position_bias_table is [5, 2], expected [52, 2]", StringComparison.Ordinal));
        foreach (var name in e.Missing.Concat(e.Unexpected)) Assert.Contains(name, e.Message, StringComparison.Ordinal);

        // A stored relative position index must be BEiT's.
        var good = VitWeights.Random(eva, 1).Tensors.ToDictionary(p => p.Key, p => p.Value);
        var index = RelativePosition.Index(eva).Select(i => (float)i).ToArray();
        good["blocks.0.attn.relative_position_index"] = new DenseTensor([eva.Tokens, eva.Tokens], index);
        VitWeights.Bind(eva, good);
        var swapped = (float[])index.Clone();
        (swapped[0], swapped[1]) = (swapped[1], swapped[0]);
        good["blocks.0.attn.relative_position_index"] = new DenseTensor([eva.Tokens, eva.Tokens], swapped);
        var bad = Assert.Throws<WeightMismatchException>(() => VitWeights.Bind(eva, good));
        Assert.Contains(bad.MisShaped, m => m.Contains("relative_position_index differs", StringComparison.Ordinal));
    }

    [Fact]
    public void Relative_position_index_follows_BEiTs_definition()
    {
        var c = TestModels.TinyLayout("eva"); // 4×4 grid, R = 7·7 + 3 = 52, N = 17
        var index = RelativePosition.Index(c);
        int n = c.Tokens;
        Assert.Equal(52, c.RelPosDistances);
        Assert.Equal(51, index[0]);          // class → class
        Assert.Equal(49, index[5]);          // class → patch
        Assert.Equal(50, index[5 * n]);      // patch → class
        Assert.Equal(3 * 7 + 3, index[1 * n + 1]); // a patch to itself: offset (0, 0)
        // patch 0 (row 0, col 0) to patch 5 (row 1, col 1): offset (−1, −1)
        Assert.Equal((-1 + 3) * 7 + (-1 + 3), index[1 * n + 6]);
        // patch 15 (row 3, col 3) to patch 0: offset (3, 3), the last patch row of the table
        Assert.Equal(6 * 7 + 6, index[16 * n + 1]);
    }

    [Fact]
    public void Layout_fields_round_trip_in_config_json_and_default_to_the_plain_vit()
    {
        var dir = TestModels.TempDirectory();
        var eva = TestModels.TinyLayout("post-norm");
        eva.Save(Path.Combine(dir, "eva.json"));
        var text = File.ReadAllText(Path.Combine(dir, "eva.json"));
        Assert.Contains("\"qkv_bias\": \"q_v\"", text, StringComparison.Ordinal);
        Assert.Contains("\"rel_pos_bias\": \"per_block\"", text, StringComparison.Ordinal);
        Assert.Contains("\"pooling\": \"mean\"", text, StringComparison.Ordinal);
        Assert.Contains("\"mlp_hidden\": 40", text, StringComparison.Ordinal);
        Assert.Equal(Json(eva), Json(VitConfig.Load(Path.Combine(dir, "eva.json"))));

        // A config without the fields (like models/fmnist-vit/config.json) is timm's plain ViT.
        File.WriteAllText(Path.Combine(dir, "old.json"), """
            { "image_size": 8, "patch_size": 4, "in_channels": 1, "embed_dim": 16, "depth": 1, "num_heads": 2, "mlp_ratio": 2,
              "num_classes": 2, "class_names": ["a", "b"], "mean": [0.5], "std": [0.25] }
            """);
        var old = VitConfig.Load(Path.Combine(dir, "old.json"));
        Assert.Equal((QkvBias.Full, LayerScale.None, RelPosBias.None, true, Pooling.ClassToken, false, 32),
            (old.QkvBias, old.LayerScale, old.RelPosBias, old.AbsPosEmbed, old.Pooling, old.PostNorm, old.MlpDim));

        File.WriteAllText(Path.Combine(dir, "bad.json"), text.Replace("\"q_v\"", "\"qv\"", StringComparison.Ordinal));
        Assert.ThrowsAny<Exception>(() => VitConfig.Load(Path.Combine(dir, "bad.json")));
    }
}
