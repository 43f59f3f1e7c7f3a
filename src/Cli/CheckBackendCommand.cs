using System.CommandLine;
using System.Diagnostics;
using System.Text.Json.Nodes;
using Ecmt.Engine.Conversion;
using Ecmt.Engine.Data;
using Ecmt.Engine.Model;
using Ecmt.Engine.Simulation;
using Ecmt.Kernels;
using Ecmt.Kernels.Checks;

namespace Ecmt.Cli;

/// <summary>
/// Verifies a backend in one command: every operation against the reference on random data
/// (<see cref="OperationChecks"/>, the conformance tests' own code), the shipped model's per-step predictions against
/// the reference backend on Fashion-MNIST test images, and one <c>bench</c> ratio. Prints one JSON object; exits 1 on
/// any disagreement, 2 when the backend cannot be created.
/// </summary>
static class CheckBackendCommand
{
    /// <summary>Folder beside the published tool holding the check images (gzipped IDX, as Debian installs them).</summary>
    public const string ImagesFolder = "check-images";
    /// <summary>Least share of (image, step) predictions that must agree with the reference (as the cross-backend tests).</summary>
    public const double MinAgreement = 0.995;

    public static Command Create()
    {
        var backend = new Option<string>("--backend") { Description = "Backend to check: cuda, opencl, cpu, cpu-cuda-shape, fastcpu, reference or auto", Required = true };
        var sizes = new Option<string[]>("--sizes") { Description = "Operation check sizes: small, large (default: both on GPU kinds, small elsewhere)", AllowMultipleArgumentsPerToken = true };
        var images = new Option<int>("--images") { Description = "Fashion-MNIST test images for the model check (0 skips it)", DefaultValueFactory = _ => 300 };
        var steps = new Option<int>("--steps") { Description = "Time steps per image of the model check", DefaultValueFactory = _ => 8 };
        var batch = new Option<int>("--batch") { Description = "Images per session in the model check and the bench", DefaultValueFactory = _ => 50 };
        var model = new Option<string?>("--model") { Description = "Converted model folder (default: the shipped models/fmnist-vit)" };
        var bench = new Option<bool>("--bench") { Description = "Run the bench ratio (SNN step over libtorch's ANN forward)", DefaultValueFactory = _ => true };
        var only = new Option<string[]>("--checks") { Description = "Only these operation checks (names as the JSON reports them)", AllowMultipleArgumentsPerToken = true };
        var threads = new Option<int?>("--threads") { Description = "Threads of the CPU backends and libtorch (default: every core)" };
        var command = new Command("check-backend",
            "Checks a backend against the reference: every operation on random data, the shipped model's per-step predictions on test images, one bench ratio. Prints one JSON object; exit code 1 on any disagreement.")
        {
            backend, sizes, only, images, steps, batch, model, bench, threads,
        };
        command.SetAction(parse =>
        {
            var kind = Backends.Parse(parse.GetValue(backend));
            int threadCount = parse.GetValue(threads) ?? Environment.ProcessorCount;
            SetOpenBlasThreads(threadCount);
            var report = new JsonObject { ["backend_requested"] = Backends.NameOf(kind) };
            var clock = Stopwatch.StartNew();
            ISpikingBackend Create()
            {
                var b = Backends.Create(kind);
                if (b is Kernels.Cpu.FastCpuBackend fast) fast.Threads = threadCount;
                return b;
            }
            ISpikingBackend candidate;
            try
            {
                candidate = Create();
            }
            catch (Exception e) when (e is BackendUnavailableException or BackendFaultException)
            {
                report["error"] = e.Message;
                report["kind_of_error"] = e is BackendFaultException ? "fault" : "unavailable";
                report["passed"] = false;
                parse.InvocationConfiguration.Output.WriteLine(report.ToJsonString());
                return 2;
            }
            bool passed = true;
            using (candidate)
            {
                report["backend"] = candidate.Name;
                if (kind == BackendKind.Auto && Backends.AutoFallbackReason is string reason) report["auto_fallback_reason"] = reason;
                var chosenSizes = parse.GetValue(sizes) is { Length: > 0 } named
                    ? named.Select(CheckSizes.Parse).ToArray()
                    : kind is BackendKind.Cuda or BackendKind.OpenCL or BackendKind.CpuCudaShape ? [CheckSizes.Small, CheckSizes.Large] : [CheckSizes.Small];
                var operations = new JsonObject();
                foreach (var size in chosenSizes)
                {
                    using var checks = new OperationChecks(candidate, size);
                    var results = checks.RunAll(parse.GetValue(only) is { Length: > 0 } names ? names : null);
                    var rows = new JsonObject();
                    foreach (var r in results)
                    {
                        var row = new JsonObject { ["passed"] = r.Passed, ["seconds"] = Math.Round(r.Seconds, 3) };
                        if (r.Failure is not null) row["failure"] = r.Failure;
                        rows[r.Name] = row;
                    }
                    passed &= results.All(r => r.Passed);
                    operations[size.Name] = new JsonObject { ["passed"] = results.All(r => r.Passed), ["failed"] = results.Count(r => !r.Passed), ["checks"] = rows };
                }
                report["operations"] = operations;

                int imageCount = parse.GetValue(images), t = parse.GetValue(steps), b = parse.GetValue(batch);
                ArgumentOutOfRangeException.ThrowIfLessThan(t, 1, "--steps");
                ArgumentOutOfRangeException.ThrowIfLessThan(b, 1, "--batch");
                string? path = parse.GetValue(model);
                SpikingModel? spiking = null;
                ImageSet? test = null;
                try
                {
                    spiking = new SpikingModel(ConvertedModel.Load(path ?? ModelDirectory.DefaultModelPath()));
                    test = imageCount > 0 ? TestImages(imageCount) : null;
                }
                catch (Exception e) when (e is IOException or InvalidDataException)
                {
                    report["model_check"] = new JsonObject { ["error"] = e.Message };
                    passed = false;
                }
                if (spiking is not null && test is not null)
                {
                    try
                    {
                        var agreement = ModelAgreement(spiking, candidate, test, t, b);
                        passed &= agreement["passed"]!.GetValue<bool>();
                        report["model_check"] = agreement;
                    }
                    catch (Exception e) when (e is not OutOfMemoryException)
                    {
                        report["model_check"] = new JsonObject { ["error"] = $"{e.GetType().Name}: {e.Message}", ["passed"] = false };
                        passed = false;
                    }
                }
                if (spiking is not null && parse.GetValue(bench))
                {
                    try
                    {
                        report["bench"] = BenchCommand.Ratio(spiking, candidate, test, Math.Min(b, 8), threadCount);
                    }
                    catch (Exception e) when (e is not OutOfMemoryException)
                    {
                        report["bench"] = new JsonObject { ["error"] = $"{e.GetType().Name}: {e.Message}" };
                        passed = false;
                    }
                }
            }
            report["seconds"] = Math.Round(clock.Elapsed.TotalSeconds, 1);
            report["passed"] = passed;
            parse.InvocationConfiguration.Output.WriteLine(report.ToJsonString());
            return passed ? 0 : 1;
        });
        return command;
    }

