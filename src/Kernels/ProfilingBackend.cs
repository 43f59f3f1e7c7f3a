using System.Diagnostics;
using Ecmt.Kernels.Cpu;

namespace Ecmt.Kernels;

/// <summary>Time and work of one kind of operation, summed over the calls since the last reset; Density is the mean input
/// spike density of spike-driven products (when the backend reports it).</summary>
public sealed record OpProfile(string Op, int Calls, double Milliseconds, double Flops, long Elements, double? Density);

/// <summary>
/// Wraps a backend and times every operation (synchronising after each, so device backends are timed too), with
/// its work: floating-point operations of the products counted as the dense ANN would do them (2 per
/// multiply-accumulate, whichever path ran), elements for the rest. For profiles; it slows nothing down on the CPU
/// beyond a clock read per call.
/// </summary>
public sealed class ProfilingBackend(ISpikingBackend inner) : ISpikingBackend
{
    readonly Dictionary<string, (int Calls, long Ticks, double Flops, long Elements, double Density)> _ops = [];

    public ISpikingBackend Inner { get; } = inner;
    public string Name => Inner.Name;

    /// <summary>Whether calls are recorded; when false they only pass through.</summary>
    public bool Enabled { get; set; } = true;

    public void Reset() => _ops.Clear();

    /// <summary>The profile so far, most expensive first.</summary>
    public IReadOnlyList<OpProfile> Profile() => _ops
        .Select(p => new OpProfile(p.Key, p.Value.Calls, p.Value.Ticks * 1000.0 / Stopwatch.Frequency, p.Value.Flops, p.Value.Elements,
            p.Value.Density > 0 ? p.Value.Density / p.Value.Calls : null))
        .OrderByDescending(p => p.Milliseconds)
        .ToList();

    void Time(string op, Action action, double flops = 0, long elements = 0)
    {
        if (!Enabled)
        {
            action();
            return;
        }
        long start = Stopwatch.GetTimestamp();
        action();
        Inner.Synchronize();
        long ticks = Stopwatch.GetTimestamp() - start;
        double density = 0;
        if (Inner is FastCpuBackend fast && op.StartsWith(nameof(SpikeLinear), StringComparison.Ordinal))
        {
            op += fast.LastSpikeLinearPath == SpikeLinearPath.Dense ? " (dense)" : " (event-driven)";
            density = fast.LastSpikeLinearDensity;
        }
        _ops.TryGetValue(op, out var sum);
        _ops[op] = (sum.Calls + 1, sum.Ticks + ticks, sum.Flops + flops, sum.Elements + elements, sum.Density + density);
    }

    public DeviceTensor Allocate(params int[] shape) => Inner.Allocate(shape);
    public SpikeTensor AllocateSpikes(MultiThresholdNeuron neuron, params int[] shape) => Inner.AllocateSpikes(neuron, shape);
    public StepCounters AllocateCounters(int images) => Inner.AllocateCounters(images);
    public ImageSteps AllocateSteps(int images) => Inner.AllocateSteps(images);
    public void UploadSteps(ReadOnlySpan<int> steps, ImageSteps destination) => Inner.UploadSteps(steps, destination);
    public DeviceTensor Prefix(DeviceTensor tensor, int images) => Inner.Prefix(tensor, images);
    public SpikeTensor Prefix(SpikeTensor spikes, int images) => Inner.Prefix(spikes, images);
    public void Upload(ReadOnlySpan<float> source, DeviceTensor destination) => Inner.Upload(source, destination);
    public void Download(DeviceTensor source, Span<float> destination) => Inner.Download(source, destination);
    public void DownloadCodes(SpikeTensor source, Span<sbyte> destination) => Inner.DownloadCodes(source, destination);
    public void UploadCodes(ReadOnlySpan<sbyte> source, SpikeTensor destination) => Inner.UploadCodes(source, destination);
    public void ReadCounters(StepCounters counters, Span<long> spikes, Span<long> sops) => Inner.ReadCounters(counters, spikes, sops);
    public void ReadStep(DeviceTensor logits, StepCounters counters, Span<float> logitsOut, Span<long> spikes, Span<long> sops) =>
        Inner.ReadStep(logits, counters, logitsOut, spikes, sops);

