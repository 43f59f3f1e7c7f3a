using System.Globalization;
using YamlDotNet.Core;
using YamlDotNet.RepresentationModel;

namespace Ecmt.Deploy.Tests;

/// <summary>
/// A YAML node read the way manifests are navigated: a missing key gives an absent node rather than an exception, and
/// every node knows where it came from (file and key path) for assertion messages.
/// </summary>
sealed class Y(YamlNode? node, string where)
{
    public string Where { get; } = where;
    public bool Exists => node is not null;
    public bool IsMap => node is YamlMappingNode;
    public bool IsList => node is YamlSequenceNode;

    public Y this[string key] =>
        node is YamlMappingNode map && map.Children.TryGetValue(new YamlScalarNode(key), out var value)
            ? new Y(value, $"{Where}.{key}")
            : new Y(null, $"{Where}.{key}");

    public IEnumerable<Y> Items => node is YamlSequenceNode list ? list.Children.Select((c, i) => new Y(c, $"{Where}[{i}]")) : [];

    public IEnumerable<(string Key, Y Value)> Pairs => node is YamlMappingNode map
        ? map.Children.Select(p => (((YamlScalarNode)p.Key).Value ?? "", new Y(p.Value, $"{Where}.{((YamlScalarNode)p.Key).Value}")))
        : [];

    /// <summary>The scalar's text, or null when absent or not a scalar.</summary>
    public string? Text => (node as YamlScalarNode)?.Value;

    public string String => Text ?? throw new InvalidDataException($"{Where}: missing or not a scalar");

    public int Int => int.Parse(String, NumberStyles.Integer, CultureInfo.InvariantCulture);

    public override string ToString() => Text ?? Where;
}

static class YamlFiles
{
    /// <summary>Every document of a YAML file (merge keys such as <c>&lt;&lt;: *anchor</c> resolved).</summary>
    public static IReadOnlyList<Y> Load(string relativePath)
    {
        var stream = new YamlStream();
        using var reader = new StringReader(Repo.Read(relativePath));
        stream.Load(new MergingParser(new Parser(reader)));
        return Documents(stream, relativePath);
    }

    public static IReadOnlyList<Y> Parse(string text, string where)
    {
        var stream = new YamlStream();
        using var reader = new StringReader(text);
        stream.Load(new MergingParser(new Parser(reader)));
        return Documents(stream, where);
    }

    static List<Y> Documents(YamlStream stream, string where) =>
        stream.Documents.Select((d, i) => new Y(d.RootNode, stream.Documents.Count > 1 ? $"{where}#{i}" : where)).ToList();
}
