using System.Text.Json;
using Ecmt.Engine.Ann;
using Ecmt.Engine.Model;
using Ecmt.Torch;

namespace Ecmt.Engine.Tests;

/// <summary>
/// Checkpoints written by real PyTorch (Debian's python3-torch 1.13; Fixtures/make_fixtures.py regenerates them),
/// with the logits PyTorch computed for fixed inputs: an independent check of import and forward pass together.
/// </summary>
public class PthImportTests
{
    static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "Fixtures", name);

    static readonly JsonSerializerOptions CaseInsensitive = new() { PropertyNameCaseInsensitive = true };

    sealed record Check(string Torch, float[] Images, float[] Logits, double Qkv_weight_sum);

    [Theory]
    [InlineData("tiny_vit.pth")]
    [InlineData("tiny_vit_wrapped.pth")]
    public void Imports_a_PyTorch_state_dict_and_reproduces_PyTorchs_logits(string file)
    {
        var config = VitConfig.Load(Fixture("tiny_vit.json"));
        var weights = VitWeights.Bind(config, PthImport.Load(Fixture(file)));
        var check = JsonSerializer.Deserialize<Check>(File.ReadAllText(Fixture("tiny_vit_check.json")), CaseInsensitive)!;
        Assert.Equal(check.Qkv_weight_sum, weights.Tensors["blocks.1.attn.qkv.weight"].Data.Sum(v => (double)v), 4);
        var logits = new ReferenceVit(weights).Forward(check.Images, 4);
        TestLogits(check.Logits, logits);
    }

    static void TestLogits(float[] expected, float[] actual)
    {
        Assert.Equal(expected.Length, actual.Length);
        float worst = expected.Zip(actual, (a, b) => MathF.Abs(a - b)).Max();
        Assert.True(worst <= 1e-4f, $"max |logit difference| to PyTorch 1.13: {worst}");
    }

    [Fact]
    public void Names_every_mismatch_when_the_checkpoint_does_not_fit_the_config()
    {
        var config = VitConfig.Load(Fixture("tiny_vit.json")) with { Depth = 3, NumClasses = 4, ClassNames = ["a", "b", "c", "d"] };
        var e = Assert.Throws<WeightMismatchException>(() => VitWeights.Bind(config, PthImport.Load(Fixture("tiny_vit.pth"))));
        Assert.Contains("blocks.2.attn.qkv.weight", e.Missing);
        Assert.Contains(e.MisShaped, m => m.StartsWith("head.weight", StringComparison.Ordinal));
    }

    [Fact]
    public void Rejects_a_file_that_is_not_a_checkpoint()
    {
        var path = Path.Combine(TestModels.TempDirectory(), "broken.pth");
        File.WriteAllBytes(path, [0x50, 0x4B, 0x03, 0x04, 1, 2, 3]);
        var e = Assert.Throws<InvalidDataException>(() => PthImport.Load(path));
        Assert.Contains("broken.pth", e.Message, StringComparison.Ordinal);
    }
}
