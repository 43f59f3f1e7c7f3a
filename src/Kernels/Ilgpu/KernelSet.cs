using System.Reflection;
using ILGPU;
using ILGPU.Runtime;

namespace Ecmt.Kernels.Ilgpu;

/// <summary>
/// The launchers of every kernel on one accelerator, each compiled once on first use (compiling takes a while, and
/// ILGPU's compiler is not entered from two threads at once). Launchers take the stream to run on.
/// </summary>
sealed class KernelSet
{
    readonly Lock _compileLock = new();

    public KernelSet(Accelerator accelerator)
    {
        Add = Load(accelerator, a => a.LoadKernel<ArrayView<float>, ArrayView<float>, int>(StepKernels.Add));
        SelectToken = Load(accelerator, a => a.LoadKernel<ArrayView<float>, ArrayView<float>, int, int, int, int>(StepKernels.SelectToken));
        Fire = Load(accelerator, a => a.LoadKernel<ArrayView<float>, ArrayView<float>, SpikeOutput, ArrayView<long>, int, int, int>(StepKernels.Fire));
        GeluEc = Load(accelerator, a => a.LoadKernel<EcViews, int, int>(StepKernels.GeluEc));
        LayerNormEc = Load(accelerator, a => a.LoadKernel<EcViews, ArrayView<float>, ArrayView<float>, float, int, int, int>(StepKernels.LayerNormEc));
        SoftmaxEc = Load(accelerator, a => a.LoadKernel<EcViews, int, int, int>(StepKernels.SoftmaxEc));
        DenseSpikeLinear = Load(accelerator, a => a.LoadKernel<DenseSpikeLinear, int>(ProductKernels.Tiled));
        EventDrivenLinear = Load(accelerator, a => a.LoadKernel<SpikeLinearArgs>(ProductKernels.EventDrivenLinear));
        FloatLinear = Load(accelerator, a => a.LoadKernel<FloatLinear, int>(ProductKernels.Tiled));
        Scores = Load(accelerator, a => a.LoadKernel<ScoresProduct, int>(ProductKernels.Tiled));
        ScoresCount = Load(accelerator, a => a.LoadKernel<ScoresProduct, ArrayView<long>>(ProductKernels.ScoresCountAndAdvance));
        Values = Load(accelerator, a => a.LoadKernel<ValuesProduct, int>(ProductKernels.Tiled));
        ValuesCount = Load(accelerator, a => a.LoadKernel<ValuesProduct, ArrayView<long>>(ProductKernels.ValuesCountAndAdvance));
    }

    Lazy<T> Load<T>(Accelerator accelerator, Func<Accelerator, T> load) where T : Delegate => new(() =>
    {
        lock (_compileLock) return load(accelerator);
    });

    // Launchers: (stream, launch shape, kernel parameters…).
    public Lazy<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, int>> Add { get; }
    public Lazy<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, int, int, int, int>> SelectToken { get; }
    public Lazy<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, SpikeOutput, ArrayView<long>, int, int, int>> Fire { get; }
    public Lazy<Action<AcceleratorStream, KernelConfig, EcViews, int, int>> GeluEc { get; }
    public Lazy<Action<AcceleratorStream, KernelConfig, EcViews, ArrayView<float>, ArrayView<float>, float, int, int, int>> LayerNormEc { get; }
    public Lazy<Action<AcceleratorStream, KernelConfig, EcViews, int, int, int>> SoftmaxEc { get; }
    public Lazy<Action<AcceleratorStream, KernelConfig, DenseSpikeLinear, int>> DenseSpikeLinear { get; }
    public Lazy<Action<AcceleratorStream, KernelConfig, SpikeLinearArgs>> EventDrivenLinear { get; }
    public Lazy<Action<AcceleratorStream, KernelConfig, FloatLinear, int>> FloatLinear { get; }
    public Lazy<Action<AcceleratorStream, KernelConfig, ScoresProduct, int>> Scores { get; }
    public Lazy<Action<AcceleratorStream, KernelConfig, ScoresProduct, ArrayView<long>>> ScoresCount { get; }
    public Lazy<Action<AcceleratorStream, KernelConfig, ValuesProduct, int>> Values { get; }
    public Lazy<Action<AcceleratorStream, KernelConfig, ValuesProduct, ArrayView<long>>> ValuesCount { get; }

    /// <summary>Every kernel entry point as ILGPU compiles it (generic kernels closed over their product structs).</summary>
    public static IReadOnlyList<MethodInfo> EntryPoints { get; } =
    [
        Method(typeof(StepKernels), nameof(StepKernels.Add)),
        Method(typeof(StepKernels), nameof(StepKernels.SelectToken)),
        Method(typeof(StepKernels), nameof(StepKernels.Fire)),
        Method(typeof(StepKernels), nameof(StepKernels.GeluEc)),
        Method(typeof(StepKernels), nameof(StepKernels.LayerNormEc)),
        Method(typeof(StepKernels), nameof(StepKernels.SoftmaxEc)),
        Method(typeof(ProductKernels), nameof(ProductKernels.Tiled)).MakeGenericMethod(typeof(DenseSpikeLinear)),
        Method(typeof(ProductKernels), nameof(ProductKernels.EventDrivenLinear)),
        Method(typeof(ProductKernels), nameof(ProductKernels.Tiled)).MakeGenericMethod(typeof(FloatLinear)),
        Method(typeof(ProductKernels), nameof(ProductKernels.Tiled)).MakeGenericMethod(typeof(ScoresProduct)),
        Method(typeof(ProductKernels), nameof(ProductKernels.ScoresCountAndAdvance)),
        Method(typeof(ProductKernels), nameof(ProductKernels.Tiled)).MakeGenericMethod(typeof(ValuesProduct)),
        Method(typeof(ProductKernels), nameof(ProductKernels.ValuesCountAndAdvance)),
    ];

    static MethodInfo Method(Type type, string name) =>
        type.GetMethod(name, BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Static)
        ?? throw new MissingMethodException(type.Name, name);
}
