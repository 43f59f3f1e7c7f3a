using System.Diagnostics;
using System.Text.RegularExpressions;

namespace Ecmt.Deploy.Tests;

/// <summary>deploy/k8s as YAML: every file parses, the expected objects are there, the kustomizations hold together.</summary>
public sealed partial class ManifestTests
{
    [Fact]
    public void Every_yaml_file_under_deploy_parses_and_every_object_has_api_version_kind_and_a_valid_name()
    {
        var files = Repo.Files("deploy").Where(f => f.EndsWith(".yaml", StringComparison.Ordinal) || f.EndsWith(".yml", StringComparison.Ordinal)).ToList();
        Assert.True(files.Count >= 15, $"only {files.Count} YAML files under deploy/");
        foreach (var file in files)
        {
            var docs = YamlFiles.Load(file);
            Assert.NotEmpty(docs);
            Assert.All(docs, d => Assert.True(d.IsMap || d.IsList, $"{d.Where}: neither a mapping nor a list"));
        }
        Assert.NotEmpty(Manifests.Objects);
        foreach (var (path, o) in Manifests.Objects)
        {
            Assert.True(o["apiVersion"].Text is { Length: > 0 }, $"{path}: object without apiVersion");
            Assert.True(o["kind"].Text is { Length: > 0 }, $"{path}: object without kind");
            var name = o["metadata"]["name"].Text;
            Assert.True(name is not null && DnsLabel().IsMatch(name), $"{path}: {o["kind"]} name '{name}' is not a DNS-1123 label");
        }
    }

    [GeneratedRegex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")]
    private static partial Regex DnsLabel();

    [Fact]
    public void The_expected_objects_are_there()
    {
        Assert.Equal(["ecmt-cpu", "ecmt-gpu"], Manifests.Workloads.Select(w => w.Name).Order(StringComparer.Ordinal));
        Assert.Equal("None", Manifests.Named("Service", "ecmt-headless")["spec"]["clusterIP"].Text);
        Assert.Equal("ClusterIP", Manifests.Named("Service", "ecmt")["spec"]["type"].Text);
        Assert.Single(Manifests.OfKind("Namespace"));
        Assert.Single(Manifests.OfKind("ServiceAccount"));
        Assert.Single(Manifests.GeneratedConfigMaps);
        Assert.Equal(2, Manifests.OfKind("HorizontalPodAutoscaler").Count());
        Assert.Equal(2, Manifests.OfKind("PodDisruptionBudget").Count());
        Assert.Single(Manifests.OfKind("GRPCRoute"));
        Assert.Single(Manifests.OfKind("HTTPRoute"));
        Assert.Single(Manifests.OfKind("Gateway"));
        Assert.Equal(2, Manifests.OfKind("Ingress").Count());
        foreach (var hpa in Manifests.OfKind("HorizontalPodAutoscaler"))
            Assert.Equal("autoscaling/v2", hpa["apiVersion"].Text);
        foreach (var pdb in Manifests.OfKind("PodDisruptionBudget"))
            Assert.Equal("policy/v1", pdb["apiVersion"].Text);
    }

    [Fact]
    public void Every_path_a_kustomization_names_exists_and_every_manifest_file_is_used()
    {
        var used = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (path, k) in Manifests.Kustomizations)
        {
            var kind = k["kind"].String;
            Assert.True(kind is "Kustomization" or "Component", $"{path}: kind {kind}");
            foreach (var entry in k["resources"].Items)
            {
                var target = Manifests.Resolve(path, entry.String);
                if (Directory.Exists(Repo.Full(target)))
                    Assert.Equal("Kustomization", KustomizationIn(target, entry.Where)["kind"].Text);
                else
                    Assert.True(File.Exists(Repo.Full(target)), $"{entry.Where}: {target} does not exist");
                used.Add(target);
            }
            foreach (var entry in k["components"].Items)
                Assert.Equal("Component", KustomizationIn(Manifests.Resolve(path, entry.String), entry.Where)["kind"].Text);
            foreach (var patch in k["patches"].Items.Select(p => p["path"]).Where(p => p.Exists))
                Assert.True(File.Exists(Repo.Full(Manifests.Resolve(path, patch.String))), $"{patch.Where}: no such file");
            foreach (var env in k["configMapGenerator"].Items.SelectMany(g => g["envs"].Items))
                Assert.True(File.Exists(Repo.Full(Manifests.Resolve(path, env.String))), $"{env.Where}: no such file");
        }
        var orphans = Manifests.Objects.Select(o => o.Path).Distinct().Where(p => !used.Contains(p)).ToList();
        Assert.True(orphans.Count == 0, $"manifest files no kustomization lists: {string.Join(", ", orphans)}");
    }

