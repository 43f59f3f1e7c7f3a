namespace Ecmt.Kernels;

/// <summary>
/// Runs the operations of one spiking time step of a converted ViT. The engine describes the step as a sequence
/// of these calls; a backend executes them in its own memory (host arrays, a GPU, ILGPU's CPU accelerator).
/// <para>
/// Letters: B images, N tokens, D channels, H heads, Dh = D/H, F MLP width, t the 1-based step. Every operation that
/// depends on the step takes it per image (<see cref="ImageSteps"/>, t_b for image b), so images at different steps
/// share one call (continuous batching).
/// Every tensor is row-major with the image first. Host-side layers (<see cref="LinearLayer"/>,
/// <see cref="LayerNormLayer"/>, <see cref="MultiThresholdNeuron"/>) are passed by reference; a backend may
/// copy them to its memory on first use and keep the copy for the object's lifetime.
/// </para>
/// <para>
/// Attention tensors: qkv (B, N, 3D) holds q in channels [0, D), k in [D, 2D), v in [2D, 3D); head h uses
/// channels h·Dh … (h+1)·Dh − 1 of each. Scores and probabilities are (B, H, N, N) as [image, head, query, key].
/// </para>
/// </summary>
public interface ISpikingBackend : IDisposable
{
    /// <summary>What runs the kernels, e.g. "fastcpu" or "cuda (NVIDIA H200)".</summary>
    string Name { get; }

    DeviceTensor Allocate(params int[] shape);
    SpikeTensor AllocateSpikes(MultiThresholdNeuron neuron, params int[] shape);
    StepCounters AllocateCounters(int images);
    ImageSteps AllocateSteps(int images);
    /// <summary>steps (≤ destination.Images): t_b ≥ 1 per image.</summary>
    void UploadSteps(ReadOnlySpan<int> steps, ImageSteps destination);

    /// <summary>
    /// A view of the first <paramref name="images"/> images of <paramref name="tensor"/>: same memory, shape
    /// (images, …). Operations given views run over those images only (a batch kept dense in its first slots).
    /// Disposing a view frees nothing.
    /// </summary>
    DeviceTensor Prefix(DeviceTensor tensor, int images);
    /// <summary>The first <paramref name="images"/> images of a spike tensor (see <see cref="Prefix(DeviceTensor, int)"/>).</summary>
    SpikeTensor Prefix(SpikeTensor spikes, int images);

    void Upload(ReadOnlySpan<float> source, DeviceTensor destination);
    void Download(DeviceTensor source, Span<float> destination);
    void DownloadCodes(SpikeTensor source, Span<sbyte> destination);
    /// <summary>Sets spike codes directly (tests, replaying recorded spikes).</summary>
    void UploadCodes(ReadOnlySpan<sbyte> source, SpikeTensor destination);
    /// <summary>spikes (B), sops (B): the counters' totals.</summary>
    void ReadCounters(StepCounters counters, Span<long> spikes, Span<long> sops);
    /// <summary>
    /// What a step hands the host, read at once: the logits (as <see cref="Download"/>) and the counters (as
    /// <see cref="ReadCounters"/>). A device backend makes this one transfer per step, whatever the batch.
    /// </summary>
    void ReadStep(DeviceTensor logits, StepCounters counters, Span<float> logitsOut, Span<long> spikes, Span<long> sops)
    {
        Download(logits, logitsOut);
        ReadCounters(counters, spikes, sops);
    }

