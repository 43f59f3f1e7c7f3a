using Ecmt.Engine.Model;
using Ecmt.Kernels;

namespace Ecmt.Engine.Simulation;

/// <summary>
/// The accumulated output of a batch after one step: logits (B, classes) summed over each image's steps 1..t_b, and
/// per image its step t_b and cumulative spike and synaptic-operation counts. Images admitted at different times are
/// at different steps (<see cref="Steps"/>); after <see cref="SpikingSession.Reset"/> and <see cref="SpikingSession.Next"/>
/// they all share <see cref="Step"/>.
/// </summary>
public sealed class StepOutput(int[] steps, int classes, long denseOperationsPerStep)
{
    /// <summary>The step of image 0: the step of every image of a batch started together.</summary>
    public int Step => Steps[0];
    /// <summary>(B): t_b, the step each image has reached.</summary>
    public int[] Steps { get; } = steps;
    public int Images => Steps.Length;
    public int Classes { get; } = classes;
    /// <summary>(B, classes): Σ of the head's increments; divided by t it approximates the ANN's logits.</summary>
    public float[] AccumulatedLogits { get; } = new float[steps.Length * classes];
    /// <summary>(B): synaptic operations over steps 1..t.</summary>
    public long[] Sops { get; } = new long[steps.Length];
    /// <summary>(B): spikes emitted over steps 1..t.</summary>
    public long[] Spikes { get; } = new long[steps.Length];
    /// <summary>The ANN's multiply-accumulates over the same layers, for one inference.</summary>
    public long DenseOperationsPerStep { get; } = denseOperationsPerStep;

    public ReadOnlySpan<float> Logits(int image) => AccumulatedLogits.AsSpan(image * Classes, Classes);

    public int Prediction(int image)
    {
        var logits = Logits(image);
        int best = 0;
        for (int c = 1; c < logits.Length; c++) if (logits[c] > logits[best]) best = c;
        return best;
    }

    /// <summary>Σ SOPs / Σ dense operations over steps 1..t (ECMT.md section 5).</summary>
    public double FiringRate(int image) => (double)Sops[image] / ((double)DenseOperationsPerStep * Steps[image]);

    /// <summary>Energy relative to one ANN inference: t · (0.9 pJ / 4.6 pJ) · rate(t).</summary>
    public double EnergyRatio(int image) => Steps[image] * Energy.AccumulateOverMac * FiringRate(image);
}

/// <summary>The 45 nm energy figures of ECMT.md section 5.</summary>
public static class Energy
{
    public const double AccumulatePicojoules = 0.9, MultiplyAccumulatePicojoules = 4.6;
    public const double AccumulateOverMac = AccumulatePicojoules / MultiplyAccumulatePicojoules;
}

/// <summary>
/// The spiking state of up to <see cref="Capacity"/> independent images on one backend, one per slot: membranes, EC
/// sums and running products for every block. Images come and go on their own: <see cref="Admit"/> clears one slot's
/// state and writes its embedding, <see cref="Release"/> frees a slot, and each <see cref="Next"/> runs one time step
/// for every occupied slot, each at its own step t_b (continuous batching, one step scheduler per model).
/// <see cref="Reset"/> starts a whole batch at once (evaluation, benchmarks): the same mechanism with every slot admitted.
/// <para>
/// The batch is kept dense: occupied slots are always 0 … <see cref="Count"/> − 1, and releasing a slot moves the last
/// image into it (its state copied image by image, <see cref="ISpikingBackend.CopyImage"/>). Every operation then runs
/// over views of the first Count images (<see cref="ISpikingBackend.Prefix(DeviceTensor, int)"/>), so a step costs
/// what its occupied slots cost. The alternative, masking free slots, would pay for the whole capacity at every step:
/// measured with <c>ecmt bench --model models/fmnist-vit --backend fastcpu --threads 2</c> (docs/benchmarks.md), a step
/// of 32 images took 306–638 ms against 37–41 ms for one, so one stream in a 32-slot masked batch would run 8–15×
/// slower, while a move costs one memory copy of an image's state (3.2 MB for that model) per released slot.
/// </para>
/// Not thread-safe: one session serves one caller (the scheduler's thread).
/// </summary>
public sealed class SpikingSession : IDisposable
{
    readonly SpikingModel _model;
    readonly ISpikingBackend _backend;
    readonly List<IDisposable> _owned = [];
    // Tensors whose values carry from step to step (cleared on admission, moved on release).
    readonly List<DeviceTensor> _state = [];
    readonly Frame _full;
    // _frames[n]: views of the first n images of every tensor (index Capacity: the tensors themselves).
    readonly Frame?[] _frames;
    readonly StepCounters _counters;
    readonly ImageSteps _stepsDevice;
    readonly int[] _steps;
    readonly float[] _embedHost, _accumulated, _logitsHost;
    readonly long[] _spikes, _sops, _stepSpikes, _stepSops;
    // (depth): each block's relative position bias (1, H, N, N) on the backend, or null (blocks sharing one table share it)
    readonly DeviceTensor?[] _relPosBias;

