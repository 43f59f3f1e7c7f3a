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
            // Skia here has no fontconfig: give ScottPlot a font file (Debian's fonts-dejavu-core, scripts/setup.sh).
            if (!File.Exists(FontFile))
                throw new FileNotFoundException($"{FontFile} is missing: apt-get install fonts-dejavu-core (scripts/setup.sh does it)", FontFile);
            Fonts.AddFontFile(FontName, FontFile);
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

    const string FontName = "DejaVu Sans", FontFile = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

    static Plot NewPlot()
    {
        var plot = new Plot();
        plot.Font.Set(FontName);
        return plot;
    }

    static double Percent(JsonNode? n) => 100 * (double)n!;

    static string EarlyExit(JsonObject json, string path, double right)
    {
        var plot = NewPlot();
        double ann = Percent(json["ann_top1"]);
        var fixedT = json["snn_top1_by_step"]!.AsArray().Select(Percent).ToArray();
        var steps = Enumerable.Range(1, fixedT.Length).Select(t => (double)t).ToArray();
        var fixedLine = plot.Add.Scatter(steps, fixedT);
        fixedLine.LegendText = "every image stops at the same T";
        fixedLine.LineWidth = 2;
        fixedLine.MarkerSize = 6;

        // The study's policies in three groups: the gate alone at thresholds g; the recommended policy with a minimum
        // step count; every other combination (points only).
        var recommendedPolicy = json["recommended"]?["policy"]?.AsObject();
        var gateOnly = new List<(double Steps, double Top1)>();
        var withMinSteps = new List<(double Steps, double Top1)>();
        var others = new List<(double Steps, double Top1)>();
        foreach (var e in json["early_exit"]?.AsArray() ?? [])
        {
            var policy = e!["policy"]!.AsObject();
            var point = ((double)e["mean_steps"]!, Percent(e["top1"]));
            var keys = policy.Select(kv => kv.Key).ToHashSet();
            if (keys.SetEquals(["min_gate"])) gateOnly.Add(point);
            else if (recommendedPolicy is not null && keys.Contains("min_steps") && keys.Count == recommendedPolicy.Count + 1
                && recommendedPolicy.All(kv => policy[kv.Key] is JsonNode v && JsonNode.DeepEquals(v, kv.Value))) withMinSteps.Add(point);
            else others.Add(point);
        }
        void Line(List<(double Steps, double Top1)> points, string label)
        {
            if (points.Count == 0) return;
            points.Sort();
            var line = plot.Add.Scatter(points.Select(p => p.Steps).ToArray(), points.Select(p => p.Top1).ToArray());
            line.LegendText = label;
            line.LineWidth = 2;
            line.MarkerSize = 6;
        }
        Line(gateOnly, "early exit: gate ≥ g (g = 0.5 … 0.999)");
        Line(withMinSteps, "early exit: the recommended policy and at least m steps (m = 2 … 8)");
        if (others.Count > 0)
        {
            var points = plot.Add.ScatterPoints(others.Select(p => p.Steps).ToArray(), others.Select(p => p.Top1).ToArray());
            points.LegendText = "calibrated confidence and stable-top-1 rules";
            points.MarkerSize = 5;
        }
        var frontier = gateOnly.Concat(withMinSteps).Concat(others).ToList();
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
        var plot = NewPlot();
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