    /// <summary>Zeroes a tensor (membranes and EC sums start at zero for every new image).</summary>
    void Clear(DeviceTensor tensor);
    void Clear(StepCounters counters);
    /// <summary>Zeroes one image of a tensor (a slot admitting a new image), leaving the others as they are.</summary>
    void ClearImage(DeviceTensor tensor, int image);
    /// <summary>Copies image <paramref name="from"/> of a tensor over its image <paramref name="to"/> (compacting a batch).</summary>
    void CopyImage(DeviceTensor tensor, int from, int to);
    void Copy(DeviceTensor source, DeviceTensor destination);
    /// <summary>x += y (residual connections and the accumulated head output).</summary>
    void Add(DeviceTensor x, DeviceTensor y);
    /// <summary>output (B, D) = input (B, N, D)[:, token, :].</summary>
    void SelectToken(DeviceTensor input, int token, DeviceTensor output);
    /// <summary>
    /// x (B, …) += y (1, …) for every image: an input that does not depend on spikes, the same for every image
    /// (the relative position bias added to the attention score increments).
    /// </summary>
    void AddBroadcast(DeviceTensor x, DeviceTensor y);
    /// <summary>output (B, D) = mean of input (B, N, D) over tokens first … N − 1 (mean pooling of the patch tokens), summed in token order.</summary>
    void MeanTokens(DeviceTensor input, int first, DeviceTensor output);

    /// <summary>
    /// MT neurons integrate, fire and reset: membrane += input; spikes = fire(membrane); membrane −= value(spikes).
    /// input, membrane, spikes share one shape. Adds each image's spike count, and spike count × <paramref name="fanOut"/>
    /// synaptic operations, to the counters.
    /// </summary>
    void Fire(DeviceTensor input, DeviceTensor membrane, SpikeTensor spikes, StepCounters counters, int fanOut);

    /// <summary>output (…, Out) = value(input) (…, In) · Wᵀ + bias.</summary>
    void SpikeLinear(SpikeTensor input, LinearLayer layer, DeviceTensor output);

    /// <summary>output (…, Out) = input (…, In) · Wᵀ + bias, for inputs that are not spikes (the head).</summary>
    void Linear(DeviceTensor input, LinearLayer layer, DeviceTensor output);

    /// <summary>Expectation-compensated LayerNorm over the last dimension (ECMT.md section 1).</summary>
    void LayerNormEc(DeviceTensor input, EcState state, LayerNormLayer norm, ImageSteps steps, DeviceTensor output);

    /// <summary>Expectation-compensated exact GELU, elementwise.</summary>
    void GeluEc(DeviceTensor input, EcState state, ImageSteps steps, DeviceTensor output);

    /// <summary>Expectation-compensated softmax over the last dimension (keys).</summary>
    void SoftmaxEc(DeviceTensor input, EcState state, ImageSteps steps, DeviceTensor output);

    /// <summary>
    /// Matrix-product EC for the attention scores (ECMT.md section 2): with Q, K the spike values in
    /// <paramref name="qkv"/> and S_Q, S_K their running sums in <paramref name="qkvSums"/> (B, N, 3D), writes
    /// scores (B, H, N, N) = scale · (S_Q(t)·S_K(t)ᵀ/t − S_Q(t−1)·S_K(t−1)ᵀ/(t−1)) and advances S_Q, S_K.
    /// <paramref name="products"/> (B, H, N, N) is the backend's running product state, zero at t = 1; t is each image's own step.
    /// Adds the synaptic operations of Q·S_K(t−1)ᵀ, S_Q(t−1)·Kᵀ and Q·Kᵀ to the counters.
    /// </summary>
    void AttentionScoresEc(SpikeTensor qkv, DeviceTensor qkvSums, DeviceTensor products, int heads, float scale, ImageSteps steps,
        DeviceTensor scores, StepCounters counters);

    /// <summary>
    /// Matrix-product EC for probabilities × values: with A the spike values in <paramref name="probs"/> (B, H, N, N),
    /// S_A their running sums, V the v part of <paramref name="qkv"/> and S_V its running sum, writes
    /// output (B, N, D) = S_A(t)·S_V(t)/t − S_A(t−1)·S_V(t−1)/(t−1) with heads side by side, and advances S_A, S_V.
    /// <paramref name="products"/> (B, N, D) is the running product state, zero at t = 1.
    /// </summary>
    void AttentionValuesEc(SpikeTensor probs, DeviceTensor probSums, SpikeTensor qkv, DeviceTensor qkvSums, DeviceTensor products,
        int heads, ImageSteps steps, DeviceTensor output, StepCounters counters);

    /// <summary>Waits until all queued work has finished.</summary>
    void Synchronize();
}
