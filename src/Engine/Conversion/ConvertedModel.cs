using System.Text.Json;
using Ecmt.Engine.Ann;
using Ecmt.Engine.Data;
using Ecmt.Engine.Model;

namespace Ecmt.Engine.Conversion;

/// <summary>What <c>conversion.json</c> records next to the weights: the settings and the data that calibrated them.</summary>
public sealed record ConversionRecord
{
    public string Method { get; init; } = "ecmt";
    public int FormatVersion { get; init; } = 1;
    public required ConversionSettings Settings { get; init; }
    public required CalibrationSource Calibration { get; init; }
    /// <summary>Per-step temperatures and the gate, fitted on validation images; null: τ = 1, no gate.</summary>
    public ConfidenceCalibration? Confidence { get; init; }
    /// <summary>The policy chosen on the validation images (fewest mean steps within 0.5 point of the ANN); null: none.</summary>
    public Protos.StopPolicy? RecommendedStop { get; init; }
    public RecommendedStopStats? RecommendedStopValidation { get; init; }
    public DateTimeOffset Created { get; init; } = DateTimeOffset.UtcNow;
}

/// <summary>
/// A ViT converted by ECMT: its weights, thresholds at every place of every block, and the settings that made them.
/// On disk: <c>config.json</c>, <c>model.safetensors</c>, <c>conversion.json</c> and <c>thresholds.safetensors</c>
/// (keys <c>blocks.{i}.{place}.lambda_pos</c> / <c>lambda_neg</c>, shape (groups)) in one folder. conversion.json also
/// holds what was fitted on validation images: per-step temperatures, the gate and the recommended stop policy.
/// </summary>
public sealed class ConvertedModel(VitWeights weights, ModelThresholds thresholds, ConversionRecord record)
{
    public const string ConversionFile = "conversion.json";
    public const string ThresholdsFile = "thresholds.safetensors";

    public VitWeights Weights { get; } = weights;
    public ModelThresholds Thresholds { get; } = thresholds;
    public ConversionRecord Record { get; } = record;
    public ConversionSettings Settings => Record.Settings;
    public VitConfig Config => Weights.Config;
    public string Name => Config.Name ?? "model";
    /// <summary>How probabilities are computed: the fitted temperatures and gate, or τ = 1 without them.</summary>
    public ConfidenceCalibration Confidence => Record.Confidence ?? ConfidenceCalibration.Uncalibrated;

    /// <summary>This model with other temperatures, gate and recommended policy (thresholds and settings unchanged).</summary>
    public ConvertedModel WithConfidence(ConfidenceCalibration? confidence, Protos.StopPolicy? recommended, RecommendedStopStats? stats) =>
        new(Weights, Thresholds, Record with
        {
            Confidence = confidence is null || !confidence.IsCalibrated ? null : confidence,
            RecommendedStop = recommended,
            RecommendedStopValidation = stats,
        });

    /// <summary>Calibrates thresholds on <paramref name="calibration"/> images and converts.</summary>
    public static ConvertedModel Convert(VitWeights weights, ImageSet calibration, ConversionSettings settings,
        int batchSize = Conversion.Calibration.DefaultBatchSize, IProgress<int>? progress = null)
    {
        var thresholds = Conversion.Calibration.Calibrate(new ReferenceVit(weights), calibration, settings, batchSize, progress);
        return new ConvertedModel(weights, thresholds, new ConversionRecord
        {
            Settings = settings,
            Calibration = new CalibrationSource(calibration.Source, calibration.Count, batchSize),
        });
    }

    public static bool IsConvertedModel(string directory) =>
        File.Exists(Path.Combine(directory, ConversionFile)) && File.Exists(Path.Combine(directory, ThresholdsFile))
        && File.Exists(Path.Combine(directory, ModelDirectory.ConfigFile));

