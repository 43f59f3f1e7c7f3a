using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using Ecmt.Engine.Conversion;
using Ecmt.Engine.Data;
using Ecmt.Engine.Evaluation;
using Ecmt.Engine.Simulation;
using Ecmt.Kernels;

namespace Ecmt.Cli;

static class EvalCommand
{
    public static Command Create()
    {
        var conversion = new ConversionOptions();
        var limit = new Option<int?>("--limit") { Description = "Evaluate the first N images only (default all 10,000 test images)" };
        var split = new Option<string>("--split") { Description = "test (the 10,000 test images) or validation (2,500 held-out training images, for choosing settings)", DefaultValueFactory = _ => "test" };
        var steps = new Option<int>("--steps") { Description = "Time steps T of the spiking model (0: the ANN only)", DefaultValueFactory = _ => 8 };
        var batch = new Option<int>("--batch") { Description = "Images simulated together", DefaultValueFactory = _ => 100 };
        var backend = new Option<string>("--backend") { Description = "auto, fastcpu, reference, cuda, opencl or cpu (ILGPU's CPU accelerator)", DefaultValueFactory = _ => "auto" };
        var stopAt = new Option<double[]>("--stop-at") { Description = "Early-exit study: stop each image at the first step whose top-1 probability reaches p", AllowMultipleArgumentsPerToken = true };
        var confirm = new Option<int[]>("--confirm-steps") { Description = "Early-exit study: also require the top-1 class to be unchanged for the last k steps (1: no confirmation; several values give one entry each)", AllowMultipleArgumentsPerToken = true };
        var workers = new Option<int?>("--workers") { Description = "Batches simulated in parallel (default: one per core on the reference backend, else 1)" };
        var command = new Command("eval", "Evaluate the ANN and its spiking conversion on the Fashion-MNIST test set; prints one JSON object.")
        {
            limit, split, steps, batch, backend, stopAt, confirm, workers,
        };
        foreach (var option in conversion.All) command.Options.Add(option);
        command.SetAction(parse =>
        {
            var test = FashionMnist.Load(parse.GetValue(split) switch
            {
                "test" => Split.Test,
                "validation" => Split.Validation,
                var other => throw new ArgumentException($"--split must be test or validation, not '{other}'"),
            });
            if (parse.GetValue(limit) is int n) test = test.Take(n);
            int t = parse.GetValue(steps);
            ArgumentOutOfRangeException.ThrowIfNegative(t, "--steps");
            var json = new JsonObject();
            if (t == 0)
            {
                var weights = Engine.Model.ModelDirectory.Load(conversion.ModelPath(parse));
                json["model"] = weights.Config.Name;
                json["samples"] = test.Count;
                json["ann_top1"] = Evaluator.AnnTop1(new Engine.Ann.ReferenceVit(weights), test);
                Console.WriteLine(json.ToJsonString());
                return 0;
            }
            var converted = conversion.Resolve(parse, Console.Error);
            var model = new SpikingModel(converted);
            var kind = Backends.Parse(parse.GetValue(backend));
            int parallel = parse.GetValue(workers) ?? (kind == BackendKind.Reference ? Environment.ProcessorCount : 1);
            if (parallel > 1) Kernels.Cpu.OpenBlas.Threads = 1;
            var result = Progress.Run($"simulating {test.Count} images × {t} steps", test.Count,
                p => Evaluator.Run(model, () => Backends.Create(kind), test, t, parse.GetValue(batch), parallel, p));
            using var probe = Backends.Create(kind);
            json["model"] = converted.Name;
            json["samples"] = test.Count;
            json["split"] = parse.GetValue(split);
            json["ann_top1"] = result.AnnTop1;
            json["steps"] = t;
            json["backend"] = probe.Name;
            json["preset"] = converted.Settings.Preset;
            json["thresholds"] = ConversionOptions.Describe(converted.Settings.Granularity);
            json["quantile"] = converted.Settings.Quantile;
            json["levels"] = JsonSerializer.SerializeToNode(Places.All.ToDictionary(p => p.Key(), converted.Settings.LevelsAt));
            json["fixed"] = JsonSerializer.SerializeToNode(converted.Settings.Fixed);
            json["calibration"] = JsonSerializer.SerializeToNode(converted.Record.Calibration, Engine.Model.VitConfig.Json);
            json["snn_top1_by_step"] = Numbers(result.SnnTop1ByStep, 4);
            json["energy_ratio_by_step"] = Numbers(result.EnergyRatioByStep, 4);
            json["firing_rate_by_step"] = Numbers(result.FiringRateByStep, 4);
            json["logit_error_by_step"] = Numbers(result.LogitErrorByStep, 4);
            if (parse.GetValue(stopAt) is { Length: > 0 } thresholds)
            {
                var exits = new JsonArray();
                int[] confirmations = parse.GetValue(confirm) is { Length: > 0 } given ? given : [1];
                foreach (int k in confirmations)
                    foreach (var p in thresholds)
                    {
                        var (top1, meanSteps, energy) = result.EarlyExit(p, k);
                        exits.Add(new JsonObject
                        {
                            ["threshold"] = p, ["confirm_steps"] = k, ["top1"] = Math.Round(top1, 4),
                            ["mean_steps"] = Math.Round(meanSteps, 3), ["energy_ratio"] = Math.Round(energy, 4),
                        });
                    }
                json["early_exit"] = exits.Count == 1 ? exits[0]!.DeepClone() : exits;
            }
            json["seconds"] = Math.Round(result.Seconds, 1);
            Console.WriteLine(json.ToJsonString());
            return 0;
        });
        return command;
    }

    static JsonArray Numbers(IEnumerable<double> values, int digits) => new(values.Select(v => (JsonNode)Math.Round(v, digits)).ToArray());
}
