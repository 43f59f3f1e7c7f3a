using Spectre.Console;

namespace Ecmt.Cli;

/// <summary>A progress bar on standard error (standard output stays clean for JSON).</summary>
static class Progress
{
    static readonly IAnsiConsole Console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(System.Console.Error) });

    public static T Run<T>(string description, int total, Func<IProgress<int>, T> work)
    {
        if (System.Console.IsErrorRedirected) return work(new Progress<int>());
        T result = default!;
        Console.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask(description, maxValue: total);
                result = work(new SyncProgress(v => task.Value = v));
            });
        return result;
    }

    sealed class SyncProgress(Action<int> report) : IProgress<int>
    {
        public void Report(int value) => report(value);
    }
}
