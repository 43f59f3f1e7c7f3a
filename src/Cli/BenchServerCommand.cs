using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using Ecmt.Client;
using Ecmt.Engine.Data;
using Ecmt.Engine.Imaging;
using Spectre.Console;
using ModelInfo = Ecmt.Protos.V1.ModelInfo;

namespace Ecmt.Cli;

/// <summary>
/// <c>ecmt bench-server</c>: a load generator. C streams run back to back for S seconds over a set of images, all on
/// one client (one channel); it reports throughput (image-steps and images per second), the time to the first update
/// and to the last (p50, p95, p99), the time between a stream's consecutive updates (per-step latency), the mean
/// steps used, and failures counted by status.
/// </summary>
static class BenchServerCommand
{
    public static Command Create()
    {
        var server = new ServerOptions();
        var concurrency = new Option<int>("--concurrency") { Description = "Classify streams kept running at once (C)", DefaultValueFactory = _ => 4 };
        var duration = new Option<double>("--duration") { Description = "Seconds measured (S)", DefaultValueFactory = _ => 10 };
        var warmup = new Option<double>("--warmup") { Description = "Seconds run before measuring (connections, JIT, session pools)", DefaultValueFactory = _ => 0 };
        var images = new Option<string[]>("--images") { Description = "PNG or JPEG files or folders to send (default: Fashion-MNIST test images, from Debian's dataset-fashion-mnist)", AllowMultipleArgumentsPerToken = true };
        var count = new Option<int>("--count") { Description = "Fashion-MNIST test images to use when --images is not given", DefaultValueFactory = _ => 100 };
        var floodKey = new Option<string?>("--flood-key")
        {
            Description = "Also flood the server from a second caller with this API key (access control): --flood-concurrency loops sending classifications back to back, "
                + "refusals not waited on; reports how many it got admitted and refused per second while the measured streams (--api-key) run",
        };
        var floodConcurrency = new Option<int>("--flood-concurrency") { Description = "Loops of the --flood-key caller", DefaultValueFactory = _ => 8 };
        var cancelFraction = new Option<double>("--cancel-fraction") { Description = "Fraction of calls cut after a random 1–1000 ms, half by a client cancel and half by a deadline (a soak)", DefaultValueFactory = _ => 0 };
        var command = new Command("bench-server", "Load-test a running ecmt-server: C concurrent Classify streams for S seconds; throughput, latency percentiles, steps used, errors by status.")
        {
            concurrency, duration, warmup, images, count, floodKey, floodConcurrency, cancelFraction,
        };
        foreach (var option in server.All) command.Options.Add(option);
        command.SetAction((parse, cancellationToken) => RunAsync(parse, server, new Settings(
            parse.GetValue(concurrency), parse.GetValue(duration), parse.GetValue(warmup), parse.GetValue(images) ?? [], parse.GetValue(count),
            parse.GetValue(floodKey), parse.GetValue(floodConcurrency), parse.GetValue(cancelFraction)), cancellationToken));
        return command;
    }

    sealed record Settings(int Concurrency, double Duration, double Warmup, string[] Images, int Count, string? FloodKey, int FloodConcurrency, double CancelFraction);

    /// <summary>What the flooding caller got, counted inside the measured window.</summary>
    sealed class Flood
    {
        long _admitted, _refused, _other;
        public long Admitted => Interlocked.Read(ref _admitted);
        public long Refused => Interlocked.Read(ref _refused);
        public long Other => Interlocked.Read(ref _other);
        public void Count(string? code)
        {
            if (code is null) Interlocked.Increment(ref _admitted);
            else if (code == "RESOURCE_EXHAUSTED") Interlocked.Increment(ref _refused);
            else Interlocked.Increment(ref _other);
        }
    }

    /// <summary>What the streams measured; every member is safe to update from many streams.</summary>
    sealed class Tally
    {
        readonly Lock _lock = new();
        readonly List<double> _firstMs = [], _lastMs = [], _gapMs = [];
        readonly Dictionary<string, int> _errors = new(StringComparer.Ordinal);
        long _imageSteps, _steps;
        int _cutOff, _retries, _cancelled, _deadlines;

