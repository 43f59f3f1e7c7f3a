using System.CommandLine;
using System.Text.Json.Nodes;
using Ecmt.Cli;

namespace Ecmt.Client.Tests;

/// <summary>
/// The ecmt classify and bench-server verbs, run in-process against the real server with their standard output and
/// error captured: the --json documents are parsed and checked against the library and the engine's step counters.
/// </summary>
public sealed class CliTests(ServerFixture fixture) : IClassFixture<ServerFixture>, IDisposable
{
    readonly EcmtClient _client = new(fixture.Host.Address.ToString());

    public void Dispose() => _client.Dispose();

    string Server => fixture.Host.Address.ToString();

    static async Task<(int Code, string Out, string Err)> Ecmt(params string[] args)
    {
        var root = new RootCommand { ClassifyCommand.Create(), BenchServerCommand.Create() };
        using StringWriter output = new(), error = new();
        int code = await root.Parse(args).InvokeAsync(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }

    /// <summary>Standard output must be exactly one JSON object.</summary>
    static JsonObject Json(string stdout) => JsonNode.Parse(stdout)!.AsObject();

    [Fact]
    public async Task Classify_json_reports_every_file_as_the_library_sees_it()
    {
        var folder = TestModels.PngFolder(3);
        var (code, stdout, stderr) = await Ecmt("classify", folder, "--server", Server, "--model", TestModels.Tiny, "--max-steps", "6", "--json");

        Assert.Equal(0, code);
        Assert.Equal("", stderr);
        var json = Json(stdout);
        Assert.Equal(TestModels.Tiny, (string)json["model"]!);
        Assert.Equal("reference", (string)json["backend"]!);
        Assert.Equal(6, (int)json["max_steps"]!);
        Assert.Null(json["stop"]);
        var results = json["results"]!.AsArray();
        Assert.Equal(["0.png", "1.png", "2.png"], results.Select(r => Path.GetFileName((string)r!["file"]!)));
        foreach (var r in results)
        {
            var expected = await _client.ClassifyToEndAsync(TestModels.Tiny, ClassifyInput.FromFile((string)r!["file"]!), new ClassifyOptions { MaxSteps = 6, TopK = 3 });
            Assert.Equal(expected.Prediction.Name, (string)r["prediction"]!);
            Assert.Equal(expected.Prediction.Index, (int)r["class_index"]!);
            Assert.Equal(Math.Round(expected.Confidence, 4), (double)r["confidence"]!);
            Assert.Equal(6, (int)r["steps"]!);
            Assert.Equal("max_steps", (string)r["stop_reason"]!);
            Assert.Equal("server", (string)r["stopped_by"]!);
            Assert.Equal(expected.Last.SynapticOperations, (long)r["sops"]!);
            Assert.Equal(Math.Round(expected.Last.EnergyRatio, 4), (double)r["energy_ratio"]!);
            Assert.Equal(expected.Updates.Select(u => Math.Round(u.Confidence, 4)), r["confidence_by_step"]!.AsArray().Select(c => (double)c!));
            Assert.Equal(expected.Last.Top.Select(s => s.Name), r["top"]!.AsArray().Select(s => (string)s!["name"]!));
            Assert.True((double)r["first_update_ms"]! > 0 && (double)r["first_update_ms"]! <= (double)r["time_ms"]!);
            Assert.Equal(1, (int)r["attempts"]!);
        }
        var summary = json["summary"]!;
        Assert.Equal(3, (int)summary["classified"]!);
        Assert.Equal(0, (int)summary["failed"]!);
        Assert.Equal(6.0, (double)summary["mean_steps"]!);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Classify_stop_at_ends_an_image_at_its_first_confident_step(bool onServer)
    {
        var file = Path.Combine(TestModels.PngFolder(0), "image.png");
        await File.WriteAllBytesAsync(file, TestModels.Png(4));
        var full = await _client.ClassifyAsync(TestModels.Deep, ClassifyInput.FromFile(file), new ClassifyOptions { MaxSteps = 12 }).ToListAsync();
        var (expected, threshold) = StopPolicyTests.NewMaximum(full.Select(u => u.Confidence).ToArray())!.Value;
        Assert.InRange(expected, 2, 11);

        var model = fixture.Host.Model(TestModels.Deep);
        var run = model.NextRun();
        string[] args = ["classify", file, "--server", Server, "--model", TestModels.Deep, "--max-steps", "1000", "--stop-at", ((double)threshold).ToString("R"), "--json"];
        var (code, stdout, _) = await Ecmt(onServer ? [.. args, "--server-stop"] : args);

        Assert.Equal(0, code);
        var json = Json(stdout);
        var result = json["results"]![0]!;
        Assert.Equal(expected, (int)result["steps"]!);
        Assert.Equal("confident", (string)result["stop_reason"]!);
        Assert.Equal(onServer ? "server" : "client", (string)result["stopped_by"]!);
        Assert.Equal(onServer ? "server" : "client", (string)json["stop"]!["side"]!);
        Assert.Equal((double)threshold, (double)json["stop"]!["min_confidence"]!);

        var summary = await run.WaitAsync(TimeSpan.FromSeconds(30));
        if (onServer)
        {
            // The server applies the rule itself: not one step more.
            Assert.False(summary.Cancelled);
            Assert.Equal(expected, summary.StepsRun);
        }
        else
        {
            // The client cancels: the engine stopped within the step in flight when the cancel arrived.
            Assert.True(summary.Cancelled);
            Assert.InRange(summary.StepsAfterCancellation!.Value, 0, 1);
            Assert.InRange(summary.StepsRun, expected, expected + 2);
        }
    }

    [Fact]
    public async Task Classify_reports_a_bad_file_keeps_going_and_exits_1()
    {
        var folder = TestModels.PngFolder(2);
        await File.WriteAllBytesAsync(Path.Combine(folder, "bad.png"), "not an image"u8.ToArray());
        var (code, stdout, _) = await Ecmt("classify", folder, "--server", Server, "--model", TestModels.Tiny, "--max-steps", "2", "--json");

        Assert.Equal(1, code);
        var results = Json(stdout)["results"]!.AsArray();
        Assert.Equal(3, results.Count);
        Assert.Equal("bad.png", Path.GetFileName((string)results[2]!["file"]!));
        Assert.Equal("INVALID_ARGUMENT", (string)results[2]!["error"]!["code"]!);
        Assert.Contains("image", (string)results[2]!["error"]!["message"]!, StringComparison.Ordinal);
        Assert.All(results.Take(2), r => Assert.Equal(2, (int)r!["steps"]!));
    }

    [Fact]
    public async Task Classify_follows_the_models_recommended_policy_on_either_side()
    {
        var folder = TestModels.PngFolder(3);
        using var client = new EcmtClient(Server);
        var files = Directory.GetFiles(folder).Order(StringComparer.Ordinal).ToArray();
        var expected = new List<int>();
        foreach (var file in files)
            expected.Add((await client.ClassifyToEndAsync(TestModels.Deep, ClassifyInput.FromFile(file),
                new ClassifyOptions { MaxSteps = 10, ServerStop = Protos.StopPolicy.Recommended })).Steps);
        foreach (var side in new[] { "client", "server" })
        {
            string[] args = ["classify", folder, "--server", Server, "--model", TestModels.Deep, "--max-steps", "10", "--recommended", "--json"];
            var (code, stdout, _) = await Ecmt(side == "server" ? [.. args, "--server-stop"] : args);
            Assert.Equal(0, code);
            var json = JsonNode.Parse(stdout)!;
            Assert.Equal(side, (string)json["stop"]!["side"]!);
            Assert.True((bool)json["stop"]!["recommended"]!);
            Assert.Equal(expected, json["results"]!.AsArray().Select(r => (int)r!["steps"]!));
        }
    }

    [Fact]
    public async Task Classify_prints_a_table_without_json()
    {
        var folder = TestModels.PngFolder(2);
        var (code, stdout, _) = await Ecmt("classify", folder, "--server", Server, "--model", TestModels.Tiny, "--max-steps", "3", "--stable", "1");
        Assert.Equal(0, code);
        Assert.Contains("0.png", stdout, StringComparison.Ordinal);
        Assert.Contains("1.png", stdout, StringComparison.Ordinal);
        Assert.Contains("energy", stdout, StringComparison.Ordinal);
        Assert.Contains("2 of 2 images", stdout, StringComparison.Ordinal);
        Assert.DoesNotContain("\u001b[", stdout, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Usage_mistakes_exit_2_with_one_line()
    {
        var (code, stdout, stderr) = await Ecmt("classify", "/no/such/folder", "--server", Server, "--model", TestModels.Tiny);
        Assert.Equal(2, code);
        Assert.Equal("", stdout);
        Assert.Equal("ecmt classify: no such file or folder: '/no/such/folder'", stderr.Trim());

        var folder = TestModels.PngFolder(1);
        (code, _, stderr) = await Ecmt("classify", folder, "--server", Server, "--recommended", "--stop-at", "0.5");
        Assert.Equal(2, code);
        Assert.Contains("--recommended is the model's own policy", stderr, StringComparison.Ordinal);
        (code, _, stderr) = await Ecmt("classify", folder, "--server", Server, "--margin", "1.5", "--server-stop");
        Assert.Equal(2, code);
        Assert.Contains("--margin is 1.5", stderr, StringComparison.Ordinal);

        // Two ready models and no --model: the tool asks which.
        (code, _, stderr) = await Ecmt("classify", folder, "--server", Server);
        Assert.Equal(2, code);
        Assert.Contains("several models (deep, tiny)", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Bench_server_json_reports_throughput_latency_and_steps()
    {
        var model = fixture.Host.Model(TestModels.Tiny);
        long before = model.StepsRun;
        var (code, stdout, stderr) = await Ecmt("bench-server", "--server", Server, "--model", TestModels.Tiny, "--concurrency", "3", "--duration", "1.5",
            "--max-steps", "4", "--images", TestModels.PngFolder(5), "--json");

        Assert.Equal(0, code);
        Assert.Equal("", stderr);
        var r = Json(stdout);
        Assert.Equal(3, (int)r["concurrency"]!);
        Assert.Equal(5, (int)r["image_set"]!);
        Assert.Equal(4, (int)r["max_steps"]!);
        double seconds = (double)r["duration_s"]!;
        Assert.InRange(seconds, 1.4, 1.6);
        int images = (int)r["images"]!;
        long imageSteps = (long)r["image_steps"]!;
        Assert.True(images > 0);
        Assert.InRange(imageSteps, 4L * images, 4L * images + 3 * 4);
        // duration_s is rounded to milliseconds: the rates agree to well within 0.1%.
        Assert.Equal(images / seconds, (double)r["images_per_s"]!, images / seconds * 1e-3);
        Assert.Equal(imageSteps / seconds, (double)r["image_steps_per_s"]!, imageSteps / seconds * 1e-3);
        Assert.Equal(4.0, (double)r["mean_steps"]!);
        Assert.Equal(0, (int)r["error_count"]!);
        Assert.Empty(r["errors"]!.AsObject());
        foreach (var key in new[] { "first_update_ms", "last_update_ms" })
        {
            var p = r[key]!;
            Assert.True((double)p["p50"]! > 0);
            Assert.True((double)p["p50"]! <= (double)p["p95"]! && (double)p["p95"]! <= (double)p["p99"]! && (double)p["p99"]! <= (double)p["max"]!);
        }
        Assert.True((double)r["first_update_ms"]!["p50"]! <= (double)r["last_update_ms"]!["p50"]!);

        // The engine ran every step the tool counted, plus per stream at most the steps of the call in flight when the
        // window closed (up to 4: a tiny model's steps can all be done before the cancel arrives).
        await Task.Delay(200);
        long ran = model.StepsRun - before;
        Assert.InRange(ran, imageSteps, imageSteps + 3 * 4);
    }

    [Fact]
    public async Task Bench_server_counts_errors_by_status()
    {
        await using var host = await ServerHost.StartAsync(settings: ("Ecmt:Limits:MaxConcurrentStreams", "1"));
        var (code, stdout, stderr) = await Ecmt("bench-server", "--server", host.Address.ToString(), "--model", TestModels.Deep, "--concurrency", "3", "--duration", "1",
            "--max-steps", "3", "--images", TestModels.PngFolder(2), "--json");

        Assert.True(code == 0, $"bench-server exited {code}: {stderr}");
        var r = Json(stdout);
        Assert.True((int)r["images"]! > 0, "the stream that holds the one slot completes images");
        var errors = r["errors"]!.AsObject();
        Assert.Equal(["RESOURCE_EXHAUSTED"], errors.Select(e => e.Key));
        Assert.True((int)errors["RESOURCE_EXHAUSTED"]! > 0);
        Assert.Equal((int)errors["RESOURCE_EXHAUSTED"]!, (int)r["error_count"]!);
        Assert.Equal(0, (int)r["retries"]!);
    }
}
