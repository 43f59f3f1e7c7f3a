using System.Text.Json.Serialization;

namespace Ecmt.Engine.Conversion;

/// <summary>One scalar threshold pair per place, or one per channel (per head for <see cref="Place.S"/>).</summary>
[JsonConverter(typeof(JsonStringEnumConverter<ThresholdGranularity>))]
public enum ThresholdGranularity
{
    [JsonStringEnumMemberName("per-tensor")] PerTensor,
    [JsonStringEnumMemberName("per-channel")] PerChannel,
}

/// <summary>The MT neurons' firing offsets (<see cref="Kernels.SpikeRounding"/>), as conversion.json names them.</summary>
[JsonConverter(typeof(JsonStringEnumConverter<Rounding>))]
public enum Rounding
{
    [JsonStringEnumMemberName("half-base")] HalfBase,
    [JsonStringEnumMemberName("nearest")] Nearest,
}

/// <summary>A fixed threshold pair that replaces calibration at one place.</summary>
public sealed record ThresholdPair(float Pos, float Neg);

/// <summary>
/// Everything that decides a conversion: levels per place, the quantile, fixed thresholds that override
/// calibration at some places, and whether thresholds are per tensor or per channel.
/// </summary>
public sealed record ConversionSettings
{
    public const int DefaultLevels = 8;
    public const double DefaultQuantile = 0.99;

    /// <summary>n, the levels per side, for each place; places not listed get <see cref="DefaultLevels"/>.</summary>
    public IReadOnlyDictionary<string, int> Levels { get; init; } = new Dictionary<string, int>();
    /// <summary>p: λp is the p-quantile of a place's values, λn minus the (1−p)-quantile.</summary>
    public double Quantile { get; init; } = DefaultQuantile;
    /// <summary>p per place, where it differs from <see cref="Quantile"/>.</summary>
    public IReadOnlyDictionary<string, double> Quantiles { get; init; } = new Dictionary<string, double>();
    /// <summary>
    /// j per place (default 0): the calibrated quantile (or the fixed threshold) is the value of level j, so the base
    /// threshold is λ = q / 2^j and the levels λ … λ·2^(n−1) reach j levels below q and n − 1 − j above it.
    /// </summary>
    public IReadOnlyDictionary<string, int> QuantileLevels { get; init; } = new Dictionary<string, int>();
    /// <summary>The neurons' firing offsets; conversions written before the setting existed used half-base.</summary>
    public Rounding Rounding { get; init; } = Rounding.HalfBase;
    /// <summary>Places whose thresholds are fixed rather than calibrated.</summary>
    public IReadOnlyDictionary<string, ThresholdPair> Fixed { get; init; } = new Dictionary<string, ThresholdPair>();
    public ThresholdGranularity Granularity { get; init; } = ThresholdGranularity.PerTensor;
    /// <summary>The preset these settings came from ("reference", "calibrated"), or null for custom settings.</summary>
    public string? Preset { get; init; }

    public int LevelsAt(Place place) => Levels.TryGetValue(place.Key(), out var n) ? n : DefaultLevels;

    public ThresholdPair? FixedAt(Place place) => Fixed.TryGetValue(place.Key(), out var pair) ? pair : null;

    public double QuantileAt(Place place) => Quantiles.TryGetValue(place.Key(), out var p) ? p : Quantile;

    public int QuantileLevelAt(Place place) => QuantileLevels.TryGetValue(place.Key(), out var j) ? j : 0;

    public Kernels.SpikeRounding SpikeRounding => Rounding == Rounding.Nearest ? Kernels.SpikeRounding.Nearest : Kernels.SpikeRounding.HalfBase;

    /// <summary>Every place calibrated from quantiles.</summary>
    public static ConversionSettings Calibrated(ThresholdGranularity granularity = ThresholdGranularity.PerTensor, double quantile = DefaultQuantile) =>
        new() { Preset = "calibrated", Granularity = granularity, Quantile = quantile };

    /// <summary>The reference code's choice for ViTs: s pinned to 0.0125 on both sides, fc2 to 0.25 / 0.08; the rest calibrated.</summary>
    public static ConversionSettings Reference(ThresholdGranularity granularity = ThresholdGranularity.PerTensor, double quantile = DefaultQuantile) => new()
    {
        Preset = "reference",
        Granularity = granularity,
        Quantile = quantile,
        Fixed = new Dictionary<string, ThresholdPair>
        {
            [Place.S.Key()] = new(0.0125f, 0.0125f),
            [Place.Fc2.Key()] = new(0.25f, 0.08f),
        },
    };

    public static ConversionSettings FromPreset(string preset, ThresholdGranularity granularity, double quantile = DefaultQuantile) => preset switch
    {
        "reference" => Reference(granularity, quantile),
        "calibrated" => Calibrated(granularity, quantile),
        _ => throw new ArgumentException($"unknown preset '{preset}' (reference, calibrated)"),
    };

    public void Validate()
    {
        if (Quantile is <= 0.5 or >= 1) throw new ArgumentOutOfRangeException(nameof(Quantile), Quantile, "the quantile must lie in (0.5, 1)");
        foreach (var (key, p) in Quantiles)
        {
            Places.Parse(key);
            if (p is <= 0.5 or >= 1) throw new ArgumentOutOfRangeException(nameof(Quantiles), p, $"the quantile at {key} must lie in (0.5, 1)");
        }
        foreach (var (key, j) in QuantileLevels)
        {
            var place = Places.Parse(key);
            if (j < 0 || j >= LevelsAt(place))
                throw new ArgumentOutOfRangeException(nameof(QuantileLevels), j, $"the quantile level at {key} must be 0..{LevelsAt(place) - 1} (levels − 1)");
        }
        foreach (var (key, n) in Levels)
        {
            Places.Parse(key);
            if (n is < 1 or > Kernels.MultiThresholdNeuron.MaxLevels)
                throw new ArgumentOutOfRangeException(nameof(Levels), n, $"levels at {key} must be 1..{Kernels.MultiThresholdNeuron.MaxLevels}");
        }
        foreach (var (key, pair) in Fixed)
        {
            Places.Parse(key);
            if (!(pair.Pos > 0) || !(pair.Neg > 0)) throw new ArgumentOutOfRangeException(nameof(Fixed), $"fixed thresholds at {key} must be positive");
        }
    }
}
