using System.CommandLine;
using System.Text.Json;
using Ecmt.Engine.Conversion;
using Ecmt.Engine.Model;

namespace Ecmt.Cli;

static class ConvertCommand
{
    public static Command Create()
    {
        var conversion = new ConversionOptions();
        var output = new Option<string?>("--output") { Description = "Folder for the converted model (default: the model's own folder, adding conversion.json and thresholds.safetensors)" };
        var command = new Command("convert", "Calibrate thresholds on held-out training images and write the converted spiking model (weights, thresholds, settings).")
        {
            output,
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
            }, VitConfig.Json));
            return 0;
        });
        return command;
    }
}
