using System.CommandLine;
using System.Diagnostics;
using System.Text.Json.Nodes;
using Ecmt.Engine.Conversion;
using Ecmt.Engine.Data;
using Ecmt.Engine.Model;
using Ecmt.Engine.Simulation;
using Ecmt.Kernels;
using Ecmt.Torch;
using static TorchSharp.torch;

namespace Ecmt.Cli;

/// <summary>
/// One SNN time step against one ANN forward of the same ViT with the same weights (libtorch through TorchSharp),
/// measured in one run and interleaved, step by step, so that machine noise hits both.
/// </summary>
static class BenchCommand
{
    public const string RandomVitSmall = "vit-s16-random";
    const string RandomSuffix = "-random";

    /// <summary>NAME-random for every named shape (<see cref="VitConfig.NamedShapes"/>): vit-ti16-random … eva-g14-random.</summary>
    public static IEnumerable<string> RandomModels => VitConfig.NamedShapes.Keys.Select(k => k + RandomSuffix);

    public static Command Create()
    {
        var conversion = new ConversionOptions();
        var batch = new Option<int>("--batch") { Description = "Images B simulated together (and in the ANN forward)", DefaultValueFactory = _ => 1 };
        var steps = new Option<int>("--steps") { Description = "Time steps T per image; steps 1 … warm-up are not timed", DefaultValueFactory = _ => 8 };
        var warmup = new Option<int>("--warmup-steps") { Description = "First steps of each image left out of the SNN mean (EC and neurons behave differently at t = 1)", DefaultValueFactory = _ => 1 };
        var repeats = new Option<int>("--repeats") { Description = "Images run through all T steps, each after a reset", DefaultValueFactory = _ => 2 };
        var backend = new Option<string>("--backend") { Description = "auto (CUDA when present, else fastcpu), fastcpu, reference, cuda, opencl or cpu", DefaultValueFactory = _ => "auto" };
        var profile = new Option<bool>("--profile") { Description = "Also time every backend operation over the measured steps (adds \"profile\" to the JSON)" };
        var threads = new Option<int?>("--threads") { Description = "Threads for both sides: libtorch, and the SNN backend (fastcpu splits its loops and products over them, OpenBLAS single-threaded; the reference backend gives them to OpenBLAS) (default: every core)" };
        var check = new Option<bool>("--check-reference") { Description = "Also run the same images and steps on the reference backend and report how far the outputs are apart" };
        var save = new Option<string?>("--save") { Description = "Also write the converted model to this folder (a NAME-random model, for a server to host: ecmt-server --models its parent)" };
        var calibrationImages = new Option<int>("--random-calibration-images") { Description = "Random images that calibrate a NAME-random model", DefaultValueFactory = _ => 4 };
        var command = new Command("bench",
            $"Time one SNN step against libtorch's ANN forward of the same ViT; prints one JSON object. --model DIR or a named shape with random weights calibrated on random images: {string.Join(", ", RandomModels)}.")
        {
            batch, steps, warmup, repeats, backend, profile, threads, check, calibrationImages, save,
        };
        foreach (var option in conversion.All) command.Options.Add(option);
        command.SetAction(parse =>
        {
            int b = parse.GetValue(batch), t = parse.GetValue(steps), skip = parse.GetValue(warmup), rounds = parse.GetValue(repeats);
            ArgumentOutOfRangeException.ThrowIfLessThan(b, 1, "--batch");
            ArgumentOutOfRangeException.ThrowIfLessThan(skip, 0, "--warmup-steps");
            if (t <= skip) throw new ArgumentException($"--steps {t} leaves no step after the {skip} warm-up steps");
            ArgumentOutOfRangeException.ThrowIfLessThan(rounds, 1, "--repeats");

            var (converted, modelName, images) = LoadModel(parse, conversion, b, parse.GetValue(calibrationImages));
            if (parse.GetValue(save) is string saveTo)
            {
                converted.Save(saveTo);
                Console.Error.WriteLine($"wrote {modelName} to {saveTo}");
            }
            var config = converted.Config;
            var model = new SpikingModel(converted);
            var kind = Backends.Parse(parse.GetValue(backend));
            bool profiling = parse.GetValue(profile);
            int threadCount = parse.GetValue(threads) ?? Environment.ProcessorCount;
            ArgumentOutOfRangeException.ThrowIfLessThan(threadCount, 1, "--threads");
            CheckBackendCommand.SetOpenBlasThreads(threadCount);
            ISpikingBackend chosen = Backends.Create(kind);
            if (chosen is Kernels.Cpu.FastCpuBackend fast) fast.Threads = threadCount;
            var profiler = profiling ? new ProfilingBackend(chosen) : null;
            using var spiking = profiler ?? chosen;
            long allocatedBefore = GC.GetTotalAllocatedBytes(precise: true);
            using var session = new SpikingSession(model, spiking, b);
            // Host memory the session took (state, scratch tensors, spike codes) on CPU backends, whose buffers are managed arrays.
            long sessionBytes = GC.GetTotalAllocatedBytes(precise: true) - allocatedBefore;

            // libtorch may be absent (the published device tool carries none): the ANN side is then reported unavailable.
            using var ann = AnnBaseline.TryCreate(converted, images, b, threadCount, out string? annUnavailable);

            // Warm-up: JIT, first-touch of every buffer, OpenBLAS and libtorch thread pools.
            ann?.Forward();
            session.Reset(images);
            for (int step = 0; step < Math.Min(t, skip + 1); step++) session.Next();

            string? loadBefore = LoadAverage();
            profiler?.Reset();
            var annMs = new List<double>();
            var stepMs = new List<double>();
            StepOutput? last = null;
            // Each round runs T ANN forwards, then the T SNN steps: side by side in one run, but not interleaved step by
            // step, where libtorch's OpenMP threads, spinning after each forward, took the cores the next SNN step wanted
            // (a batch-1 step of the shipped model read 11 ms on 2 threads against 1.4 ms alone).
            for (int round = 0; round < rounds; round++)
            {
                if (profiler is not null) profiler.Enabled = false;
                for (int step = 1; ann is not null && step <= t; step++) annMs.Add(ann.Forward());
                session.Reset(images);
                for (int step = 1; step <= t; step++)
                {
                    if (profiler is not null) profiler.Enabled = step > skip;
                    long start = Stopwatch.GetTimestamp();
                    last = session.Next();
                    double ms = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
                    if (step > skip) stepMs.Add(ms);
                }
            }

            double? annMean = ann is null ? null : annMs.Average(), annMedian = ann is null ? null : Median(annMs);
            double stepMean = stepMs.Average();
            long stateBytes = session.StateFloatsPerImage * sizeof(float);
            long activationBytes = AnnActivationFloatsPerImage(config) * sizeof(float);
            long neurons = NeuronsPerImage(config);
            var json = new JsonObject
            {
                ["model"] = modelName,
                ["backend"] = session.BackendName,
                ["batch"] = b,
                ["steps"] = t,
                ["ann_forward_ms"] = annMean is double a ? Math.Round(a, 2) : null,
                ["snn_step_ms"] = Math.Round(stepMean, 2),
                ["step_over_ann"] = annMean is double a2 ? Math.Round(stepMean / a2, 3) : null,
                ["ann_forward_ms_median"] = annMedian is double m ? Math.Round(m, 2) : null,
                ["snn_step_ms_median"] = Math.Round(Median(stepMs), 2),
                ["step_over_ann_median"] = annMedian is double m2 ? Math.Round(Median(stepMs) / m2, 3) : null,
                ["ann_forwards"] = annMs.Count,
                ["snn_steps_timed"] = stepMs.Count,
                ["threads"] = threadCount,
                ["cores"] = Environment.ProcessorCount,
                // Other work on the machine slows both sides, though not always equally: record how busy it was.
                ["load_average_before"] = loadBefore,
                ["load_average_after"] = LoadAverage(),
                ["ann_gflop"] = Math.Round(AnnFlopsPerImage(config) * b / 1e9, 2),
                ["state_mb_per_image"] = Math.Round(stateBytes / 1e6, 1),
                ["ann_activations_mb_per_image"] = Math.Round(activationBytes / 1e6, 1),
                ["state_over_activations"] = Math.Round((double)stateBytes / activationBytes, 2),
                ["spike_codes_mb_per_image"] = Math.Round(neurons / 1e6, 1),
                ["session_host_mb_per_image"] = Math.Round(sessionBytes / 1e6 / b, 1),
                ["spikes_per_neuron_step"] = Math.Round(last!.Spikes.Average() / ((double)neurons * t), 4),
                ["firing_rate"] = Math.Round(Enumerable.Range(0, b).Average(last.FiringRate), 4),
            };
            if (annUnavailable is not null) json["ann_unavailable"] = annUnavailable;
            if (profiler is not null) json["profile"] = ProfileJson(profiler.Profile(), stepMs.Count, stepMean);
            if (parse.GetValue(check)) json["reference_check"] = CompareWithReference(model, session, images, t);
            Console.WriteLine(json.ToJsonString());
            return 0;
        });
        return command;
    }

