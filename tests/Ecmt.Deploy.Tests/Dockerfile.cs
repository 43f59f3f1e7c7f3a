using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace Ecmt.Deploy.Tests;

/// <summary>One instruction: its keyword (upper case), its arguments as written, and the line it starts on.</summary>
sealed record Instruction(string Keyword, string Arguments, int Line);

/// <summary>COPY or ADD: its flags (<c>--from=build</c> → from: build), sources and destination.</summary>
sealed record Copy(IReadOnlyDictionary<string, string> Flags, IReadOnlyList<string> Sources, string Destination, int Line)
{
    public string? From => Flags.GetValueOrDefault("from");
}

/// <summary>A build stage: the image it starts from (global ARG defaults substituted), its name, its instructions.</summary>
sealed class Stage(string from, string? name, IReadOnlyList<Instruction> instructions)
{
    public string From { get; } = from;
    public string? Name { get; } = name;
    public IReadOnlyList<Instruction> Instructions { get; } = instructions;

    public IEnumerable<Instruction> All(string keyword) => Instructions.Where(i => i.Keyword == keyword);

    public IEnumerable<Copy> Copies => Instructions.Where(i => i.Keyword is "COPY" or "ADD").Select(i => Dockerfile.ParseCopy(i));

    /// <summary>ENV pairs in order (later wins when read into a dictionary).</summary>
    public IEnumerable<KeyValuePair<string, string>> Env => All("ENV").SelectMany(i => Dockerfile.ParseEnv(i.Arguments));

    public IReadOnlyDictionary<string, string> EnvMap
    {
        get
        {
            var map = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var (k, v) in Env) map[k] = v;
            return map;
        }
    }

    /// <summary>The text of every RUN instruction, continuation lines joined.</summary>
    public IEnumerable<string> Runs => All("RUN").Select(i => i.Arguments);
}

/// <summary>
/// A Dockerfile read into stages, by the rules of the Dockerfile reference: a trailing backslash continues the line,
/// lines starting with # are comments (also inside a continued instruction), ARGs before the first FROM are global.
/// </summary>
sealed partial class Dockerfile
{
    public required string Path { get; init; }
    public required IReadOnlyDictionary<string, string> GlobalArgs { get; init; }
    public required IReadOnlyList<Stage> Stages { get; init; }

    public Stage Final => Stages[^1];
    public Stage? Named(string name) => Stages.FirstOrDefault(s => string.Equals(s.Name, name, StringComparison.OrdinalIgnoreCase));

    public static Dockerfile Load(string relativePath)
    {
        var instructions = Instructions(Repo.Read(relativePath));
        var args = new Dictionary<string, string>(StringComparer.Ordinal);
        var stages = new List<Stage>();
        int i = 0;
        for (; i < instructions.Count && instructions[i].Keyword != "FROM"; i++)
        {
            if (instructions[i].Keyword != "ARG") continue;
            var (name, value) = SplitAssignment(instructions[i].Arguments.Trim());
            args[name] = value ?? "";
        }
        while (i < instructions.Count)
        {
            var from = instructions[i];
            var body = new List<Instruction>();
            for (i++; i < instructions.Count && instructions[i].Keyword != "FROM"; i++) body.Add(instructions[i]);
            // FROM [--platform=...] image [AS name]
            var words = Words(from.Arguments).Where(w => !w.StartsWith("--", StringComparison.Ordinal)).ToList();
            string image = Substitute(words[0], args);
            string? name = words.Count >= 3 && words[1].Equals("AS", StringComparison.OrdinalIgnoreCase) ? words[2] : null;
            stages.Add(new Stage(image, name, body));
        }
        return new Dockerfile { Path = relativePath, GlobalArgs = args, Stages = stages };
    }