    public void Clear(DeviceTensor tensor) => Time("Clear", () => Inner.Clear(tensor), elements: tensor.Length);
    public void Clear(StepCounters counters) => Inner.Clear(counters);
    public void ClearImage(DeviceTensor tensor, int image) => Time("Clear", () => Inner.ClearImage(tensor, image), elements: tensor.Length / tensor.Images);
    public void CopyImage(DeviceTensor tensor, int from, int to) => Time(nameof(Copy), () => Inner.CopyImage(tensor, from, to), elements: tensor.Length / tensor.Images);
    public void Copy(DeviceTensor source, DeviceTensor destination) => Time(nameof(Copy), () => Inner.Copy(source, destination), elements: source.Length);
    public void Add(DeviceTensor x, DeviceTensor y) => Time(nameof(Add), () => Inner.Add(x, y), elements: x.Length);
    public void SelectToken(DeviceTensor input, int token, DeviceTensor output) => Time(nameof(SelectToken), () => Inner.SelectToken(input, token, output), elements: output.Length);
    public void AddBroadcast(DeviceTensor x, DeviceTensor y) => Time(nameof(AddBroadcast), () => Inner.AddBroadcast(x, y), elements: x.Length);
    public void MeanTokens(DeviceTensor input, int first, DeviceTensor output) => Time(nameof(MeanTokens), () => Inner.MeanTokens(input, first, output), elements: input.Length);

    public void Fire(DeviceTensor input, DeviceTensor membrane, SpikeTensor spikes, StepCounters counters, int fanOut) =>
        Time(nameof(Fire), () => Inner.Fire(input, membrane, spikes, counters, fanOut), elements: input.Length);

    public void SpikeLinear(SpikeTensor input, LinearLayer layer, DeviceTensor output) =>
        Time($"{nameof(SpikeLinear)} {layer.In}→{layer.Out}", () => Inner.SpikeLinear(input, layer, output), flops: 2.0 * input.Rows * layer.In * layer.Out, elements: input.Length);

    public void Linear(DeviceTensor input, LinearLayer layer, DeviceTensor output) =>
        Time(nameof(Linear), () => Inner.Linear(input, layer, output), flops: 2.0 * input.Rows * layer.In * layer.Out, elements: input.Length);

    public void LayerNormEc(DeviceTensor input, EcState state, LayerNormLayer norm, ImageSteps steps, DeviceTensor output) =>
        Time(nameof(LayerNormEc), () => Inner.LayerNormEc(input, state, norm, steps, output), elements: input.Length);

    public void GeluEc(DeviceTensor input, EcState state, ImageSteps steps, DeviceTensor output) =>
        Time(nameof(GeluEc), () => Inner.GeluEc(input, state, steps, output), elements: input.Length);

    public void SoftmaxEc(DeviceTensor input, EcState state, ImageSteps steps, DeviceTensor output) =>
        Time(nameof(SoftmaxEc), () => Inner.SoftmaxEc(input, state, steps, output), elements: input.Length);

    public void AttentionScoresEc(SpikeTensor qkv, DeviceTensor qkvSums, DeviceTensor products, int heads, float scale, ImageSteps steps,
        DeviceTensor scores, StepCounters counters) =>
        // one (N, N) × (N, Dh)-sized product per image and head: 2·B·N²·D
        Time(nameof(AttentionScoresEc), () => Inner.AttentionScoresEc(qkv, qkvSums, products, heads, scale, steps, scores, counters),
            flops: 2.0 * scores.Length * (qkv.Columns / 3) / heads, elements: scores.Length);

    public void AttentionValuesEc(SpikeTensor probs, DeviceTensor probSums, SpikeTensor qkv, DeviceTensor qkvSums, DeviceTensor products,
        int heads, ImageSteps steps, DeviceTensor output, StepCounters counters) =>
        Time(nameof(AttentionValuesEc), () => Inner.AttentionValuesEc(probs, probSums, qkv, qkvSums, products, heads, steps, output, counters),
            flops: 2.0 * probs.Length * (qkv.Columns / 3) / heads, elements: probs.Length);

    public void Synchronize() => Inner.Synchronize();

    public void Dispose() => Inner.Dispose();
}
