using System.Reflection;
using ILGPU;
using ILGPU.Runtime;

namespace Ecmt.Kernels.Ilgpu;

/// <summary>
/// The launchers of every kernel on one accelerator, all compiled when the accelerator opens, so that one that cannot run
/// them is reported when a backend is created rather than in the middle of a step. Launchers take the stream to run on.
/// </summary>
sealed class KernelSet
{
    public KernelSet(Accelerator accelerator)
    {
        Add = accelerator.LoadKernel<ArrayView<float>, ArrayView<float>, int>(StepKernels.Add);
        PackReadout = accelerator.LoadKernel<ArrayView<long>, ArrayView<float>, ArrayView<int>, int, int>(StepKernels.PackReadout);
        SelectToken = accelerator.LoadKernel<ArrayView<float>, ArrayView<float>, int, int, int, int>(StepKernels.SelectToken);
        AddBroadcast = accelerator.LoadKernel<ArrayView<float>, ArrayView<float>, int, int>(StepKernels.AddBroadcast);
        MeanTokens = accelerator.LoadKernel<ArrayView<float>, ArrayView<float>, int, int, int, int>(StepKernels.MeanTokens);
        Fire = accelerator.LoadKernel<ArrayView<float>, ArrayView<float>, SpikeOutput, ArrayView<long>, int, int, int>(StepKernels.Fire);
        GeluEc = accelerator.LoadKernel<EcViews, ArrayView<int>, int, int>(StepKernels.GeluEc);
        LayerNormEc = accelerator.LoadKernel<EcViews, ArrayView<float>, ArrayView<float>, float, int, int, ArrayView<int>, int>(StepKernels.LayerNormEc);
        SoftmaxEc = accelerator.LoadKernel<EcViews, int, int, ArrayView<int>, int>(StepKernels.SoftmaxEc);
        DenseSpikeLinear = accelerator.LoadKernel<DenseSpikeLinear, int>(ProductKernels.Tiled);
        CompactEvents = accelerator.LoadKernel<SpikeLinearArgs, EventLists>(ProductKernels.CompactEvents);
        AccumulateEvents = accelerator.LoadKernel<SpikeLinearArgs, EventLists>(ProductKernels.AccumulateEvents);
        FloatLinear = accelerator.LoadKernel<FloatLinear, int>(ProductKernels.Tiled);
        Scores = accelerator.LoadKernel<ScoresProduct, int>(ProductKernels.Tiled);
        ScoreColumns = accelerator.LoadKernel<ScoresProduct, ArrayView<int>>(SopKernels.ScoreColumns);
        ScoreOperations = accelerator.LoadKernel<ScoresProduct, ArrayView<int>, ArrayView<long>>(SopKernels.ScoreOperations);
        Values = accelerator.LoadKernel<ValuesProduct, int>(ProductKernels.Tiled);
        ProbColumns = accelerator.LoadKernel<ValuesProduct, ArrayView<int>>(SopKernels.ProbColumns);
        ValueRows = accelerator.LoadKernel<ValuesProduct, ArrayView<int>>(SopKernels.ValueRows);
        ValueOperations = accelerator.LoadKernel<ValuesProduct, ArrayView<int>, ArrayView<long>>(SopKernels.ValueOperations);
    }

