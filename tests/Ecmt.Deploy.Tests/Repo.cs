namespace Ecmt.Deploy.Tests;

/// <summary>The repository these tests run in: its root (the folder of Ecmt.sln) and paths relative to it ('/'-separated).</summary>
static class Repo
{
    public static readonly string Root = FindRoot();

    static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Ecmt.sln"))) return dir.FullName;
        throw new DirectoryNotFoundException($"no Ecmt.sln above {AppContext.BaseDirectory}");
    }

    public static string Full(string relative) => Path.Combine(Root, relative.Replace('/', Path.DirectorySeparatorChar));

    public static string Relative(string full) => Path.GetRelativePath(Root, full).Replace(Path.DirectorySeparatorChar, '/');

    public static bool Exists(string relative) => File.Exists(Full(relative)) || Directory.Exists(Full(relative));

    public static string Read(string relative) => File.ReadAllText(Full(relative));

    /// <summary>Files under <paramref name="relativeDirectory"/>, relative to the root, skipping .git and build outputs.</summary>
    public static IEnumerable<string> Files(string relativeDirectory)
    {
        var start = Full(relativeDirectory);
        if (!Directory.Exists(start)) yield break;
        var pending = new Stack<string>([start]);
        while (pending.Count > 0)
        {
            var dir = pending.Pop();
            foreach (var file in Directory.EnumerateFiles(dir)) yield return Relative(file);
            foreach (var sub in Directory.EnumerateDirectories(dir))
                if (Path.GetFileName(sub) is not (".git" or "bin" or "obj")) pending.Push(sub);
        }
    }
}
