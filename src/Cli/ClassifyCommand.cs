using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using Ecmt.Client;
using Spectre.Console;
using ModelInfo = Ecmt.Protos.V1.ModelInfo;

namespace Ecmt.Cli;

/// <summary>
/// <c>ecmt classify</c>: streams a server's prediction for each image step by step, stops each image early when asked
/// (--stop-at, --margin, --stable, --min-steps, --gate combined, or --recommended), shows the steps live on standard error when it is a terminal, and ends with one
/// table (or one JSON object with --json) on standard output.
/// </summary>
static class ClassifyCommand
{
    public static Command Create()
    {
        var server = new ServerOptions();
        var images = new Argument<string[]>("images") { Description = "PNG or JPEG files, or folders of them", Arity = ArgumentArity.OneOrMore };
        var topK = new Option<int>("--top-k") { Description = "Classes reported per image", DefaultValueFactory = _ => 3 };
        var command = new Command("classify", "Classify images on a running ecmt-server, streaming each image's prediction step by step.") { images, topK };
        foreach (var option in server.All) command.Options.Add(option);
        command.SetAction((parse, cancellationToken) => RunAsync(parse, server, parse.GetValue(images)!, parse.GetValue(topK), cancellationToken));
        return command;
    }

    /// <summary>One image's progress: its updates so far, or why it failed.</summary>
    sealed class Row(string file)
    {
        public string File { get; } = file;
        public List<StepUpdate> Updates { get; } = [];
        public StepUpdate? Last => Updates.Count > 0 ? Updates[^1] : null;
        public bool Started { get; set; }
        public string? ErrorCode { get; set; }
        public string? ErrorMessage { get; set; }
        public bool Done => ErrorCode is not null || Last is { IsLast: true };
    }

    static async Task<int> RunAsync(ParseResult parse, ServerOptions server, string[] paths, int topK, CancellationToken cancellationToken)
    {
        IReadOnlyList<string> files;
        ClassifyOptions options;
        try
        {
            if (topK < 1) throw new ArgumentException($"--top-k is {topK}: it must be at least 1");
            server.Address(parse);
            files = ServerOptions.ImageFiles(paths);
            options = server.ClassifyOptions(parse, topK);
        }
        catch (ArgumentException e)
        {
            return Consoles.Fail(parse, e.Message, 2);
        }

        var errors = parse.InvocationConfiguration.Error;
        bool live = Consoles.IsTerminal(errors);
        string? retrying = null;
        using var client = server.Client(parse, e =>
        {
            retrying = $"{EcmtRpcException.CodeName(e.Status.StatusCode)}: retrying in {e.Delay.TotalSeconds:F1} s (attempt {e.FailedAttempt + 1})";
            if (!live) errors.WriteLine($"ecmt classify: {retrying}");
        });
        ModelInfo model;
        try
        {
            model = await server.ResolveModelAsync(parse, client, cancellationToken);
        }
        catch (EcmtRpcException e)
        {
            return Consoles.Fail(parse, e.Message, 1);
        }
        catch (ArgumentException e)
        {
            return Consoles.Fail(parse, e.Message, 2);
        }

        int maxSteps = options.MaxSteps > 0 ? options.MaxSteps : (int)model.DefaultSteps;
        var rows = files.Select(f => new Row(f)).ToList();
        var clock = Stopwatch.StartNew();
        // Rows change under this lock; the live view copies them out of it ten times a second, so drawing never
        // holds up a stream (a step's update would otherwise wait for the terminal).
        var gate = new Lock();
        var work = ClassifyAllAsync(client, model.Name, rows, options, gate, cancellationToken);
        if (live)
        {
            await Consoles.For(errors).Live(new Text("")).AutoClear(true).StartAsync(async context =>
            {
                while (!work.IsCompleted)
                {
                    lock (gate) context.UpdateTarget(LiveTable(rows, maxSteps, clock.Elapsed, retrying));
                    context.Refresh();
                    await Task.WhenAny(work, Task.Delay(100, CancellationToken.None));
                }
            });
        }
        await work;
        clock.Stop();

        if (parse.GetValue(server.Json))
            await parse.InvocationConfiguration.Output.WriteLineAsync(Json(parse, server, model, maxSteps, options, rows, clock.Elapsed).ToJsonString());
        else
            Consoles.For(parse.InvocationConfiguration.Output).Write(FinalTable(model, maxSteps, options, rows, clock.Elapsed));
        return rows.All(r => r.ErrorCode is null) ? 0 : 1;
    }

