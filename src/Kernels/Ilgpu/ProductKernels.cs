using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Algorithms.ScanReduceOperations;

namespace Ecmt.Kernels.Ilgpu;

/// <summary>
/// A batch of matrix products C[block] (M, N) = X1·Y1 (+ X2·Y2 when <see cref="Dual"/>), K the inner dimension, as
/// <see cref="ProductKernels.Tiled{TProduct}"/> computes it. A struct implements it: the kernel is instantiated per
/// struct, so operand access and the epilogue inline (spike codes are decoded while tiles load).
/// </summary>
interface ITiledProduct
{
    int Blocks { get; }
    int M { get; }
    int N { get; }
    int K { get; }
    /// <summary>Whether there is a second product X2·Y2 to add (a constant of the struct).</summary>
    bool Dual { get; }
    /// <summary>True when Y(k, n) is stored with n contiguous (load tiles along n), false when k is contiguous.</summary>
    bool YAlongN { get; }
    /// <summary>Whether this launch does anything (read on the device, the same for every thread).</summary>
    bool Runs();
    /// <summary>Called once per launch that runs, by the first thread of the first group.</summary>
    void Started();
    float X1(int block, int m, int k);
    float Y1(int block, int k, int n);
    float X2(int block, int m, int k);
    float Y2(int block, int k, int n);
    void Store(int block, int m, int n, float sum);
}

/// <summary>
/// The spike-driven product of one linear layer: output (R, Out) = value(codes (R, In)) · Wᵀ + bias, with the weight
/// stored transposed, Wt (In, Out), so that one input channel's weights are one contiguous row.
/// <see cref="Active"/> is the spike count of the codes, written by the Fire that produced them; inputs with at most
/// <see cref="MaxEventActive"/> spikes take the event-driven path, the others the dense one.
/// </summary>
readonly struct SpikeLinearArgs
{
    public readonly ArrayView<sbyte> Codes;
    public readonly NeuronView Neuron;
    public readonly ArrayView<float> WeightT, Bias, Output;
    public readonly ArrayView<int> Active;
    /// <summary>(2): launches that ran, [event-driven, dense]; diagnostics.</summary>
    public readonly ArrayView<long> Paths;
    public readonly int Rows, In, Out, MaxEventActive;

    public SpikeLinearArgs(ArrayView<sbyte> codes, NeuronView neuron, ArrayView<float> weightT, ArrayView<float> bias, ArrayView<float> output,
        ArrayView<int> active, ArrayView<long> paths, int rows, int inFeatures, int outFeatures, int maxEventActive)
    {
        Codes = codes;
        Neuron = neuron;
        WeightT = weightT;
        Bias = bias;
        Output = output;
        Active = active;
        Paths = paths;
        Rows = rows;
        In = inFeatures;
        Out = outFeatures;
        MaxEventActive = maxEventActive;
    }

    public bool EventDriven => Active[0] <= MaxEventActive;
}

/// <summary>
/// The event lists of the event-driven spike-linear path (scratch of the backend instance): per input row r, Count[r]
/// events at Index[r·In …] (channel) and Value[r·In …] (spike value), in channel order.
/// </summary>
readonly struct EventLists
{
    public readonly ArrayView<int> Index, Count;
    public readonly ArrayView<float> Value;

    public EventLists(ArrayView<int> index, ArrayView<float> value, ArrayView<int> count)
    {
        Index = index;
        Value = value;
        Count = count;
    }
}

/// <summary>The dense path of <see cref="SpikeLinearArgs"/>: X1 = spike values (R, In), Y1 = Wt (In, Out).</summary>
readonly struct DenseSpikeLinear : ITiledProduct
{
    readonly SpikeLinearArgs _a;

    public DenseSpikeLinear(SpikeLinearArgs args) => _a = args;

    public int Blocks => 1;
    public int M => _a.Rows;
    public int N => _a.Out;
    public int K => _a.In;
    public bool Dual => false;
    public bool YAlongN => true;
    public bool Runs() => !_a.EventDriven;
    public void Started() => Atomic.Add(ref _a.Paths[1], 1L);
    public float X1(int block, int m, int k) => _a.Neuron.Value(_a.Codes[m * _a.In + k], m * _a.In + k);
    public float Y1(int block, int k, int n) => _a.WeightT[k * _a.Out + n];
    public float X2(int block, int m, int k) => 0f;
    public float Y2(int block, int k, int n) => 0f;
    public void Store(int block, int m, int n, float sum) => _a.Output[m * _a.Out + n] = sum + _a.Bias[n];
}