        public long ImageSteps => Interlocked.Read(ref _imageSteps);
        public int Images { get { lock (_lock) return _lastMs.Count; } }
        public int Errors { get { lock (_lock) return _errors.Values.Sum(); } }
        public int CutOff => Volatile.Read(ref _cutOff);
        public int Retries => Volatile.Read(ref _retries);

        public void Step() => Interlocked.Increment(ref _imageSteps);

        /// <summary>Time between two consecutive updates of one stream: the per-step latency a client sees.</summary>
        public void Gap(TimeSpan gap)
        {
            lock (_lock) _gapMs.Add(gap.TotalMilliseconds);
        }
        public void Retry() => Interlocked.Increment(ref _retries);
        public void Cut() => Interlocked.Increment(ref _cutOff);
        public void Cancelled() => Interlocked.Increment(ref _cancelled);
        public int CancelledCalls => Volatile.Read(ref _cancelled);
        public void Deadline() => Interlocked.Increment(ref _deadlines);
        public int DeadlineCalls => Volatile.Read(ref _deadlines);

        public void Completed(TimeSpan first, TimeSpan last, int steps)
        {
            lock (_lock)
            {
                _firstMs.Add(first.TotalMilliseconds);
                _lastMs.Add(last.TotalMilliseconds);
                _steps += steps;
            }
        }

        public void Failed(string code)
        {
            lock (_lock) _errors[code] = _errors.GetValueOrDefault(code) + 1;
        }

        public double[] Gaps()
        {
            lock (_lock) return [.. _gapMs];
        }

        public (double[] First, double[] Last, double? MeanSteps, SortedDictionary<string, int> Errors) Snapshot()
        {
            lock (_lock)
                return ([.. _firstMs], [.. _lastMs], _lastMs.Count > 0 ? (double)_steps / _lastMs.Count : null, new SortedDictionary<string, int>(_errors, StringComparer.Ordinal));
        }
    }

