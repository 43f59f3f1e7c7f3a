using Ecmt.Kernels.Reference;

namespace Ecmt.Kernels.Tests;

/// <summary>
/// Every operation of <see cref="ISpikingBackend"/> on a candidate backend, held to <see cref="ReferenceBackend"/>
/// on the same inputs: the checks of <see cref="Checks.OperationChecks"/> (the same code <c>ecmt check-backend</c>
/// runs, with its tolerances), one test case each. A backend gets a concrete subclass; one whose device is absent
/// skips every case.
/// </summary>
public abstract class BackendConformance : IDisposable
{
    readonly Lazy<ISpikingBackend?> _candidate;
    string? _unavailable;

    protected BackendConformance()
    {
        _candidate = new(() =>
        {
            try
            {
                return CreateBackend();
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

    /// <summary>Tensor sizes of the shared operation checks (<see cref="Checks.OperationChecks"/>, which check-backend runs).</summary>
    protected virtual Checks.CheckSizes Sizes => Checks.CheckSizes.Small;

    public static TheoryData<string> SharedChecks => [.. Checks.OperationChecks.Names];

    /// <summary>The checks <c>ecmt check-backend</c> runs, at <see cref="Sizes"/>.</summary>
    [Theory]
    [MemberData(nameof(SharedChecks))]
    public void Shared_operation_check_passes(string check)
    {
        using var checks = new Checks.OperationChecks(Candidate, Sizes);
        checks.Run(check);
    }

    ISpikingBackend Candidate
    {
        get
        {
            var backend = _candidate.Value;
            if (backend is null) Assert.Skip($"backend unavailable here: {_unavailable}");
            return backend;
        }
    }

    public void Dispose()
    {
        if (_candidate.IsValueCreated) _candidate.Value?.Dispose();
        GC.SuppressFinalize(this);
    }
}
