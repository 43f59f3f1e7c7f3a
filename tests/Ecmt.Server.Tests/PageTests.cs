using Ecmt.Engine.Serving;
using Microsoft.Playwright;
using SkiaSharp;
using static Microsoft.Playwright.Assertions;

namespace Ecmt.Server.Tests;

/// <summary>
/// The live page in a real browser: Debian's chromium, headless, driven by Playwright (its own browser download is
/// not used), against the server on a real HTTP/1.1 port with the shipped model. Classifies a sample and sees the
/// steps arrive one by one, applies a stop policy, stops a long run early (the server's own run summary shows it
/// cancelled within one step), classifies a drawing and an upload, and saves a screenshot: the test's output folder
/// always, and docs/live-page.png (which the README shows) when ECMT_UPDATE_SCREENSHOT=1.
/// </summary>
public sealed class PageTests
{
    const string Chromium = "/usr/bin/chromium";

    [Fact]
    public async Task The_page_classifies_step_by_step_and_its_stop_button_cancels_the_computation_on_the_server()
    {
        if (!File.Exists(Chromium))
        {
            // CI installs chromium (scripts/setup.sh) and sets ECMT_REQUIRE_BROWSER=1, so there it never skips.
            Assert.False(Environment.GetEnvironmentVariable("ECMT_REQUIRE_BROWSER") == "1", $"{Chromium} is missing: apt-get install chromium");
            Assert.Skip($"{Chromium} is not installed (apt-get install chromium): the page is not tested in a browser here");
        }

        await using var host = await ServerHost.KestrelWithHttpAsync(["--backend=reference"], ("Ecmt:Limits:MaxSteps", "100000"));
        var model = host.Models.Models.Single();
        using var playwright = await Playwright.CreateAsync();
        await using var browser = await playwright.Chromium.LaunchAsync(new BrowserTypeLaunchOptions
        {
            ExecutablePath = Chromium,
            Headless = true,
            // The closed network refuses Chromium's background connections; keep it from trying.
            Args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
        });
        var page = await browser.NewPageAsync(new BrowserNewPageOptions { ViewportSize = new ViewportSize { Width = 1280, Height = 900 } });
        // Steps of the shipped model on the reference backend, on 2 cores shared with the other tests: be patient.
        page.SetDefaultTimeout(60_000);
        SetDefaultExpectTimeout(60_000);
        var consoleErrors = new List<string>();
        page.Console += (_, m) => { if (m.Type == "error") consoleErrors.Add(m.Text); };
        page.PageError += (_, e) => consoleErrors.Add(e);
        await page.GotoAsync(host.HttpAddress!.ToString());

        var state = page.Locator("#state");
        var received = "() => Number(document.getElementById('steps').dataset.received)";
        await Expect(page.Locator("#samples button")).ToHaveCountAsync(10);
        await Expect(page.Locator("#model")).ToHaveValueAsync(model.Name);

        // A sample, every step: the steps arrive one by one while the run is still going.
        await page.Locator("#samples button[data-sample='00000-ankle-boot']").ClickAsync();
        await Expect(page.Locator("#classify")).ToBeEnabledAsync();
        await page.Locator("#rule-none").CheckAsync();
        await page.Locator("#max-steps").FillAsync("12");
        var first = model.NextRun();
        await page.Locator("#classify").ClickAsync();
        await page.WaitForFunctionAsync($"() => ({received})() >= 2 && document.getElementById('state').dataset.state === 'running'");
        await Expect(state).ToHaveAttributeAsync("data-state", "done");
        Assert.Equal(12, await page.EvaluateAsync<int>(received));
        Assert.Equal(12, (await first).StepsRun);
        var arrivals = await page.EvaluateAsync<double[]>("() => window.ecmtState.run.steps.map(s => s.arrived)");
        Assert.Equal(12, arrivals.Length);
        Assert.True(arrivals.Zip(arrivals.Skip(1)).All(p => p.First <= p.Second) && arrivals[^1] - arrivals[0] > 0, string.Join(", ", arrivals));

        // The page shows what the server computes: the same top class as ModelInfer on the same file.
        using var http = new HttpClient { BaseAddress = host.HttpAddress };
        var png = await http.GetByteArrayAsync(new Uri("/page/samples/00000-ankle-boot.png", UriKind.Relative));
        var answer = await host.Inference.ModelInferAsync(OipRequests.Image(model.Name, png, maxSteps: 12));
        var p = answer.Probabilities();
        string expected = model.Config.ClassNames[Array.IndexOf(p, p.Max())];
        await Expect(page.Locator("#top li .name").First).ToHaveTextAsync(expected);
        await Expect(state).ToContainTextAsync("done after 12 of 12 steps");
        await Screenshot(page);

        // The stop policy: top-1 probability at least 0.5, out of at most 64 steps.
        await page.Locator("#rule-confidence").CheckAsync();
        await page.Locator("#min-confidence").FillAsync("0.5");
        await page.Locator("#max-steps").FillAsync("64");
        var confident = model.NextRun();
        await page.Locator("#classify").ClickAsync();
        await Expect(state).ToHaveAttributeAsync("data-state", "done");
        var summary = await confident;
        Assert.Equal(StopReason.Confident, summary.StopReason);
        Assert.True(summary.StepsRun < 64);
        await Expect(state).ToContainTextAsync($"done after {summary.StepsRun} of 64 steps: confident enough");

        // A long run, stopped from the page: the server cancels it within one step.
        await page.Locator("#rule-none").CheckAsync();
        await page.Locator("#max-steps").FillAsync("100000");
        var stopped = model.NextRun();
        await page.Locator("#classify").ClickAsync();
        await page.WaitForFunctionAsync($"() => ({received})() >= 3");
        await page.Locator("#stop").ClickAsync();
        await Expect(state).ToHaveAttributeAsync("data-state", "stopped");
        summary = await stopped.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.True(summary.Cancelled);
        Assert.InRange(summary.StepsAfterCancellation!.Value, 0, 1);
        Assert.InRange(summary.StepsRun, 3, 1000);
        Assert.InRange(await page.EvaluateAsync<int>(received), 3, summary.StepsRun);
        await Expect(page.Locator("#stop")).ToBeDisabledAsync();
        await Expect(page.Locator("#classify")).ToBeEnabledAsync();

        // A drawing on the canvas (sent as FP32 pixels) and an uploaded JPEG of another size (sent as the file).
        await page.Locator("#clear").ClickAsync();
        var box = (await page.Locator("#canvas").BoundingBoxAsync())!;
        await page.Mouse.MoveAsync(box.X + box.Width * 0.3f, box.Y + box.Height * 0.2f);
        await page.Mouse.DownAsync();
        await page.Mouse.MoveAsync(box.X + box.Width * 0.7f, box.Y + box.Height * 0.8f, new MouseMoveOptions { Steps = 8 });
        await page.Mouse.UpAsync();
        Assert.True(await page.EvaluateAsync<bool>("() => window.ecmtState.input.kind === 'drawing'"));
        Assert.True(await page.EvaluateAsync<int>(
            "() => { const d = document.getElementById('canvas').getContext('2d').getImageData(0, 0, 28, 28).data; let n = 0; for (let i = 0; i < d.length; i += 4) n += d[i] > 0; return n; }") > 10,
            "the stroke reached the canvas");
        await page.Locator("#max-steps").FillAsync("2");
        await page.Locator("#classify").ClickAsync();
        await Expect(state).ToHaveAttributeAsync("data-state", "done");
        Assert.Equal(2, await page.EvaluateAsync<int>(received));

        var jpeg = Path.Combine(Path.GetTempPath(), $"ecmt-upload-{Environment.ProcessId}.jpg");
        try
        {
            using (var bitmap = new SKBitmap(60, 40))
            {
                bitmap.Erase(SKColors.Black);
                using (var canvas = new SKCanvas(bitmap)) canvas.DrawRect(20, 8, 20, 24, new SKPaint { Color = SKColors.Orange });
                using var data = bitmap.Encode(SKEncodedImageFormat.Jpeg, 90);
                await File.WriteAllBytesAsync(jpeg, data.ToArray());
            }
            await page.Locator("#upload").SetInputFilesAsync(jpeg);
            await Expect(page.Locator("#source")).ToContainTextAsync("upload ecmt-upload");
            await page.Locator("#classify").ClickAsync();
            await Expect(state).ToHaveAttributeAsync("data-state", "done");
        }
        finally
        {
            File.Delete(jpeg);
        }
        Assert.Empty(consoleErrors);
    }

