using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Algorithms.ScanReduceOperations;

namespace Ecmt.Kernels.Ilgpu;

/// <summary>
/// Synaptic operations of the attention EC products, counted exactly as <c>ReferenceBackend</c> counts them, and the
/// running sums advanced (S_A += A, S_B += B) in the same pass. ECMT.md section 5: for X (m, k) · Y (k, n) the count is
/// Σ_j nnz(X[:, j]) · nnz(Y[j, :]), for each of A·S_B(t−1), S_A(t−1)·B and A·B.
/// <para>
/// Two phases, so that the long walks along columns are spread over many threads: phase 1 takes (columns × a slice of
/// 16 tokens) per thread and adds its non-zero counts into a scratch buffer, columns (…, 4) ints =
/// [nnz A, nnz S_A(t−1), nnz B, nnz S_B(t−1)] per inner index j, with atomics (about N/16 per address); phase 2 reads
/// the four counts of each j, forms the three products, reduces them over the group, adds one total per image to the
/// counters and zeroes the scratch for the next call. Both run after the tiled product, which reads the old sums.
/// </para>
/// </summary>
static class SopKernels
{
    /// <summary>Tokens one thread walks in phase 1.</summary>
    public const int TokensPerItem = 16;
    /// <summary>Most heads <see cref="ValueRows"/> keeps shared counters for.</summary>
    public const int MaxHeads = 64;

    /// <summary>
    /// Scores, phase 1: columns (B, D, 4) over q channel c (A = Q, B = Kᵀ, so the inner index is the channel).
    /// Work item = (image, 16 tokens, G channels); thread = channel c, reading q and k of each token (coalesced across
    /// threads) and advancing S_Q, S_K.
    /// </summary>
    public static void ScoreColumns(ScoresProduct p, ArrayView<int> columns)
    {
        int threads = Group.DimX, channelChunks = (p.Dim + threads - 1) / threads, tokenChunks = (p.Tokens + TokensPerItem - 1) / TokensPerItem;
        for (int item = Grid.IdxX; item < p.Images * tokenChunks * channelChunks; item += Grid.DimX)
        {
            int b = item / (tokenChunks * channelChunks), rest = item % (tokenChunks * channelChunks);
            int first = rest / channelChunks * TokensPerItem, c = rest % channelChunks * threads + Group.IdxX;
            if (c >= p.Dim) continue;
            int q = 0, sumQ = 0, k = 0, sumK = 0;
            for (int token = first; token < Math.Min(first + TokensPerItem, p.Tokens); token++)
            {
                int qi = (b * p.Tokens + token) * 3 * p.Dim + c, ki = qi + p.Dim;
                float qv = p.Neuron.Value(p.Codes[qi], qi), kv = p.Neuron.Value(p.Codes[ki], ki);
                float sq = p.Sums[qi], sk = p.Sums[ki];
                if (qv != 0f) q++;
                if (sq != 0f) sumQ++;
                if (kv != 0f) k++;
                if (sk != 0f) sumK++;
                p.Sums[qi] = sq + qv;
                p.Sums[ki] = sk + kv;
            }
            AddCounts(columns, (b * p.Dim + c) * 4, q, sumQ, k, sumK);
        }
    }

    /// <summary>
    /// Scores, phase 2: one thread per (image, channel), work items (image, G channels) taken in contiguous blocks per
    /// group; SOPs go to counters[2b + 1], one reduction and atomic per image a group meets.
    /// </summary>
    public static void ScoreOperations(ScoresProduct p, ArrayView<int> columns, ArrayView<long> counters)
    {
        int threads = Group.DimX, chunks = (p.Dim + threads - 1) / threads;
        var (first, end) = StepKernels.GroupItems(p.Images * chunks);
        int image = first / chunks;
        long operations = 0;
        for (int item = first; item < end; item++)
        {
            int b = item / chunks, c = item % chunks * threads + Group.IdxX;
            if (b != image)
            {
                AddToImage(counters, 2 * image + 1, operations);
                image = b;
                operations = 0;
            }
            if (c < p.Dim) operations += TakeOperations(columns, (b * p.Dim + c) * 4);
        }
        if (first < end) AddToImage(counters, 2 * image + 1, operations);
    }

    /// <summary>
    /// Probabilities × values, phase 1 for A: columns (B, H, N keys, 4), slots 0 and 1, over key j. Work item =
    /// (image·head, 16 queries, G keys); thread = key j, reading A[i, j] for its queries (coalesced across threads)
    /// and advancing S_A.
    /// </summary>
    public static void ProbColumns(ValuesProduct p, ArrayView<int> columns)
    {
        int threads = Group.DimX, keyChunks = (p.Tokens + threads - 1) / threads, queryChunks = (p.Tokens + TokensPerItem - 1) / TokensPerItem;
        for (int item = Grid.IdxX; item < p.Images * p.Heads * queryChunks * keyChunks; item += Grid.DimX)
        {
            int block = item / (queryChunks * keyChunks), rest = item % (queryChunks * keyChunks);
            int first = rest / keyChunks * TokensPerItem, j = rest % keyChunks * threads + Group.IdxX;
            if (j >= p.Tokens) continue;
            int a = 0, sumA = 0;
            for (int query = first; query < Math.Min(first + TokensPerItem, p.Tokens); query++)
            {
                int i = p.ProbIndex(block, query, j);
                float av = p.ProbNeuron.Value(p.ProbCodes[i], i), sa = p.ProbSums[i];
                if (av != 0f) a++;
                if (sa != 0f) sumA++;
                p.ProbSums[i] = sa + av;
            }
            AddCounts(columns, (block * p.Tokens + j) * 4, a, sumA, 0, 0);
        }
    }