    static async Task<int> RunAsync(ParseResult parse, ServerOptions server, Settings settings, CancellationToken cancellationToken)
    {
        ClassifyOptions options;
        ClassifyInput[] inputs;
        try
        {
            if (settings.Concurrency < 1) throw new ArgumentException($"--concurrency is {settings.Concurrency}: it must be at least 1");
            if (!(settings.Duration > 0)) throw new ArgumentException($"--duration is {settings.Duration}: it must be positive");
            if (!(settings.Warmup >= 0)) throw new ArgumentException($"--warmup is {settings.Warmup}: it must not be negative");
            if (!(settings.CancelFraction is >= 0 and <= 1)) throw new ArgumentException($"--cancel-fraction is {settings.CancelFraction}: it must lie in [0, 1]");
            if (settings.FloodKey is not null && settings.FloodConcurrency < 1)
                throw new ArgumentException($"--flood-concurrency is {settings.FloodConcurrency}: it must be at least 1");
            server.Address(parse);
            options = server.ClassifyOptions(parse, topK: 0);
            inputs = LoadImages(settings);
        }
        catch (ArgumentException e)
        {
            return Consoles.Fail(parse, e.Message, 2);
        }

        var tally = new Tally();
        using var client = server.Client(parse, _ => tally.Retry());
        using var flooder = settings.FloodKey is { } key ? server.Client(parse, apiKey: key) : null;
        var flood = new Flood();
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

        var warmup = TimeSpan.FromSeconds(settings.Warmup);
        var end = warmup + TimeSpan.FromSeconds(settings.Duration);
        using var window = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        window.CancelAfter(end);
        var clock = Stopwatch.StartNew();
        int next = -1;
        var streams = Enumerable.Range(0, settings.Concurrency).Select(_ => Task.Run(() => StreamAsync(), CancellationToken.None))
            .Concat(flooder is null ? [] : Enumerable.Range(0, settings.FloodConcurrency).Select(_ => Task.Run(() => FloodAsync(flooder), CancellationToken.None)))
            .ToArray();
        var all = Task.WhenAll(streams);

        var errors = parse.InvocationConfiguration.Error;
        if (Consoles.IsTerminal(errors))
        {
            await Consoles.For(errors).Live(new Text("")).AutoClear(true).StartAsync(async context =>
            {
                while (!all.IsCompleted)
                {
                    context.UpdateTarget(new Markup(LiveLine(clock.Elapsed, warmup, end, tally)));
                    context.Refresh();
                    await Task.WhenAny(all, Task.Delay(250, CancellationToken.None));
                }
            });
        }
        await all;
        // Measured: from the end of the warm-up to the end of the window (earlier when interrupted).
        double seconds = Math.Max(1e-9, (Min(clock.Elapsed, end) - warmup).TotalSeconds);

        var report = Report(parse, server, settings, model, options, inputs.Length, tally, seconds);
        if (flooder is not null)
            report["flood"] = new JsonObject
            {
                ["concurrency"] = settings.FloodConcurrency,
                ["admitted"] = flood.Admitted,
                ["refused"] = flood.Refused,
                ["other_errors"] = flood.Other,
                ["admitted_per_s"] = Math.Round(flood.Admitted / seconds, 1),
                ["refused_per_s"] = Math.Round(flood.Refused / seconds, 1),
            };
        if (parse.GetValue(server.Json)) await parse.InvocationConfiguration.Output.WriteLineAsync(report.ToJsonString());
        else WriteTables(Consoles.For(parse.InvocationConfiguration.Output), report);
        return tally.Images > 0 ? 0 : 1;

        // One stream slot: classify, record, repeat until the window closes. Only calls that start after the warm-up
        // count; steps and completions count while the window is open.
        // The window's own clock decides, not only its timer (a loaded machine fires timers late).
        async Task StreamAsync()
        {
            while (!window.IsCancellationRequested && clock.Elapsed < end)
            {
                var input = inputs[(int)((uint)Interlocked.Increment(ref next) % (uint)inputs.Length)];
                bool measured = clock.Elapsed >= warmup;
                StepUpdate? first = null, last = null;
                // Of the calls chosen by --cancel-fraction, half are cancelled by the client and half carry a deadline,
                // each after a random 1–1000 ms.
                bool cut = settings.CancelFraction > 0 && Random.Shared.NextDouble() < settings.CancelFraction;
                bool byDeadline = cut && Random.Shared.Next(2) == 0;
                using var cancel = cut && !byDeadline ? CancellationTokenSource.CreateLinkedTokenSource(window.Token) : null;
                cancel?.CancelAfter(Random.Shared.Next(1, 1001));
                var callOptions = byDeadline ? options with { Timeout = TimeSpan.FromMilliseconds(Random.Shared.Next(1, 1001)) } : options;
                try
                {
                    await foreach (var update in client.ClassifyAsync(model.Name, input, callOptions, cancel?.Token ?? window.Token))
                    {
                        first ??= update;
                        var previous = last;
                        last = update;
                        var now = clock.Elapsed;
                        if (now >= end) break;
                        if (now >= warmup)
                        {
                            tally.Step();
                            if (previous is not null) tally.Gap(update.Elapsed - previous.Elapsed);
                        }
                    }
                    if (measured && last is { IsLast: true } && clock.Elapsed < end) tally.Completed(first!.Elapsed, last.Elapsed, last.Step);
                    else if (measured && last is not null) tally.Cut();
                }
                catch (OperationCanceledException) when (window.IsCancellationRequested)
                {
                    if (measured) tally.Cut();
                }
                catch (Exception e) when (cancel is { IsCancellationRequested: true } && e is OperationCanceledException or EcmtRpcException { Code: "CANCELLED" })
                {
                    if (measured) tally.Cancelled();
                }
                catch (EcmtRpcException e) when (byDeadline && e.Code == "DEADLINE_EXCEEDED")
                {
                    if (measured) tally.Deadline();
                }
                catch (EcmtRpcException e)
                {
                    if (measured && clock.Elapsed < end) tally.Failed(e.Code);
                    // A failing server is not hammered in a tight loop.
                    await Task.Delay(20, CancellationToken.None);
                }
            }
        }

        // The flooding caller: classifications back to back, a refusal followed at once by the next request.
        async Task FloodAsync(EcmtClient flooding)
        {
            while (!window.IsCancellationRequested && clock.Elapsed < end)
            {
                var input = inputs[(int)((uint)Interlocked.Increment(ref next) % (uint)inputs.Length)];
                bool measured = clock.Elapsed >= warmup;
                string? code = null;
                try
                {
                    await flooding.ClassifyToEndAsync(model.Name, input, options, window.Token);
                }
                catch (OperationCanceledException) when (window.IsCancellationRequested)
                {
                    return;
                }
                catch (EcmtRpcException e)
                {
                    code = e.Code;
                }
                if (measured && clock.Elapsed < end) flood.Count(code);
            }
        }
    }

