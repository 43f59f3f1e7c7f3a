using Ecmt.Kernels.Checks;

namespace Ecmt.Kernels.Tests;

/// <summary>
/// Every operation of <see cref="ISpikingBackend"/> on a candidate backend, held to the reference backend on the same
/// inputs by <see cref="OperationChecks"/> (the checks <c>ecmt check-backend</c> runs). A backend gets a concrete
/// subclass; one whose device is absent skips every case, one whose device is present but broken fails them
/// (<see cref="BackendFaultException"/> is not caught).
/// </summary>
public abstract class BackendConformance : IDisposable
{
    readonly Lazy<(ISpikingBackend Backend, OperationChecks Checks)?> _candidate;
    string? _unavailable;

    protected BackendConformance()
    {
        _candidate = new(() =>
        {
            try
            {
                var backend = CreateBackend();
                return (backend, new OperationChecks(backend, Sizes));
            }
            catch (BackendUnavailableException e)
            {
                _unavailable = e.Message;
                return null;
            }
        });
    }

    /// <summary>Creates the backend under test; throws <see cref="BackendUnavailableException"/> when its device is absent.</summary>
    protected abstract ISpikingBackend CreateBackend();

    /// <summary>Tensor sizes of the checks.</summary>
    protected virtual CheckSizes Sizes => CheckSizes.Small;

    public void Dispose()
    {
        if (_candidate.IsValueCreated && _candidate.Value is { } c)
        {
            c.Checks.Dispose();
            c.Backend.Dispose();
        }
        GC.SuppressFinalize(this);
    }

    public static TheoryData<string> Checks => [.. OperationChecks.Names];

    [Theory]
    [MemberData(nameof(Checks))]
    public void Operation_matches_the_reference(string check)
    {
        var candidate = _candidate.Value;
        if (candidate is null) Assert.Skip($"backend unavailable here: {_unavailable}");
        candidate.Value.Checks.Run(check);
    }
}
