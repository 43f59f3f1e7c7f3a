using System.ComponentModel.DataAnnotations;
using System.Reflection;
using System.Text.RegularExpressions;
using Ecmt.Kernels;
using Ecmt.Server;
using Microsoft.Extensions.Configuration;

namespace Ecmt.Deploy.Tests;

/// <summary>
/// The server's side of every check: its options class (<see cref="EcmtOptions"/>) and its appsettings.json, bound the
/// way the server binds them (appsettings.json, then environment variables with <c>__</c> for <c>:</c>).
/// </summary>
static partial class ServerSettings
{
    public const string AppSettings = "src/Server/appsettings.json";
    public const string Readme = "src/Server/README.md";

    /// <summary>Every bindable key of the options class, as configuration paths ("Ecmt:Limits:MaxSteps").</summary>
    public static readonly IReadOnlySet<string> Keys = CollectKeys(typeof(EcmtOptions), EcmtOptions.Section);

    static HashSet<string> CollectKeys(Type type, string prefix)
    {
        var keys = new HashSet<string>(StringComparer.OrdinalIgnoreCase);
        foreach (var p in type.GetProperties(BindingFlags.Public | BindingFlags.Instance))
        {
            var t = Nullable.GetUnderlyingType(p.PropertyType) ?? p.PropertyType;
            bool scalar = t.IsPrimitive || t.IsEnum || t == typeof(string) || t == typeof(decimal) || t == typeof(TimeSpan);
            if (scalar && p.SetMethod?.IsPublic == true) keys.Add($"{prefix}:{p.Name}");
            else if (!scalar && t.IsClass) keys.UnionWith(CollectKeys(t, $"{prefix}:{p.Name}"));
        }
        return keys;
    }

    /// <summary>The <c>ECMT_*</c> variables the server reads outside the <c>Ecmt</c> section: the backend's (from the code) and those its README documents.</summary>
    public static IReadOnlySet<string> LegacyVariables { get; } = new HashSet<string>(
        LegacyVariablePattern().Matches(Repo.Read(Readme)).Select(m => m.Value).Append(Backends.EnvironmentVariable), StringComparer.Ordinal);

    [GeneratedRegex(@"\bECMT_[A-Z_]+[A-Z]\b")]
    private static partial Regex LegacyVariablePattern();

    /// <summary>Configuration sections other than Ecmt that the server reads from the environment (ASP.NET Core logging).</summary>
    static readonly string[] ForeignSections = ["Logging"];

    /// <summary>Variable prefixes of the runtime and libraries in the images, which the server's configuration never sees.</summary>
    static readonly string[] ForeignPrefixes = ["DOTNET_", "ASPNETCORE_", "OPENBLAS_", "NVIDIA_"];
    static readonly string[] ForeignNames = ["LD_LIBRARY_PATH"];

    /// <summary>Why an environment variable name set by a deployment file would not do what it seems to, or null when it is fine.</summary>
    public static string? Problem(string name)
    {
        if (name.Contains("__", StringComparison.Ordinal))
        {
            var key = name.Replace("__", ":", StringComparison.Ordinal);
            var section = key[..key.IndexOf(':', StringComparison.Ordinal)];
            if (section.Equals(EcmtOptions.Section, StringComparison.OrdinalIgnoreCase))
                return Keys.Contains(key) ? null : $"{name}: the server has no setting {key} (EcmtOptions has: {string.Join(", ", Keys.Order())})";
            return ForeignSections.Contains(section, StringComparer.OrdinalIgnoreCase) ? null : $"{name}: no configuration section {section} is read by the server";
        }
        if (name.StartsWith("ECMT", StringComparison.OrdinalIgnoreCase))
            return LegacyVariables.Contains(name) ? null
                : $"{name}: not a server variable (settings are Ecmt__Section__Key with two underscores; the others are {string.Join(", ", LegacyVariables)})";
        if (ForeignPrefixes.Any(p => name.StartsWith(p, StringComparison.Ordinal)) || ForeignNames.Contains(name)) return null;
        return $"{name}: neither a server setting nor a known runtime or library variable";
    }

    /// <summary>
    /// The options the server would run with: appsettings.json, then each layer of environment variables in order
    /// (later wins), bound to <see cref="EcmtOptions"/> as ServerApp does.
    /// </summary>
    public static EcmtOptions Effective(params IEnumerable<KeyValuePair<string, string>>[] environmentLayers)
    {
        // As the environment provider reads them: A__B is the key A:B, keys compare without case, a later one wins.
        var keys = new Dictionary<string, string?>(StringComparer.OrdinalIgnoreCase);
        foreach (var (name, value) in Merge(environmentLayers))
            keys[name.Replace("__", ConfigurationPath.KeyDelimiter, StringComparison.Ordinal)] = value;
        var config = new ConfigurationBuilder()
            .AddJsonFile(Repo.Full(AppSettings), optional: false)
            .AddInMemoryCollection(keys)
            .Build();
        var options = new EcmtOptions();
        config.GetSection(EcmtOptions.Section).Bind(options);
        return options;
    }

    public static Dictionary<string, string> Merge(params IEnumerable<KeyValuePair<string, string>>[] layers)
    {
        var merged = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var layer in layers)
            foreach (var (k, v) in layer) merged[k] = v;
        return merged;
    }

    /// <summary>The backend the server would choose: Ecmt:Backend, else ECMT_BACKEND, else auto (ModelHost's rule).</summary>
    public static BackendKind Backend(EcmtOptions options, IReadOnlyDictionary<string, string> environment) =>
        Backends.Parse(string.IsNullOrWhiteSpace(options.Backend) ? environment.GetValueOrDefault(Backends.EnvironmentVariable) : options.Backend);

    /// <summary>The validation the server runs at startup (data annotations of every options class, DefaultSteps ≤ MaxSteps).</summary>
    public static IReadOnlyList<string> ValidationErrors(EcmtOptions options)
    {
        var errors = new List<ValidationResult>();
        foreach (object part in new object[] { options, options.Limits, options.Shutdown, options.Tls, options.Access })
            Validator.TryValidateObject(part, new ValidationContext(part), errors, validateAllProperties: true);
        var messages = errors.Select(e => e.ErrorMessage ?? "invalid").ToList();
        if (options.DefaultSteps > options.Limits.MaxSteps) messages.Add("DefaultSteps exceeds Limits:MaxSteps");
        return messages;
    }
}
