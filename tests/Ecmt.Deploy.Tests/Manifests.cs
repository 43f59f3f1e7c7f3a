namespace Ecmt.Deploy.Tests;

/// <summary>
/// deploy/k8s read as files: the kustomizations, the Kubernetes objects in the files they list, and the ConfigMaps
/// their generators make from env files. Checks read these directly, so they run without kubectl.
/// </summary>
static class Manifests
{
    public const string Root = "deploy/k8s";
    public const string DockerRoot = "deploy/docker";

    public static IReadOnlyList<string> Files { get; } =
        Repo.Files(Root).Where(f => f.EndsWith(".yaml", StringComparison.Ordinal) || f.EndsWith(".yml", StringComparison.Ordinal)).Order(StringComparer.Ordinal).ToList();

    public static bool IsKustomization(string path) => Path.GetFileName(path) is "kustomization.yaml" or "kustomization.yml";

    public static IReadOnlyList<(string Path, Y Doc)> Kustomizations { get; } =
        Files.Where(IsKustomization).Select(f => (f, YamlFiles.Load(f).Single())).ToList();

    /// <summary>Files a kustomization uses as patches (JSON 6902 lists or strategic merge fragments, not objects).</summary>
    public static IReadOnlySet<string> PatchFiles { get; } = Kustomizations
        .SelectMany(k => k.Doc["patches"].Items.Select(p => p["path"].Text).OfType<string>().Select(p => Resolve(k.Path, p)))
        .ToHashSet(StringComparer.Ordinal);

    /// <summary>Every Kubernetes object in deploy/k8s, with the file it is in.</summary>
    public static IReadOnlyList<(string Path, Y Object)> Objects { get; } = Files
        .Where(f => !IsKustomization(f) && !PatchFiles.Contains(f))
        .SelectMany(f => YamlFiles.Load(f).Select(d => (f, d)))
        .ToList();

    public static IEnumerable<Y> OfKind(string kind) => Objects.Select(o => o.Object).Where(o => o["kind"].Text == kind);

    public static Y Named(string kind, string name) =>
        OfKind(kind).SingleOrDefault(o => o["metadata"]["name"].Text == name) ?? throw new InvalidDataException($"no {kind} {name} in {Root}");

    /// <summary>A path written in a kustomization, relative to the repository root.</summary>
    public static string Resolve(string kustomizationPath, string entry) =>
        Repo.Relative(Path.GetFullPath(Path.Combine(Path.GetDirectoryName(Repo.Full(kustomizationPath))!, entry)));

    /// <summary>The ConfigMaps the kustomizations generate (name → data), from env files and literals.</summary>
    public static IReadOnlyDictionary<string, IReadOnlyDictionary<string, string>> GeneratedConfigMaps { get; } = Kustomizations
        .SelectMany(k => k.Doc["configMapGenerator"].Items.Select(g => (k.Path, Generator: g)))
        .ToDictionary(
            g => g.Generator["name"].String,
            g => (IReadOnlyDictionary<string, string>)ServerSettings.Merge(
                g.Generator["envs"].Items.Select(e => EnvFile(Resolve(g.Path, e.String))).Append(
                    g.Generator["literals"].Items.Select(l => Split(l.String))).ToArray()));

    /// <summary>KEY=VALUE lines; blank lines and # comments skipped.</summary>
    public static IEnumerable<KeyValuePair<string, string>> EnvFile(string relativePath) => Repo.Read(relativePath)
        .Split('\n').Select(l => l.Trim()).Where(l => l.Length > 0 && !l.StartsWith('#')).Select(Split).ToList();

    static KeyValuePair<string, string> Split(string line)
    {
        int eq = line.IndexOf('=', StringComparison.Ordinal);
        return eq < 0 ? KeyValuePair.Create(line, "") : KeyValuePair.Create(line[..eq], line[(eq + 1)..]);
    }

    public static IReadOnlyList<Workload> Workloads { get; } = OfKind("Deployment").Select(d => new Workload(d)).ToList();
}

/// <summary>A Deployment of ecmt-server and what its one server container would run with.</summary>
sealed class Workload(Y deployment)
{
    public Y Deployment { get; } = deployment;
    public string Name => Deployment["metadata"]["name"].String;
    public Y Pod => Deployment["spec"]["template"]["spec"];
    public IReadOnlyDictionary<string, string> PodLabels => Labels(Deployment["spec"]["template"]["metadata"]["labels"]);
    public Y Container => Pod["containers"].Items.Single();
    public string Image => Container["image"].String;

    /// <summary>The Dockerfile that builds this container's image: tag "cpu" → deploy/docker/Dockerfile.cpu.</summary>
    public string DockerfilePath => $"{Manifests.DockerRoot}/Dockerfile.{Image[(Image.LastIndexOf(':') + 1)..]}";

    /// <summary>Environment layers, lowest first: the image's ENV, the ConfigMaps of envFrom, the container's env values.</summary>
    public IEnumerable<KeyValuePair<string, string>>[] EnvironmentLayers => [
        Dockerfile.Load(DockerfilePath).Final.Env,
        .. Container["envFrom"].Items.Select(e => Manifests.GeneratedConfigMaps[e["configMapRef"]["name"].String]),
        Container["env"].Items.Where(e => e["value"].Exists).Select(e => KeyValuePair.Create(e["name"].String, e["value"].String)),
    ];

    public IReadOnlyDictionary<string, string> Environment => ServerSettings.Merge(EnvironmentLayers);
    public Server.EcmtOptions Options => ServerSettings.Effective(EnvironmentLayers);

    /// <summary>Port numbers of the container by name ("grpc" → 50051).</summary>
    public IReadOnlyDictionary<string, int> Ports => Container["ports"].Items.ToDictionary(p => p["name"].String, p => p["containerPort"].Int);

    public static IReadOnlyDictionary<string, string> Labels(Y map) => map.Pairs.ToDictionary(p => p.Key, p => p.Value.String);

    /// <summary>Whether a label selector (matchLabels or a Service's plain map) picks this workload's pods.</summary>
    public bool Selected(Y selector) => Labels(selector).All(l => PodLabels.GetValueOrDefault(l.Key) == l.Value);

    public override string ToString() => Name;
}