    /// <summary>One image after another; an unreachable server (UNAVAILABLE after the retries) ends the run.</summary>
    static async Task ClassifyAllAsync(EcmtClient client, string model, List<Row> rows, ClassifyOptions options, Lock gate, CancellationToken cancellationToken)
    {
        for (int i = 0; i < rows.Count; i++)
        {
            var row = rows[i];
            lock (gate) row.Started = true;
            try
            {
                await foreach (var update in client.ClassifyFileAsync(model, row.File, options, cancellationToken))
                    lock (gate) row.Updates.Add(update);
            }
            catch (EcmtRpcException e)
            {
                lock (gate) (row.ErrorCode, row.ErrorMessage) = (e.Code, e.Detail);
                if (e.StatusCode == Grpc.Core.StatusCode.Unavailable)
                {
                    lock (gate)
                        foreach (var rest in rows.Skip(i + 1)) (rest.ErrorCode, rest.ErrorMessage) = ("NOT_RUN", "not sent: the server was unavailable");
                    break;
                }
            }
            catch (IOException e)
            {
                lock (gate) (row.ErrorCode, row.ErrorMessage) = ("IO_ERROR", e.Message);
            }
        }
    }

    /// <summary>The images started so far (the last 12), each at its latest step.</summary>
    static Table LiveTable(List<Row> rows, int maxSteps, TimeSpan elapsed, string? retrying)
    {
        var table = new Table().Border(TableBorder.Rounded)
            .AddColumn(new TableColumn("image").NoWrap()).AddColumn(new TableColumn("step").RightAligned().NoWrap()).AddColumn("prediction")
            .AddColumn(new TableColumn("confidence").NoWrap()).AddColumn(new TableColumn("margin").RightAligned()).AddColumn("");
        foreach (var row in rows.Where(r => r.Started).TakeLast(12))
        {
            var last = row.Last;
            string state = row.ErrorCode is not null ? $"[red]{Markup.Escape(row.ErrorCode)}[/]"
                : last is { IsLast: true } ? $"[green]{(last.StoppedByClient ? "client: " : "")}{ServerOptions.ReasonName(last.StopReason)}[/]"
                : "[yellow]running[/]";
            table.AddRow(
                new Text(Path.GetFileName(row.File)),
                new Text(last is null ? "" : $"{last.Step}/{maxSteps}"),
                new Text(last?.Prediction.Name ?? ""),
                new Markup(last is null ? "" : $"{Bar(last.Confidence)} {last.Confidence:F3}"),
                new Text(last is null ? "" : last.Margin.ToString("F3", CultureInfo.InvariantCulture)),
                new Markup(state));
        }
        int done = rows.Count(r => r.Done);
        table.Caption($"{done}/{rows.Count} images · {elapsed.TotalSeconds:F1} s{(retrying is null ? "" : " · " + Markup.Escape(retrying))}");
        return table;
    }

    static string Bar(float p, int width = 8)
    {
        int filled = (int)Math.Round(Math.Clamp(p, 0, 1) * width);
        return $"[blue]{new string('█', filled)}[/][grey]{new string('░', width - filled)}[/]";
    }

    static Table FinalTable(ModelInfo model, int maxSteps, ClassifyOptions options, List<Row> rows, TimeSpan elapsed)
    {
        var table = new Table().Border(TableBorder.Rounded)
            .Title($"{Markup.Escape(model.Name)} on {Markup.Escape(model.Backend)}, T = {maxSteps}{StopText(options)}")
            .AddColumn("file").AddColumn("prediction").AddColumn(new TableColumn("confidence").RightAligned())
            .AddColumn(new TableColumn("steps").RightAligned()).AddColumn(new TableColumn("SOPs").RightAligned())
            .AddColumn(new TableColumn("energy").RightAligned()).AddColumn(new TableColumn("time (ms)").RightAligned()).AddColumn("stop");
        foreach (var row in rows)
        {
            var name = new Text(Path.GetFileName(row.File));
            if (row.ErrorCode is not null)
                table.AddRow(name, new Markup($"[red]{Markup.Escape(row.ErrorCode)}[/]"), new Text(""), new Text(""), new Text(""), new Text(""), new Text(""), new Text(row.ErrorMessage ?? ""));
            else if (row.Last is { } last)
                table.AddRow(name, new Text(last.Prediction.Name), new Text(last.Confidence.ToString("F3", CultureInfo.InvariantCulture)),
                    new Text($"{last.Step}"), new Text(last.SynapticOperations.ToString("N0", CultureInfo.InvariantCulture)),
                    new Text(last.EnergyRatio.ToString("F3", CultureInfo.InvariantCulture)), new Text(last.Elapsed.TotalMilliseconds.ToString("F1", CultureInfo.InvariantCulture)),
                    new Text((last.StoppedByClient ? "client: " : "") + ServerOptions.ReasonName(last.StopReason)));
        }
        var ok = rows.Where(r => r.ErrorCode is null && r.Last is not null).Select(r => r.Last!).ToArray();
        table.Caption(ok.Length == 0
            ? $"{rows.Count - ok.Length} of {rows.Count} images failed · {elapsed.TotalSeconds:F1} s"
            : string.Create(CultureInfo.InvariantCulture,
                $"{ok.Length} of {rows.Count} images · mean {ok.Average(u => u.Step):F2} steps · mean energy ratio {ok.Average(u => u.EnergyRatio):F3} · {elapsed.TotalSeconds:F1} s"));
        return table;
    }