    /// <summary>
    /// One bench ratio for <c>check-backend</c>: the mean SNN step of <paramref name="model"/> on
    /// <paramref name="backend"/> at batch <paramref name="batch"/> (steps 2 … 8 of two runs) over libtorch's ANN
    /// forward, interleaved; the ANN side is reported unavailable where libtorch cannot load.
    /// </summary>
    public static JsonObject Ratio(SpikingModel model, ISpikingBackend backend, ImageSet? test, int batch, int threads)
    {
        var config = model.Config;
        var images = (test is not null && test.Count >= batch ? test : RandomImages(config, batch, seed: 3)).Normalized(0, batch, config);
        using var session = new SpikingSession(model, backend, batch);
        using var ann = AnnBaseline.TryCreate(model.Converted, images, batch, threads, out string? unavailable);
        ann?.Forward();
        var annMs = new List<double>();
        var stepMs = new List<double>();
        for (int round = 0; round < 2; round++)
        {
            session.Reset(images);
            for (int step = 1; step <= 8; step++)
            {
                if (ann is not null) annMs.Add(ann.Forward());
                long start = Stopwatch.GetTimestamp();
                session.Next();
                if (step > 1) stepMs.Add(Stopwatch.GetElapsedTime(start).TotalMilliseconds);
            }
        }
        double step1 = stepMs.Average();
        var json = new JsonObject
        {
            ["model"] = model.Converted.Name,
            ["batch"] = batch,
            ["snn_step_ms"] = Math.Round(step1, 3),
            ["ann_forward_ms"] = ann is null ? null : Math.Round(annMs.Average(), 3),
            ["step_over_ann"] = ann is null ? null : Math.Round(step1 / annMs.Average(), 3),
            ["load_average"] = LoadAverage(),
        };
        if (unavailable is not null) json["ann_unavailable"] = unavailable;
        return json;
    }

