using System.Diagnostics;
using Grpc.Core;
using Grpc.Health.V1;

namespace Ecmt.Server.Tests;

/// <summary>
/// grpc.health.v1 Check stays fast while the server is at its full batch and queue: the step thread runs at a lower
/// priority (Ecmt:Batching:Nice) and off the thread pool, so Kestrel's I/O threads answer probes between steps.
/// Over a real loopback HTTP/2 connection, as a readiness probe would ask.
/// </summary>
public sealed class HealthUnderLoadTests
{
    [Fact]
    public async Task Health_check_p99_stays_under_100_ms_with_the_batch_and_queue_full()
    {
        await using var host = await ServerHost.KestrelAsync(("Ecmt:Limits:MaxSteps", "100000"),
            ("Ecmt:Batching:MaxBatch", "4"), ("Ecmt:Batching:QueueLength", "4"));
        var model = host.Model(TestModels.Deep);
        using var cts = new CancellationTokenSource();
        var calls = Enumerable.Range(0, 8)
            .Select(_ => host.Client.Classify(Requests.Tensor(TestModels.Deep, maxSteps: 100_000), cancellationToken: cts.Token))
            .ToArray();
        try
        {
            // Every slot is busy and the queue holds the rest.
            for (var until = DateTime.UtcNow.AddSeconds(30); (model.ActiveSessions < 4 || model.Waiting < 4) && DateTime.UtcNow < until;)
                await Task.Delay(10);
            Assert.Equal(4, model.ActiveSessions);
            Assert.Equal(4, model.Waiting);

            var health = new Health.HealthClient(host.Channel);
            await health.CheckAsync(new HealthCheckRequest());
            var times = new List<double>();
            for (int i = 0; i < 100; i++)
            {
                long start = Stopwatch.GetTimestamp();
                var response = await health.CheckAsync(new HealthCheckRequest());
                times.Add(Stopwatch.GetElapsedTime(start).TotalMilliseconds);
                Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, response.Status);
                await Task.Delay(5);
            }
            times.Sort();
            double p99 = times[98];
            Assert.True(p99 < 100, $"health Check p99 {p99:F1} ms under full load (median {times[50]:F1} ms)");
            Assert.Equal(4, model.ActiveSessions);
        }
        finally
        {
            cts.Cancel();
            foreach (var call in calls) call.Dispose();
        }
    }
}
