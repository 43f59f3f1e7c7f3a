using Ecmt.Engine.Serving;

namespace Ecmt.Client.Tests;

static class Runs
{
    /// <summary>The summary of the next run of <paramref name="model"/> that ends (raised once its session is back in the pool).</summary>
    public static Task<RunSummary> NextRun(this HostedModel model)
    {
        var done = new TaskCompletionSource<RunSummary>(TaskCreationOptions.RunContinuationsAsynchronously);
        Action<RunSummary>? handler = null;
        handler = summary =>
        {
            model.RunCompleted -= handler;
            done.TrySetResult(summary);
        };
        model.RunCompleted += handler;
        return done.Task;
    }

    public static async Task<List<StepUpdate>> ToListAsync(this IAsyncEnumerable<StepUpdate> updates)
    {
        var list = new List<StepUpdate>();
        await foreach (var update in updates) list.Add(update);
        return list;
    }
}