    /// <summary>libtorch's forward of the same ViT with the same weights on fixed images, when libtorch can load here.</summary>
    sealed class AnnBaseline : IDisposable
    {
        readonly TorchVit _vit;
        readonly TorchSharp.torch.Tensor _input;

        AnnBaseline(ConvertedModel converted, float[] images, int batch, int threads)
        {
            var config = converted.Config;
            TorchRuntime.EnsureLoaded(threads);
            _vit = new TorchVit(config);
            _vit.LoadWeights(converted.Weights);
            _vit.eval();
            // TorchVit's constructor calls EnsureLoaded() again, which resets libtorch to every core: set it back.
            TorchRuntime.EnsureLoaded(threads);
            _input = tensor(images, [batch, config.InChannels, config.ImageSize, config.ImageSize]);
        }

        /// <summary>The baseline, or null with the reason when libtorch's native libraries are missing or refuse to load.</summary>
        public static AnnBaseline? TryCreate(ConvertedModel converted, float[] images, int batch, int threads, out string? unavailable)
        {
            try
            {
                unavailable = null;
                return new AnnBaseline(converted, images, batch, threads);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                var root = e;
                while (root.InnerException is not null && root is TypeInitializationException) root = root.InnerException;
                unavailable = $"libtorch unavailable: TorchSharp could not load its native libraries (the device tool is built without them): {root.GetType().Name}: {root.Message}";
                return null;
            }
        }

