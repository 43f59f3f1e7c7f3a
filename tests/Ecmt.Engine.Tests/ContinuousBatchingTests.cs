using Ecmt.Engine.Conversion;
using Ecmt.Engine.Simulation;
using Ecmt.Kernels;

namespace Ecmt.Engine.Tests;

/// <summary>
/// A batched session's slots are independent: images admitted at different steps, some released midway, each get the
/// outputs they get alone in a session of one. Run on every backend that runs here (CUDA and OpenCL skip without a device).
/// </summary>
public class ContinuousBatchingTests
{
    const int Steps = 5;

    /// <summary>Each image alone: its accumulated logits and SOPs after each of its steps.</summary>
    static (float[] Logits, long Sops)[][] Alone(SpikingModel model, ISpikingBackend backend, float[] pixels, int images)
    {
        int size = pixels.Length / images;
        using var session = new SpikingSession(model, backend, 1);
        var result = new (float[], long)[images][];
        for (int i = 0; i < images; i++)
        {
            session.Reset(pixels.AsSpan(i * size, size));
            result[i] = Enumerable.Range(0, Steps).Select(_ =>
            {
                var o = session.Next();
                return (o.AccumulatedLogits.ToArray(), o.Sops[0]);
            }).ToArray();
        }
        return result;
    }

    [Theory]
    [InlineData("reference")]
    [InlineData("fastcpu")]
    [InlineData("cpu")]
    [InlineData("cuda")]
    [InlineData("opencl")]
    public void Staggered_images_get_the_outputs_they_get_alone(string backendName)
    {
        using var backend = TestModels.BackendOrSkip(backendName);
        var model = new SpikingModel(TestModels.TinyConverted(ConversionSettings.Calibrated(ThresholdGranularity.PerChannel)));
        const int images = 5;
        var pixels = TestModels.RandomImages(model.Config, images, 11).Normalized(0, images, model.Config);
        int size = pixels.Length / images;
        var alone = Alone(model, backend, pixels, images);

        // Image i joins at step joins[i] of the batch; image 1 is released (cancelled) after 2 of its steps, so the
        // batch's last image moves into its slot; a 3-slot session makes image 4 wait for a free slot.
        int[] joins = [0, 1, 1, 3, 4];
        int[] stepsWanted = [Steps, 2, Steps, Steps, Steps];
        using var session = new SpikingSession(model, backend, 3);
        var slotOf = new Dictionary<int, int>();
        var done = new int[images];
        int next = 0;
        for (int round = 0; next < images || slotOf.Count > 0; round++)
        {
            while (next < images && joins[next] <= round && session.Count < session.Capacity)
            {
                slotOf[next] = session.Admit(pixels.AsSpan(next * size, size));
                next++;
            }
            Assert.True(round < 50, "the schedule did not finish");
            if (slotOf.Count == 0) continue;
            var output = session.Next();
            foreach (var (image, slot) in slotOf)
            {
                int step = done[image]++;
                Assert.Equal(step + 1, output.Steps[slot]);
                var (logits, sops) = alone[image][step];
                var batched = output.Logits(slot).ToArray();
                for (int k = 0; k < logits.Length; k++)
                    Assert.True(Math.Abs(logits[k] - batched[k]) <= 1e-5 + 1e-5 * Math.Abs(logits[k]),
                        $"image {image} step {step + 1} logit {k}: batched {batched[k]}, alone {logits[k]}");
                Assert.Equal(sops, output.Sops[slot]);
            }
            foreach (var image in slotOf.Keys.Where(i => done[i] == stepsWanted[i]).ToArray())
            {
                int moved = session.Release(slotOf[image]);
                if (moved >= 0) slotOf[slotOf.Single(p => p.Value == moved).Key] = slotOf[image];
                slotOf.Remove(image);
            }
        }
        Assert.Equal(stepsWanted, done);
    }

    /// <summary>
    /// A step on an ILGPU device hands the host its logits and counters in one transfer, at any batch (the staggered
    /// test above holds the values read that way to the reference's).
    /// </summary>
    [Theory]
    [InlineData("cpu")]
    [InlineData("cpu-cuda-shape")]
    [InlineData("cuda")]
    [InlineData("opencl")]
    public void An_ilgpu_step_reads_from_the_device_once_whatever_the_batch(string backendName)
    {
        using var backend = TestModels.BackendOrSkip(backendName);
        var ilgpu = Assert.IsType<Kernels.Ilgpu.IlgpuBackend>(backend);
        var model = new SpikingModel(TestModels.TinyConverted(ConversionSettings.Calibrated(ThresholdGranularity.PerChannel)));
        foreach (int batch in new[] { 1, 4 })
        {
            var pixels = TestModels.RandomImages(model.Config, batch, 3).Normalized(0, batch, model.Config);
            using var session = new SpikingSession(model, backend, batch);
            session.Reset(pixels);
            for (int step = 1; step <= 3; step++)
            {
                long before = ilgpu.HostReads;
                var output = session.Next();
                Assert.Equal(1, ilgpu.HostReads - before);
                Assert.All(output.Sops, sops => Assert.True(sops > 0));
                Assert.All(output.AccumulatedLogits, v => Assert.True(float.IsFinite(v)));
            }
        }
    }
}