    static TimeSpan Min(TimeSpan a, TimeSpan b) => a < b ? a : b;

    /// <summary>The images to send, each encoded once and shared by every stream.</summary>
    static ClassifyInput[] LoadImages(Settings settings)
    {
        if (settings.Images.Length > 0)
            return ServerOptions.ImageFiles(settings.Images).Select(f => ClassifyInput.FromEncoded(File.ReadAllBytes(f))).ToArray();
        if (!FashionMnist.IsAvailable)
            throw new ArgumentException($"no images: pass --images FILES|FOLDER, or install Debian's dataset-fashion-mnist (looked in {FashionMnist.Directory})");
        if (settings.Count < 1) throw new ArgumentException($"--count is {settings.Count}: it must be at least 1");
        var test = FashionMnist.Load(Split.Test);
        return Enumerable.Range(0, Math.Min(settings.Count, test.Count))
            .Select(i => ClassifyInput.FromEncoded(ImageInput.EncodePng(test.Image(i), test.Channels, test.Height, test.Width)))
            .ToArray();
    }

    static string LiveLine(TimeSpan now, TimeSpan warmup, TimeSpan end, Tally tally)
    {
        if (now < warmup) return $"[grey]warming up {now.TotalSeconds:F1}/{warmup.TotalSeconds:F1} s[/]";
        double s = Math.Max(1e-9, (Min(now, end) - warmup).TotalSeconds);
        return string.Create(CultureInfo.InvariantCulture,
            $"{s:F1}/{(end - warmup).TotalSeconds:F1} s · images {tally.Images:N0} ({tally.Images / s:F1}/s) · image-steps {tally.ImageSteps:N0} ({tally.ImageSteps / s:F1}/s) · errors {tally.Errors:N0}");
    }

    /// <summary>The JSON document --json prints (and the tables show).</summary>
    static JsonObject Report(ParseResult parse, ServerOptions server, Settings settings, ModelInfo model, ClassifyOptions options, int imageCount, Tally tally, double seconds)
    {
        var (first, last, meanSteps, errors) = tally.Snapshot();
        var errorJson = new JsonObject();
        foreach (var (code, n) in errors) errorJson[code] = n;
        return new JsonObject
        {
            ["server"] = server.Address(parse).ToString(),
            ["model"] = model.Name,
            ["backend"] = model.Backend,
            ["concurrency"] = settings.Concurrency,
            ["duration_s"] = Math.Round(seconds, 3),
            ["warmup_s"] = settings.Warmup,
            ["max_steps"] = options.MaxSteps > 0 ? options.MaxSteps : (int)model.DefaultSteps,
            ["stop"] = ClassifyCommand.StopJson(options),
            ["image_set"] = imageCount,
            ["images"] = last.Length,
            ["image_steps"] = tally.ImageSteps,
            ["images_per_s"] = Math.Round(last.Length / seconds, 3),
            ["image_steps_per_s"] = Math.Round(tally.ImageSteps / seconds, 3),
            ["mean_steps"] = meanSteps is double m ? Math.Round(m, 3) : null,
            ["first_update_ms"] = Percentiles(first),
            ["last_update_ms"] = Percentiles(last),
            ["step_latency_ms"] = Percentiles(tally.Gaps()),
            ["cut_off"] = tally.CutOff,
            ["cancelled_by_client"] = tally.CancelledCalls,
            ["deadline_exceeded"] = tally.DeadlineCalls,
            ["retries"] = tally.Retries,
            ["errors"] = errorJson,
            ["error_count"] = errors.Values.Sum(),
        };
    }