        /// <summary>One forward; its wall time in ms.</summary>
        public double Forward()
        {
            using var _ = no_grad();
            long start = Stopwatch.GetTimestamp();
            using var logits = _vit.forward(_input);
            return Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        }

        public void Dispose()
        {
            _input.Dispose();
            _vit.Dispose();
        }
    }

    /// <summary>
    /// Runs the images through T steps on the session's backend and on the reference backend; per step, the share of
    /// images whose prediction agrees and the largest difference of accumulated logits / t, relative to the largest |logit|.
    /// </summary>
    static JsonObject CompareWithReference(SpikingModel model, SpikingSession session, float[] images, int steps)
    {
        using var reference = new Kernels.Reference.ReferenceBackend();
        using var expected = new SpikingSession(model, reference, session.Images);
        session.Reset(images);
        expected.Reset(images);
        var agreement = new JsonArray();
        var error = new JsonArray();
        for (int t = 1; t <= steps; t++)
        {
            StepOutput a = session.Next(), e = expected.Next();
            agreement.Add(Math.Round(Enumerable.Range(0, a.Images).Average(i => a.Prediction(i) == e.Prediction(i) ? 1.0 : 0.0), 4));
            float scale = e.AccumulatedLogits.Max(MathF.Abs);
            float worst = a.AccumulatedLogits.Zip(e.AccumulatedLogits).Max(p => MathF.Abs(p.First - p.Second));
            error.Add(Math.Round(worst / Math.Max(scale, 1e-30f), 6));
        }
        return new JsonObject { ["prediction_agreement_by_step"] = agreement, ["max_relative_logit_difference_by_step"] = error };
    }

    /// <summary>The converted model, its name for the report, and B normalised images (B, C, H, W) to run.</summary>
    static (ConvertedModel Model, string Name, float[] Images) LoadModel(ParseResult parse, ConversionOptions conversion, int batch, int calibrationCount)
    {
        string? requested = parse.GetValue(conversion.Model);
        if (requested is not null && requested.EndsWith(RandomSuffix, StringComparison.Ordinal)
            && VitConfig.NamedShapes.TryGetValue(requested[..^RandomSuffix.Length], out var shape))
        {
            var config = shape();
            var weights = VitWeights.Random(config, seed: 1);
            var calibration = RandomImages(config, calibrationCount, seed: 2);
            var settings = conversion.Settings(parse);
            Console.Error.WriteLine($"calibrating {requested} ({config.LayoutText}) on {calibrationCount} random images: preset {settings.Preset ?? "custom"}");
            var converted = ConvertedModel.Convert(weights, calibration, settings, batchSize: calibrationCount);
            return (converted, requested, RandomImages(config, batch, seed: 3).Normalized(0, batch, config));
        }
        var model = conversion.Resolve(parse, Console.Error);
        // Real images when the model is a Fashion-MNIST one and the data is here: spike density depends on the input.
        var images = FashionMnist.IsAvailable && model.Config.InChannels == 1 && model.Config.ImageSize == 28
            ? FashionMnist.Load(Split.Test).Take(batch)
            : RandomImages(model.Config, batch, seed: 3);
        if (images.Count < batch) throw new ArgumentException($"--batch {batch} is more than the {images.Count} images available");
        return (model, model.Name, images.Normalized(0, batch, model.Config));
    }

