using System.CommandLine;
using System.Globalization;
using Ecmt.Engine.Conversion;
using Ecmt.Engine.Data;
using Ecmt.Engine.Model;

namespace Ecmt.Cli;

/// <summary>The command-line options that choose a model and its conversion, shared by convert, eval and bench.</summary>
sealed class ConversionOptions
{
    public readonly Option<string?> Model = new("--model") { Description = "Model folder (config.json + model.safetensors); default: the shipped models/fmnist-vit" };
    public readonly Option<string?> Preset = new("--preset") { Description = "Threshold preset: reference (s and fc2 pinned as in the paper's code) or calibrated (every place from quantiles)" };
    public readonly Option<string?> Thresholds = new("--thresholds") { Description = "per-tensor or per-channel thresholds" };
    public readonly Option<double?> Quantile = new("--quantile") { Description = "Calibration quantile p (λp = p-quantile, λn = −(1−p)-quantile)" };
    public readonly Option<string[]> Levels = new("--levels") { Description = "Levels n per place, e.g. --levels fc2=6 s=8 (default 8)", AllowMultipleArgumentsPerToken = true };
    public readonly Option<string[]> Fixed = new("--fixed") { Description = "Fixed thresholds per place as place=pos:neg, e.g. --fixed s=0.0125:0.0125", AllowMultipleArgumentsPerToken = true };
    public readonly Option<string[]> Quantiles = new("--quantiles") { Description = "Calibration quantile per place where it differs from --quantile, e.g. --quantiles fc2=0.999", AllowMultipleArgumentsPerToken = true };
    public readonly Option<string[]> QuantileLevels = new("--quantile-levels") { Description = "Level j whose value the calibrated quantile is, per place (λ = q / 2^j; default 0), e.g. --quantile-levels fc1=2", AllowMultipleArgumentsPerToken = true };
    public readonly Option<string?> Rounding = new("--rounding") { Description = "Firing offsets of the MT neurons: half-base (the paper's: level k fires from λ·2^k − λ/2) or nearest (the nearest level)" };
    public readonly Option<int?> CalibrationImages = new("--calibration-images") { Description = "How many held-out training images calibrate (default all 2,500 of the calibration half)" };

    public IEnumerable<Option> All => [Model, Preset, Thresholds, Quantile, Levels, Fixed, Quantiles, QuantileLevels, Rounding, CalibrationImages];

    public string ModelPath(ParseResult parse) => parse.GetValue(Model) ?? ModelDirectory.DefaultModelPath();

    /// <summary>True when the command line asks for conversion settings other than the ones stored with the model.</summary>
    public bool Overrides(ParseResult parse) =>
        parse.GetValue(Preset) is not null || parse.GetValue(Thresholds) is not null || parse.GetValue(Quantile) is not null
        || parse.GetValue(Levels) is { Length: > 0 } || parse.GetValue(Fixed) is { Length: > 0 } || parse.GetValue(CalibrationImages) is not null
        || parse.GetValue(Quantiles) is { Length: > 0 } || parse.GetValue(QuantileLevels) is { Length: > 0 } || parse.GetValue(Rounding) is not null;