    [Fact]
    public async Task With_access_control_the_page_asks_for_a_key_and_keeps_it_for_the_session()
    {
        if (!File.Exists(Chromium))
        {
            Assert.False(Environment.GetEnvironmentVariable("ECMT_REQUIRE_BROWSER") == "1", $"{Chromium} is missing: apt-get install chromium");
            Assert.Skip($"{Chromium} is not installed (apt-get install chromium): the page is not tested in a browser here");
        }
        const string Key = "page-test-key";
        var dir = Directory.CreateTempSubdirectory("ecmt-page-access-");
        try
        {
            var file = Path.Combine(dir.FullName, "access.json");
            await File.WriteAllTextAsync(file, $$"""{"callers": [{"name": "page", "key_sha256": "{{AccessTests.Sha(Key)}}", "models": ["*"]}]}""");
            await using var host = await ServerHost.KestrelWithHttpAsync(["--backend=reference"], ("Ecmt:Access:File", file));
            using var playwright = await Playwright.CreateAsync();
            await using var browser = await playwright.Chromium.LaunchAsync(new BrowserTypeLaunchOptions
            {
                ExecutablePath = Chromium,
                Headless = true,
                Args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
            });
            var page = await browser.NewPageAsync();
            page.SetDefaultTimeout(60_000);
            SetDefaultExpectTimeout(60_000);
            var prompts = new List<string>();
            page.Dialog += async (_, dialog) =>
            {
                prompts.Add(dialog.Message);
                await dialog.AcceptAsync(Key);
            };
            await page.GotoAsync(host.HttpAddress!.ToString());
            // The model list (GET /ecmt/v1/models) answered 401: the page asked once, then listed the model.
            await Expect(page.Locator("#model")).ToHaveValueAsync(host.Models.Models.Single().Name);
            Assert.Single(prompts);
            Assert.Contains("no credential", prompts[0], StringComparison.Ordinal);
            Assert.Equal(Key, await page.EvaluateAsync<string>("() => sessionStorage.getItem('ecmt.apiKey')"));

            // The classification goes out with the kept key: no second prompt.
            await page.Locator("#samples button[data-sample='00000-ankle-boot']").ClickAsync();
            await page.Locator("#rule-none").CheckAsync();
            await page.Locator("#max-steps").FillAsync("2");
            await page.Locator("#classify").ClickAsync();
            await Expect(page.Locator("#state")).ToHaveAttributeAsync("data-state", "done");
            Assert.Single(prompts);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    static async Task Screenshot(IPage page)
    {
        var bytes = await page.ScreenshotAsync(new PageScreenshotOptions { FullPage = true });
        await File.WriteAllBytesAsync(Path.Combine(AppContext.BaseDirectory, "live-page.png"), bytes);
        if (Environment.GetEnvironmentVariable("ECMT_UPDATE_SCREENSHOT") == "1")
        {
            var root = new DirectoryInfo(AppContext.BaseDirectory);
            while (root is not null && !File.Exists(Path.Combine(root.FullName, "Ecmt.sln"))) root = root.Parent;
            await File.WriteAllBytesAsync(Path.Combine(root!.FullName, "docs", "live-page.png"), bytes);
        }
    }
}
