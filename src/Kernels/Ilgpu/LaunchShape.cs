using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;

namespace Ecmt.Kernels.Ilgpu;

/// <summary>
/// The launch configuration of the ILGPU kernels on one accelerator: threads per group G, tile side S of the tiled
/// products (G = S², output tiles 4S × 4S in the fixed shared-memory layout of <see cref="ProductKernels"/>), the most
/// groups one launch uses (grid-stride loops take the rest) and the warp size (the smallest row group). The kernels
/// take whatever shape they are launched with; this value is the only place where it is chosen.
/// </summary>
/// <param name="GroupSize">G: threads per group of the one-dimensional kernels.</param>
/// <param name="TileSide">S: the tiled products run S×S threads per group.</param>
/// <param name="MaxGroups">Most groups one launch uses.</param>
/// <param name="WarpSize">Threads per warp: the smallest group of the row-wise kernels.</param>
readonly record struct LaunchShape(int GroupSize, int TileSide, int MaxGroups, int WarpSize)
{
    /// <summary>Threads per group on a GPU: 256 (S = 16, 64 × 64 output tiles).</summary>
    public const int GpuGroupSize = 256;
    /// <summary>Groups per multiprocessor a GPU launch uses at most.</summary>
    public const int GroupsPerMultiprocessor = 16;
    /// <summary>Threads per group on ILGPU's ordinary CPU accelerator.</summary>
    public const int CpuGroupSize = 16;

    /// <summary>
    /// The CPU device that emulates CUDA's launch shape: warps of 32 threads, 8 warps per multiprocessor (so groups of
    /// 256) and 2 multiprocessors, i.e. 2 groups run at once and a launch may use 32 groups, as on a small GPU.
    /// </summary>
    public static CPUDevice CudaShapedCpuDevice => new(numThreadsPerWarp: 32, numWarpsPerMultiprocessor: 8, numMultiprocessors: 2);

    /// <summary>The GPU launch shape on <paramref name="accelerator"/> (CUDA, OpenCL, or the CUDA-shaped CPU device).</summary>
    public static LaunchShape Gpu(Accelerator accelerator) => Checked(
        Math.Min(GpuGroupSize, accelerator.MaxNumThreadsPerGroup),
        Math.Max(1, accelerator.NumMultiprocessors) * GroupsPerMultiprocessor,
        accelerator.WarpSize);

    /// <summary>
    /// The shape for ILGPU's ordinary CPU accelerator, which runs each group's threads as OS threads that meet at every
    /// barrier and costs per group: one small group, grid-stride, is fastest there.
    /// </summary>
    public static LaunchShape Cpu(Accelerator accelerator) => Checked(
        Math.Min(CpuGroupSize, accelerator.MaxNumThreadsPerGroup), 1, Math.Min(accelerator.WarpSize, CpuGroupSize));

    static LaunchShape Checked(int groupSize, int maxGroups, int warpSize)
    {
        int side = (int)Math.Sqrt(groupSize);
        if (side * side != groupSize)
            throw new InvalidOperationException($"group size {groupSize} is not a square: the tiled products need S×S threads");
        if (side * 4 > ProductKernels.MaxTile)
            throw new InvalidOperationException($"group size {groupSize} exceeds what the kernels' shared memory holds");
        return new LaunchShape(groupSize, side, maxGroups, Math.Max(1, warpSize));
    }

    /// <summary>Launch shape for <paramref name="items"/> work items of one group each.</summary>
    public KernelConfig Groups(long items, int groupSize) => new((int)Math.Clamp(items, 1, MaxGroups), groupSize);

    /// <summary>Launch shape for <paramref name="elements"/> independent elements, one thread each.</summary>
    public KernelConfig Elements(long elements) => Groups((elements + GroupSize - 1) / GroupSize, GroupSize);

    /// <summary>Launch shape of a tiled product: one group of S×S threads per (block, 4S × 4S output tile).</summary>
    public KernelConfig Tiles(long blocks, int rows, int columns)
    {
        int tile = 4 * TileSide;
        long tiles = blocks * ((rows + tile - 1) / tile) * ((columns + tile - 1) / tile);
        return Groups(tiles, TileSide * TileSide);
    }

    /// <summary>Threads per group for a row-wise kernel over rows of <paramref name="width"/>: enough to cover a row, at most G.</summary>
    public int RowGroupSize(int width)
    {
        int size = Math.Min(WarpSize, GroupSize);
        while (size < width && size < GroupSize) size *= 2;
        return Math.Min(size, GroupSize);
    }

    public override string ToString() => $"G = {GroupSize} (S = {TileSide}), up to {MaxGroups} groups, warp {WarpSize}";
}
