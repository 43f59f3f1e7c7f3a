using Ecmt.Torch;

namespace Ecmt.Engine.Tests;

public class TorchRuntimeTests
{
    [Fact]
    public void After_loading_no_TorchSharp_library_needs_a_libstdcxx_version_the_system_lacks()
    {
        TorchRuntime.EnsureLoaded();
        using var t = TorchSharp.torch.ones(3);
        Assert.Equal(3f, t.sum().item<float>());

        var stdcxx = File.ReadLines("/proc/self/maps").Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries))
            .Where(p => p.Length >= 6 && p[5].Contains("libstdc++.so", StringComparison.Ordinal)).Select(p => p[5]).First();
        var provided = ElfVersionNeeds.DefinedVersions(stdcxx);
        Assert.Contains("GLIBCXX_3.4", provided);
        var library = Directory.EnumerateFiles(AppContext.BaseDirectory, "libLibTorchSharp.so", SearchOption.AllDirectories).First();
        var needs = ElfVersionNeeds.NeededVersions(library);
        Assert.Contains(needs, n => n.File == "libstdc++.so.6" && n.Version == "GLIBCXX_3.4.32");
        Assert.DoesNotContain(needs, n => n.File.StartsWith("libstdc++", StringComparison.Ordinal) && !n.IsWeak && !provided.Contains(n.Version));
        // Where the system already provides 3.4.32 the file is left alone.
        if (provided.Contains("GLIBCXX_3.4.32"))
            Assert.False(needs.Single(n => n.Version == "GLIBCXX_3.4.32").IsWeak);
    }

    [Fact]
    public void Weakening_a_need_sets_only_that_flag()
    {
        var library = Directory.EnumerateFiles(AppContext.BaseDirectory, "libLibTorchSharp.so", SearchOption.AllDirectories).First();
        var copy = Path.Combine(TestModels.TempDirectory(), "lib.so");
        var target = ElfVersionNeeds.NeededVersions(library).First(n => n.Version == "GLIBCXX_3.4.19");
        ElfVersionNeeds.WriteWithWeakNeeds(library, copy, [target]);
        var before = ElfVersionNeeds.NeededVersions(library);
        var after = ElfVersionNeeds.NeededVersions(copy);
        Assert.Equal(before.Count, after.Count);
        for (int i = 0; i < before.Count; i++)
        {
            Assert.Equal(before[i].Version, after[i].Version);
            Assert.Equal(before[i].IsWeak || before[i].Version == "GLIBCXX_3.4.19", after[i].IsWeak);
        }
        var original = File.ReadAllBytes(library);
        var patched = File.ReadAllBytes(copy);
        Assert.Equal(original.Length, patched.Length);
        Assert.InRange(original.Zip(patched).Count(p => p.First != p.Second), 1, 1);
    }
}
