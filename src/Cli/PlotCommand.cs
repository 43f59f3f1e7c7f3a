using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using ScottPlot;

namespace Ecmt.Cli;

/// <summary>
/// <c>ecmt plot</c>: the charts of docs/results.md from one <c>ecmt eval</c> JSON (a run with an early-exit study):
/// top-1 against mean steps for the stop policies, for a fixed T and for the oracle bound (early-exit.png), and
/// reliability diagrams at t = 1, 2, 4, 8 before and after the per-step temperatures (reliability-*.png).
/// </summary>
static class PlotCommand
{
    public static Command Create()
    {
        var eval = new Option<string>("--eval") { Description = "JSON written by `ecmt eval` with an early-exit study (--stop-at/--gate …)", Required = true };
        var output = new Option<string>("--output") { Description = "Folder for the PNG files", DefaultValueFactory = _ => "docs/results" };
        var maxSteps = new Option<double>("--max-mean-steps") { Description = "Right end of the early-exit chart's x axis", DefaultValueFactory = _ => 10 };
        var command = new Command("plot", "Draw docs/results.md's charts (PNG) from an `ecmt eval` JSON: early exit against fixed T with the oracle bound, and reliability diagrams.")
        {
            eval, output, maxSteps,
        };
        command.SetAction(parse =>
        {
            var json = JsonNode.Parse(File.ReadAllText(parse.GetValue(eval)!))!.AsObject();
            string dir = parse.GetValue(output)!;
            Directory.CreateDirectory(dir);
            var written = new List<string> { EarlyExit(json, Path.Combine(dir, "early-exit.png"), parse.GetValue(maxSteps)) };
            foreach (var kind in new[] { "uncalibrated", "calibrated" })
                written.Add(Reliability(json, kind, Path.Combine(dir, $"reliability-{kind}.png")));
            Console.WriteLine(new JsonObject { ["written"] = new JsonArray(written.Select(w => (JsonNode)w).ToArray()) }.ToJsonString());
            return 0;
        });
        return command;
    }

    static double Percent(JsonNode? n) => 100 * (double)n!;

    static string EarlyExit(JsonObject json, string path, double right)
    {
        var plot = new Plot();
        double ann = Percent(json["ann_top1"]);
        var fixedT = json["snn_top1_by_step"]!.AsArray().Select(Percent).ToArray();
        var steps = Enumerable.Range(1, fixedT.Length).Select(t => (double)t).ToArray();
        var fixedLine = plot.Add.Scatter(steps, fixedT);
        fixedLine.LegendText = "every image stops at the same T";
        fixedLine.LineWidth = 2;
        fixedLine.MarkerSize = 6;

        // The study's policies that lie on the frontier (no other is both faster and more accurate), in order of steps.
        var policies = (json["early_exit"]?.AsArray() ?? []).Select(e => (Steps: (double)e!["mean_steps"]!, Top1: Percent(e["top1"])))
            .OrderBy(p => p.Steps).ToList();
        var frontier = new List<(double Steps, double Top1)>();
        foreach (var p in policies)
            if (frontier.Count == 0 || p.Top1 > frontier[^1].Top1) frontier.Add(p);
        if (frontier.Count > 0)
        {
            var exit = plot.Add.Scatter(frontier.Select(p => p.Steps).ToArray(), frontier.Select(p => p.Top1).ToArray());
            exit.LegendText = "early exit: the study's best policies";
            exit.LineWidth = 2;
            exit.MarkerSize = 6;
        }
        if (json["recommended"] is JsonObject recommended)
        {
            var marker = plot.Add.Marker((double)recommended["mean_steps"]!, Percent(recommended["top1"]), MarkerShape.FilledDiamond, 14);
            marker.LegendText = "the model's recommended policy";
        }
        if (json["oracle"] is JsonObject oracle)
        {
            var marker = plot.Add.Marker((double)oracle["mean_steps"]!, Percent(oracle["top1"]), MarkerShape.FilledTriangleUp, 14);
            marker.LegendText = $"oracle bound (stops where the top-1 stops changing up to T = {fixedT.Length})";
        }
        var annLine = plot.Add.HorizontalLine(ann);
        annLine.LegendText = $"ANN {ann.ToString("F2", CultureInfo.InvariantCulture)} %";
        var tolerance = plot.Add.HorizontalLine(ann - 0.5);
        tolerance.LinePattern = LinePattern.Dashed;
        tolerance.LegendText = "ANN − 0.5 point";
        double low = Math.Min(fixedT.Where((_, i) => i + 1 >= 2).DefaultIfEmpty(ann).Min(), frontier.Where(p => p.Steps >= 1.5).Select(p => p.Top1).DefaultIfEmpty(ann).Min());
        plot.Axes.SetLimits(1, right, Math.Floor(low - 1), Math.Ceiling(ann + 1));
        plot.XLabel("mean time steps per image");
        plot.YLabel("top-1 %");
        plot.Title($"{json["model"]}: early exit against a fixed T ({json["samples"]} {json["split"]} images)");
        plot.ShowLegend(Alignment.LowerRight);
        plot.SavePng(path, 1000, 640);
        return path;
    }

    static string Reliability(JsonObject json, string kind, string path)
    {
        var plot = new Plot();
        var diagonal = plot.Add.Line(0, 0, 1, 1);
        diagonal.LinePattern = LinePattern.Dashed;
        diagonal.LegendText = "perfect calibration";
        foreach (var (step, node) in json["reliability"]!.AsObject())
        {
            var bins = node![kind]!.AsArray().Where(b => (int)b!["count"]! > 0).ToArray();
            var line = plot.Add.Scatter(bins.Select(b => (double)b!["confidence"]!).ToArray(), bins.Select(b => (double)b!["accuracy"]!).ToArray());
            int index = int.Parse(step, CultureInfo.InvariantCulture) - 1;
            string ece = json["ece_by_step"]?[kind]?[index] is JsonNode e ? ((double)e).ToString("F3", CultureInfo.InvariantCulture) : "?";
            line.LegendText = $"t = {step} (ECE {ece})";
            line.LineWidth = 2;
            line.MarkerSize = 6;
        }
        plot.Axes.SetLimits(0, 1, 0, 1);
        plot.XLabel("top-1 confidence (bin mean)");
        plot.YLabel("top-1 accuracy in the bin");
        plot.Title(kind == "calibrated" ? "softmax(z / (t·τ_t)): per-step temperatures" : "softmax(z / t): no temperatures");
        plot.ShowLegend(Alignment.LowerRight);
        plot.SavePng(path, 640, 640);
        return path;
    }
}
