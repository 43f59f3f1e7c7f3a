using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using Ecmt.Engine.Conversion;
using Ecmt.Engine.Data;
using Ecmt.Engine.Evaluation;
using Ecmt.Engine.Simulation;
using Ecmt.Kernels;
using Ecmt.Protos;

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
        // Early-exit study: every combination of the values given is one stop policy (every rule of it must hold).
        var stopAt = new Option<double[]>("--stop-at") { Description = "Early-exit study: min_confidence values (calibrated top-1 probability reaches p)", AllowMultipleArgumentsPerToken = true };
        var stable = new Option<int[]>("--stable-steps") { Description = "Early-exit study: stable_steps values (top-1 equal to that of each of the k steps before; 0: no such rule)", AllowMultipleArgumentsPerToken = true };
        var minSteps = new Option<int[]>("--min-steps") { Description = "Early-exit study: min_steps values (0: no such rule)", AllowMultipleArgumentsPerToken = true };
        var margin = new Option<double[]>("--margin") { Description = "Early-exit study: min_margin values (top-1 minus top-2 calibrated probability)", AllowMultipleArgumentsPerToken = true };
        var gate = new Option<double[]>("--gate") { Description = "Early-exit study: min_gate values (the model's gate)", AllowMultipleArgumentsPerToken = true };
        var policy = new Option<string[]>("--policy") { Description = "Early-exit study: one policy each, rules joined by commas, e.g. --policy min_confidence=0.9,stable_steps=1 min_gate=0.95", AllowMultipleArgumentsPerToken = true };
        var dump = new Option<string?>("--dump") { Description = "Also write every image's accumulated logits after every step, the ANN's logits, labels and SOPs to this safetensors file (offline analysis)" };
        var workers = new Option<int?>("--workers") { Description = "Batches simulated in parallel (default: one per core on the reference backend, else 1)" };
        var command = new Command("eval", "Evaluate the ANN and its spiking conversion on the Fashion-MNIST test set; prints one JSON object.")
        {
            limit, split, steps, batch, backend, stopAt, stable, minSteps, margin, gate, policy, workers, dump,
        };
        foreach (var option in conversion.All) command.Options.Add(option);
        command.SetAction(parse =>
        {
            var test = ConversionOptions.Images(parse.GetValue(split)!, parse.GetValue(limit));
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
            json["rounding"] = converted.Settings.Rounding == Rounding.Nearest ? "nearest" : "half-base";
            json["quantile_levels"] = JsonSerializer.SerializeToNode(Places.All.ToDictionary(p => p.Key(), converted.Settings.QuantileLevelAt));
            var confidence = converted.Confidence;
            json["temperatures_calibrated"] = confidence.IsCalibrated;
            json["temperatures"] = Numbers(Enumerable.Range(1, t).Select(s => (double)confidence.Temperature(s)), 4);
            json["ece_by_step"] = new JsonObject
            {
                ["uncalibrated"] = Numbers(ConfidenceFit.EceByStep(result, ConfidenceCalibration.Uncalibrated), 4),
                ["calibrated"] = Numbers(ConfidenceFit.EceByStep(result, confidence), 4),
            };
            var (oracleTop1, oracleSteps, oracleEnergy) = result.Oracle();
            json["oracle"] = new JsonObject { ["top1"] = Math.Round(oracleTop1, 4), ["mean_steps"] = Math.Round(oracleSteps, 3), ["energy_ratio"] = Math.Round(oracleEnergy, 4) };
            var signals = result.Signals(confidence);
            var uncalibratedSignals = result.Signals(ConfidenceCalibration.Uncalibrated);
            var reliability = new JsonObject();
            foreach (int step in new[] { 1, 2, 4, 8 }.Where(s => s <= t))
                reliability[step.ToString(System.Globalization.CultureInfo.InvariantCulture)] = new JsonObject
                {
                    ["uncalibrated"] = Bins(ConfidenceFit.Reliability(result, uncalibratedSignals, step)),
                    ["calibrated"] = Bins(ConfidenceFit.Reliability(result, signals, step)),
                };
            json["reliability"] = reliability;
            if (converted.Record.RecommendedStop is { } recommended)
                json["recommended"] = Outcome(result.EarlyExit(recommended, signals));
            var policies = Policies(parse.GetValue(stopAt), parse.GetValue(stable), parse.GetValue(minSteps), parse.GetValue(margin), parse.GetValue(gate))
                .Concat((parse.GetValue(policy) ?? []).Select(ParsePolicy)).ToList();
            if (policies.Any(p => p.MinGate is not null) && confidence.Gate is null)
                throw new ArgumentException("--gate: this conversion has no gate (convert with validation images to fit one)");
            if (policies.Count > 0)
                json["early_exit"] = new JsonArray(policies.Select(p => (JsonNode)Outcome(result.EarlyExit(p, signals))).ToArray());
            if (parse.GetValue(dump) is { } dumpPath)
            {
                int classes = converted.Config.NumClasses;
                var sops = new float[result.Images * t];
                for (int i = 0; i < result.Images; i++) for (int s = 0; s < t; s++) sops[i * t + s] = result.Sops[i, s];
                Engine.Model.SafeTensors.Save(dumpPath, new Dictionary<string, Engine.Model.DenseTensor>
                {
                    ["logits"] = new([result.Images, t, classes], result.Logits),
                    ["ann_logits"] = new([result.Images, classes], result.AnnLogits),
                    ["labels"] = new([result.Images], result.Labels.Select(l => (float)l).ToArray()),
                    ["sops"] = new([result.Images, t], sops),
                }, metadata: new Dictionary<string, string> { ["split"] = parse.GetValue(split)!, ["dense_operations_per_step"] = result.DenseOperationsPerStep.ToString(System.Globalization.CultureInfo.InvariantCulture) });
                json["dump"] = dumpPath;
            }
            json["seconds"] = Math.Round(result.Seconds, 1);
            Console.WriteLine(json.ToJsonString());
            return 0;
        });
        return command;
    }

    /// <summary>Every combination of the rule values given (an option not given, or 0 for the step counts, leaves its rule out).</summary>
    static IEnumerable<StopPolicy> Policies(double[]? confidences, int[]? stables, int[]? minSteps, double[]? margins, double[]? gates)
    {
        if (confidences is not { Length: > 0 } && stables is not { Length: > 0 } && minSteps is not { Length: > 0 } && margins is not { Length: > 0 } && gates is not { Length: > 0 })
            yield break;
        double?[] Values(double[]? v) => v is { Length: > 0 } ? v.Select(x => (double?)x).ToArray() : [null];
        int?[] Counts(int[]? v) => v is { Length: > 0 } ? v.Select(x => x == 0 ? null : (int?)x).ToArray() : [null];
        foreach (var k in Counts(stables))
            foreach (var m in Counts(minSteps))
                foreach (var p in Values(confidences))
                    foreach (var margin in Values(margins))
                        foreach (var g in Values(gates))
                        {
                            var policy = new StopPolicy { MinConfidence = p, StableSteps = k, MinSteps = m, MinMargin = margin, MinGate = g };
                            policy.Validate();
                            yield return policy;
                        }
    }

    static JsonArray Bins(IEnumerable<ConfidenceFit.ReliabilityBin> bins) => new(bins.Select(b => (JsonNode)new JsonObject
    {
        ["lower"] = Math.Round(b.Lower, 4), ["upper"] = Math.Round(b.Upper, 4), ["count"] = b.Count,
        ["confidence"] = Math.Round(b.Confidence, 4), ["accuracy"] = Math.Round(b.Accuracy, 4),
    }).ToArray());

    /// <summary>"min_confidence=0.9,stable_steps=1" → the policy with those rules (the wire's field names).</summary>
    static StopPolicy ParsePolicy(string text)
    {
        var policy = new StopPolicy();
        foreach (var item in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var parts = item.Split('=', 2);
            if (parts.Length != 2) throw new ArgumentException($"--policy takes rule=value pairs joined by commas, not '{item}'");
            double value = double.Parse(parts[1], System.Globalization.CultureInfo.InvariantCulture);
            policy = parts[0] switch
            {
                "min_confidence" => policy with { MinConfidence = value },
                "stable_steps" => policy with { StableSteps = (int)value },
                "min_steps" => policy with { MinSteps = (int)value },
                "min_margin" => policy with { MinMargin = value },
                "min_gate" => policy with { MinGate = value },
                var other => throw new ArgumentException($"--policy: unknown rule '{other}' (min_confidence, stable_steps, min_steps, min_margin, min_gate)"),
            };
        }
        policy.Validate();
        return policy;
    }

    public static JsonObject Outcome(PolicyOutcome o) => new()
    {
        ["policy"] = PolicyJson(o.Policy),
        ["top1"] = Math.Round(o.Top1, 4),
        ["mean_steps"] = Math.Round(o.MeanSteps, 3),
        ["energy_ratio"] = Math.Round(o.EnergyRatio, 4),
    };

    public static JsonNode PolicyJson(StopPolicy policy) => JsonSerializer.SerializeToNode(policy, Engine.Model.VitConfig.Json)!;

    static JsonArray Numbers(IEnumerable<double> values, int digits) => new(values.Select(v => (JsonNode)Math.Round(v, digits)).ToArray());
}