/// <summary>A linear layer on floats: output (R, Out) = input (R, In) · Wᵀ + bias (the head).</summary>
readonly struct FloatLinear : ITiledProduct
{
    readonly ArrayView<float> _input, _weightT, _bias, _output;
    readonly int _rows, _in, _out;

    public FloatLinear(ArrayView<float> input, ArrayView<float> weightT, ArrayView<float> bias, ArrayView<float> output, int rows, int inFeatures, int outFeatures)
    {
        _input = input;
        _weightT = weightT;
        _bias = bias;
        _output = output;
        _rows = rows;
        _in = inFeatures;
        _out = outFeatures;
    }

    public int Blocks => 1;
    public int M => _rows;
    public int N => _out;
    public int K => _in;
    public bool Dual => false;
    public bool YAlongN => true;
    public bool Runs() => true;
    public void Started() { }
    public float X1(int block, int m, int k) => _input[m * _in + k];
    public float Y1(int block, int k, int n) => _weightT[k * _out + n];
    public float X2(int block, int m, int k) => 0f;
    public float Y2(int block, int k, int n) => 0f;
    public void Store(int block, int m, int n, float sum) => _output[m * _out + n] = sum + _bias[n];
}

/// <summary>
/// Matrix-product EC of the attention scores (ECMT.md section 2), per block = (image b, head h), M = N = tokens,
/// K = Dh. With Q, K the spike values of qkv codes (B, N, 3D) and S_Q, S_K their sums (B, N, 3D) before this step:
///   P(t) = P(t−1) + Q·S_K(t)ᵀ + S_Q(t−1)·Kᵀ     (= P(t−1) + Q·S_K(t−1)ᵀ + S_Q(t−1)·Kᵀ + Q·Kᵀ)
///   scores = scale · (P(t)/t − P(t−1)/(t−1)),  scale · P(1) at t = 1.
/// S_K(t) = S_K(t−1) + K is formed while the tile loads; the sums themselves advance afterwards in
/// the SOP counting of <see cref="SopKernels"/>. products, scores: (B, H, N, N).
/// </summary>
readonly struct ScoresProduct : ITiledProduct
{
    public readonly ArrayView<sbyte> Codes;
    public readonly NeuronView Neuron;
    public readonly ArrayView<float> Sums, Products, Scores;
    public readonly int Images, Heads, Tokens, Dim, HeadDim;
    /// <summary>(≥ B): each image's step t.</summary>
    public readonly ArrayView<int> Steps;
    public readonly float Scale;

    public ScoresProduct(ArrayView<sbyte> codes, NeuronView neuron, ArrayView<float> sums, ArrayView<float> products, ArrayView<float> scores,
        int images, int heads, int tokens, int dim, float scale, ArrayView<int> steps)
    {
        Codes = codes;
        Neuron = neuron;
        Sums = sums;
        Products = products;
        Scores = scores;
        Images = images;
        Heads = heads;
        Tokens = tokens;
        Dim = dim;
        HeadDim = dim / heads;
        Scale = scale;
        Steps = steps;
    }

    /// <summary>Index of q channel c of head h of token i of image b in (B, N, 3D); k is at + D.</summary>
    int QueryIndex(int block, int token, int c) => (block / Heads * Tokens + token) * 3 * Dim + block % Heads * HeadDim + c;

    public int Blocks => Images * Heads;
    public int M => Tokens;
    public int N => Tokens;
    public int K => HeadDim;
    public bool Dual => true;
    public bool YAlongN => false;
    public bool Runs() => true;
    public void Started() { }

    public float X1(int block, int m, int k)
    {
        int i = QueryIndex(block, m, k);
        return Neuron.Value(Codes[i], i);
    }

    public float Y1(int block, int k, int n)
    {
        int i = QueryIndex(block, n, k) + Dim;
        return Sums[i] + Neuron.Value(Codes[i], i);
    }

    public float X2(int block, int m, int k) => Sums[QueryIndex(block, m, k)];

    public float Y2(int block, int k, int n)
    {
        int i = QueryIndex(block, n, k) + Dim;
        return Neuron.Value(Codes[i], i);
    }

    public void Store(int block, int m, int n, float sum)
    {
        int i = (block * Tokens + m) * Tokens + n;
        float previous = Products[i], current = previous + sum;
        Products[i] = current;
        int t = Steps[block / Heads];
        Scores[i] = Scale * (t == 1 ? current : current / t - previous / (t - 1));
    }
}

