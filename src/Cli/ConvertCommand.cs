using System.CommandLine;
using System.Text.Json;
using Ecmt.Engine.Conversion;
using Ecmt.Engine.Evaluation;
using Ecmt.Engine.Model;

namespace Ecmt.Cli;

static class ConvertCommand
{
    public static Command Create()
    {
        var conversion = new ConversionOptions();
        var output = new Option<string?>("--output") { Description = "Folder for the converted model (default: the model's own folder, adding conversion.json and thresholds.safetensors)" };
        var fitSteps = new Option<int>("--fit-steps") { Description = "Steps simulated on the validation images to fit per-step temperatures, the gate and the recommended stop policy (0: none of them)", DefaultValueFactory = _ => ConfidenceFit.DefaultSteps };
        var validationImages = new Option<int?>("--validation-images") { Description = "How many of the 2,500 validation images to fit on (default all)" };
        var backend = new Option<string>("--backend") { Description = "Backend that simulates the validation images: auto, fastcpu, reference, cuda, opencl or cpu", DefaultValueFactory = _ => "auto" };
        var command = new Command("convert", "Calibrate thresholds on held-out training images, fit per-step temperatures, the gate and the recommended stop policy on other held-out images, and write the converted spiking model.")
        {
            output, fitSteps, validationImages, backend,
        };
        foreach (var option in conversion.All) command.Options.Add(option);
        command.SetAction(parse =>
        {
            string source = conversion.ModelPath(parse);
            // Convert always calibrates: a stored conversion only supplies defaults for unspecified options.
            var stored = ConvertedModel.IsConvertedModel(source) ? ConvertedModel.Load(source).Settings : null;
            var settings = conversion.Settings(parse, stored);
            var weights = ModelDirectory.Load(source);
            var calibration = Engine.Data.FashionMnist.Load(Engine.Data.Split.Calibration);
            if (parse.GetValue(conversion.CalibrationImages) is int count) calibration = calibration.Take(count);
            var converted = Progress.Run($"calibrating on {calibration.Count} images", calibration.Count,
                p => ConvertedModel.Convert(weights, calibration, settings, progress: p));
            int steps = parse.GetValue(fitSteps);
            ArgumentOutOfRangeException.ThrowIfNegative(steps, "--fit-steps");
            if (steps > 0)
            {
                var validation = Engine.Data.FashionMnist.Load(Engine.Data.Split.Validation);
                if (parse.GetValue(validationImages) is int n) validation = validation.Take(n);
                var kind = Kernels.Backends.Parse(parse.GetValue(backend));
                converted = Progress.Run($"fitting temperatures, gate and stop policy on {validation.Count} images × {steps} steps", validation.Count,
                    p => ConfidenceFit.Calibrate(converted, validation, () => Kernels.Backends.Create(kind), steps, progress: p));
            }
            string target = parse.GetValue(output) ?? source;
            bool sameFolder = Path.GetFullPath(target) == Path.GetFullPath(source);
            converted.Save(target, writeWeights: !sameFolder);
            Console.WriteLine(JsonSerializer.Serialize(new
            {
                model = weights.Config.Name,
                output = target,
                preset = settings.Preset,
                thresholds = ConversionOptions.Describe(settings.Granularity),
                quantile = settings.Quantile,
                calibration = converted.Record.Calibration,
                temperatures = converted.Record.Confidence?.Temperatures,
                ece_before = converted.Record.Confidence?.EceBefore,
                ece_after = converted.Record.Confidence?.EceAfter,
                recommended_stop = converted.Record.RecommendedStop,
                recommended_stop_validation = converted.Record.RecommendedStopValidation,
            }, VitConfig.Json));
            return 0;
        });
        return command;
    }
}