    static string StopText(ClassifyOptions options) =>
        options.Stop is { } stop ? $", client stops at {Markup.Escape(stop.ToString())}"
        : options.ServerStop is { } server ? $", server stops at {Markup.Escape(server.ToString())}"
        : "";

    /// <summary>The JSON document --json prints: the run's settings, one entry per file, a summary.</summary>
    static JsonObject Json(ParseResult parse, ServerOptions server, ModelInfo model, int maxSteps, ClassifyOptions options, List<Row> rows, TimeSpan elapsed)
    {
        var results = new JsonArray();
        foreach (var row in rows)
        {
            var entry = new JsonObject { ["file"] = row.File };
            if (row.ErrorCode is not null)
                entry["error"] = new JsonObject { ["code"] = row.ErrorCode, ["message"] = row.ErrorMessage };
            else if (row.Last is { } last)
            {
                entry["prediction"] = last.Prediction.Name;
                entry["class_index"] = last.Prediction.Index;
                entry["confidence"] = Math.Round(last.Confidence, 4);
                entry["margin"] = Math.Round(last.Margin, 4);
                entry["steps"] = last.Step;
                entry["stop_reason"] = ServerOptions.ReasonName(last.StopReason);
                entry["stopped_by"] = last.StoppedByClient ? "client" : "server";
                entry["sops"] = last.SynapticOperations;
                entry["energy_ratio"] = Math.Round(last.EnergyRatio, 4);
                entry["firing_rate"] = Math.Round(last.FiringRate, 4);
                entry["first_update_ms"] = Math.Round(row.Updates[0].Elapsed.TotalMilliseconds, 2);
                entry["time_ms"] = Math.Round(last.Elapsed.TotalMilliseconds, 2);
                entry["server_ms"] = Math.Round(last.ServerElapsedMilliseconds, 2);
                entry["attempts"] = last.Attempts;
                entry["top"] = new JsonArray(last.Top.Select(s => (JsonNode)new JsonObject
                {
                    ["index"] = s.Index,
                    ["name"] = s.Name,
                    ["probability"] = Math.Round(s.Probability, 4),
                }).ToArray());
                entry["confidence_by_step"] = new JsonArray(row.Updates.Select(u => (JsonNode)Math.Round(u.Confidence, 4)).ToArray());
            }
            results.Add(entry);
        }
        var ok = rows.Where(r => r.ErrorCode is null && r.Last is not null).Select(r => r.Last!).ToArray();
        return new JsonObject
        {
            ["server"] = server.Address(parse).ToString(),
            ["model"] = model.Name,
            ["backend"] = model.Backend,
            ["max_steps"] = maxSteps,
            ["stop"] = StopJson(options),
            ["results"] = results,
            ["summary"] = new JsonObject
            {
                ["images"] = rows.Count,
                ["classified"] = ok.Length,
                ["failed"] = rows.Count - ok.Length,
                ["mean_steps"] = ok.Length > 0 ? Math.Round(ok.Average(u => u.Step), 3) : null,
                ["mean_energy_ratio"] = ok.Length > 0 ? Math.Round(ok.Average(u => u.EnergyRatio), 4) : null,
                ["seconds"] = Math.Round(elapsed.TotalSeconds, 3),
            },
        };
    }

    /// <summary>The stop rules in force, and which side applies them; null when none.</summary>
    public static JsonObject? StopJson(ClassifyOptions options)
    {
        var (side, policy) = options.Stop is { } client ? ("client", client) : options.ServerStop is { } server ? ("server", server) : ("", null);
        if (policy is null) return null;
        return new JsonObject
        {
            ["side"] = side, ["recommended"] = policy.IsRecommended, ["min_confidence"] = policy.MinConfidence, ["min_margin"] = policy.MinMargin,
            ["stable_steps"] = policy.StableSteps, ["min_steps"] = policy.MinSteps, ["min_gate"] = policy.MinGate,
        };
    }
}
