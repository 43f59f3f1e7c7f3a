using Ecmt.Engine.Serving;
using Ecmt.Protos;
using StopReason = Ecmt.Client.StopReason;

namespace Ecmt.Client.Tests;

/// <summary>
/// A client-side stop policy ends the stream at the first step where every rule of it holds (the step the shared
/// tracker finds on an uninterrupted stream), and cancelling the call stops the
/// engine: counted by the engine itself, the server ran the steps the client saw plus at most the ones already under
/// way when the cancel arrived (the server starts step t + 1 as soon as it has sent update t), and nothing after.
/// </summary>
public sealed class StopPolicyTests(ServerFixture fixture) : IClassFixture<ServerFixture>, IDisposable
{
    const int ManySteps = 100_000, Observed = 12;
    readonly EcmtClient _client = new(fixture.Host.Address.ToString());

    public void Dispose() => _client.Dispose();

    static ClassifyInput Image => ClassifyInput.FromTensor(TestModels.Intensities(4), 1, TestModels.Size, TestModels.Size);

    public enum Rule { Confidence, Margin, Stable }

    [Theory]
    [InlineData(Rule.Confidence)]
    [InlineData(Rule.Margin)]
    [InlineData(Rule.Stable)]
    public async Task Each_rule_stops_at_its_first_step_and_cancels_the_call(Rule rule)
    {
        var full = await _client.ClassifyAsync(TestModels.Deep, Image, new ClassifyOptions { MaxSteps = Observed }).ToListAsync();
        // A threshold that a later step reaches first (a new running maximum), so the stop is not at step 1.
        var (policy, expected, reason) = rule switch
        {
            Rule.Confidence => NewMaximum(full.Select(u => u.Confidence).ToArray()) is var (t, p) ? (new StopPolicy { MinConfidence = p }, t, StopReason.Confident) : default,
            Rule.Margin => NewMaximum(full.Select(u => u.Margin).ToArray()) is var (t, m) ? (new StopPolicy { MinMargin = m }, t, StopReason.Policy) : default,
            _ => (new StopPolicy { StableSteps = 2 }, FirstStableStep(full.Select(u => u.Prediction.Index).ToArray(), 2), StopReason.Stable),
        };
        Assert.InRange(expected, 2, Observed - 1);

        var model = fixture.Host.Model(TestModels.Deep);
        long before = model.StepsRun;
        var run = model.NextRun();
        var updates = await _client.ClassifyAsync(TestModels.Deep, Image, new ClassifyOptions { MaxSteps = ManySteps, Stop = policy }).ToListAsync();

        Assert.Equal(expected, updates.Count);
        Assert.Equal(reason, updates[^1].StopReason);
        Assert.True(updates[^1].StoppedByClient);
        Assert.All(updates[..^1], u => Assert.Equal(StopReason.None, u.StopReason));
        Assert.Equal(full.Take(expected).Select(u => u.Raw.Top.ToString()), updates.Select(u => u.Raw.Top.ToString()));

        var summary = await run.WaitAsync(TimeSpan.FromSeconds(30));
        AssertStoppedSoonAfter(summary, expected);
        Assert.Equal(summary.StepsRun, model.StepsRun - before);
        long after = model.StepsRun;
        await Task.Delay(200);
        Assert.Equal(after, model.StepsRun);
    }

    /// <summary>Where the shared tracker, run over an uninterrupted stream, says the policy holds first; 0 when never.</summary>
    static int FirstStop(IReadOnlyList<StepUpdate> full, StopPolicy policy)
    {
        var tracker = policy.Track();
        for (int i = 0; i < full.Count; i++) if (tracker.Observe(full[i].Signal)) return i + 1;
        return 0;
    }

    [Fact]
    public async Task Every_rule_must_hold()
    {
        var full = await _client.ClassifyAsync(TestModels.Deep, Image, new ClassifyOptions { MaxSteps = Observed }).ToListAsync();
        int stable = FirstStableStep(full.Select(u => u.Prediction.Index).ToArray(), 1);
        // Stable for one step and at least one step past the first stable one: later than either rule alone.
        var policy = new StopPolicy { StableSteps = 1, MinSteps = stable + 1 };
        int expected = FirstStop(full, policy);
        Assert.InRange(expected, stable + 1, Observed);
        var run = fixture.Host.Model(TestModels.Deep).NextRun();
        var updates = await _client.ClassifyAsync(TestModels.Deep, Image, new ClassifyOptions { MaxSteps = Observed + 1, Stop = policy }).ToListAsync();
        Assert.Equal(expected, updates.Count);
        Assert.Equal(StopReason.Policy, updates[^1].StopReason);
        AssertStoppedSoonAfter(await run.WaitAsync(TimeSpan.FromSeconds(30)), expected);
    }

