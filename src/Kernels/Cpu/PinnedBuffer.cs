using System.Runtime.CompilerServices;

namespace Ecmt.Kernels.Cpu;

/// <summary>
/// Host memory the fast CPU kernels address by pointer: a pinned managed array (so the GC owns it and nothing leaks
/// when a caller forgets to dispose) whose first element is aligned to 64 bytes, one AVX-512 vector or cache line.
/// </summary>
sealed unsafe class PinnedBuffer<T> where T : unmanaged
{
    readonly T[] _array;

    public PinnedBuffer(long length)
    {
        if (length > Array.MaxLength - 64) throw new ArgumentOutOfRangeException(nameof(length), length, "tensor too large for one host array");
        Length = length;
        _array = GC.AllocateArray<T>((int)length + 64 / sizeof(T), pinned: true);
        var first = (nint)Unsafe.AsPointer(ref _array[0]);
        Pointer = (T*)((first + 63) & ~(nint)63);
    }

    public T* Pointer { get; }
    public long Length { get; }
    public Span<T> Span => new(Pointer, checked((int)Length));
}

/// <summary>
/// Weights in the layouts the fast CPU kernels want, made once per process for each host layer and shared by every
/// backend instance (the server runs one per session): keyed weakly by the layer object, so they go when it goes.
/// </summary>
static unsafe class PackedWeights
{
    static readonly ConditionalWeakTable<LinearLayer, PinnedBuffer<float>> Transposed = [];

    /// <summary>Wᵀ (In, Out): row i holds input i's weight to every output, the row the event-driven product adds.</summary>
    public static PinnedBuffer<float> TransposedWeight(LinearLayer layer) => Transposed.GetValue(layer, l =>
    {
        var wt = new PinnedBuffer<float>((long)l.In * l.Out);
        var w = l.Weight;
        float* p = wt.Pointer;
        for (int o = 0; o < l.Out; o++)
            for (int i = 0; i < l.In; i++)
                p[(long)i * l.Out + o] = w[(long)o * l.In + i];
        return wt;
    });
}
