using Ecmt.Kernels.Cpu;
using Ecmt.Kernels.Reference;

namespace Ecmt.Kernels;

/// <summary>Which backend runs the spiking step.</summary>
public enum BackendKind
{
    /// <summary>CUDA when a CUDA device is present, else the fast CPU path.</summary>
    Auto,
    /// <summary>ILGPU on an NVIDIA GPU.</summary>
    Cuda,
    /// <summary>ILGPU on an OpenCL device.</summary>
    OpenCL,
    /// <summary>ILGPU's CPU accelerator: runs the GPU kernels on CPU threads; for tests, far too slow to serve.</summary>
    Cpu,
    /// <summary>The fast CPU path: OpenBLAS and SIMD code.</summary>
    FastCpu,
    /// <summary>The readable reference, for tests and comparisons.</summary>
    Reference,
}

/// <summary>The one place that chooses and creates backends.</summary>
public static class Backends
{
    /// <summary>Environment variable that selects the backend at deploy time.</summary>
    public const string EnvironmentVariable = "ECMT_BACKEND";

    public static readonly IReadOnlyDictionary<string, BackendKind> Names = new Dictionary<string, BackendKind>(StringComparer.OrdinalIgnoreCase)
    {
        ["auto"] = BackendKind.Auto,
        ["cuda"] = BackendKind.Cuda,
        ["opencl"] = BackendKind.OpenCL,
        ["cpu"] = BackendKind.Cpu,
        ["fastcpu"] = BackendKind.FastCpu,
        ["reference"] = BackendKind.Reference,
    };

    public static string NameOf(BackendKind kind) => Names.First(p => p.Value == kind).Key;

    public static BackendKind Parse(string? name)
    {
        if (string.IsNullOrWhiteSpace(name)) return BackendKind.Auto;
        return Names.TryGetValue(name.Trim(), out var kind)
            ? kind
            : throw new ArgumentException($"unknown backend '{name}' (choose one of: {string.Join(", ", Names.Keys)})");
    }

    /// <summary>The backend named by <c>ECMT_BACKEND</c>, else auto.</summary>
    public static BackendKind FromEnvironment() => Parse(Environment.GetEnvironmentVariable(EnvironmentVariable));

    /// <summary>Creates a backend; throws <see cref="BackendUnavailableException"/> when the chosen device is absent.</summary>
    public static ISpikingBackend Create(BackendKind kind) => kind switch
    {
        BackendKind.Reference => new ReferenceBackend(),
        BackendKind.FastCpu => new FastCpuBackend(),
        // No GPU backend is built yet, so auto is the fast CPU path.
        BackendKind.Auto => new FastCpuBackend(),
        _ => throw new BackendUnavailableException($"backend '{NameOf(kind)}' is not built yet"),
    };
}

/// <summary>The chosen backend cannot run here (no such device, missing driver or library).</summary>
public sealed class BackendUnavailableException(string message, Exception? inner = null) : Exception(message, inner);
