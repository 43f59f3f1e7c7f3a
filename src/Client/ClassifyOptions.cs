using Ecmt.Protos;

namespace Ecmt.Client;

/// <summary>How to run one classification. Every property is optional.</summary>
public sealed record ClassifyOptions
{
    public static readonly ClassifyOptions Default = new();

    /// <summary>Time steps to run at most; 0 asks for the model's default (<c>ModelInfo.default_steps</c>).</summary>
    public int MaxSteps { get; init; }
    /// <summary>Classes reported per update; 0 asks for the server's default (5).</summary>
    public int TopK { get; init; }
    /// <summary>
    /// Stop policy applied here: once every rule of it holds, the client cancels the call and the server stops computing
    /// (<see cref="StopPolicy.Recommended"/>: the model's recommended policy, read from ModelInfo once per call).
    /// </summary>
    public StopPolicy? Stop { get; init; }
    /// <summary>Stop policy sent with the request and applied by the server (saves the step in flight); <see cref="StopPolicy.Recommended"/> asks for the model's own.</summary>
    public StopPolicy? ServerStop { get; init; }
    /// <summary>Deadline of the whole call, retries included; null: <see cref="EcmtClientOptions.DefaultTimeout"/>.</summary>
    public TimeSpan? Timeout { get; init; }

    internal void Validate()
    {
        if (MaxSteps < 0) throw new ArgumentOutOfRangeException(nameof(MaxSteps), MaxSteps, "MaxSteps must be 0 (the model's default) or more");
        if (TopK < 0) throw new ArgumentOutOfRangeException(nameof(TopK), TopK, "TopK must be 0 (the server's default) or more");
        if (Timeout is { } t && t <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(Timeout), t, "Timeout must be positive");
        try
        {
            Stop?.Validate();
            ServerStop?.Validate();
        }
        catch (ArgumentException e)
        {
            throw new ArgumentOutOfRangeException(Stop is null ? nameof(ServerStop) : nameof(Stop), e.Message);
        }
    }
}