    /// <summary>
    /// Probabilities × values, phase 1 for V: slots 2 and 3 of columns (B, H, N, 4), the non-zeros of row j of each
    /// head's V and S_V(t−1). Work item = (image, token j); the group's threads walk the D v-channels of that token
    /// (coalesced), count per head in shared memory and advance S_V; then one thread per head stores the counts.
    /// </summary>
    public static void ValueRows(ValuesProduct p, ArrayView<int> columns)
    {
        var perHead = SharedMemory.Allocate<int>(2 * MaxHeads);
        int threads = Group.DimX, tid = Group.IdxX;
        for (int item = Grid.IdxX; item < p.Images * p.Tokens; item += Grid.DimX)
        {
            int b = item / p.Tokens, j = item % p.Tokens;
            for (int h = tid; h < 2 * p.Heads; h += threads) perHead[h] = 0;
            Group.Barrier();
            for (int c = tid; c < p.Dim; c += threads)
            {
                int i = (b * p.Tokens + j) * 3 * p.Dim + 2 * p.Dim + c;
                float v = p.QkvNeuron.Value(p.QkvCodes[i], i), sv = p.QkvSums[i];
                if (v != 0f) Atomic.Add(ref perHead[2 * (c / p.HeadDim)], 1);
                if (sv != 0f) Atomic.Add(ref perHead[2 * (c / p.HeadDim) + 1], 1);
                p.QkvSums[i] = sv + v;
            }
            Group.Barrier();
            for (int h = tid; h < p.Heads; h += threads)
            {
                int at = ((b * p.Heads + h) * p.Tokens + j) * 4;
                columns[at + 2] = perHead[2 * h];
                columns[at + 3] = perHead[2 * h + 1];
            }
            Group.Barrier();
        }
    }

    /// <summary>
    /// Probabilities × values, phase 2: one thread per (image, head, key), work items (image·head, G keys) taken in
    /// contiguous blocks per group; SOPs go to counters[2b + 1], one reduction and atomic per image a group meets.
    /// </summary>
    public static void ValueOperations(ValuesProduct p, ArrayView<int> columns, ArrayView<long> counters)
    {
        int threads = Group.DimX, chunks = (p.Tokens + threads - 1) / threads;
        var (first, end) = StepKernels.GroupItems(p.Images * p.Heads * chunks);
        int image = first / chunks / p.Heads;
        long operations = 0;
        for (int item = first; item < end; item++)
        {
            int block = item / chunks, j = item % chunks * threads + Group.IdxX;
            if (block / p.Heads != image)
            {
                AddToImage(counters, 2 * image + 1, operations);
                image = block / p.Heads;
                operations = 0;
            }
            if (j < p.Tokens) operations += TakeOperations(columns, (block * p.Tokens + j) * 4);
        }
        if (first < end) AddToImage(counters, 2 * image + 1, operations);
    }

    static void AddCounts(ArrayView<int> columns, int at, int a, int sumA, int b, int sumB)
    {
        if (a != 0) Atomic.Add(ref columns[at], a);
        if (sumA != 0) Atomic.Add(ref columns[at + 1], sumA);
        if (b != 0) Atomic.Add(ref columns[at + 2], b);
        if (sumB != 0) Atomic.Add(ref columns[at + 3], sumB);
    }

    /// <summary>nnz(A)·nnz(S_B) + nnz(S_A)·nnz(B) + nnz(A)·nnz(B) of one inner index; zeroes its four counts.</summary>
    static long TakeOperations(ArrayView<int> columns, int at)
    {
        long a = columns[at], sumA = columns[at + 1], b = columns[at + 2], sumB = columns[at + 3];
        columns[at] = 0;
        columns[at + 1] = 0;
        columns[at + 2] = 0;
        columns[at + 3] = 0;
        return a * sumB + sumA * b + a * b;
    }

    /// <summary>Reduces a per-thread count over the group and adds it to counters[slot] with one atomic.</summary>
    static void AddToImage(ArrayView<long> counters, int slot, long operations)
    {
        long total = GroupExtensions.Reduce<long, AddInt64>(operations);
        if (Group.IdxX == 0 && total != 0) Atomic.Add(ref counters[slot], total);
        // The reduction's shared memory is reused by the next work item.
        Group.Barrier();
    }
}
