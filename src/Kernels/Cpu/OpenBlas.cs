using System.Reflection;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;

namespace Ecmt.Kernels.Cpu;

/// <summary>
/// Single-precision GEMM from OpenBLAS (Debian: <c>libopenblas0-pthread</c>). All matrices are row-major.
/// <para>
/// OpenBLAS picks its kernels from the CPU model it detects; on virtual machines that report a generic model
/// (these do: "Intel Xeon Processor") it falls back to the 2004 Prescott kernels, about 5× slower. Unless
/// <c>OPENBLAS_CORETYPE</c> is already set, this class sets it from the instruction sets .NET sees
/// (AVX-512 → SkylakeX, AVX2 → Haswell) before the library loads.
/// </para>
/// </summary>
public static unsafe class OpenBlas
{
    const string Library = "openblas";
    const int RowMajor = 101, NoTrans = 111, Trans = 112;
    static readonly string[] Candidates = ["libopenblas.so.0", "libopenblas.so", "libopenblasp-r0.so", "libopenblas.dylib", "openblas.dll"];

    static OpenBlas() => NativeLibrary.SetDllImportResolver(typeof(OpenBlas).Assembly, Resolve);

    static IntPtr Resolve(string name, Assembly assembly, DllImportSearchPath? path)
    {
        if (name != Library) return IntPtr.Zero;
        ConfigureCoreType();
        foreach (var candidate in Candidates)
            if (NativeLibrary.TryLoad(candidate, assembly, path, out var handle)) return handle;
        throw new DllNotFoundException(
            "OpenBLAS was not found (tried " + string.Join(", ", Candidates) + "). The CPU backends need it: " +
            "sudo apt-get install libopenblas0-pthread (scripts/setup.sh installs it).");
    }

    [DllImport("libc", EntryPoint = "setenv")]
    static extern int SetEnv(string name, string value, int overwrite);

    static void ConfigureCoreType()
    {
        if (!OperatingSystem.IsLinux() || Environment.GetEnvironmentVariable("OPENBLAS_CORETYPE") is { Length: > 0 }) return;
        string? core = Avx512F.IsSupported && Avx512BW.IsSupported ? "SkylakeX" : Avx2.IsSupported && Fma.IsSupported ? "Haswell" : null;
        // The library reads the variable from the C environment when it loads, so set it there, not only in .NET's copy.
        if (core is not null && SetEnv("OPENBLAS_CORETYPE", core, 0) != 0)
            throw new InvalidOperationException("setenv(OPENBLAS_CORETYPE) failed");
    }

    [DllImport(Library, EntryPoint = "cblas_sgemm")]
    static extern void CblasSgemm(int order, int transA, int transB, int m, int n, int k,
        float alpha, float* a, int lda, float* b, int ldb, float beta, float* c, int ldc);

    [DllImport(Library, EntryPoint = "openblas_set_num_threads")]
    static extern void SetNumThreads(int threads);

    [DllImport(Library, EntryPoint = "openblas_get_num_threads")]
    static extern int GetNumThreads();

    /// <summary>Threads OpenBLAS uses inside one call.</summary>
    public static int Threads
    {
        get => GetNumThreads();
        set => SetNumThreads(Math.Max(1, value));
    }

    /// <summary>
    /// C (m, n) = alpha · A (m, k) · op(B) + beta · C, with op(B) = B (k, n) or, when <paramref name="transposeB"/>,
    /// Bᵀ where B is stored (n, k). Leading dimensions are the row lengths of the stored matrices.
    /// </summary>
    public static void Gemm(int m, int n, int k, ReadOnlySpan<float> a, int lda, ReadOnlySpan<float> b, int ldb, bool transposeB,
        Span<float> c, int ldc, float alpha = 1f, float beta = 0f)
    {
        if (m == 0 || n == 0) return;
        if (k == 0)
        {
            // BLAS leaves C untouched when k = 0 only if beta = 1; make the empty sum explicit.
            for (int i = 0; i < m; i++) c.Slice(i * ldc, n).Clear();
            return;
        }
        fixed (float* pa = a, pb = b, pc = c)
            CblasSgemm(RowMajor, NoTrans, transposeB ? Trans : NoTrans, m, n, k, alpha, pa, lda, pb, ldb, beta, pc, ldc);
    }

    /// <summary>y (rows, out) = x (rows, in) · Wᵀ + bias, with W stored (out, in) as in PyTorch.</summary>
    public static void Linear(ReadOnlySpan<float> x, int rows, int inFeatures, ReadOnlySpan<float> weight, ReadOnlySpan<float> bias, int outFeatures, Span<float> y)
    {
        for (int r = 0; r < rows; r++) bias.CopyTo(y.Slice(r * outFeatures, outFeatures));
        Gemm(rows, outFeatures, inFeatures, x, inFeatures, weight, inFeatures, transposeB: true, y, outFeatures, beta: 1f);
    }
}
