namespace Ecmt.Kernels.Cpu;

/// <summary>
/// Splits the fast CPU kernels' loops over the cores. Work below a grain runs on the calling thread: a parallel
/// loop costs a few microseconds to start, which small tensors (the head, tiny test shapes) would not repay.
/// </summary>
static class Parallelism
{
    /// <summary>Chunks per thread: enough that a chunk finishing late on a busy core does not hold the rest up long.</summary>
    const int ChunksPerThread = 4;

    /// <summary>
    /// Runs body(start, end) over [0, count) in ranges of at least <paramref name="grain"/> items, aligned to
    /// <paramref name="align"/>, on at most <paramref name="threads"/> threads.
    /// </summary>
    public static void For(int threads, long count, long grain, Action<long, long> body, int align = 1)
    {
        long chunks = threads <= 1 ? 1 : Math.Clamp(count / Math.Max(grain, 1), 1, threads * ChunksPerThread);
        if (chunks == 1)
        {
            body(0, count);
            return;
        }
        Parallel.For(0, (int)chunks, Options(threads), c => body(Boundary(c, chunks, count, align), Boundary(c + 1, chunks, count, align)));
    }

    static long Boundary(long c, long chunks, long count, int align) =>
        c == chunks ? count : Math.Min(count, count * c / chunks / align * align);

    static ParallelOptions Options(int threads) => new() { MaxDegreeOfParallelism = threads };

    /// <summary>
    /// Runs body(image, start, end) over every image's elements [0, perImage) in ranges of at least
    /// <paramref name="grain"/>; returns per image the sum of what the body returned for its ranges.
    /// </summary>
    public static long[] ForImages(int threads, int images, long perImage, long grain, Func<int, long, long, long> body, int align = 1)
    {
        long chunksPerImage = threads <= 1 ? 1 : Math.Clamp(perImage / Math.Max(grain, 1), 1, Math.Max(1, (threads * ChunksPerThread + images - 1) / images));
        var partial = new long[images * chunksPerImage];
        void Run(long item)
        {
            int image = (int)(item / chunksPerImage);
            long c = item % chunksPerImage;
            partial[item] = body(image, Boundary(c, chunksPerImage, perImage, align), Boundary(c + 1, chunksPerImage, perImage, align));
        }
        if (partial.Length == 1 || threads <= 1)
        {
            for (long item = 0; item < partial.Length; item++) Run(item);
        }
        else
        {
            Parallel.For(0, partial.Length, Options(threads), i => Run(i));
        }
        var totals = new long[images];
        for (long item = 0; item < partial.Length; item++) totals[item / chunksPerImage] += partial[item];
        return totals;
    }
}
