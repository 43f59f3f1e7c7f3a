using Ecmt.Server.Access;

namespace Ecmt.Deploy.Tests;

/// <summary>
/// deploy/k8s/components/access-control: the access file as a Secret the server accepts, TLS from a mounted Secret,
/// probes the kubelet can run against a TLS server, and the NetworkPolicy (client ports from chosen namespaces, the
/// metrics port from monitoring only).
/// </summary>
public sealed partial class ManifestTests
{
    const string AccessComponent = "deploy/k8s/components/access-control";

    [Fact]
    public void The_access_secret_holds_an_access_file_the_server_accepts_with_hashes_only()
    {
        var k = YamlFiles.Load($"{AccessComponent}/kustomization.yaml").Single();
        var generator = Assert.Single(k["secretGenerator"].Items);
        Assert.Equal("ecmt-access", generator["name"].String);
        // No content hash in the name: an update changes the mounted file in place, and the server reloads it.
        Assert.Equal("true", generator["options"]["disableNameSuffixHash"].Text);
        var file = Assert.Single(generator["files"].Items).String;
        var list = AccessList.Parse(Repo.Read($"{AccessComponent}/{file}"), file);
        Assert.NotEmpty(list.Callers);
        Assert.All(list.Callers, c => Assert.True(c.KeySha256 is { Length: 64 } || c.CertificateSubject is not null, c.Name));
    }

    [Fact]
    public void The_network_policy_admits_client_ports_from_chosen_namespaces_and_metrics_from_monitoring_only()
    {
        var policy = Manifests.Named("NetworkPolicy", "ecmt-ingress");
        Assert.Equal("networking.k8s.io/v1", policy["apiVersion"].Text);
        var spec = policy["spec"];
        Assert.All(Manifests.Workloads, w => Assert.True(w.Selected(spec["podSelector"]["matchLabels"]), $"the policy does not select {w.Name}"));
        Assert.Equal(["Ingress"], spec["policyTypes"].Items.Select(t => t.String));
        var rules = spec["ingress"].Items.ToList();
        Assert.Equal(2, rules.Count);
        foreach (var w in Manifests.Workloads)
        {
            int PortOf(Y port) => int.TryParse(port["port"].String, out int n) ? n : w.Ports[port["port"].String];
            var byPorts = rules.ToDictionary(r => string.Join(",", r["ports"].Items.Select(PortOf).Order()), r => r);
            var clients = byPorts[$"{Math.Min(w.Options.Port, w.Options.HttpPort)},{Math.Max(w.Options.Port, w.Options.HttpPort)}"];
            var clientSource = Assert.Single(clients["from"].Items);
            // Chosen namespaces: a non-empty namespace selector, no pod or IP blocks that would admit more.
            Assert.NotEmpty(clientSource["namespaceSelector"]["matchLabels"].Pairs);
            Assert.False(clientSource["podSelector"].Exists || clientSource["ipBlock"].Exists);
            var metrics = byPorts[$"{w.Options.MetricsPort}"];
            var metricsSource = Assert.Single(metrics["from"].Items);
            Assert.Equal("monitoring", metricsSource["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"].Text);
            Assert.All(rules.SelectMany(r => r["ports"].Items), p => Assert.Equal("TCP", p["protocol"].Text));
        }
    }

