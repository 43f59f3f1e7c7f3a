namespace Ecmt.Kernels;

/// <summary>A float tensor in a backend's memory; row-major with the image index first.</summary>
public abstract class DeviceTensor(int[] shape) : IDisposable
{
    public int[] Shape { get; } = shape;
    public long Length { get; } = shape.Aggregate(1L, (a, b) => a * b);
    /// <summary>Images in the batch: the first dimension.</summary>
    public int Images => Shape[0];
    /// <summary>The last dimension.</summary>
    public int Columns => Shape[^1];
    public long Rows => Length / Columns;

    public abstract void Dispose();

    public override string ToString() => $"{GetType().Name}[{string.Join(", ", Shape)}]";
}

/// <summary>
/// Spike codes of the MT neurons at one place, one signed byte per neuron (see <see cref="MultiThresholdNeuron"/>),
/// shaped like the tensor the neurons spike.
/// </summary>
public abstract class SpikeTensor(int[] shape, MultiThresholdNeuron neuron) : IDisposable
{
    public int[] Shape { get; } = shape;
    public long Length { get; } = shape.Aggregate(1L, (a, b) => a * b);
    public int Images => Shape[0];
    public int Columns => Shape[^1];
    public long Rows => Length / Columns;
    public MultiThresholdNeuron Neuron { get; } = neuron;

    public abstract void Dispose();
}

/// <summary>
/// Per-image counters a backend adds to during a step, cumulative since they were cleared:
/// spikes emitted and synaptic operations (ECMT.md section 5).
/// </summary>
public abstract class StepCounters(int images) : IDisposable
{
    public int Images { get; } = images;

    public abstract void Dispose();
}

/// <summary>
/// The time step t_b (1-based) of every image of a batch (B ints, in the backend's memory: on a GPU it stays on the
/// device). Images that joined the batch at different times share one step call, each at its own t. An operation
/// over B images reads the first B entries; a buffer may hold more (a session's capacity).
/// </summary>
public abstract class ImageSteps(int images) : IDisposable
{
    public int Images { get; } = images;

    public abstract void Dispose();
}

/// <summary>Per-image steps of the backends that compute on the host (reference, fastcpu): a plain array.</summary>
sealed class HostImageSteps(int images) : ImageSteps(images)
{
    /// <summary>(images): t of each image.</summary>
    public readonly int[] T = new int[images];

    public override void Dispose() { }

    /// <summary>t of each of the first <paramref name="images"/> images, checked to be a step (≥ 1).</summary>
    public static int[] Of(ImageSteps steps, int images)
    {
        var t = ((HostImageSteps)steps).T;
        if (steps.Images < images) throw new ArgumentException($"{steps.Images} steps given for {images} images");
        for (int b = 0; b < images; b++) ArgumentOutOfRangeException.ThrowIfLessThan(t[b], 1, $"step of image {b}");
        return t;
    }
}
