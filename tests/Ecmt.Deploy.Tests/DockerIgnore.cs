using System.Text;
using System.Text.RegularExpressions;

namespace Ecmt.Deploy.Tests;

/// <summary>
/// The build context's .dockerignore, matched as Docker does: patterns are Go filepath.Match globs plus <c>**</c> (any
/// number of folders), relative to the context root; a pattern excludes a path when it matches the path or one of
/// its parent folders; <c>!</c> makes an exception; the last matching pattern decides.
/// </summary>
sealed class DockerIgnore
{
    readonly List<(Regex Pattern, bool Exclude)> _rules = [];

    public DockerIgnore(string text)
    {
        foreach (var raw in text.Split('\n'))
        {
            var line = raw.Trim();
            if (line.Length == 0 || line.StartsWith('#')) continue;
            bool exception = line.StartsWith('!');
            if (exception) line = line[1..].Trim();
            line = Clean(line);
            _rules.Add((new Regex(ToRegex(line), RegexOptions.CultureInvariant), !exception));
        }
    }

    public static DockerIgnore Load() => new(Repo.Exists(".dockerignore") ? Repo.Read(".dockerignore") : "");

    /// <summary>Whether the build context leaves <paramref name="path"/> out ('/'-separated, relative to the root).</summary>
    public bool Excludes(string path)
    {
        path = Clean(path);
        bool excluded = false;
        foreach (var (pattern, exclude) in _rules)
            if (MatchesOrParentMatches(pattern, path)) excluded = exclude;
        return excluded;
    }

    static bool MatchesOrParentMatches(Regex pattern, string path)
    {
        if (pattern.IsMatch(path)) return true;
        for (int slash = path.IndexOf('/', StringComparison.Ordinal); slash >= 0; slash = path.IndexOf('/', slash + 1))
            if (pattern.IsMatch(path[..slash])) return true;
        return false;
    }

    // Like Go's filepath.Clean for the relative, '/'-separated paths used here: no leading "/" or "./", no trailing "/".
    static string Clean(string path)
    {
        var parts = path.Split('/', StringSplitOptions.RemoveEmptyEntries).Where(p => p != ".").ToList();
        return string.Join('/', parts);
    }

    static string ToRegex(string glob)
    {
        var regex = new StringBuilder("^");
        for (int i = 0; i < glob.Length; i++)
        {
            char c = glob[i];
            if (c == '*' && i + 1 < glob.Length && glob[i + 1] == '*')
            {
                i++;
                if (i + 1 < glob.Length && glob[i + 1] == '/')
                {
                    i++;
                    regex.Append("(.*/)?");
                }
                else regex.Append(".*");
            }
            else if (c == '*') regex.Append("[^/]*");
            else if (c == '?') regex.Append("[^/]");
            else if (c == '[')
            {
                int end = glob.IndexOf(']', i + 1);
                var body = glob[(i + 1)..end];
                regex.Append('[').Append(body.StartsWith('^') || body.StartsWith('!') ? "^" + body[1..] : body).Append(']');
                i = end;
            }
            else if (c == '\\' && i + 1 < glob.Length) regex.Append(Regex.Escape(glob[++i].ToString()));
            else regex.Append(Regex.Escape(c.ToString()));
        }
        return regex.Append('$').ToString();
    }
}