    [Fact]
    public void The_deployment_patch_mounts_the_secrets_sets_only_server_settings_and_probes_over_http()
    {
        var ops = YamlFiles.Load($"{AccessComponent}/deployment-access.yaml").Single().Items.ToList();
        var env = ops.Where(o => o["path"].Text!.EndsWith("/env/-", StringComparison.Ordinal)).ToDictionary(o => o["value"]["name"].String, o => o["value"]["value"].String);
        Assert.All(env.Keys, name => Assert.Null(ServerSettings.Problem(name)));
        var mounts = ops.Where(o => o["path"].Text!.EndsWith("/volumeMounts/-", StringComparison.Ordinal)).ToDictionary(o => o["value"]["name"].String, o => o["value"]);
        var volumes = ops.Where(o => o["path"].Text!.EndsWith("/volumes/-", StringComparison.Ordinal)).ToDictionary(o => o["value"]["name"].String, o => o["value"]);

        // Every file setting points into a read-only mount of a Secret.
        string SecretOf(string file)
        {
            var mount = mounts.Values.Single(m => file.StartsWith(m["mountPath"].String + "/", StringComparison.Ordinal));
            Assert.Equal("true", mount["readOnly"].Text);
            return volumes[mount["name"].String]["secret"]["secretName"].String;
        }
        Assert.Equal("ecmt-access", SecretOf(env["Ecmt__Access__File"]));
        Assert.EndsWith("/access.json", env["Ecmt__Access__File"], StringComparison.Ordinal);
        Assert.Equal("ecmt-tls", SecretOf(env["Ecmt__Tls__CertificateFile"]));
        Assert.Equal("ecmt-tls", SecretOf(env["Ecmt__Tls__KeyFile"]));
        Assert.Equal("ecmt-tls", SecretOf(env["Ecmt__Tls__ClientCaFile"]));

        // With TLS on the gRPC port the kubelet's gRPC probes cannot connect: every probe is HTTP on the metrics port,
        // on health paths the server maps (open to probes: Ecmt:Access:OpenHealth defaults to true).
        Assert.True(new Server.Access.AccessOptions().OpenHealth);
        var serverApp = Repo.Read("src/Server/ServerApp.cs");
        foreach (var kind in new[] { "startupProbe", "readinessProbe", "livenessProbe" })
        {
            var probe = ops.Single(o => o["path"].Text!.EndsWith("/" + kind, StringComparison.Ordinal));
            Assert.Equal("replace", probe["op"].Text);
            Assert.Equal("metrics", probe["value"]["httpGet"]["port"].Text);
            Assert.Contains($"MapHealthChecks(\"{probe["value"]["httpGet"]["path"].String}\"", serverApp, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void The_access_control_component_renders_on_both_pools()
    {
        var kubectl = FindOnPath("kubectl");
        if (kubectl is null) Assert.Skip("kubectl is not installed: kustomize rendering not checked");
        var scratch = Directory.CreateTempSubdirectory("ecmt-kustomize-access-");
        try
        {
            string Relative(string path) => Path.GetRelativePath(scratch.FullName, Repo.Full(path));
            File.WriteAllText(Path.Combine(scratch.FullName, "kustomization.yaml"), $"""
                apiVersion: kustomize.config.k8s.io/v1beta1
                kind: Kustomization
                namespace: ecmt
                resources:
                  - {Relative("deploy/k8s/base")}
                components:
                  - {Relative("deploy/k8s/components/cpu")}
                  - {Relative("deploy/k8s/components/gpu")}
                  - {Relative(AccessComponent)}
                """);
            var objects = YamlFiles.Parse(Kustomize(kubectl, scratch.FullName), "access-control");
            var secret = Assert.Single(objects, o => o["kind"].Text == "Secret");
            Assert.Equal("ecmt-access", secret["metadata"]["name"].Text);
            Assert.True(secret["data"]["access.json"].Exists);
            Assert.Equal("ecmt", Assert.Single(objects, o => o["kind"].Text == "NetworkPolicy")["metadata"]["namespace"].Text);
            var deployments = objects.Where(o => o["kind"].Text == "Deployment").ToList();
            Assert.Equal(2, deployments.Count);
            foreach (var d in deployments)
            {
                var container = d["spec"]["template"]["spec"]["containers"].Items.Single();
                var names = container["env"].Items.Select(e => e["name"].String).ToList();
                Assert.Contains("Ecmt__Access__File", names);
                Assert.Contains("ECMT_BACKEND", names); // the pool's own env is kept
                Assert.Equal("metrics", container["readinessProbe"]["httpGet"]["port"].Text);
                Assert.False(container["readinessProbe"]["grpc"].Exists);
                Assert.Equal(["access", "tls", "tmp"], d["spec"]["template"]["spec"]["volumes"].Items.Select(v => v["name"].String).Order(StringComparer.Ordinal));
            }
        }
        finally
        {
            scratch.Delete(recursive: true);
        }
    }
}
