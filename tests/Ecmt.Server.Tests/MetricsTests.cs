using Ecmt.Protos.V1;
using Grpc.Core;

namespace Ecmt.Server.Tests;

/// <summary>The Prometheus scrape: per-step latency, active streams, steps run, steps saved, errors by status.</summary>
public sealed class MetricsTests
{
    [Fact]
    public async Task The_scrape_shows_steps_latency_savings_streams_and_errors()
    {
        await using var host = await ServerHost.InProcessAsync();
        var request = Requests.Tensor(TestModels.Tiny, maxSteps: 20);
        request.Stop = new Protos.V1.StopPolicy { MinConfidence = 0.01 };
        var updates = await host.Client.RunAsync(request);
        Assert.Single(updates);
        await host.Client.RunAsync(Requests.Tensor(TestModels.Tiny, maxSteps: 3));
        var notFound = await Requests.StatusOf(() => host.Client.RunAsync(Requests.Tensor("nope")));
        Assert.Equal(StatusCode.NotFound, notFound.StatusCode);

        using var http = host.HttpClient();
        var text = await http.GetStringAsync(new Uri("/metrics", UriKind.Relative));
        var lines = text.Split('\n');

        double Value(string prefix) => lines.Where(l => l.StartsWith(prefix, StringComparison.Ordinal))
            .Sum(l => double.Parse(l[(l.LastIndexOf(' ') + 1)..], System.Globalization.CultureInfo.InvariantCulture));

        Assert.True(Value("ecmt_steps_total{") >= 4, text);
        Assert.True(Value("ecmt_step_duration_milliseconds_count{") >= 4, text);
        Assert.Contains(lines, l => l.StartsWith("ecmt_step_duration_milliseconds_bucket{", StringComparison.Ordinal));
        Assert.True(Value("ecmt_steps_saved_total{") >= 19, text);
        Assert.Contains(lines, l => l.StartsWith("ecmt_steps_saved_total{", StringComparison.Ordinal) && l.Contains("reason=\"confident\"", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.StartsWith("ecmt_classify_active_streams", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.StartsWith("ecmt_rpc_errors_total{", StringComparison.Ordinal) && l.Contains("code=\"NOT_FOUND\"", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.StartsWith("ecmt_runs_total{", StringComparison.Ordinal) && l.Contains("reason=\"max_steps\"", StringComparison.Ordinal));
    }
}