    [Fact]
    public async Task The_recommended_policy_applies_the_same_on_either_side()
    {
        var info = await _client.GetModelAsync(TestModels.Deep);
        var policy = StopPolicy.FromProto(info.RecommendedStop);
        var full = await _client.ClassifyAsync(TestModels.Deep, Image, new ClassifyOptions { MaxSteps = Observed }).ToListAsync();
        int expected = FirstStop(full, policy) is > 0 and var t ? t : Observed;
        var client = await _client.ClassifyAsync(TestModels.Deep, Image, new ClassifyOptions { MaxSteps = Observed, Stop = StopPolicy.Recommended }).ToListAsync();
        var server = await _client.ClassifyAsync(TestModels.Deep, Image, new ClassifyOptions { MaxSteps = Observed, ServerStop = StopPolicy.Recommended }).ToListAsync();
        Assert.Equal(expected, client.Count);
        Assert.Equal(expected, server.Count);
        Assert.Equal(full.Take(expected).Select(u => u.Gate), server.Select(u => u.Gate));
        Assert.All(full, u => Assert.NotNull(u.Gate));
        var none = await Assert.ThrowsAsync<EcmtRpcException>(() =>
            _client.ClassifyAsync(TestModels.Tiny, Image, new ClassifyOptions { MaxSteps = 3, ServerStop = StopPolicy.Recommended }).ToListAsync());
        Assert.Equal("FAILED_PRECONDITION", none.Code);
        none = await Assert.ThrowsAsync<EcmtRpcException>(() =>
            _client.ClassifyAsync(TestModels.Tiny, Image, new ClassifyOptions { MaxSteps = 3, Stop = StopPolicy.Recommended }).ToListAsync());
        Assert.Equal("FAILED_PRECONDITION", none.Code);
    }

    [Fact]
    public async Task A_rule_that_never_holds_runs_to_max_steps_without_a_cancel()
    {
        var model = fixture.Host.Model(TestModels.Deep);
        var run = model.NextRun();
        var updates = await _client.ClassifyAsync(TestModels.Deep, Image, new ClassifyOptions { MaxSteps = 3, Stop = new StopPolicy { MinConfidence = 1 } }).ToListAsync();
        Assert.Equal(3, updates.Count);
        Assert.Equal(StopReason.MaxSteps, updates[^1].StopReason);
        Assert.False(updates[^1].StoppedByClient);
        var summary = await run.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.False(summary.Cancelled);
        Assert.Equal(3, summary.StepsRun);
    }

    [Fact]
    public async Task Leaving_the_loop_cancels_the_call()
    {
        var model = fixture.Host.Model(TestModels.Deep);
        var run = model.NextRun();
        await foreach (var update in _client.ClassifyAsync(TestModels.Deep, Image, new ClassifyOptions { MaxSteps = ManySteps }))
            if (update.Step == 3) break;
        AssertStoppedSoonAfter(await run.WaitAsync(TimeSpan.FromSeconds(30)), 3);
    }

    [Fact]
    public async Task Cancelling_the_token_cancels_the_call()
    {
        var model = fixture.Host.Model(TestModels.Deep);
        var run = model.NextRun();
        using var cts = new CancellationTokenSource();
        var error = await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var update in _client.ClassifyAsync(TestModels.Deep, Image, new ClassifyOptions { MaxSteps = ManySteps }, cts.Token))
                if (update.Step == 2) await cts.CancelAsync();
        });
        Assert.Equal(cts.Token, error.CancellationToken);
        AssertStoppedSoonAfter(await run.WaitAsync(TimeSpan.FromSeconds(30)), 2);
    }

    /// <summary>
    /// The run was cancelled; the engine finished at most the step in flight after the cancel arrived; and it ran at
    /// most two steps past the last one the client used (the one pipelined behind it, and one more if the cancel
    /// took longer than a step to arrive on this loaded machine) — out of <see cref="ManySteps"/> requested.
    /// </summary>
    static void AssertStoppedSoonAfter(RunSummary summary, int usedSteps)
    {
        Assert.True(summary.Cancelled, $"the run ended with {summary.Outcome}, not cancelled");
        Assert.InRange(summary.StepsAfterCancellation!.Value, 0, 1);
        Assert.InRange(summary.StepsRun, usedSteps, usedSteps + 2);
    }

    /// <summary>The last step t ≤ 8 (1-based, t ≥ 2) whose value exceeds every value before it, and that value.</summary>
    internal static (int Step, float Value)? NewMaximum(float[] values)
    {
        (int, float)? found = null;
        for (int t = 2; t <= Math.Min(8, values.Length); t++)
            if (values[t - 1] > values[..(t - 1)].Max()) found = (t, values[t - 1]);
        return found;
    }

    /// <summary>The first step t (1-based) whose top-1 class equals that of each of the k steps before it; 0 when none.</summary>
    internal static int FirstStableStep(int[] top, int k)
    {
        for (int t = k + 1; t <= top.Length; t++)
            if (Enumerable.Range(t - 1 - k, k).All(s => top[s] == top[t - 1])) return t;
        return 0;
    }
}
