using System.Diagnostics;
using Grpc.Core;

namespace Ecmt.Client.Tests;

/// <summary>A deadline ends the call with DEADLINE_EXCEEDED, and the engine stops within the step in flight.</summary>
public sealed class DeadlineTests(ServerFixture fixture) : IClassFixture<ServerFixture>
{
    static ClassifyInput Image => ClassifyInput.FromTensor(TestModels.Intensities(6), 1, TestModels.Size, TestModels.Size);

    /// <summary>One short call first: on a cold process (a fresh CI build) the first call's set-up alone can outlast
    /// these tests' sub-second deadlines, and then the engine never starts the run they wait for.</summary>
    static Task WarmUp(EcmtClient client) =>
        client.ClassifyAsync(TestModels.Deep, Image, new ClassifyOptions { MaxSteps = 1, Timeout = TimeSpan.FromSeconds(60) }).ToListAsync();

    [Fact]
    public async Task A_call_deadline_stops_the_engine()
    {
        using var client = new EcmtClient(fixture.Host.Address.ToString());
        await WarmUp(client);
        var model = fixture.Host.Model(TestModels.Deep);
        long before = model.StepsRun;
        var run = model.NextRun();
        var clock = Stopwatch.StartNew();
        int received = 0;

        var error = await Assert.ThrowsAsync<EcmtRpcException>(async () =>
        {
            await foreach (var _ in client.ClassifyAsync(TestModels.Deep, Image, new ClassifyOptions { MaxSteps = 100_000, Timeout = TimeSpan.FromMilliseconds(1500) }))
                received++;
        });

        Assert.Equal(StatusCode.DeadlineExceeded, error.StatusCode);
        // 1.5 s: long enough that steps arrive first even when CI runs every test project at once on 2 cores
        Assert.InRange(clock.Elapsed, TimeSpan.FromMilliseconds(1450), TimeSpan.FromSeconds(10));
        Assert.True(received >= 1, "steps arrived before the deadline");
        var summary = await run.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.True(summary.Cancelled);
        Assert.InRange(summary.StepsAfterCancellation!.Value, 0, 1);
        Assert.InRange(summary.StepsRun, received, received + 2);
        Assert.Equal(summary.StepsRun, model.StepsRun - before);
    }

    [Fact]
    public async Task The_client_default_applies_unless_a_call_sets_its_own()
    {
        using var client = new EcmtClient(fixture.Host.Address.ToString(), new EcmtClientOptions { DefaultTimeout = TimeSpan.FromMilliseconds(400) });
        await WarmUp(client);
        var run = fixture.Host.Model(TestModels.Deep).NextRun();
        var error = await Assert.ThrowsAsync<EcmtRpcException>(() => client.ClassifyAsync(TestModels.Deep, Image, new ClassifyOptions { MaxSteps = 100_000 }).ToListAsync());
        Assert.Equal("DEADLINE_EXCEEDED", error.Code);
        Assert.True((await run.WaitAsync(TimeSpan.FromSeconds(30))).Cancelled);

        // 12 deep steps take longer than the default's 400 ms here, but not than the call's own 60 s.
        var updates = await client.ClassifyAsync(TestModels.Deep, Image, new ClassifyOptions { MaxSteps = 12, Timeout = TimeSpan.FromSeconds(60) }).ToListAsync();
        Assert.Equal(12, updates.Count);
        Assert.Equal(StopReason.MaxSteps, updates[^1].StopReason);
        Assert.Equal(2, (await client.ListModelsAsync()).Count);
    }
}
