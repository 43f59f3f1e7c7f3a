using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Ecmt.Kernels.Cpu;

/// <summary>
/// The thresholds of one <see cref="MultiThresholdNeuron"/> laid out for 8-lane vectors (<see cref="Vector256{T}"/>), so that the vector rule
/// compares against exactly the floats the scalar rule computes (<see cref="MultiThresholdNeuron.Threshold"/>).
/// <para>
/// Rows of the table (each <see cref="Stride"/> floats): 0 … n−1 the positive thresholds λp·2^k − λp/2,
/// n … 2n−1 the negated negative thresholds −(λn·2^k − λn/2), 2n the value scale λp, 2n+1 the value scale −λn.
/// Two layouts: <see cref="Layout.Runs"/> keeps one block of rows per group, each entry repeated over <see cref="Block"/> (32) lanes (the
/// group is constant over runs of <see cref="MultiThresholdNeuron.Inner"/> elements); <see cref="Layout.Periodic"/>
/// keeps one entry per element of the period G·Inner (per-channel thresholds), 32 lanes longer so that a block of
/// 32 elements starting anywhere in the period reads contiguous lanes.
/// </para>
/// </summary>
sealed unsafe class NeuronTables
{
    public enum Layout
    {
        Runs,
        Periodic,
        Scalar,
    }

    /// <summary>Elements handled per vector block: four 8-lane vectors, narrowed to one 32-byte store of codes.</summary>
    public const int Block = 32;
    /// <summary>Levels up to which a group's thresholds (and the +∞ past the last) fit two 8-lane registers.</summary>
    const int MaxSearchLevels = 15;
    /// <summary>Floats of one side of a group's search table: up (16), down (16), 1/λ (8), T(0) (8).</summary>
    const int SearchSide = 48;
    /// <summary>Floats of a group's search table: the two sides, then λp (8) and −λn (8).</summary>
    const int SearchFloats = 2 * SearchSide + 16;
    const int MinRunLength = 64;
    const int MaxPeriod = 1 << 16;

    static readonly ConditionalWeakTable<MultiThresholdNeuron, NeuronTables> Cache = [];

    readonly float[] _table;
    readonly float* _base;
    readonly float[]? _searchTable;
    readonly float* _search;

    /// <summary>The tables of a neuron, built once per process (neurons are immutable and shared by all sessions).</summary>
    public static NeuronTables For(MultiThresholdNeuron neuron) => Cache.GetValue(neuron, n => new NeuronTables(n));

    NeuronTables(MultiThresholdNeuron neuron)
    {
        Neuron = neuron;
        int n = neuron.Levels, groups = neuron.Groups, rows = RowCount;
        long period = (long)groups * neuron.Inner;
        Mode = groups == 1 || neuron.Inner >= MinRunLength ? Layout.Runs : period <= MaxPeriod ? Layout.Periodic : Layout.Scalar;
        if (Mode == Layout.Scalar)
        {
            _table = [];
            return;
        }
        Stride = Mode == Layout.Runs ? Block : (int)period + Block;
        int blocks = Mode == Layout.Runs ? groups : 1;
        _table = GC.AllocateArray<float>(blocks * rows * Stride + 16, pinned: true);
        _base = Aligned(_table);
        for (int b = 0; b < blocks; b++)
        {
            for (int lane = 0; lane < Stride; lane++)
            {
                int g = Mode == Layout.Runs ? b : neuron.GroupOf(lane % period);
                float* row = _base + (long)b * rows * Stride + lane;
                float lp = neuron.LambdaPos[g], ln = neuron.LambdaNeg[g];
                for (int k = 0; k < n; k++)
                {
                    row[k * Stride] = MultiThresholdNeuron.Threshold(lp, k, neuron.Rounding);
                    row[(n + k) * Stride] = -MultiThresholdNeuron.Threshold(ln, k, neuron.Rounding);
                }
                row[2 * n * Stride] = lp;
                row[(2 * n + 1) * Stride] = -ln;
            }
        }
        if (Mode == Layout.Runs && n <= MaxSearchLevels && Avx2.IsSupported)
        {
            _searchTable = GC.AllocateArray<float>(groups * SearchFloats + 16, pinned: true);
            _search = Aligned(_searchTable);
            for (int g = 0; g < groups; g++)
            {
                float* t = _search + g * SearchFloats;
                float lp = neuron.LambdaPos[g], ln = neuron.LambdaNeg[g];
                // Per side (positive at 0, negative at SearchSide floats): up[c] = T(c) (+∞ from c = n) and
                // down[c] = T(c − 1) (−∞ at c = 0), 16 entries each; 1/λ and T(0), one vector each. Then λp and −λn,
                // the values' scales.
                for (int side = 0; side < 2; side++)
                {
                    float lambda = side == 0 ? lp : ln;
                    float* block = t + side * SearchSide;
                    for (int c = 0; c < 16; c++)
                    {
                        block[c] = c < n ? MultiThresholdNeuron.Threshold(lambda, c, neuron.Rounding) : float.PositiveInfinity;
                        block[16 + c] = c >= 1 && c <= n ? MultiThresholdNeuron.Threshold(lambda, c - 1, neuron.Rounding) : float.NegativeInfinity;
                    }
                    for (int c = 0; c < 8; c++)
                    {
                        block[32 + c] = 1f / lambda;
                        block[40 + c] = MultiThresholdNeuron.Threshold(lambda, 0, neuron.Rounding);
                    }
                }
                for (int c = 0; c < 8; c++)
                {
                    t[2 * SearchSide + c] = lp;
                    t[2 * SearchSide + 8 + c] = -ln;
                }
            }
        }
    }

