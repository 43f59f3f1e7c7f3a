using System.Collections.Concurrent;
using System.Diagnostics;
using Grpc.Core;

namespace Ecmt.Client.Tests;

/// <summary>
/// UNAVAILABLE is retried with backoff before the first update only, within the attempts and the deadline; once an
/// update has arrived, or for any other status, the call is never repeated. Attempts are counted on the wire.
/// </summary>
public sealed class RetryTests
{
    static ClassifyInput Image => ClassifyInput.FromTensor(TestModels.Intensities(8), 1, TestModels.Size, TestModels.Size);

    static RetryPolicy Fast(int attempts) => new() { MaxAttempts = attempts, InitialBackoff = TimeSpan.FromMilliseconds(50), MaxBackoff = TimeSpan.FromMilliseconds(200) };

    [Fact]
    public async Task Retries_until_a_server_that_starts_late_is_up()
    {
        int port = ServerHost.FreePort();
        using var wire = new Wire();
        var retries = new ConcurrentQueue<RetryEvent>();
        using var client = new EcmtClient($"127.0.0.1:{port}",
            new EcmtClientOptions { ChannelOptions = wire.ChannelOptions(), Retry = Fast(100), OnRetry = retries.Enqueue });

        var classify = client.ClassifyToEndAsync(TestModels.Tiny, Image, new ClassifyOptions { MaxSteps = 3 });
        var list = client.ListModelsAsync();
        await Task.Delay(600);
        Assert.False(classify.IsCompleted);
        await using var host = await ServerHost.StartAsync(port);

        var result = await classify.WaitAsync(TimeSpan.FromSeconds(60));
        Assert.Equal(3, result.Steps);
        Assert.InRange(result.Last.Attempts, 3, 99);
        Assert.All(result.Updates, u => Assert.Equal(result.Last.Attempts, u.Attempts));
        Assert.Equal(2, (await list.WaitAsync(TimeSpan.FromSeconds(60))).Count);

        Assert.All(retries, e => Assert.Equal(StatusCode.Unavailable, e.Status.StatusCode));
        var classifyRetries = retries.Where(e => e.Method == "ecmt.v1.Classifier/Classify").ToArray();
        Assert.Equal(result.Last.Attempts - 1, classifyRetries.Length);
        Assert.Equal(Enumerable.Range(1, classifyRetries.Length), classifyRetries.Select(e => e.FailedAttempt));
        Assert.All(classifyRetries, e => Assert.InRange(e.Delay, TimeSpan.FromMilliseconds(40), TimeSpan.FromMilliseconds(240)));
        Assert.Equal(retries.Count + 2, wire.Requests);
    }

    [Fact]
    public async Task Gives_up_after_the_last_attempt_when_the_server_stays_unavailable()
    {
        await using var host = await ServerHost.StartAsync(settings: ("Ecmt:Shutdown:DrainDelaySeconds", "1"));
        using var wire = new Wire();
        var retries = new ConcurrentQueue<RetryEvent>();
        using var client = new EcmtClient(host.Address.ToString(), new EcmtClientOptions { ChannelOptions = wire.ChannelOptions(), Retry = Fast(3), OnRetry = retries.Enqueue });
        Assert.True((await client.GetModelAsync(TestModels.Tiny)).Ready);

        // Shutting down: during the drain delay the listener still accepts calls and answers Classify with UNAVAILABLE.
        var stopping = host.App.StopAsync();
        while ((await client.GetModelAsync(TestModels.Tiny)).Ready) await Task.Delay(10);
        int before = wire.Requests;

        var error = await Assert.ThrowsAsync<EcmtRpcException>(() => client.ClassifyAsync(TestModels.Tiny, Image).ToListAsync());
        Assert.Equal(StatusCode.Unavailable, error.StatusCode);
        Assert.Contains("shutting down", error.Detail, StringComparison.Ordinal);
        Assert.Equal(3, error.Attempts);
        Assert.EndsWith("(after 3 attempts)", error.Message, StringComparison.Ordinal);
        Assert.Equal(3, wire.Requests - before);
        Assert.Equal(2, retries.Count(e => e.Method.EndsWith("/Classify", StringComparison.Ordinal)));
        await stopping;
    }

