using System.CommandLine;
using Ecmt.Engine.Conversion;
using Ecmt.Engine.Data;
using Ecmt.Engine.Imaging;

namespace Ecmt.Cli;

/// <summary>
/// <c>ecmt samples</c>: writes Fashion-MNIST test images as PNG files for demos and client tests, the same images on
/// every machine (the first test image of each class, then the next ones); <c>ecmt synth-model</c>: a small
/// randomly initialised converted model for smoke tests where no trained model is at hand.
/// </summary>
static class SamplesCommand
{
    public static Command Create()
    {
        var output = new Option<string>("--out") { Description = "Folder to write the PNG files to", Required = true };
        var perClass = new Option<int>("--per-class") { Description = "Images per class (the first ones of the test set)", DefaultValueFactory = _ => 1 };
        var command = new Command("samples", "Write Fashion-MNIST test images as PNG files named INDEX-CLASS.png (needs Debian's dataset-fashion-mnist).")
        {
            output, perClass,
        };
        command.SetAction(parse =>
        {
            var test = FashionMnist.Load(Split.Test);
            string dir = parse.GetValue(output)!;
            int wanted = parse.GetValue(perClass);
            ArgumentOutOfRangeException.ThrowIfLessThan(wanted, 1, "--per-class");
            Directory.CreateDirectory(dir);
            var taken = new int[FashionMnist.ClassNames.Length];
            for (int i = 0; i < test.Count && taken.Any(n => n < wanted); i++)
            {
                int label = test.Labels[i];
                if (taken[label]++ >= wanted) continue;
                var png = ImageInput.EncodePng(test.Image(i), test.Channels, test.Height, test.Width);
                string name = $"{i:D5}-{Slug(FashionMnist.ClassNames[label])}.png";
                File.WriteAllBytes(Path.Combine(dir, name), png);
                Console.WriteLine(Path.Combine(dir, name));
            }
            return 0;
        });
        return command;
    }

    public static Command CreateSynthetic()
    {
        var output = new Option<string>("--out") { Description = "Folder to write the converted model to (its name is the folder's)", Required = true };
        var dim = new Option<int>("--dim") { Description = "Embedding width D", DefaultValueFactory = _ => 32 };
        var depth = new Option<int>("--depth") { Description = "Blocks", DefaultValueFactory = _ => 2 };
        var seed = new Option<int>("--seed") { Description = "Seed of the random weights and calibration images", DefaultValueFactory = _ => 1 };
        var command = new Command("synth-model",
            "Write a small converted model with random weights (28×28 grey, 10 Fashion-MNIST classes): for smoke tests of the server; its predictions mean nothing.")
        {
            output, dim, depth, seed,
        };
        command.SetAction(parse =>
        {
            string dir = parse.GetValue(output)!;
            var config = SyntheticModels.Config(Path.GetFileName(Path.GetFullPath(dir).TrimEnd('/')), embedDim: parse.GetValue(dim), depth: parse.GetValue(depth), heads: 2, patchSize: 7);
            SyntheticModels.Create(dir, config, parse.GetValue(seed));
            Console.WriteLine(dir);
            return 0;
        });
        return command;
    }

    /// <summary>"T-shirt/top" -> "t-shirt-top", "Ankle boot" -> "ankle-boot".</summary>
    static string Slug(string name) => string.Join('-', name.ToLowerInvariant().Split([' ', '/'], StringSplitOptions.RemoveEmptyEntries));
}