    /// <summary>Nearest-rank percentiles (the smallest value with at least p% of the values at or below it), mean and max; null when empty.</summary>
    static JsonObject? Percentiles(double[] values)
    {
        if (values.Length == 0) return null;
        Array.Sort(values);
        double Rank(double p) => values[Math.Clamp((int)Math.Ceiling(p / 100 * values.Length) - 1, 0, values.Length - 1)];
        return new JsonObject
        {
            ["p50"] = Math.Round(Rank(50), 2),
            ["p95"] = Math.Round(Rank(95), 2),
            ["p99"] = Math.Round(Rank(99), 2),
            ["mean"] = Math.Round(values.Average(), 2),
            ["max"] = Math.Round(values[^1], 2),
        };
    }

    static void WriteTables(IAnsiConsole console, JsonObject r)
    {
        string N(string key) => r[key] is JsonNode n ? string.Format(CultureInfo.InvariantCulture, "{0:N3}", n.GetValue<double>()).TrimEnd('0').TrimEnd('.') : "-";
        var stop = r["stop"] is JsonObject s
            ? $", stop on the {s["side"]} at " + string.Join(" or ", new[] { ("confidence", "min_confidence"), ("margin", "min_margin"), ("stable steps", "stable_steps") }
                .Where(rule => s[rule.Item2] is not null).Select(rule => $"{rule.Item1} {s[rule.Item2]}"))
            : "";
        console.WriteLine($"{r["model"]} on {r["backend"]} at {r["server"]}: {r["concurrency"]} streams for {N("duration_s")} s, T = {r["max_steps"]}{stop}");
        var throughput = new Table().Border(TableBorder.Rounded).AddColumn("throughput").AddColumn(new TableColumn("").RightAligned());
        throughput.AddRow("images / s", N("images_per_s"));
        throughput.AddRow("image-steps / s", N("image_steps_per_s"));
        throughput.AddRow("images", $"{r["images"]}");
        throughput.AddRow("image-steps", $"{r["image_steps"]}");
        throughput.AddRow("mean steps used", N("mean_steps"));
        throughput.AddRow("cut off at the end", $"{r["cut_off"]}");
        throughput.AddRow("retries", $"{r["retries"]}");
        var errors = r["errors"]!.AsObject();
        throughput.AddRow("errors", errors.Count == 0 ? "0" : Markup.Escape(string.Join(", ", errors.Select(e => $"{e.Key} {e.Value}"))));
        console.Write(throughput);

        var latency = new Table().Border(TableBorder.Rounded).Title("time (ms)").AddColumn("");
        foreach (var column in new[] { "p50", "p95", "p99", "mean", "max" }) latency.AddColumn(new TableColumn(column).RightAligned());
        foreach (var (label, key) in new[] { ("to the first update", "first_update_ms"), ("to the last update", "last_update_ms"), ("between updates (per step)", "step_latency_ms") })
        {
            var p = r[key]?.AsObject();
            latency.AddRow([label, .. new[] { "p50", "p95", "p99", "mean", "max" }.Select(c => p is null ? "-" : p[c]!.GetValue<double>().ToString("F1", CultureInfo.InvariantCulture))]);
        }
        console.Write(latency);
        if (r["flood"] is JsonObject f)
            console.WriteLine($"flood from the second key ({f["concurrency"]} loops): admitted {f["admitted_per_s"]}/s, refused {f["refused_per_s"]}/s (RESOURCE_EXHAUSTED), other errors {f["other_errors"]}");
    }
}