    sealed record BlockState(
        EcState Ln1, DeviceTensor FcQkvMembrane, SpikeTensor FcQkvSpikes,
        DeviceTensor QkvMembrane, SpikeTensor QkvSpikes, DeviceTensor QkvSums, DeviceTensor ScoreProducts,
        EcState Softmax, DeviceTensor SMembrane, SpikeTensor SSpikes, DeviceTensor SSums, DeviceTensor ValueProducts,
        DeviceTensor FcOutMembrane, SpikeTensor FcOutSpikes,
        EcState Ln2, DeviceTensor Fc1Membrane, SpikeTensor Fc1Spikes, EcState Gelu, DeviceTensor Fc2Membrane, SpikeTensor Fc2Spikes)
    {
        public BlockState Map(Func<DeviceTensor, DeviceTensor> t, Func<SpikeTensor, SpikeTensor> s)
        {
            EcState E(EcState e) => new(t(e.InputSum), t(e.OutputSum));
            return new(E(Ln1), t(FcQkvMembrane), s(FcQkvSpikes), t(QkvMembrane), s(QkvSpikes), t(QkvSums), t(ScoreProducts),
                E(Softmax), t(SMembrane), s(SSpikes), t(SSums), t(ValueProducts), t(FcOutMembrane), s(FcOutSpikes),
                E(Ln2), t(Fc1Membrane), s(Fc1Spikes), E(Gelu), t(Fc2Membrane), s(Fc2Spikes));
        }
    }

    /// <summary>Every tensor one step uses, for some number of images.</summary>
    sealed record Frame(
        DeviceTensor Embed, DeviceTensor X, DeviceTensor H, DeviceTensor Qkv, DeviceTensor Scores, DeviceTensor Probs,
        DeviceTensor Attn, DeviceTensor Residual, DeviceTensor Hidden, DeviceTensor Gelu, DeviceTensor Cls, DeviceTensor ClsNorm,
        DeviceTensor Logits, BlockState[] Blocks, EcState FinalNorm, DeviceTensor?[,]? AnnValues)
    {
        public Frame Map(Func<DeviceTensor, DeviceTensor> t, Func<SpikeTensor, SpikeTensor> s)
        {
            DeviceTensor?[,]? ann = null;
            if (AnnValues is not null)
            {
                ann = new DeviceTensor?[AnnValues.GetLength(0), AnnValues.GetLength(1)];
                for (int i = 0; i < ann.GetLength(0); i++)
                    for (int j = 0; j < ann.GetLength(1); j++)
                        ann[i, j] = AnnValues[i, j] is { } a ? t(a) : null;
            }
            return new(t(Embed), t(X), t(H), t(Qkv), t(Scores), t(Probs), t(Attn), t(Residual), t(Hidden), t(Gelu), t(Cls), t(ClsNorm),
                t(Logits), Blocks.Select(b => b.Map(t, s)).ToArray(), new EcState(t(FinalNorm.InputSum), t(FinalNorm.OutputSum)), ann);
        }
    }

