using Ecmt.Kernels.Cpu;
using Ecmt.Kernels.Ilgpu;
using Ecmt.Kernels.Reference;

namespace Ecmt.Kernels;

/// <summary>Which backend runs the spiking step.</summary>
public enum BackendKind
{
    /// <summary>
    /// CUDA when a CUDA device is present, else the fast CPU path; a CUDA device that is present but broken also falls
    /// back, and the failure is recorded in <see cref="Backends.AutoFallbackReason"/> (logged and in health).
    /// </summary>
    Auto,
    /// <summary>ILGPU on an NVIDIA GPU.</summary>
    Cuda,
    /// <summary>ILGPU on an OpenCL device.</summary>
    OpenCL,
    /// <summary>ILGPU's CPU accelerator: runs the GPU kernels on CPU threads; for tests, far too slow to serve.</summary>
    Cpu,
    /// <summary>
    /// ILGPU's CPU accelerator opened with CUDA's launch shape (groups of 256, several groups, 64 × 64 tiles): every
    /// path a GPU launch takes, without the driver; for tests and <c>check-backend</c>, slower still than <see cref="Cpu"/>.
    /// </summary>
    CpuCudaShape,
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
        ["cpu-cuda-shape"] = BackendKind.CpuCudaShape,
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

    /// <summary>
    /// Creates a backend; throws <see cref="BackendUnavailableException"/> when the chosen device is absent and
    /// <see cref="BackendFaultException"/> when it is present but cannot open, compile or run the kernels.
    /// </summary>
    /// <remarks>
    /// May be called many times in one process (one backend per concurrent session); the ILGPU kinds share one
    /// accelerator and the model's uploaded layers, and each instance has its own stream and tensors. Creating a fastcpu
    /// backend makes OpenBLAS single-threaded for the process: fastcpu splits its products over its own threads, and
    /// OpenBLAS threads beside them would compete for the same cores (docs/benchmarks.md, "Continuous batching").
    /// </remarks>
    public static ISpikingBackend Create(BackendKind kind) => kind switch
    {
        BackendKind.Reference => new ReferenceBackend(),
        BackendKind.FastCpu => CreateFastCpu(),
        BackendKind.Cuda or BackendKind.OpenCL or BackendKind.Cpu or BackendKind.CpuCudaShape => new IlgpuBackend(kind),
        BackendKind.Auto => CreateAuto(() => new IlgpuBackend(BackendKind.Cuda)),
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "unknown backend"),
    };

    static FastCpuBackend CreateFastCpu()
    {
        OpenBlas.Threads = 1;
        return new FastCpuBackend();
    }

    /// <summary>
    /// Whether <paramref name="error"/>, thrown by a backend operation, is a fault of the device (a broken device, or any
    /// error ILGPU's runtime raises: a CUDA launch or memory fault) rather than a bad argument.
    /// </summary>
    public static bool IsDeviceFault(Exception error) => error is BackendFaultException or ILGPU.Runtime.AcceleratorException;

    /// <summary>
    /// Set when auto found a CUDA device that is present but broken (<see cref="BackendFaultException"/>) and serves on
    /// the fast CPU path instead: the device's error. Null while auto runs on CUDA or no CUDA device exists. The server
    /// logs it and reports it in health; it is never silent.
    /// </summary>
    public static string? AutoFallbackReason { get; private set; }

    /// <summary>Raised once per process when auto first falls back from a broken CUDA device, with its error.</summary>
    public static event Action<string>? AutoFellBack;

    /// <summary>Auto: CUDA when <paramref name="cuda"/> opens it; the fast CPU path when there is no device or when it is broken (recorded).</summary>
    internal static ISpikingBackend CreateAuto(Func<ISpikingBackend> cuda)
    {
        try
        {
            return cuda();
        }
        catch (BackendUnavailableException)
        {
            return CreateFastCpu();
        }
        catch (BackendFaultException e)
        {
            bool first = AutoFallbackReason is null;
            AutoFallbackReason = e.Message;
            if (first) AutoFellBack?.Invoke(e.Message);
            return CreateFastCpu();
        }
    }
}

/// <summary>The chosen backend cannot run here (no such device, missing driver or library).</summary>
public sealed class BackendUnavailableException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>
/// The chosen device is present (its driver loaded and listed it) but cannot open, compile or run the kernels. Not a
/// <see cref="BackendUnavailableException"/>: tests that skip an absent device fail on this one, with the driver's message.
/// </summary>
public sealed class BackendFaultException(string message, Exception? inner = null) : Exception(message, inner);
