namespace Ecmt.Kernels.Cpu;

/// <summary>
/// Splits the fast CPU kernels' loops over the cores. Work below a grain runs on the calling thread: a parallel
/// loop costs a few microseconds to start, which small tensors (the head, tiny test shapes) would not repay.
/// </summary>
static class Parallelism
{
    /// <summary>Chunks per core: enough that a chunk finishing late on a busy core does not hold the rest up long.</summary>
    const int ChunksPerCore = 4;

    /// <summary>Runs body(start, end) over [0, count) in ranges of at least <paramref name="grain"/> items, aligned to <paramref name="align"/>.</summary>
    public static void For(long count, long grain, Action<long, long> body, int align = 1)
    {
        long chunks = Math.Clamp(count / Math.Max(grain, 1), 1, Environment.ProcessorCount * ChunksPerCore);
        if (chunks == 1)
        {
            body(0, count);
            return;
        }
        Parallel.For(0, (int)chunks, c => body(Boundary(c, chunks, count, align), Boundary(c + 1, chunks, count, align)));
    }

    static long Boundary(long c, long chunks, long count, int align) =>
        c == chunks ? count : Math.Min(count, count * c / chunks / align * align);

    /// <summary>
    /// Runs body(image, start, end) over every image's elements [0, perImage) in ranges of at least
    /// <paramref name="grain"/>; returns per image the sum of what the body returned for its ranges.
    /// </summary>
    public static long[] ForImages(int images, long perImage, long grain, Func<int, long, long, long> body, int align = 1)
    {
        int workers = Environment.ProcessorCount * ChunksPerCore;
        long chunksPerImage = Math.Clamp(perImage / Math.Max(grain, 1), 1, Math.Max(1, (workers + images - 1) / images));
        var partial = new long[images * chunksPerImage];
        void Run(long item)
        {
            int image = (int)(item / chunksPerImage);
            long c = item % chunksPerImage;
            partial[item] = body(image, Boundary(c, chunksPerImage, perImage, align), Boundary(c + 1, chunksPerImage, perImage, align));
        }
        if (partial.Length == 1) Run(0);
        else Parallel.For(0, partial.Length, i => Run(i));
        var totals = new long[images];
        for (long item = 0; item < partial.Length; item++) totals[item / chunksPerImage] += partial[item];
        return totals;
    }
}