/// <summary>
/// Matrix-product EC of probabilities × values, per block = (image b, head h): M = tokens (queries), N = Dh, K = tokens
/// (keys). A = spike values of probs (B, H, N, N), S_A = probSums, V = the v part of qkv codes, S_V its sums:
///   P(t) = P(t−1) + A·S_V(t) + S_A(t−1)·V;   output = P(t)/t − P(t−1)/(t−1)
/// written with heads side by side: products, output (B, N, D), head h in channels h·Dh … (h+1)·Dh − 1.
/// </summary>
readonly struct ValuesProduct : ITiledProduct
{
    public readonly ArrayView<sbyte> ProbCodes, QkvCodes;
    public readonly NeuronView ProbNeuron, QkvNeuron;
    public readonly ArrayView<float> ProbSums, QkvSums, Products, Output;
    public readonly int Images, Heads, Tokens, Dim, HeadDim;
    /// <summary>(≥ B): each image's step t.</summary>
    public readonly ArrayView<int> Steps;

    public ValuesProduct(ArrayView<sbyte> probCodes, NeuronView probNeuron, ArrayView<float> probSums,
        ArrayView<sbyte> qkvCodes, NeuronView qkvNeuron, ArrayView<float> qkvSums, ArrayView<float> products, ArrayView<float> output,
        int images, int heads, int tokens, int dim, ArrayView<int> steps)
    {
        ProbCodes = probCodes;
        ProbNeuron = probNeuron;
        ProbSums = probSums;
        QkvCodes = qkvCodes;
        QkvNeuron = qkvNeuron;
        QkvSums = qkvSums;
        Products = products;
        Output = output;
        Images = images;
        Heads = heads;
        Tokens = tokens;
        Dim = dim;
        HeadDim = dim / heads;
        Steps = steps;
    }

    /// <summary>Index of A[i, j] of block (b, h) in (B, H, N, N).</summary>
    public int ProbIndex(int block, int i, int j) => (block * Tokens + i) * Tokens + j;

    /// <summary>Index of v channel c of head h of token j of image b in (B, N, 3D).</summary>
    public int ValueIndex(int block, int j, int c) => (block / Heads * Tokens + j) * 3 * Dim + 2 * Dim + block % Heads * HeadDim + c;

    public int Blocks => Images * Heads;
    public int M => Tokens;
    public int N => HeadDim;
    public int K => Tokens;
    public bool Dual => true;
    public bool YAlongN => true;
    public bool Runs() => true;
    public void Started() { }

    public float X1(int block, int m, int k)
    {
        int i = ProbIndex(block, m, k);
        return ProbNeuron.Value(ProbCodes[i], i);
    }

    public float Y1(int block, int k, int n)
    {
        int i = ValueIndex(block, k, n);
        return QkvSums[i] + QkvNeuron.Value(QkvCodes[i], i);
    }

    public float X2(int block, int m, int k) => ProbSums[ProbIndex(block, m, k)];

    public float Y2(int block, int k, int n)
    {
        int i = ValueIndex(block, k, n);
        return QkvNeuron.Value(QkvCodes[i], i);
    }

    public void Store(int block, int m, int n, float sum)
    {
        int i = (block / Heads * Tokens + m) * Dim + block % Heads * HeadDim + n;
        float previous = Products[i], current = previous + sum;
        Products[i] = current;
        int t = Steps[block / Heads];
        Output[i] = t == 1 ? current : current / t - previous / (t - 1);
    }
}

/// <summary>
/// The matrix products of a spiking step: one shared-memory tiled kernel for every dense product, and the event-driven
/// spike-linear kernel.
/// </summary>
static class ProductKernels
{
    /// <summary>Inner-dimension slice loaded into shared memory per round.</summary>
    public const int ChunkK = 16;
    /// <summary>Largest tile side: 4 outputs per thread along each side, 16 threads per side on a GPU.</summary>
    public const int MaxTile = 64;
    /// <summary>Shared rows are padded by one float so that column-wise stores hit distinct banks.</summary>
    const int Pitch = MaxTile + 1;
    /// <summary>Input channels one thread scans per slice in <see cref="CompactEvents"/>.</summary>
    public const int EventsPerThread = 4;
    /// <summary>Outputs one thread of <see cref="AccumulateEvents"/> accumulates per row.</summary>
    public const int EventOutputsPerThread = 4;