    static List<Instruction> Instructions(string text)
    {
        var result = new List<Instruction>();
        var lines = text.Replace("\r\n", "\n", StringComparison.Ordinal).Split('\n');
        var current = new StringBuilder();
        int start = 0;
        for (int n = 0; n < lines.Length; n++)
        {
            var line = lines[n];
            var trimmed = line.TrimStart();
            if (trimmed.StartsWith('#')) continue;
            if (current.Length == 0)
            {
                if (trimmed.Length == 0) continue;
                start = n + 1;
            }
            var body = line.TrimEnd();
            bool continues = body.EndsWith('\\');
            current.Append(continues ? body[..^1] : body).Append(' ');
            if (continues) continue;
            var joined = current.ToString().Trim();
            current.Clear();
            int space = joined.IndexOfAny([' ', '\t']);
            result.Add(space < 0
                ? new Instruction(joined.ToUpperInvariant(), "", start)
                : new Instruction(joined[..space].ToUpperInvariant(), joined[(space + 1)..].Trim(), start));
        }
        return result;
    }

    public static Copy ParseCopy(Instruction copy)
    {
        var flags = new Dictionary<string, string>(StringComparer.Ordinal);
        var rest = copy.Arguments.Trim();
        while (rest.StartsWith("--", StringComparison.Ordinal))
        {
            int end = rest.IndexOf(' ', StringComparison.Ordinal);
            var flag = rest[2..end];
            int eq = flag.IndexOf('=', StringComparison.Ordinal);
            flags[eq < 0 ? flag : flag[..eq]] = eq < 0 ? "true" : flag[(eq + 1)..];
            rest = rest[end..].TrimStart();
        }
        var paths = rest.StartsWith('[') ? JsonSerializer.Deserialize<string[]>(rest)! : Words(rest).ToArray();
        return new Copy(flags, paths[..^1], paths[^1], copy.Line);
    }

    /// <summary>ENV key=value pairs (values may be quoted or empty), or the legacy form ENV key value.</summary>
    public static IEnumerable<KeyValuePair<string, string>> ParseEnv(string arguments)
    {
        var words = Words(arguments).ToList();
        if (words.Count > 0 && !words[0].Contains('=', StringComparison.Ordinal))
        {
            yield return KeyValuePair.Create(words[0], string.Join(' ', words.Skip(1)));
            yield break;
        }
        foreach (var word in words)
        {
            var (name, value) = SplitAssignment(word);
            yield return KeyValuePair.Create(name, value ?? "");
        }
    }

    static (string Name, string? Value) SplitAssignment(string word)
    {
        int eq = word.IndexOf('=', StringComparison.Ordinal);
        return eq < 0 ? (word, null) : (word[..eq], word[(eq + 1)..]);
    }

    /// <summary>Splits on blanks outside quotes; quotes are removed, a backslash keeps the next character.</summary>
    public static IEnumerable<string> Words(string text)
    {
        var word = new StringBuilder();
        bool any = false;
        char quote = '\0';
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            if (quote != '\0')
            {
                if (c == quote) quote = '\0';
                else if (c == '\\' && quote == '"' && i + 1 < text.Length) word.Append(text[++i]);
                else word.Append(c);
            }
            else if (c is '"' or '\'')
            {
                quote = c;
                any = true;
            }
            else if (c == '\\' && i + 1 < text.Length) word.Append(text[++i]);
            else if (char.IsWhiteSpace(c))
            {
                if (any || word.Length > 0) yield return word.ToString();
                word.Clear();
                any = false;
            }
            else word.Append(c);
        }
        if (any || word.Length > 0) yield return word.ToString();
    }

    /// <summary>$NAME and ${NAME} replaced by the given ARG defaults; unknown names are left as written.</summary>
    public static string Substitute(string text, IReadOnlyDictionary<string, string> args) =>
        VariablePattern().Replace(text, m =>
        {
            var name = m.Groups[1].Success ? m.Groups[1].Value : m.Groups[2].Value;
            return args.TryGetValue(name, out var value) ? value : m.Value;
        });

    [GeneratedRegex(@"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")]
    private static partial Regex VariablePattern();

    /// <summary>The exec-form (JSON array) arguments of ENTRYPOINT, CMD or HEALTHCHECK ... CMD.</summary>
    public static string[] ExecForm(string arguments)
    {
        int bracket = arguments.IndexOf('[', StringComparison.Ordinal);
        Assert.True(bracket >= 0, $"not in exec (JSON array) form: {arguments}");
        return JsonSerializer.Deserialize<string[]>(arguments[bracket..])!;
    }
}