    static ImageSet RandomImages(VitConfig config, int count, int seed)
    {
        var rng = new Random(seed);
        var pixels = new byte[count * config.PixelsPerImage];
        rng.NextBytes(pixels);
        return new ImageSet(pixels, new byte[count], config.InChannels, config.ImageSize, config.ImageSize, $"random pixels (seed {seed})");
    }

    /// <summary>
    /// Activations of one ANN forward, per image: the floats of every tensor an operation of the forward outputs,
    /// each counted once (what a training forward keeps for the backward pass): the embedded tokens (N·D); per block
    /// LN1 (N·D), qkv (3·N·D), attention scores and probabilities (2·H·N²), attention output (N·D), proj (N·D),
    /// the residual sum (N·D), LN2 (N·D), fc1 and GELU (2·N·F), fc2 (N·D) and the residual sum (N·D); the final
    /// LayerNorm (N·D) and the logits (classes). An inference-only forward frees most of these as it goes.
    /// </summary>
    public static long AnnActivationFloatsPerImage(VitConfig c)
    {
        long n = c.Tokens, d = c.EmbedDim, f = c.MlpDim, h = c.NumHeads;
        long perBlock = 10 * n * d + 2 * h * n * n + 2 * n * f;
        return n * d + c.Depth * perBlock + n * d + c.NumClasses;
    }

    /// <summary>MT neurons per image (one spike code byte each): per block fc_qkv (N·D), q/k/v (3·N·D), s (H·N²), fc_out (N·D), fc1 (N·D), fc2 (N·F).</summary>
    public static long NeuronsPerImage(VitConfig c)
    {
        long n = c.Tokens, d = c.EmbedDim, f = c.MlpDim, h = c.NumHeads;
        return c.Depth * (6 * n * d + h * n * n + n * f);
    }

    /// <summary>Floating-point operations of one ANN forward per image (2 per multiply-accumulate, products only, patch embedding and head included).</summary>
    public static double AnnFlopsPerImage(VitConfig c)
    {
        double n = c.Tokens, d = c.EmbedDim, f = c.MlpDim;
        return 2 * (c.NumPatches * (double)c.PatchVectorLength * d + c.Depth * (n * (4 * d * d + 2 * d * f) + 2 * n * n * d) + d * c.NumClasses);
    }

    static JsonObject ProfileJson(IReadOnlyList<OpProfile> ops, int steps, double stepMs)
    {
        var table = new JsonObject();
        foreach (var op in ops)
        {
            double ms = op.Milliseconds / steps;
            var row = new JsonObject
            {
                ["ms_per_step"] = Math.Round(ms, 3),
                ["share"] = Math.Round(ms / stepMs, 3),
                ["calls_per_step"] = op.Calls / steps,
            };
            if (op.Density is double density) row["spike_density"] = Math.Round(density, 3);
            if (op.Flops > 0) row["gflop_per_s"] = Math.Round(op.Flops / (op.Milliseconds * 1e6), 1);
            else row["m_elements_per_s"] = Math.Round(op.Elements / (op.Milliseconds * 1e3), 0);
            table[op.Op] = row;
        }
        return table;
    }

    /// <summary>The 1-, 5- and 15-minute load averages (Linux), or null.</summary>
    static string? LoadAverage() =>
        File.Exists("/proc/loadavg") ? string.Join(' ', File.ReadAllText("/proc/loadavg").Split(' ').Take(3)) : null;

    static double Median(List<double> values)
    {
        var sorted = values.Order().ToList();
        return sorted.Count % 2 == 1 ? sorted[sorted.Count / 2] : (sorted[sorted.Count / 2 - 1] + sorted[sorted.Count / 2]) / 2;
    }
}