    public MultiThresholdNeuron Neuron { get; }
    public Layout Mode { get; }
    public int Stride { get; }
    int RowCount => 2 * Neuron.Levels + 2;
    int Period => Neuron.Groups * Neuron.Inner;

    /// <summary>The first lane of a group's rows (runs layout) or of the period (periodic layout).</summary>
    float* Rows(int group) => _base + (long)group * RowCount * Stride;

    static float* Aligned(float[] array)
    {
        var p = (float*)Unsafe.AsPointer(ref array[0]);
        return (float*)(((nint)p + 63) & ~(nint)63);
    }

    /// <summary>
    /// MT neurons integrate, fire and reset over <paramref name="count"/> consecutive elements whose first has flat
    /// index <paramref name="start"/> in its tensor (which decides the groups): v += x; code = fire(v); v −= value(code).
    /// x, v (count) floats, codes (count) bytes. Returns how many neurons fired.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public long Fire(float* x, float* v, sbyte* codes, long start, long count)
    {
        long fired = 0, i = 0;
        int n = Neuron.Levels;
        switch (Mode)
        {
            case Layout.Runs:
                while (i < count)
                {
                    int g = Neuron.GroupOf(start + i);
                    long runEnd = Neuron.Groups == 1 ? count : Math.Min(count, i + Neuron.Inner - (start + i) % Neuron.Inner);
                    float* rows = Rows(g);
                    if (_search is not null)
                    {
                        float* search = _search + g * SearchFloats;
                        for (; i + Block <= runEnd; i += Block) fired += FireBlockBySearch(x + i, v + i, codes + i, search, n);
                    }
                    for (; i + Block <= runEnd; i += Block) fired += FireBlock(x + i, v + i, codes + i, rows, Stride, n);
                    for (; i < runEnd; i++) fired += FireOne(x, v, codes, i, g);
                }
                break;
            case Layout.Periodic:
                int period = Period, offset = (int)(start % period);
                for (; i + Block <= count; i += Block)
                {
                    fired += FireBlock(x + i, v + i, codes + i, Rows(0) + offset, Stride, n);
                    offset = (offset + Block) % period;
                }
                for (; i < count; i++) fired += FireOne(x, v, codes, i, Neuron.GroupOf(start + i));
                break;
            default:
                for (; i < count; i++) fired += FireOne(x, v, codes, i, Neuron.GroupOf(start + i));
                break;
        }
        return fired;
    }

    int FireOne(float* x, float* v, sbyte* codes, long i, int g)
    {
        v[i] += x[i];
        codes[i] = Neuron.Fire(ref v[i], g);
        return codes[i] != 0 ? 1 : 0;
    }

    /// <summary><see cref="Block"/> neurons: rows point at lane 0 of the thresholds for these elements, rows apart by stride floats.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static int FireBlock(float* x, float* v, sbyte* codes, float* rows, int stride, int levels)
    {
        var c0 = FireVector(x, v, rows, stride, levels);
        var c1 = FireVector(x + 8, v + 8, rows + 8, stride, levels);
        var c2 = FireVector(x + 16, v + 16, rows + 16, stride, levels);
        var c3 = FireVector(x + 24, v + 24, rows + 24, stride, levels);
        var packed = Vector256.Narrow(Vector256.Narrow(c0, c1), Vector256.Narrow(c2, c3));
        packed.Store(codes);
        return Block - BitOperations.PopCount(Vector256.Equals(packed, Vector256<sbyte>.Zero).ExtractMostSignificantBits());
    }