    public ConversionSettings Settings(ParseResult parse, ConversionSettings? stored = null)
    {
        var granularity = parse.GetValue(Thresholds) switch
        {
            null => stored?.Granularity ?? ThresholdGranularity.PerTensor,
            "per-tensor" => ThresholdGranularity.PerTensor,
            "per-channel" => ThresholdGranularity.PerChannel,
            var other => throw new ArgumentException($"--thresholds must be per-tensor or per-channel, not '{other}'"),
        };
        double quantile = parse.GetValue(Quantile) ?? stored?.Quantile ?? ConversionSettings.DefaultQuantile;
        var preset = parse.GetValue(Preset);
        var settings = preset is null && stored is not null
            ? stored with { Granularity = granularity, Quantile = quantile }
            : ConversionSettings.FromPreset(preset ?? "calibrated", granularity, quantile);
        var levels = PerPlace(settings.Levels, parse.GetValue(Levels), "--levels", v => int.Parse(v, CultureInfo.InvariantCulture));
        var fixedPairs = new Dictionary<string, ThresholdPair>(settings.Fixed);
        foreach (var item in parse.GetValue(Fixed) ?? [])
        {
            var (place, value) = SplitItem(item, "--fixed");
            var sides = value.Split(':');
            float pos = float.Parse(sides[0], CultureInfo.InvariantCulture);
            float neg = sides.Length > 1 ? float.Parse(sides[1], CultureInfo.InvariantCulture) : pos;
            fixedPairs[place.Key()] = new ThresholdPair(pos, neg);
        }
        var quantiles = PerPlace(settings.Quantiles, parse.GetValue(Quantiles), "--quantiles", v => double.Parse(v, CultureInfo.InvariantCulture));
        var quantileLevels = PerPlace(settings.QuantileLevels, parse.GetValue(QuantileLevels), "--quantile-levels", v => int.Parse(v, CultureInfo.InvariantCulture));
        var rounding = parse.GetValue(Rounding) switch
        {
            null => settings.Rounding,
            "half-base" => Engine.Conversion.Rounding.HalfBase,
            "nearest" => Engine.Conversion.Rounding.Nearest,
            var other => throw new ArgumentException($"--rounding must be half-base or nearest, not '{other}'"),
        };
        settings = settings with { Levels = levels, Fixed = fixedPairs, Quantiles = quantiles, QuantileLevels = quantileLevels, Rounding = rounding };
        settings.Validate();
        return settings;
    }

    /// <summary>The stored values per place, with the command line's place=value items over them.</summary>
    static Dictionary<string, T> PerPlace<T>(IReadOnlyDictionary<string, T> stored, string[]? items, string option, Func<string, T> parseValue)
    {
        var result = new Dictionary<string, T>(stored);
        foreach (var item in items ?? [])
        {
            var (place, value) = SplitItem(item, option);
            result[place.Key()] = parseValue(value);
        }
        return result;
    }

    static (Place Place, string Value) SplitItem(string item, string option)
    {
        var parts = item.Split('=', 2);
        if (parts.Length != 2) throw new ArgumentException($"{option} takes place=value, not '{item}'");
        return (Places.Parse(parts[0]), parts[1]);
    }

    /// <summary>The converted model: loaded as stored, or calibrated now when the options ask for other settings.</summary>
    public ConvertedModel Resolve(ParseResult parse, TextWriter log)
    {
        string path = ModelPath(parse);
        bool stored = ConvertedModel.IsConvertedModel(path);
        if (stored && !Overrides(parse)) return ConvertedModel.Load(path);
        var weights = ModelDirectory.Load(path);
        var storedSettings = stored ? ConvertedModel.Load(path).Settings : null;
        var settings = Settings(parse, storedSettings);
        var calibration = FashionMnist.Load(Engine.Data.Split.Calibration);
        if (parse.GetValue(CalibrationImages) is int count) calibration = calibration.Take(count);
        log.WriteLine($"calibrating {weights.Config.Name} on {calibration.Count} images ({calibration.Source}): preset {settings.Preset ?? "custom"}, {Describe(settings.Granularity)}, p = {settings.Quantile}");
        return ConvertedModel.Convert(weights, calibration, settings);
    }

    /// <summary>The images of --split (test or validation), the first --limit of them when given.</summary>
    public static ImageSet Images(string split, int? limit)
    {
        var images = FashionMnist.Load(split switch
        {
            "test" => Split.Test,
            "validation" => Split.Validation,
            var other => throw new ArgumentException($"--split must be test or validation, not '{other}'"),
        });
        return limit is int n ? images.Take(n) : images;
    }

    public static string Describe(ThresholdGranularity g) => g == ThresholdGranularity.PerTensor ? "per-tensor" : "per-channel";
}