    /// <summary>
    /// Sets OpenBLAS's threads where OpenBLAS is installed; a device machine may lack it, and only the fast CPU backend
    /// needs it (which then reports its absence itself).
    /// </summary>
    internal static void SetOpenBlasThreads(int threads)
    {
        try
        {
            Kernels.Cpu.OpenBlas.Threads = threads;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException or TypeInitializationException)
        {
        }
    }

    /// <summary>
    /// The first <paramref name="count"/> Fashion-MNIST test images: from Debian's dataset when installed, else from
    /// <see cref="ImagesFolder"/> beside the tool (scripts/device-check.sh puts a few hundred there).
    /// </summary>
    static ImageSet TestImages(int count)
    {
        if (!FashionMnist.IsAvailable)
        {
            var beside = Path.Combine(AppContext.BaseDirectory, ImagesFolder);
            if (File.Exists(Path.Combine(beside, "t10k-labels-idx1-ubyte.gz")))
                Environment.SetEnvironmentVariable("ECMT_FASHION_MNIST_DIR", beside);
        }
        var test = FashionMnist.Load(Split.Test);
        if (test.Count < count) throw new InvalidDataException($"--images {count}: only {test.Count} test images in {test.Source}");
        return test.Take(count);
    }

    /// <summary>Per-step prediction agreement of <paramref name="candidate"/> with the reference backend, and their top-1.</summary>
    static JsonObject ModelAgreement(SpikingModel model, ISpikingBackend candidate, ImageSet test, int steps, int batch)
    {
        using var reference = Backends.Create(BackendKind.Reference);
        int count = test.Count;
        var agree = new int[steps];
        int[] referenceCorrect = new int[steps], candidateCorrect = new int[steps];
        double worstLogit = 0;
        var clock = Stopwatch.StartNew();
        for (int first = 0; first < count; first += batch)
        {
            int n = Math.Min(batch, count - first);
            var pixels = test.Normalized(first, n, model.Config);
            using var expected = new SpikingSession(model, reference, n);
            using var actual = new SpikingSession(model, candidate, n);
            expected.Reset(pixels);
            actual.Reset(pixels);
            for (int t = 0; t < steps; t++)
            {
                StepOutput e = expected.Next(), a = actual.Next();
                float scale = Math.Max(e.AccumulatedLogits.Max(MathF.Abs), 1e-30f);
                worstLogit = Math.Max(worstLogit, a.AccumulatedLogits.Zip(e.AccumulatedLogits).Max(p => MathF.Abs(p.First - p.Second)) / scale);
                for (int i = 0; i < n; i++)
                {
                    int label = test.Labels[first + i];
                    if (e.Prediction(i) == a.Prediction(i)) agree[t]++;
                    if (e.Prediction(i) == label) referenceCorrect[t]++;
                    if (a.Prediction(i) == label) candidateCorrect[t]++;
                }
            }
        }
        double overall = agree.Sum() / (double)(count * steps);
        return new JsonObject
        {
            ["images"] = count,
            ["source"] = test.Source,
            ["steps"] = steps,
            ["agreement"] = Math.Round(overall, 5),
            ["min_agreement"] = MinAgreement,
            ["agreement_by_step"] = new JsonArray([.. agree.Select(a => (JsonNode)Math.Round(a / (double)count, 4))]),
            ["top1_by_step"] = new JsonArray([.. candidateCorrect.Select(c => (JsonNode)Math.Round(c / (double)count, 4))]),
            ["reference_top1_by_step"] = new JsonArray([.. referenceCorrect.Select(c => (JsonNode)Math.Round(c / (double)count, 4))]),
            ["max_relative_logit_difference"] = Math.Round(worstLogit, 6),
            ["seconds"] = Math.Round(clock.Elapsed.TotalSeconds, 1),
            ["passed"] = overall >= MinAgreement,
        };
    }
}