    [Fact]
    public async Task The_deadline_bounds_the_retries()
    {
        int port = ServerHost.FreePort();
        using var client = new EcmtClient($"127.0.0.1:{port}", new EcmtClientOptions { Retry = Fast(1000) with { MaxBackoff = TimeSpan.FromMilliseconds(100) } });
        var clock = Stopwatch.StartNew();
        var error = await Assert.ThrowsAsync<EcmtRpcException>(() => client.ClassifyAsync(TestModels.Tiny, Image, new ClassifyOptions { Timeout = TimeSpan.FromMilliseconds(700) }).ToListAsync());
        Assert.Equal(StatusCode.DeadlineExceeded, error.StatusCode);
        Assert.InRange(error.Attempts, 2, 30);
        Assert.InRange(clock.Elapsed, TimeSpan.FromMilliseconds(400), TimeSpan.FromSeconds(5));
    }

    [Fact]
    public async Task Never_retries_once_an_update_has_arrived()
    {
        await using var host = await ServerHost.StartAsync();
        using var wire = new Wire();
        using var client = new EcmtClient(host.Address.ToString(), new EcmtClientOptions { ChannelOptions = wire.ChannelOptions(), Retry = Fast(10) });
        var run = host.Model(TestModels.Deep).NextRun();

        var received = new List<StepUpdate>();
        var error = await Assert.ThrowsAsync<EcmtRpcException>(async () =>
        {
            await foreach (var update in client.ClassifyAsync(TestModels.Deep, Image, new ClassifyOptions { MaxSteps = 100_000 }))
            {
                received.Add(update);
                if (update.Step == 2) wire.Cut();
            }
        });

        // The connection died mid-stream: UNAVAILABLE, a retryable code, yet the call was not repeated.
        Assert.Equal(StatusCode.Unavailable, error.StatusCode);
        Assert.Equal(1, error.Attempts);
        Assert.Equal(1, wire.Requests);
        Assert.InRange(received.Count, 2, 4);
        Assert.True((await run.WaitAsync(TimeSpan.FromSeconds(30))).Cancelled);
    }

    [Fact]
    public async Task Other_statuses_are_never_retried()
    {
        await using var host = await ServerHost.StartAsync(settings: ("Ecmt:Limits:MaxConcurrentStreams", "1"));
        using var wire = new Wire();
        var retries = new ConcurrentQueue<RetryEvent>();
        using var client = new EcmtClient(host.Address.ToString(), new EcmtClientOptions { ChannelOptions = wire.ChannelOptions(), Retry = Fast(10), OnRetry = retries.Enqueue });

        async Task<EcmtRpcException> Fails(Func<Task> call)
        {
            int before = wire.Requests;
            var error = await Assert.ThrowsAsync<EcmtRpcException>(call);
            Assert.Equal(1, error.Attempts);
            Assert.Equal(1, wire.Requests - before);
            return error;
        }

        Assert.Equal(StatusCode.NotFound, (await Fails(() => client.ClassifyAsync("nope", Image).ToListAsync())).StatusCode);
        Assert.Equal(StatusCode.NotFound, (await Fails(() => client.GetModelAsync("nope"))).StatusCode);
        Assert.Equal(StatusCode.InvalidArgument, (await Fails(() => client.ClassifyAsync(TestModels.Tiny, new byte[] { 1, 2, 3 }).ToListAsync())).StatusCode);

        // The one stream slot is taken: RESOURCE_EXHAUSTED asks to retry later, which is the caller's call to make.
        var run = host.Model(TestModels.Deep).NextRun();
        await using (var holder = client.ClassifyAsync(TestModels.Deep, Image, new ClassifyOptions { MaxSteps = 100_000 }).GetAsyncEnumerator())
        {
            Assert.True(await holder.MoveNextAsync());
            Assert.Equal(StatusCode.ResourceExhausted, (await Fails(() => client.ClassifyAsync(TestModels.Tiny, Image).ToListAsync())).StatusCode);
        }
        Assert.True((await run.WaitAsync(TimeSpan.FromSeconds(30))).Cancelled);
        Assert.Empty(retries);
    }
}