    /// <summary>
    /// Tiled product for any <see cref="ITiledProduct"/>. Group = S×S threads (S = <paramref name="tileSide"/>: 16 on a
    /// GPU, 4 on ILGPU's CPU accelerator); work item = one (block, tile of 4S × 4S outputs), taken grid-stride. Per
    /// round the group loads a 16-deep slice of each operand into shared memory ([k][m] and [k][n], decoding spike codes
    /// on the way; reads are contiguous along the operand's stored rows), then thread (ty, tx) accumulates the 4×4
    /// outputs (ty + S·i, tx + S·j) in registers: 16 FMAs per 8 shared loads (32 and 16 for a dual product).
    /// Stores go along n, coalesced.
    /// </summary>
    public static void Tiled<TProduct>(TProduct p, int tileSide) where TProduct : struct, ITiledProduct
    {
        if (!p.Runs()) return;
        if (Grid.IdxX == 0 && Group.IdxX == 0) p.Started();
        var x1 = SharedMemory.Allocate<float>(ChunkK * Pitch);
        var y1 = SharedMemory.Allocate<float>(ChunkK * Pitch);
        var x2 = SharedMemory.Allocate<float>(ChunkK * Pitch);
        var y2 = SharedMemory.Allocate<float>(ChunkK * Pitch);
        int s = tileSide, tile = 4 * s, threads = Group.DimX, tid = Group.IdxX, tx = tid % s, ty = tid / s;
        int rows = p.M, columns = p.N, depth = p.K;
        int tilesM = (rows + tile - 1) / tile, tilesN = (columns + tile - 1) / tile, perBlock = tilesM * tilesN;
        for (int item = Grid.IdxX; item < p.Blocks * perBlock; item += Grid.DimX)
        {
            int block = item / perBlock, m0 = item % perBlock / tilesN * tile, n0 = item % perBlock % tilesN * tile;
            Float4 c0 = default, c1 = default, c2 = default, c3 = default;
            for (int k0 = 0; k0 < depth; k0 += ChunkK)
            {
                // X slices, read along k (the stored rows): element e → (m = e / 16, kk = e % 16).
                for (int e = tid; e < ChunkK * tile; e += threads)
                {
                    int kk = e % ChunkK, m = e / ChunkK, gm = m0 + m, gk = k0 + kk;
                    bool inside = gm < rows && gk < depth;
                    x1[kk * Pitch + m] = inside ? p.X1(block, gm, gk) : 0f;
                    if (p.Dual) x2[kk * Pitch + m] = inside ? p.X2(block, gm, gk) : 0f;
                }
                // Y slices, read along whichever index is contiguous in memory.
                for (int e = tid; e < ChunkK * tile; e += threads)
                {
                    int kk = p.YAlongN ? e / tile : e % ChunkK, n = p.YAlongN ? e % tile : e / ChunkK, gn = n0 + n, gk = k0 + kk;
                    bool inside = gn < columns && gk < depth;
                    y1[kk * Pitch + n] = inside ? p.Y1(block, gk, gn) : 0f;
                    if (p.Dual) y2[kk * Pitch + n] = inside ? p.Y2(block, gk, gn) : 0f;
                }
                Group.Barrier();
                for (int kk = 0; kk < ChunkK; kk++)
                {
                    int row = kk * Pitch;
                    var b = new Float4(y1[row + tx], y1[row + tx + s], y1[row + tx + 2 * s], y1[row + tx + 3 * s]);
                    c0.Accumulate(x1[row + ty], b);
                    c1.Accumulate(x1[row + ty + s], b);
                    c2.Accumulate(x1[row + ty + 2 * s], b);
                    c3.Accumulate(x1[row + ty + 3 * s], b);
                    if (p.Dual)
                    {
                        b = new Float4(y2[row + tx], y2[row + tx + s], y2[row + tx + 2 * s], y2[row + tx + 3 * s]);
                        c0.Accumulate(x2[row + ty], b);
                        c1.Accumulate(x2[row + ty + s], b);
                        c2.Accumulate(x2[row + ty + 2 * s], b);
                        c3.Accumulate(x2[row + ty + 3 * s], b);
                    }
                }
                Group.Barrier();
            }
            StoreRow(p, block, m0 + ty, n0 + tx, s, c0);
            StoreRow(p, block, m0 + ty + s, n0 + tx, s, c1);
            StoreRow(p, block, m0 + ty + 2 * s, n0 + tx, s, c2);
            StoreRow(p, block, m0 + ty + 3 * s, n0 + tx, s, c3);
        }
    }