    /// <param name="images">The capacity: slots for this many images at once.</param>
    public SpikingSession(SpikingModel model, ISpikingBackend backend, int images)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(images, 1);
        _model = model;
        _backend = backend;
        Capacity = images;
        var c = model.Config;
        int b = images, n = c.Tokens, d = c.EmbedDim, f = c.MlpDim, h = c.NumHeads;
        _embedHost = new float[b * n * d];
        DeviceTensor?[,]? annValues = null;
        if (model.Ablation.AnnValues.Count > 0)
        {
            // (depth, EC modules): the ANN's output of each module an ablation replaces, for the current images.
            annValues = new DeviceTensor?[c.Depth, Enum.GetValues<EcModule>().Length];
            for (int l = 0; l < c.Depth; l++)
                foreach (var module in model.Ablation.AnnValues)
                    annValues[l, (int)module] = module switch
                    {
                        EcModule.Softmax => Tensor(b, h, n, n),
                        EcModule.Gelu => Tensor(b, n, f),
                        _ => Tensor(b, n, d),
                    };
        }
        _full = new Frame(Tensor(b, n, d), Tensor(b, n, d), Tensor(b, n, d), Tensor(b, n, 3 * d), Tensor(b, h, n, n), Tensor(b, h, n, n),
            Tensor(b, n, d), Tensor(b, n, d), Tensor(b, n, f), Tensor(b, n, f), Tensor(b, d), Tensor(b, d), Tensor(b, c.NumClasses),
            model.Blocks.Select(blk => new BlockState(
                Ec(b, n, d), State(b, n, d), Spikes(blk.FcQkvNeuron, b, n, d),
                State(b, n, 3 * d), Spikes(blk.QkvNeuron, b, n, 3 * d), State(b, n, 3 * d), State(b, h, n, n),
                Ec(b, h, n, n), State(b, h, n, n), Spikes(blk.SNeuron, b, h, n, n), State(b, h, n, n), State(b, n, d),
                State(b, n, d), Spikes(blk.FcOutNeuron, b, n, d),
                Ec(b, n, d), State(b, n, d), Spikes(blk.Fc1Neuron, b, n, d), Ec(b, n, f), State(b, n, f), Spikes(blk.Fc2Neuron, b, n, f)))
                .ToArray(),
            Ec(b, d), annValues);
        _frames = new Frame?[b + 1];
        _frames[b] = _full;
        _counters = backend.AllocateCounters(b);
        _owned.Add(_counters);
        _stepsDevice = backend.AllocateSteps(b);
        _owned.Add(_stepsDevice);
        _steps = new int[b];
        _accumulated = new float[b * c.NumClasses];
        _logitsHost = new float[b * c.NumClasses];
        _spikes = new long[b];
        _sops = new long[b];
        _stepSpikes = new long[b];
        _stepSops = new long[b];
        var uploaded = new Dictionary<float[], DeviceTensor>(ReferenceEqualityComparer.Instance);
        _relPosBias = model.Blocks.Select(blk =>
        {
            if (blk.RelPosBias is not { } bias) return null;
            if (!uploaded.TryGetValue(bias, out var tensor))
            {
                tensor = Tensor(1, h, n, n);
                backend.Upload(bias, tensor);
                uploaded[bias] = tensor;
            }
            return tensor;
        }).ToArray();
        if (c.PostNorm && model.Ablation.AnnValues.Any(m => m is EcModule.Ln1 or EcModule.Ln2))
            throw new NotSupportedException("post-norm blocks: EC-LN1 and EC-LN2 do not feed a neuron place, so an ablation cannot replace them");
    }

    /// <summary>Slots: images the session can hold at once.</summary>
    public int Capacity { get; }
    /// <summary>Occupied slots, 0 … Count − 1.</summary>
    public int Count { get; private set; }
    /// <summary>The capacity (the batch size of <see cref="Reset"/>).</summary>
    public int Images => Capacity;
    /// <summary>The step of slot 0 (of every image after <see cref="Reset"/>).</summary>
    public int Step => _steps[0];
    public SpikingModel Model => _model;
    public string BackendName => _backend.Name;

    /// <summary>Floats of state held per image: membranes, EC sums and running products (scratch tensors excluded).</summary>
    public long StateFloatsPerImage { get; private set; }

    /// <summary>The step slot <paramref name="slot"/> has reached (0: admitted, not stepped yet).</summary>
    public int StepOf(int slot) => _steps[CheckSlot(slot)];

    /// <summary>Starts a full batch: normalised pixels (Capacity, C, H, W) in every slot. Clears every membrane and sum.</summary>
    public void Reset(ReadOnlySpan<float> images)
    {
        _model.Ann.Embed(images, Capacity).CopyTo(_embedHost, 0);
        _backend.Upload(_embedHost, _full.Embed);
        if (_full.AnnValues is { } annValues)
        {
            _model.Ann.Forward(images, Capacity, (block, place, values, _) =>
            {
                foreach (var module in _model.Ablation.AnnValues)
                    if (Ablation.PlaceAfter(module) == place) _backend.Upload(values, annValues[block, (int)module]!);
            });
        }
        foreach (var tensor in _state) _backend.Clear(tensor);
        Count = Capacity;
        for (int b = 0; b < Capacity; b++) ClearSlotHost(b);
    }

    /// <summary>
    /// Admits one image, normalised pixels (C, H, W), into the next free slot and returns the slot: its state cleared,
    /// its embedding written, the other slots untouched. Its first <see cref="Next"/> runs its step 1.
    /// </summary>
    public int Admit(ReadOnlySpan<float> image)
    {
        if (Count == Capacity) throw new InvalidOperationException($"all {Capacity} slots are occupied");
        if (_full.AnnValues is not null) throw new NotSupportedException("an ablation that replaces EC modules by the ANN's values runs whole batches (Reset) only");
        int slot = Count++;
        int perImage = _model.Config.Tokens * _model.Config.EmbedDim;
        _model.Ann.Embed(image, 1).CopyTo(_embedHost, slot * perImage);
        _backend.Upload(_embedHost.AsSpan(0, Count * perImage), Current.Embed);
        foreach (var tensor in _state) _backend.ClearImage(tensor, slot);
        ClearSlotHost(slot);
        return slot;
    }

    /// <summary>
    /// Frees <paramref name="slot"/>. The batch stays dense: the last occupied slot's image moves into the freed one.
    /// Returns the slot that image came from (the caller's handle for it becomes <paramref name="slot"/>), or −1 when
    /// the freed slot was the last.
    /// </summary>
    public int Release(int slot)
    {
        CheckSlot(slot);
        int last = --Count;
        if (slot == last) return -1;
        int perImage = _model.Config.Tokens * _model.Config.EmbedDim;
        Array.Copy(_embedHost, last * perImage, _embedHost, slot * perImage, perImage);
        _backend.CopyImage(_full.Embed, last, slot);
        foreach (var tensor in _state) _backend.CopyImage(tensor, last, slot);
        int classes = _model.Config.NumClasses;
        Array.Copy(_accumulated, last * classes, _accumulated, slot * classes, classes);
        _steps[slot] = _steps[last];
        _spikes[slot] = _spikes[last];
        _sops[slot] = _sops[last];
        return last;
    }

    int CheckSlot(int slot)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)slot, (uint)Count, nameof(slot));
        return slot;
    }

    void ClearSlotHost(int slot)
    {
        int classes = _model.Config.NumClasses;
        Array.Clear(_accumulated, slot * classes, classes);
        _steps[slot] = 0;
        _spikes[slot] = _sops[slot] = 0;
    }

    /// <summary>Views of the first <see cref="Count"/> images of every tensor, made once per count.</summary>
    Frame Current => _frames[Count] ??= _full.Map(t => _backend.Prefix(t, Count), s => _backend.Prefix(s, Count));

    /// <summary>
    /// Runs one time step for every occupied slot, slot b at its step t_b + 1, and returns the accumulated output of
    /// the occupied slots (B = <see cref="Count"/>, in slot order).
    /// </summary>
    public StepOutput Next()
    {
        if (Count == 0) throw new InvalidOperationException("no image is admitted");
        int count = Count;
        for (int i = 0; i < count; i++) _steps[i]++;
        var c = _model.Config;
        var be = _backend;
        var fr = Current;
        float scale = 1f / MathF.Sqrt(c.HeadDim);
        var t = _stepsDevice;
        be.UploadSteps(_steps.AsSpan(0, count), t);
        be.Clear(_counters);
        // Inputs that do not depend on spikes are added again at every step.
        be.Copy(fr.Embed, fr.X);
        for (int l = 0; l < fr.Blocks.Length; l++)
        {
            var w = _model.Blocks[l];
            var s = fr.Blocks[l];
            // Attention: x += proj(MT(EC(A·V)))  with  A = MT(EC-softmax(EC(Q·Kᵀ) + bias)),  q, k, v = MT(qkv(MT(EC-LN1(x))));
            // post-norm: x += EC-LN1(proj(MT(EC(A·V)))) with q, k, v = MT(qkv(MT(x))). Layer scale is folded into proj / LN1.
            var attnIn = fr.H;
            if (c.PostNorm) attnIn = fr.X;
            else
            {
                be.LayerNormEc(fr.X, s.Ln1, w.Norm1, t, fr.H);
                AnnValue(fr, l, EcModule.Ln1, fr.H);
            }
            be.Fire(attnIn, s.FcQkvMembrane, s.FcQkvSpikes, _counters, fanOut: w.Qkv.Out);
            be.SpikeLinear(s.FcQkvSpikes, w.Qkv, fr.Qkv);
            be.Fire(fr.Qkv, s.QkvMembrane, s.QkvSpikes, _counters, fanOut: 0);
            be.AttentionScoresEc(s.QkvSpikes, s.QkvSums, s.ScoreProducts, c.NumHeads, scale, t, fr.Scores, _counters);
            // The relative position bias does not depend on spikes: added to every step's increment, the scores sum to t·(scale·QKᵀ + bias).
            if (_relPosBias[l] is { } relBias) be.AddBroadcast(fr.Scores, relBias);
            be.SoftmaxEc(fr.Scores, s.Softmax, t, fr.Probs);
            AnnValue(fr, l, EcModule.Softmax, fr.Probs);
            be.Fire(fr.Probs, s.SMembrane, s.SSpikes, _counters, fanOut: 0);
            be.AttentionValuesEc(s.SSpikes, s.SSums, s.QkvSpikes, s.QkvSums, s.ValueProducts, c.NumHeads, t, fr.Attn, _counters);
            AnnValue(fr, l, EcModule.AttentionValues, fr.Attn);
            be.Fire(fr.Attn, s.FcOutMembrane, s.FcOutSpikes, _counters, fanOut: w.Proj.Out);
            be.SpikeLinear(s.FcOutSpikes, w.Proj, fr.Residual);
            AddBranch(fr, s.Ln1, w.Norm1, t);
            // MLP: x += fc2(MT(EC-GELU(fc1(MT(EC-LN2(x)))))); post-norm: x += EC-LN2(fc2(MT(EC-GELU(fc1(MT(x))))))
            var mlpIn = fr.H;
            if (c.PostNorm) mlpIn = fr.X;
            else
            {
                be.LayerNormEc(fr.X, s.Ln2, w.Norm2, t, fr.H);
                AnnValue(fr, l, EcModule.Ln2, fr.H);
            }
            be.Fire(mlpIn, s.Fc1Membrane, s.Fc1Spikes, _counters, fanOut: w.Fc1.Out);
            be.SpikeLinear(s.Fc1Spikes, w.Fc1, fr.Hidden);
            be.GeluEc(fr.Hidden, s.Gelu, t, fr.Gelu);
            AnnValue(fr, l, EcModule.Gelu, fr.Gelu);
            be.Fire(fr.Gelu, s.Fc2Membrane, s.Fc2Spikes, _counters, fanOut: w.Fc2.Out);
            be.SpikeLinear(s.Fc2Spikes, w.Fc2, fr.Residual);
            AddBranch(fr, s.Ln2, w.Norm2, t);
        }
        // The head reads EC-LN of the class token, or EC-fc_norm of the mean of the patch tokens (linear: the mean of the
        // increments), directly (no neuron); its increments are accumulated per slot on the host (the same float
        // additions a device-side sum would make), so that slots move with their sums.
        if (c.Pooling == Pooling.Mean) be.MeanTokens(fr.X, 1, fr.Cls);
        else be.SelectToken(fr.X, 0, fr.Cls);
        be.LayerNormEc(fr.Cls, fr.FinalNorm, _model.FinalNorm, t, fr.ClsNorm);
        be.Linear(fr.ClsNorm, _model.Head, fr.Logits);

        int classes = c.NumClasses;
        be.ReadStep(fr.Logits, _counters, _logitsHost.AsSpan(0, count * classes), _stepSpikes, _stepSops);
        var output = new StepOutput(_steps.AsSpan(0, count).ToArray(), classes, _model.DenseOperationsPerStep);
        for (int i = 0; i < count * classes; i++) _accumulated[i] += _logitsHost[i];
        _accumulated.AsSpan(0, count * classes).CopyTo(output.AccumulatedLogits);
        for (int b = 0; b < count; b++)
        {
            output.Spikes[b] = _spikes[b] += _stepSpikes[b];
            output.Sops[b] = _sops[b] += _stepSops[b];
        }
        return output;
    }

    /// <summary>x += the branch output in Residual; post-norm blocks pass it through their EC-LayerNorm first.</summary>
    void AddBranch(Frame fr, EcState ln, LayerNormLayer norm, ImageSteps t)
    {
        if (_model.Config.PostNorm)
        {
            _backend.LayerNormEc(fr.Residual, ln, norm, t, fr.H);
            _backend.Add(fr.X, fr.H);
        }
        else _backend.Add(fr.X, fr.Residual);
    }

    /// <summary>An ablation's hook: the EC module's output becomes the ANN's value there (every step adds it once).</summary>
    void AnnValue(Frame frame, int block, EcModule module, DeviceTensor output)
    {
        if (frame.AnnValues?[block, (int)module] is { } ann) _backend.Copy(ann, output);
    }

    /// <summary>Spike codes of one place of one block after the last step, for the whole capacity (tests and diagnostics).</summary>
    public sbyte[] SpikeCodes(int block, Conversion.Place place)
    {
        var s = _full.Blocks[block];
        var spikes = place switch
        {
            Conversion.Place.FcQkv => s.FcQkvSpikes,
            Conversion.Place.Q or Conversion.Place.K or Conversion.Place.V => s.QkvSpikes,
            Conversion.Place.S => s.SSpikes,
            Conversion.Place.FcOut => s.FcOutSpikes,
            Conversion.Place.Fc1 => s.Fc1Spikes,
            _ => s.Fc2Spikes,
        };
        var codes = new sbyte[spikes.Length];
        _backend.DownloadCodes(spikes, codes);
        return codes;
    }

    DeviceTensor Tensor(params int[] shape)
    {
        var t = _backend.Allocate(shape);
        _owned.Add(t);
        return t;
    }

    SpikeTensor Spikes(MultiThresholdNeuron neuron, params int[] shape)
    {
        var s = _backend.AllocateSpikes(neuron, shape);
        _owned.Add(s);
        return s;
    }

    DeviceTensor State(params int[] shape)
    {
        StateFloatsPerImage += shape.Skip(1).Aggregate(1L, (a, x) => a * x);
        var t = Tensor(shape);
        _state.Add(t);
        return t;
    }

    EcState Ec(params int[] shape) => new(State(shape), State(shape));

    public void Dispose()
    {
        foreach (var d in _owned) d.Dispose();
        _owned.Clear();
    }
}