    static Y KustomizationIn(string directory, string where)
    {
        var file = $"{directory}/kustomization.yaml";
        Assert.True(File.Exists(Repo.Full(file)), $"{where}: {directory} holds no kustomization.yaml");
        return YamlFiles.Load(file).Single();
    }

    /// <summary>
    /// What the static checks cannot see: kustomize's own rendering (generator hashes and the name references to them,
    /// namespaces, components' patches). Runs where kubectl is installed; nothing here talks to a cluster.
    /// </summary>
    [Fact]
    public void Overlays_render_with_kubectl_kustomize_into_one_namespace_with_resolved_config_references()
    {
        var kubectl = FindOnPath("kubectl");
        if (kubectl is null) Assert.Skip("kubectl is not installed: kustomize rendering not checked");

        var overlays = new Dictionary<string, string[]>
        {
            ["deploy/k8s/overlays/cpu"] = ["ecmt-cpu"],
            ["deploy/k8s/overlays/gpu"] = ["ecmt-gpu"],
            ["deploy/k8s/overlays/cpu-gpu"] = ["ecmt-cpu", "ecmt-gpu"],
        };
        foreach (var (overlay, deployments) in overlays)
        {
            var objects = YamlFiles.Parse(Kustomize(kubectl, Repo.Full(overlay)), overlay);
            Assert.All(objects.Where(o => o["kind"].Text != "Namespace"), o => Assert.Equal("ecmt", o["metadata"]["namespace"].Text));
            Assert.Equal(deployments, objects.Where(o => o["kind"].Text == "Deployment").Select(o => o["metadata"]["name"].String).Order(StringComparer.Ordinal));
            Assert.Equal(deployments, objects.Where(o => o["kind"].Text == "HorizontalPodAutoscaler").Select(o => o["spec"]["scaleTargetRef"]["name"].String).Order(StringComparer.Ordinal));
            var configMaps = objects.Where(o => o["kind"].Text == "ConfigMap").Select(o => o["metadata"]["name"].String).ToHashSet(StringComparer.Ordinal);
            var generated = Assert.Single(configMaps);
            Assert.Matches("^ecmt-config-[a-z0-9]{10}$", generated);
            foreach (var d in objects.Where(o => o["kind"].Text == "Deployment"))
                foreach (var container in d["spec"]["template"]["spec"]["containers"].Items)
                    foreach (var source in container["envFrom"].Items)
                        Assert.Contains(source["configMapRef"]["name"].String, configMaps);
        }

        // The optional autoscaling component on top of both pools, from a temporary overlay outside the tree (kustomize
        // takes only relative paths to other kustomizations).
        var scratch = Directory.CreateTempSubdirectory("ecmt-kustomize-");
        try
        {
            File.WriteAllText(Path.Combine(scratch.FullName, "kustomization.yaml"), $"""
                apiVersion: kustomize.config.k8s.io/v1beta1
                kind: Kustomization
                namespace: ecmt
                resources:
                  - {Path.GetRelativePath(scratch.FullName, Repo.Full("deploy/k8s/base"))}
                components:
                  - {Path.GetRelativePath(scratch.FullName, Repo.Full("deploy/k8s/components/cpu"))}
                  - {Path.GetRelativePath(scratch.FullName, Repo.Full("deploy/k8s/components/gpu"))}
                  - {Path.GetRelativePath(scratch.FullName, Repo.Full("deploy/k8s/components/autoscale-on-streams"))}
                """);
            var objects = YamlFiles.Parse(Kustomize(kubectl, scratch.FullName), "autoscale-on-streams");
            var hpas = objects.Where(o => o["kind"].Text == "HorizontalPodAutoscaler").ToList();
            Assert.Equal(2, hpas.Count);
            Assert.All(hpas, h => Assert.Equal("ecmt_classify_active_streams", Assert.Single(h["spec"]["metrics"].Items)["pods"]["metric"]["name"].Text));
        }
        finally
        {
            scratch.Delete(recursive: true);
        }

        foreach (var proxy in new[] { "deploy/k8s/proxy/gateway-api", "deploy/k8s/proxy/ingress-nginx" })
            Assert.All(YamlFiles.Parse(Kustomize(kubectl, Repo.Full(proxy)), proxy), o => Assert.Equal("ecmt", o["metadata"]["namespace"].Text));
    }

    static string Kustomize(string kubectl, string directory)
    {
        var start = new ProcessStartInfo(kubectl, ["kustomize", directory])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        Assert.True(process.WaitForExit(TimeSpan.FromSeconds(120)), $"kubectl kustomize {directory} did not finish");
        Assert.True(process.ExitCode == 0, $"kubectl kustomize {directory}: {stderr.Result}");
        return stdout.Result;
    }

    static string? FindOnPath(string program) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
            .Select(dir => Path.Combine(dir, program)).FirstOrDefault(File.Exists);
}