    /// <summary>
    /// The MT rule on 8 lanes. The thresholds rise with the level, so "the largest k whose threshold V reaches" is the
    /// number of thresholds V reaches: counting compares replaces the scalar search and gives the same level.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<int> FireVector(float* x, float* v, float* rows, int stride, int levels)
    {
        var membrane = Vector256.Load(v) + Vector256.Load(x);
        Vector256<int> up = Vector256<int>.Zero, down = Vector256<int>.Zero;
        for (int k = 0; k < levels; k++)
        {
            // A true compare is all ones, i.e. −1.
            up -= Vector256.GreaterThanOrEqual(membrane, Vector256.Load(rows + k * stride)).AsInt32();
            down -= Vector256.LessThanOrEqual(membrane, Vector256.Load(rows + (levels + k) * stride)).AsInt32();
        }
        var positive = Vector256.GreaterThan(up, Vector256<int>.Zero);
        var level = Vector256.ConditionalSelect(positive, up, down);
        var scale = Vector256.ConditionalSelect(positive.AsSingle(), Vector256.Load(rows + 2 * levels * stride), Vector256.Load(rows + (2 * levels + 1) * stride));
        membrane -= Value(level, scale);
        membrane.Store(v);
        return Vector256.ConditionalSelect(positive, up, -down);
    }

    /// <summary><see cref="Block"/> neurons of one group by <see cref="FireVectorBySearch"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static int FireBlockBySearch(float* x, float* v, sbyte* codes, float* search, int levels)
    {
        var c0 = FireVectorBySearch(x, v, search, levels);
        var c1 = FireVectorBySearch(x + 8, v + 8, search, levels);
        var c2 = FireVectorBySearch(x + 16, v + 16, search, levels);
        var c3 = FireVectorBySearch(x + 24, v + 24, search, levels);
        var packed = Vector256.Narrow(Vector256.Narrow(c0, c1), Vector256.Narrow(c2, c3));
        packed.Store(codes);
        return Block - BitOperations.PopCount(Vector256.Equals(packed, Vector256<sbyte>.Zero).ExtractMostSignificantBits());
    }

    /// <summary>
    /// The MT rule on 8 lanes of one group, without a compare per level: the count of thresholds λ(2^k − 1/2) a
    /// membrane V reaches is ⌊log2(V/λ + 1/2)⌋ + 1, read from the exponent bits of V/λ + 1/2. Float rounding can put
    /// that estimate one off when V sits within a few ulps of a threshold, so it is then checked against the exact
    /// threshold floats below and above it (looked up in registers by <see cref="Avx2.PermuteVar8x32"/>): the result is the count the scalar rule gives.
    /// Lanes that do not reach the first threshold (including NaN) get 0.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<int> FireVectorBySearch(float* x, float* v, float* search, int levels)
    {
        var membrane = Vector256.Load(v) + Vector256.Load(x);
        var n = Vector256.Create(levels);
        var up = Count(membrane, search, n);
        var down = Count(-membrane, search + SearchSide, n);
        var positive = Vector256.GreaterThan(up, Vector256<int>.Zero);
        var level = Vector256.ConditionalSelect(positive, up, down);
        var scale = Vector256.ConditionalSelect(positive.AsSingle(), Vector256.Load(search + 2 * SearchSide), Vector256.Load(search + 2 * SearchSide + 8));
        membrane -= Value(level, scale);
        membrane.Store(v);
        return Vector256.ConditionalSelect(positive, up, -down);
    }

    /// <summary>
    /// How many of the thresholds T(0) … T(n−1) w reaches; side points at the up table (T(c), +∞ from n) and the
    /// down table (T(c−1), −∞ at 0), 16 floats each, then 1/λ and T(0), 8 floats each.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<int> Count(Vector256<float> w, float* side, Vector256<int> n)
    {
        var u = w * Vector256.Load(side + 32) + Vector256.Create(0.5f);
        var exponent = (Vector256.ShiftRightLogical(u.AsInt32(), 23) & Vector256.Create(0xFF)) - Vector256.Create(127);
        var count = Vector256.Min(Vector256.Max(exponent + Vector256<int>.One, Vector256<int>.Zero), n);
        count += Vector256.LessThan(w, Lookup(side + 16, count)).AsInt32();
        count -= Vector256.GreaterThanOrEqual(w, Lookup(side, count)).AsInt32();
        var reached = Vector256.GreaterThanOrEqual(w, Vector256.Load(side + 40)).AsInt32();
        return Vector256.Min(count, n) & reached;
    }

    /// <summary>table[index] per lane, for a table of 16 floats and indices 0 … 15.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<float> Lookup(float* table, Vector256<int> index)
    {
        // PermuteVar8x32 reads the low 3 bits of each index: entries 0 … 7 from the first vector, 8 … 15 from the second.
        var low = Avx2.PermuteVar8x32(Vector256.Load(table), index);
        var high = Avx2.PermuteVar8x32(Vector256.Load(table + 8), index);
        return Vector256.ConditionalSelect(Vector256.GreaterThan(index, Vector256.Create(7)).AsSingle(), high, low);
    }

