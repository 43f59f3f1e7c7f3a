using Ecmt.Engine.Evaluation;

namespace Ecmt.Engine.Tests;

/// <summary>The early-exit study's stopping rule over recorded per-step predictions and confidences.</summary>
public class EarlyExitTests
{
    /// <summary>Two images over four steps. Image 0 (label 1): confident but wrong at t = 1, then right and confident.
    /// Image 1 (label 2): never confident, right from t = 2 on.</summary>
    static EvaluationResult Recorded()
    {
        var r = new EvaluationResult(images: 2, steps: 4) { DenseOperationsPerStep = 100 };
        r.Labels[0] = 1; r.Labels[1] = 2;
        int[,] predictions = { { 0, 1, 1, 1 }, { 0, 2, 2, 2 } };
        float[,] confidence = { { 0.95f, 0.7f, 0.92f, 0.97f }, { 0.3f, 0.4f, 0.5f, 0.6f } };
        for (int i = 0; i < 2; i++)
            for (int t = 0; t < 4; t++)
            {
                r.Predictions[i, t] = predictions[i, t];
                r.Confidence[i, t] = confidence[i, t];
                r.Sops[i, t] = 10 * (t + 1);
            }
        return r;
    }

    [Fact]
    public void Without_confirmation_an_image_stops_at_the_first_confident_step()
    {
        var (top1, meanSteps, energy) = Recorded().EarlyExit(0.9);
        Assert.Equal(0.5, top1);            // image 0 stops wrong at t = 1; image 1 runs to t = 4 and is right
        Assert.Equal((1 + 4) / 2.0, meanSteps);
        Assert.Equal(0.9 / 4.6 * (10 + 40) / 2.0 / 100, energy, 12);
    }

    [Fact]
    public void Confirmation_waits_for_an_unchanged_top1_over_the_last_k_steps()
    {
        var (top1, meanSteps, _) = Recorded().EarlyExit(0.9, confirmSteps: 2);
        Assert.Equal(1.0, top1);            // image 0: t = 1 has no history, t = 2 is not confident, t = 3 is both
        Assert.Equal((3 + 4) / 2.0, meanSteps);
        var (top1With3, meanSteps3, _) = Recorded().EarlyExit(0.9, confirmSteps: 3);
        Assert.Equal(1.0, top1With3);       // image 0: class 1 at t = 2, 3, 4 is three unchanged steps only at t = 4
        Assert.Equal((4 + 4) / 2.0, meanSteps3);
    }
}
