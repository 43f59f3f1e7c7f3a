namespace Ecmt.Engine.Serving;

/// <summary>Why a run ended early or on time; <see cref="None"/> on every step but the last.</summary>
public enum StopReason
{
    None,
    /// <summary>The requested number of steps was run.</summary>
    MaxSteps,
    /// <summary>The policy was min_confidence alone, and the calibrated top-1 probability reached it.</summary>
    Confident,
    /// <summary>The policy was stable_steps alone, and the top-1 class stayed the same for that many steps.</summary>
    Stable,
    /// <summary>Every rule of any other stop policy held (see <see cref="Protos.StopPolicy"/>).</summary>
    Policy,
}

/// <summary>A request asked for a rule the model cannot apply: its recommended policy or its gate, when it has none.</summary>
public sealed class StopPolicyUnavailableException(string message) : Exception(message);

public static class StopReasons
{
    /// <summary>The reason a met <paramref name="policy"/> reports.</summary>
    public static StopReason When(Protos.StopPolicy policy) => policy.Rule switch
    {
        Protos.StopRule.Confidence => StopReason.Confident,
        Protos.StopRule.Stable => StopReason.Stable,
        _ => StopReason.Policy,
    };
}