    public static ConvertedModel Load(string directory)
    {
        var weights = ModelDirectory.Load(directory);
        var recordPath = Path.Combine(directory, ConversionFile);
        if (!File.Exists(recordPath)) throw new FileNotFoundException($"'{directory}' holds no converted model (no {ConversionFile}); run `ecmt convert` first", recordPath);
        var record = JsonSerializer.Deserialize<ConversionRecord>(File.ReadAllText(recordPath), VitConfig.Json)
            ?? throw new InvalidDataException($"{recordPath} is empty");
        record.Settings.Validate();
        try
        {
            record.Confidence?.Validate();
            record.RecommendedStop?.Validate();
        }
        catch (ArgumentException e)
        {
            throw new InvalidDataException($"{recordPath}: {e.Message}", e);
        }
        if (record.RecommendedStop is { IsRecommended: true })
            throw new InvalidDataException($"{recordPath}: recommended_stop must be a policy of its own, not 'recommended'");
        if (record.RecommendedStop?.MinGate is not null && record.Confidence?.Gate is null)
            throw new InvalidDataException($"{recordPath}: recommended_stop uses the gate, but the conversion has none");
        var tensors = SafeTensors.Load(Path.Combine(directory, ThresholdsFile));
        var thresholds = new ModelThresholds(weights.Config.Depth);
        var expected = new HashSet<string>(StringComparer.Ordinal);
        for (int block = 0; block < weights.Config.Depth; block++)
        {
            foreach (var place in Places.All)
            {
                string posKey = ModelThresholds.Key(block, place, "pos"), negKey = ModelThresholds.Key(block, place, "neg");
                expected.Add(posKey);
                expected.Add(negKey);
                if (!tensors.TryGetValue(posKey, out var pos) || !tensors.TryGetValue(negKey, out var neg))
                    throw new InvalidDataException($"{ThresholdsFile} in '{directory}' lacks {posKey} or {negKey}");
                int groups = Conversion.Calibration.GroupCount(place, weights.Config, record.Settings.Granularity);
                if (pos.Length != groups || neg.Length != groups)
                    throw new InvalidDataException($"{posKey} has {pos.Length} values, {record.Settings.Granularity} thresholds at {place.Key()} need {groups}");
                if (pos.Data.Concat(neg.Data).Any(v => !(v > 0) || float.IsInfinity(v)))
                    throw new InvalidDataException($"thresholds at block {block} place {place.Key()} must be positive and finite");
                thresholds[block, place] = new PlaceThresholds(pos.Data, neg.Data);
            }
        }
        var unexpected = tensors.Keys.Where(k => !expected.Contains(k)).ToList();
        if (unexpected.Count > 0) throw new InvalidDataException($"{ThresholdsFile} in '{directory}' has unexpected tensors: {string.Join(", ", unexpected)}");
        return new ConvertedModel(weights, thresholds, record);
    }

    /// <summary>Writes the converted model; the weights are written too unless the folder already holds these weights' files.</summary>
    public void Save(string directory, bool writeWeights = true)
    {
        if (writeWeights) ModelDirectory.Save(directory, Weights);
        Directory.CreateDirectory(directory);
        var tensors = new Dictionary<string, DenseTensor>(StringComparer.Ordinal);
        for (int block = 0; block < Config.Depth; block++)
        {
            foreach (var place in Places.All)
            {
                var t = Thresholds[block, place];
                tensors[ModelThresholds.Key(block, place, "pos")] = new DenseTensor([t.Groups], t.Pos);
                tensors[ModelThresholds.Key(block, place, "neg")] = new DenseTensor([t.Groups], t.Neg);
            }
        }
        SafeTensors.Save(Path.Combine(directory, ThresholdsFile), tensors,
            metadata: new Dictionary<string, string> { ["granularity"] = Settings.Granularity == ThresholdGranularity.PerTensor ? "per-tensor" : "per-channel" });
        File.WriteAllText(Path.Combine(directory, ConversionFile), JsonSerializer.Serialize(Record, VitConfig.Json) + "\n");
    }
}
