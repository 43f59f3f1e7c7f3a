using System.CommandLine;
using System.Diagnostics;
using System.Text.Json.Nodes;
using Ecmt.Cli;
using Ecmt.Engine.Data;

namespace Ecmt.Client.Tests;

/// <summary>
/// <c>ecmt check-backend</c> in-process on the backends this machine has (operation checks, the shipped model's
/// agreement with the reference on test images, the bench ratio), its refusal of an absent device, and the published
/// device tool (scripts/device-check.sh) running here on the fast CPU path without libtorch.
/// </summary>
[Collection(ProcessWideOpenBlas.Name)]
public sealed class CheckBackendTests
{
    static async Task<(int Code, JsonObject Json)> CheckBackend(params string[] args)
    {
        var root = new RootCommand { CheckBackendCommand.Create() };
        using StringWriter output = new(), error = new();
        int code = await root.Parse(["check-backend", .. args]).InvokeAsync(new InvocationConfiguration { Output = output, Error = error });
        return (code, JsonNode.Parse(output.ToString())!.AsObject());
    }

    [Theory]
    [InlineData("fastcpu", true)]
    [InlineData("reference", false)]
    [InlineData("cpu", false)]
    public async Task Check_backend_passes_on_the_backends_here(string backend, bool bench)
    {
        Assert.SkipUnless(FashionMnist.IsAvailable, "Fashion-MNIST is not installed (dataset-fashion-mnist)");
        // A bounded model check keeps the run short: 40 images × 4 steps, 10 × 2 on ILGPU's slow CPU accelerator.
        int images = backend == "cpu" ? 10 : 40, steps = backend == "cpu" ? 2 : 4;
        var (code, json) = await CheckBackend("--backend", backend, "--images", $"{images}", "--steps", $"{steps}", "--batch", "20", "--threads", "1", "--bench", bench ? "true" : "false");
        Assert.True(code == 0, json.ToJsonString());
        Assert.True((bool)json["passed"]!);
        var small = json["operations"]!["small"]!.AsObject();
        Assert.Equal(0, (int)small["failed"]!);
        Assert.Equal(Kernels.Checks.OperationChecks.Names.Count, small["checks"]!.AsObject().Count);
        var model = json["model_check"]!.AsObject();
        Assert.Equal(images, (int)model["images"]!);
        Assert.True((double)model["agreement"]! >= 0.995);
        Assert.Equal(steps, model["top1_by_step"]!.AsArray().Count);
        if (bench)
        {
            // libtorch is installed here: the ratio is a number.
            Assert.True((double)json["bench"]!["step_over_ann"]! > 0, json["bench"]!.ToJsonString());
        }
    }

    [Fact]
    public async Task Check_backend_reports_an_absent_device_and_fails()
    {
        var (code, json) = await CheckBackend("--backend", "opencl", "--images", "0", "--bench", "false");
        if (code == 0) Assert.Skip("an OpenCL device ILGPU accepts is present here");
        Assert.Equal(2, code);
        Assert.False((bool)json["passed"]!);
        Assert.Equal("unavailable", (string)json["kind_of_error"]!);
        Assert.Contains("OpenCL", (string)json["error"]!);
    }

    /// <summary>
    /// Publishes the device tool as scripts/device-check.sh does (self-contained single file, no libtorch; about
    /// 3–7 minutes on the shared 2-core machine) and runs it with --backend fastcpu, the images read from the
    /// check-images folder beside it; libtorch's comparison is reported unavailable, not a failure.
    /// </summary>
    [Fact]
    public async Task The_published_device_tool_runs_here_without_libtorch()
    {
        Assert.SkipUnless(FashionMnist.IsAvailable, "Fashion-MNIST is not installed (dataset-fashion-mnist)");
        var root = Repo();
        var bundle = Path.Combine(Path.GetTempPath(), $"ecmt-device-{Guid.NewGuid():N}");
        try
        {
            var (publish, publishLog) = await Run("bash", [Path.Combine(root, "scripts", "device-check.sh"), bundle, "--tool-only"], root, TimeSpan.FromMinutes(15), []);
            Assert.True(publish == 0, publishLog);
            var tool = Path.Combine(bundle, "bin", "ecmt");
            Assert.True(File.Exists(tool), publishLog);
            Assert.True(new FileInfo(tool).Length < 32L << 20, $"the tool is {new FileInfo(tool).Length >> 20} MiB");
            var (code, output) = await Run(tool, ["check-backend", "--backend", "fastcpu", "--images", "100", "--steps", "4", "--threads", "1"],
                Path.GetTempPath(), TimeSpan.FromMinutes(5), new() { ["ECMT_FASHION_MNIST_DIR"] = Path.Combine(bundle, "no-dataset-here") });
            var json = JsonNode.Parse(output[output.IndexOf('{')..])!.AsObject();
            Assert.True(code == 0, output);
            Assert.True((bool)json["passed"]!);
            Assert.Equal(100, (int)json["model_check"]!["images"]!);
            Assert.Contains("libtorch unavailable", (string)json["bench"]!["ann_unavailable"]!);
            Assert.Null(json["bench"]!["step_over_ann"]);
        }
        finally
        {
            foreach (var folder in new[] { bundle, bundle + ".build" })
                if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
        }
    }

    static string Repo()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Ecmt.sln"))) return dir.FullName;
        throw new DirectoryNotFoundException("repository root (Ecmt.sln) not found above the test binaries");
    }

    static async Task<(int Code, string Output)> Run(string file, string[] args, string directory, TimeSpan limit, Dictionary<string, string> environment)
    {
        var start = new ProcessStartInfo(file) { WorkingDirectory = directory, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) start.ArgumentList.Add(a);
        foreach (var (k, v) in environment) start.Environment[k] = v;
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(limit);
        try
        {
            await process.WaitForExitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{file} ran past {limit}");
        }
        return (process.ExitCode, await stdout + await stderr);
    }
}

/// <summary>
/// check-backend runs in this process and sets OpenBLAS's thread count, which is process-wide (`--threads`, and a fastcpu
/// backend makes it single-threaded). The reference backend's products round differently with another thread count, so a
/// test elsewhere that compares two runs bit for bit would see the flip if it came between them: this collection runs
/// alone, never beside another test class.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ProcessWideOpenBlas
{
    public const string Name = "process-wide OpenBLAS threads";
}
