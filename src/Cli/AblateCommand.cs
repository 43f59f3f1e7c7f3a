using System.CommandLine;
using System.Text.Json.Nodes;
using Ecmt.Engine.Conversion;
using Ecmt.Engine.Evaluation;
using Ecmt.Engine.Simulation;
using Ecmt.Kernels;

namespace Ecmt.Cli;

/// <summary>
/// <c>ecmt ablate</c>: what limits the first steps. Runs the model as converted, then with one place at a time made
/// exact in every block (a lossless neuron place, or an EC module emitting the ANN's value; <see cref="Ablation"/>
/// says precisely what each means), then with every neuron lossless (which must equal the ANN), and prints top-1
/// and the logit error at t = 1..T for each (one JSON object). Lossless neurons need the reference backend.
/// </summary>
static class AblateCommand
{
    public static Command Create()
    {
        var conversion = new ConversionOptions();
        var split = new Option<string>("--split") { Description = "validation (held-out training images: the default) or test", DefaultValueFactory = _ => "validation" };
        var limit = new Option<int?>("--limit") { Description = "The first N images only" };
        var steps = new Option<int>("--steps") { Description = "Time steps", DefaultValueFactory = _ => 4 };
        var batch = new Option<int>("--batch") { Description = "Images simulated together", DefaultValueFactory = _ => 50 };
        var command = new Command("ablate", "Top-1 at t = 1..T with one place at a time made exact (neuron places lossless, EC modules replaced by the ANN's value); the reference backend.")
        {
            split, limit, steps, batch,
        };
        foreach (var option in conversion.All) command.Options.Add(option);
        command.SetAction(parse =>
        {
            var images = ConversionOptions.Images(parse.GetValue(split)!, parse.GetValue(limit));
            int t = parse.GetValue(steps);
            ArgumentOutOfRangeException.ThrowIfLessThan(t, 1, "--steps");
            var converted = conversion.Resolve(parse, Console.Error);
            Kernels.Cpu.OpenBlas.Threads = 1;
            var none = new HashSet<Place>();
            var noEc = new HashSet<EcModule>();
            var runs = new List<(string Name, string Kind, Ablation Ablation)> { ("as converted", "none", Ablation.None) };
            foreach (var place in new[] { Place.FcQkv, Place.Q, Place.S, Place.FcOut, Place.Fc1, Place.Fc2 })
            {
                var set = place == Place.Q ? new HashSet<Place> { Place.Q, Place.K, Place.V } : new HashSet<Place> { place };
                runs.Add((place == Place.Q ? "q/k/v" : place.Key(), "lossless neurons", new Ablation(set, noEc)));
            }
            foreach (var module in Enum.GetValues<EcModule>())
                runs.Add(($"EC {module}", "ANN value", new Ablation(none, new HashSet<EcModule> { module })));
            runs.Add(("every neuron", "lossless neurons", new Ablation(Places.All.ToHashSet(), noEc)));

            var rows = new JsonArray();
            double annTop1 = 0;
            foreach (var (name, kind, ablation) in runs)
            {
                var model = new SpikingModel(converted, ablation);
                var result = Progress.Run($"{name}: {images.Count} images × {t} steps", images.Count,
                    p => Evaluator.Run(model, () => Backends.Create(BackendKind.Reference), images, t, parse.GetValue(batch), Environment.ProcessorCount, p));
                annTop1 = result.AnnTop1;
                rows.Add(new JsonObject
                {
                    ["exact"] = name,
                    ["kind"] = kind,
                    ["top1_by_step"] = new JsonArray(result.SnnTop1ByStep.Select(v => (JsonNode)Math.Round(v, 4)).ToArray()),
                    ["logit_error_by_step"] = new JsonArray(result.LogitErrorByStep.Select(v => (JsonNode)Math.Round(v, 4)).ToArray()),
                    ["seconds"] = Math.Round(result.Seconds, 1),
                });
                Console.Error.WriteLine($"{name,-22} top-1 by step {string.Join(" ", result.SnnTop1ByStep.Select(v => $"{100 * v:F2}"))}  ({result.Seconds:F0} s)");
            }
            Console.WriteLine(new JsonObject
            {
                ["model"] = converted.Name,
                ["split"] = parse.GetValue(split),
                ["samples"] = images.Count,
                ["steps"] = t,
                ["backend"] = "reference",
                ["preset"] = converted.Settings.Preset,
                ["ann_top1"] = Math.Round(annTop1, 4),
                ["runs"] = rows,
            }.ToJsonString());
            return 0;
        });
        return command;
    }
}