    static void StoreRow<TProduct>(TProduct p, int block, int m, int n, int s, Float4 c) where TProduct : struct, ITiledProduct
    {
        if (m >= p.M) return;
        int columns = p.N;
        if (n < columns) p.Store(block, m, n, c.X);
        if (n + s < columns) p.Store(block, m, n + s, c.Y);
        if (n + 2 * s < columns) p.Store(block, m, n + 2 * s, c.Z);
        if (n + 3 * s < columns) p.Store(block, m, n + 3 * s, c.W);
    }

    /// <summary>
    /// Event-driven path, step 1: the spikes of each input row as an event list, in channel order:
    /// events.Index (R, In) the channels that spiked, events.Value (R, In) their values, events.Count (R) how many.
    /// Work item = one row; per slice of 4G channels thread t takes channels 4t … 4t + 3 (contiguous bytes, coalesced),
    /// and an exclusive scan over the group gives each thread where its events go.
    /// </summary>
    public static void CompactEvents(SpikeLinearArgs a, EventLists events)
    {
        if (!a.EventDriven) return;
        int threads = Group.DimX, slice = threads * EventsPerThread;
        for (int r = Grid.IdxX; r < a.Rows; r += Grid.DimX)
        {
            int row = r * a.In, found = 0;
            for (int k0 = 0; k0 < a.In; k0 += slice)
            {
                int first = k0 + Group.IdxX * EventsPerThread, mine = 0;
                for (int j = 0; j < EventsPerThread; j++)
                    if (first + j < a.In && a.Codes[row + first + j] != 0) mine++;
                int slot = found + GroupExtensions.ExclusiveScan<int, AddInt32>(mine);
                for (int j = 0; j < EventsPerThread; j++)
                {
                    int k = first + j;
                    if (k >= a.In) break;
                    sbyte code = a.Codes[row + k];
                    if (code == 0) continue;
                    events.Index[row + slot] = k;
                    events.Value[row + slot] = a.Neuron.Value(code, row + k);
                    slot++;
                }
                found += GroupExtensions.AllReduce<int, AddInt32>(mine);
                // The next slice's scan reuses the reductions' shared memory.
                Group.Barrier();
            }
            if (Group.IdxX == 0) events.Count[r] = found;
        }
    }

    /// <summary>
    /// Event-driven path, step 2: output[r, c] = bias[c] + Σ over the events of row r of value · Wt[index, c]; only the
    /// weight rows of inputs that spiked are read. Work item = (row r, block of 4G output columns); thread t owns
    /// columns c0 + t + G·j (j &lt; 4), so each event's weight row is read coalesced, and every thread walks the same
    /// event list (one broadcast load per event). No shared memory, no barriers.
    /// </summary>
    public static void AccumulateEvents(SpikeLinearArgs a, EventLists events)
    {
        if (!a.EventDriven) return;
        if (Grid.IdxX == 0 && Group.IdxX == 0) Atomic.Add(ref a.Paths[0], 1L);
        int threads = Group.DimX, width = threads * EventOutputsPerThread;
        int columnBlocks = (a.Out + width - 1) / width;
        for (int item = Grid.IdxX; item < a.Rows * columnBlocks; item += Grid.DimX)
        {
            int r = item / columnBlocks, c = item % columnBlocks * width + Group.IdxX, row = r * a.In;
            float s0 = 0f, s1 = 0f, s2 = 0f, s3 = 0f;
            for (int e = 0; e < events.Count[r]; e++)
            {
                int w = events.Index[row + e] * a.Out;
                float v = events.Value[row + e];
                if (c < a.Out) s0 += v * a.WeightT[w + c];
                if (c + threads < a.Out) s1 += v * a.WeightT[w + c + threads];
                if (c + 2 * threads < a.Out) s2 += v * a.WeightT[w + c + 2 * threads];
                if (c + 3 * threads < a.Out) s3 += v * a.WeightT[w + c + 3 * threads];
            }
            int o = r * a.Out;
            if (c < a.Out) a.Output[o + c] = s0 + a.Bias[c];
            if (c + threads < a.Out) a.Output[o + c + threads] = s1 + a.Bias[c + threads];
            if (c + 2 * threads < a.Out) a.Output[o + c + 2 * threads] = s2 + a.Bias[c + 2 * threads];
            if (c + 3 * threads < a.Out) a.Output[o + c + 3 * threads] = s3 + a.Bias[c + 3 * threads];
        }
    }
}
