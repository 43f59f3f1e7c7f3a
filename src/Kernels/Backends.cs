using Ecmt.Kernels.Cpu;
using Ecmt.Kernels.Ilgpu;
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
    /// <remarks>
    /// May be called many times in one process (one backend per concurrent session); the ILGPU kinds share one
    /// accelerator and the model's uploaded layers, and each instance has its own stream and tensors.
    /// </remarks>
    public static ISpikingBackend Create(BackendKind kind) => kind switch
    {
        BackendKind.Reference => new ReferenceBackend(),
        BackendKind.FastCpu => new FastCpuBackend(),
        BackendKind.Cuda or BackendKind.OpenCL or BackendKind.Cpu => new IlgpuBackend(kind),
        BackendKind.Auto => IlgpuBackend.IsAvailable(BackendKind.Cuda) ? new IlgpuBackend(BackendKind.Cuda) : new FastCpuBackend(),
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "unknown backend"),
    };
}

/// <summary>The chosen backend cannot run here (no such device, missing driver or library).</summary>
public sealed class BackendUnavailableException(string message, Exception? inner = null) : Exception(message, inner);