    /// <summary>±λ·2^(level−1) as the scalar rule computes it (λ times an exact power of two); 0 where level is 0.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<float> Value(Vector256<int> level, Vector256<float> signedLambda)
    {
        var pow2 = Vector256.ShiftLeft(level + Vector256.Create(126), 23).AsSingle();
        var silent = Vector256.Equals(level, Vector256<int>.Zero).AsSingle();
        return Vector256.AndNot(signedLambda * pow2, silent);
    }

    /// <summary>
    /// The value of every spike code over <paramref name="count"/> elements starting at flat index
    /// <paramref name="start"/>: codes (count) bytes → values (count) floats. Returns the number of non-zero codes.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public long Decode(sbyte* codes, float* values, long start, long count)
    {
        long nonZero = 0, i = 0;
        int n = Neuron.Levels;
        switch (Mode)
        {
            case Layout.Runs:
                while (i < count)
                {
                    int g = Neuron.GroupOf(start + i);
                    long runEnd = Neuron.Groups == 1 ? count : Math.Min(count, i + Neuron.Inner - (start + i) % Neuron.Inner);
                    float* rows = Rows(g);
                    for (; i + Block <= runEnd; i += Block) nonZero += DecodeBlock(codes + i, values + i, rows, Stride, n);
                    for (; i + 8 <= runEnd; i += 8) nonZero += Decode8(codes + i, values + i, rows, Stride, n);
                    for (; i < runEnd; i++) nonZero += DecodeOne(codes, values, i, g);
                }
                break;
            case Layout.Periodic:
                int period = Period, offset = (int)(start % period);
                for (; i + Block <= count; i += Block)
                {
                    nonZero += DecodeBlock(codes + i, values + i, Rows(0) + offset, Stride, n);
                    offset = (offset + Block) % period;
                }
                for (; i + 8 <= count; i += 8)
                {
                    nonZero += Decode8(codes + i, values + i, Rows(0) + offset, Stride, n);
                    offset = (offset + 8) % period;
                }
                for (; i < count; i++) nonZero += DecodeOne(codes, values, i, Neuron.GroupOf(start + i));
                break;
            default:
                for (; i < count; i++) nonZero += DecodeOne(codes, values, i, Neuron.GroupOf(start + i));
                break;
        }
        return nonZero;
    }

    int DecodeOne(sbyte* codes, float* values, long i, int g)
    {
        values[i] = Neuron.Value(codes[i], g);
        return codes[i] != 0 ? 1 : 0;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static int DecodeBlock(sbyte* codes, float* values, float* rows, int stride, int levels)
    {
        var packed = Vector256.Load(codes);
        var (low, high) = Vector256.Widen(packed);
        var (c0, c1) = Vector256.Widen(low);
        var (c2, c3) = Vector256.Widen(high);
        float* pos = rows + 2 * levels * stride, neg = rows + (2 * levels + 1) * stride;
        DecodeVector(c0, pos, neg).Store(values);
        DecodeVector(c1, pos + 8, neg + 8).Store(values + 8);
        DecodeVector(c2, pos + 16, neg + 16).Store(values + 16);
        DecodeVector(c3, pos + 24, neg + 24).Store(values + 24);
        return Block - BitOperations.PopCount(Vector256.Equals(packed, Vector256<sbyte>.Zero).ExtractMostSignificantBits());
    }

    /// <summary>8 codes: the tail of a run shorter than a block.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static int Decode8(sbyte* codes, float* values, float* rows, int stride, int levels)
    {
        // The 8 codes in the low half of a 16-byte vector (the high half zero), widened to 8 ints.
        var packed = Vector128.CreateScalar(*(long*)codes).AsSByte();
        var shorts = Vector128.WidenLower(packed);
        var code = Vector256.Create(Vector128.WidenLower(shorts), Vector128.WidenUpper(shorts));
        DecodeVector(code, rows + 2 * levels * stride, rows + (2 * levels + 1) * stride).Store(values);
        return 8 - BitOperations.PopCount(Vector128.Equals(packed, Vector128<sbyte>.Zero).ExtractMostSignificantBits() & 0xFF);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<float> DecodeVector(Vector256<int> code, float* lambdaPos, float* negLambdaNeg)
    {
        var positive = Vector256.GreaterThan(code, Vector256<int>.Zero).AsSingle();
        return Value(Vector256.Abs(code), Vector256.ConditionalSelect(positive, Vector256.Load(lambdaPos), Vector256.Load(negLambdaNeg)));
    }

    /// <summary>Non-zero codes among count bytes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static long CountNonZero(sbyte* codes, long count)
    {
        long nonZero = 0, i = 0;
        for (; i + Block <= count; i += Block)
            nonZero += Block - BitOperations.PopCount(Vector256.Equals(Vector256.Load(codes + i), Vector256<sbyte>.Zero).ExtractMostSignificantBits());
        for (; i < count; i++) if (codes[i] != 0) nonZero++;
        return nonZero;
    }
}