    // Launchers: (stream, launch shape, kernel parameters…).
    public Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, int> Add { get; }
    public Action<AcceleratorStream, KernelConfig, ArrayView<long>, ArrayView<float>, ArrayView<int>, int, int> PackReadout { get; }
    public Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, int, int, int, int> SelectToken { get; }
    public Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, int, int> AddBroadcast { get; }
    public Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, int, int, int, int> MeanTokens { get; }
    public Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, SpikeOutput, ArrayView<long>, int, int, int> Fire { get; }
    public Action<AcceleratorStream, KernelConfig, EcViews, ArrayView<int>, int, int> GeluEc { get; }
    public Action<AcceleratorStream, KernelConfig, EcViews, ArrayView<float>, ArrayView<float>, float, int, int, ArrayView<int>, int> LayerNormEc { get; }
    public Action<AcceleratorStream, KernelConfig, EcViews, int, int, ArrayView<int>, int> SoftmaxEc { get; }
    public Action<AcceleratorStream, KernelConfig, DenseSpikeLinear, int> DenseSpikeLinear { get; }
    public Action<AcceleratorStream, KernelConfig, SpikeLinearArgs, EventLists> CompactEvents { get; }
    public Action<AcceleratorStream, KernelConfig, SpikeLinearArgs, EventLists> AccumulateEvents { get; }
    public Action<AcceleratorStream, KernelConfig, FloatLinear, int> FloatLinear { get; }
    public Action<AcceleratorStream, KernelConfig, ScoresProduct, int> Scores { get; }
    public Action<AcceleratorStream, KernelConfig, ScoresProduct, ArrayView<int>> ScoreColumns { get; }
    public Action<AcceleratorStream, KernelConfig, ScoresProduct, ArrayView<int>, ArrayView<long>> ScoreOperations { get; }
    public Action<AcceleratorStream, KernelConfig, ValuesProduct, int> Values { get; }
    public Action<AcceleratorStream, KernelConfig, ValuesProduct, ArrayView<int>> ProbColumns { get; }
    public Action<AcceleratorStream, KernelConfig, ValuesProduct, ArrayView<int>> ValueRows { get; }
    public Action<AcceleratorStream, KernelConfig, ValuesProduct, ArrayView<int>, ArrayView<long>> ValueOperations { get; }

    /// <summary>Every kernel entry point as ILGPU compiles it (generic kernels closed over their product structs).</summary>
    public static IReadOnlyList<MethodInfo> EntryPoints { get; } =
    [
        Method(typeof(StepKernels), nameof(StepKernels.Add)),
        Method(typeof(StepKernels), nameof(StepKernels.PackReadout)),
        Method(typeof(StepKernels), nameof(StepKernels.SelectToken)),
        Method(typeof(StepKernels), nameof(StepKernels.AddBroadcast)),
        Method(typeof(StepKernels), nameof(StepKernels.MeanTokens)),
        Method(typeof(StepKernels), nameof(StepKernels.Fire)),
        Method(typeof(StepKernels), nameof(StepKernels.GeluEc)),
        Method(typeof(StepKernels), nameof(StepKernels.LayerNormEc)),
        Method(typeof(StepKernels), nameof(StepKernels.SoftmaxEc)),
        Method(typeof(ProductKernels), nameof(ProductKernels.Tiled)).MakeGenericMethod(typeof(DenseSpikeLinear)),
        Method(typeof(ProductKernels), nameof(ProductKernels.CompactEvents)),
        Method(typeof(ProductKernels), nameof(ProductKernels.AccumulateEvents)),
        Method(typeof(ProductKernels), nameof(ProductKernels.Tiled)).MakeGenericMethod(typeof(FloatLinear)),
        Method(typeof(ProductKernels), nameof(ProductKernels.Tiled)).MakeGenericMethod(typeof(ScoresProduct)),
        Method(typeof(SopKernels), nameof(SopKernels.ScoreColumns)),
        Method(typeof(SopKernels), nameof(SopKernels.ScoreOperations)),
        Method(typeof(ProductKernels), nameof(ProductKernels.Tiled)).MakeGenericMethod(typeof(ValuesProduct)),
        Method(typeof(SopKernels), nameof(SopKernels.ProbColumns)),
        Method(typeof(SopKernels), nameof(SopKernels.ValueRows)),
        Method(typeof(SopKernels), nameof(SopKernels.ValueOperations)),
    ];

    static MethodInfo Method(Type type, string name) =>
        type.GetMethod(name, BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Static)
        ?? throw new MissingMethodException(type.Name, name);
}
