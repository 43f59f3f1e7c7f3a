using System.Globalization;
using System.Text.RegularExpressions;
using Ecmt.Kernels;
using Ecmt.Server;

namespace Ecmt.Deploy.Tests;

/// <summary>
/// The Kubernetes manifests against the server they run: every setting is one the server reads, ports and probes
/// are the server's ports (appsettings.json overlaid with the image's ENV, the ConfigMap and the container's env),
/// probe service names follow the server's health naming, the shutdown budget covers the server's drain.
/// </summary>
public sealed partial class KubernetesTests
{
    public static TheoryData<string> Workloads() => new(Manifests.Workloads.Select(w => w.Name));

    static Workload Get(string name) => Manifests.Workloads.Single(w => w.Name == name);

    [Fact]
    public void Every_environment_variable_the_manifests_set_is_one_the_server_or_its_runtime_reads()
    {
        var names = Manifests.GeneratedConfigMaps.SelectMany(c => c.Value.Keys.Select(k => (Where: $"ConfigMap {c.Key}", Name: k)))
            .Concat(Manifests.Workloads.SelectMany(w => w.Container["env"].Items.Select(e => (Where: w.Name, Name: e["name"].String))))
            .ToList();
        Assert.Contains(names, n => n.Name == "Ecmt__Port");
        var problems = names.Select(n => ServerSettings.Problem(n.Name) is { } p ? $"{n.Where}: {p}" : null).OfType<string>().ToList();
        Assert.True(problems.Count == 0, string.Join("\n", problems));
    }

    [Theory]
    [MemberData(nameof(Workloads))]
    public void Settings_are_valid_and_choose_the_pools_backend(string name)
    {
        var w = Get(name);
        Assert.Empty(ServerSettings.ValidationErrors(w.Options));
        // Nothing overrides the settings on the command line, so the environment is the whole story.
        Assert.False(w.Container["args"].Exists || w.Container["command"].Exists, $"{name}: args/command would override the checked settings");
        var backend = ServerSettings.Backend(w.Options, w.Environment);
        bool wantsGpu = GpuLimit(w) > 0;
        Assert.Equal(wantsGpu ? BackendKind.Cuda : BackendKind.FastCpu, backend);
    }

    [Theory]
    [MemberData(nameof(Workloads))]
    public void Container_ports_are_the_servers_ports(string name)
    {
        var w = Get(name);
        var o = w.Options;
        Assert.Equal(o.Port, w.Ports["grpc"]);
        Assert.True(o.HttpPort > 0, "REST and the page have their own port");
        Assert.Equal(o.HttpPort, w.Ports["http"]);
        Assert.True(o.MetricsPort > 0, "the manifests scrape /metrics on its own port");
        Assert.Equal(o.MetricsPort, w.Ports["metrics"]);
        Assert.Equal(o.MetricsPort.ToString(CultureInfo.InvariantCulture), w.Deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"].Text);
        Assert.Equal("/metrics", w.Deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"].Text);
    }

    [Theory]
    [MemberData(nameof(Workloads))]
    public void Probes_ask_grpc_health_on_the_grpc_port_for_names_the_server_serves(string name)
    {
        var w = Get(name);
        var o = w.Options;
        // The names the server registers: "" and the classifier for the whole server, one per model.
        var served = new HashSet<string>(StringComparer.Ordinal) { HealthNames.Server, HealthNames.Classifier, HealthNames.Model(Engine.Model.ModelDirectory.DefaultModelName) };
        foreach (var kind in new[] { "startupProbe", "readinessProbe", "livenessProbe" })
        {
            var probe = w.Container[kind];
            Assert.True(probe.Exists, $"{name}: no {kind}");
            var grpc = probe["grpc"];
            Assert.True(grpc.Exists, $"{name}: {kind} is not a grpc.health.v1 probe");
            Assert.Equal(o.Port, grpc["port"].Int);
            var service = grpc["service"].Text ?? "";
            Assert.Contains(service, served);
            // Model names come and go with the mounted models; a pod's probes ask about the server as a whole.
            Assert.DoesNotContain('/', service);
        }
        // The kubelet runs liveness only after the startup probe passed, and "" turns SERVING only once every model
        // finished loading: the startup budget must cover loading, the liveness budget a stalled port.
        var startup = w.Container["startupProbe"];
        Assert.True(startup["periodSeconds"].Int * startup["failureThreshold"].Int >= 120, $"{name}: startup probe gives loading under 2 minutes");
    }

    [Fact]
    public void The_http_health_paths_the_image_check_uses_are_mapped_by_the_server()
    {
        var serverApp = Repo.Read("src/Server/ServerApp.cs");
        var mapped = HealthPath().Matches(serverApp).Select(m => m.Groups[1].Value).ToList();
        Assert.Contains("/healthz/ready", mapped);
        Assert.Contains("/healthz/ready", Repo.Read("deploy/docker/healthcheck.sh"));
    }

    [GeneratedRegex("MapHealthChecks\\(\"([^\"]+)\"")]
    private static partial Regex HealthPath();

    [Fact]
    public void Services_reach_the_pods_on_their_named_ports_and_the_headless_port_is_the_container_port()
    {
        foreach (var service in Manifests.OfKind("Service"))
        {
            var selected = Manifests.Workloads.Where(w => w.Selected(service["spec"]["selector"])).ToList();
            // Both pools behind every Service: clients and proxies see all ready pods.
            Assert.Equal(Manifests.Workloads.Count, selected.Count);
            foreach (var port in service["spec"]["ports"].Items)
            {
                foreach (var w in selected)
                {
                    var target = port["targetPort"].String;
                    int containerPort = int.TryParse(target, out var number) ? number : w.Ports.GetValueOrDefault(target, -1);
                    Assert.True(w.Ports.Values.Contains(containerPort), $"{port.Where}: targetPort {target} is no port of {w.Name}");
                    if (port["name"].Text == "grpc")
                    {
                        Assert.Equal(w.Options.Port, containerPort);
                        Assert.Equal("kubernetes.io/h2c", port["appProtocol"].Text);
                    }
                    if (port["name"].Text == "http")
                    {
                        Assert.Equal(w.Options.HttpPort, containerPort);
                        Assert.Equal("http", port["appProtocol"].Text);
                    }
                    // A headless Service does no port translation: clients dial the pod IP on the Service's port.
                    if (service["spec"]["clusterIP"].Text == "None") Assert.Equal(containerPort, port["port"].Int);
                }
            }
        }
        Assert.Equal("false", Manifests.Named("Service", "ecmt-headless")["spec"]["publishNotReadyAddresses"].Text);
    }

    [Theory]
    [MemberData(nameof(Workloads))]
    public void Each_pool_has_an_autoscaler_and_a_disruption_budget(string name)
    {
        var w = Get(name);
        var hpa = Assert.Single(Manifests.OfKind("HorizontalPodAutoscaler"), h => h["spec"]["scaleTargetRef"]["name"].Text == name);
        Assert.Equal("Deployment", hpa["spec"]["scaleTargetRef"]["kind"].Text);
        Assert.InRange(hpa["spec"]["minReplicas"].Int, 1, hpa["spec"]["maxReplicas"].Int);
        Assert.NotEmpty(hpa["spec"]["metrics"].Items);
        var pdb = Assert.Single(Manifests.OfKind("PodDisruptionBudget"), p => w.Selected(p["spec"]["selector"]["matchLabels"]));
        // Exactly this pool: a budget spanning pools would let a drain take all of one.
        Assert.Single(Manifests.Workloads, x => x.Selected(pdb["spec"]["selector"]["matchLabels"]));
        // maxUnavailable, not minAvailable: a pool scaled to its minimum can still be drained.
        Assert.Equal(1, pdb["spec"]["maxUnavailable"].Int);
        Assert.True(w.Selected(w.Deployment["spec"]["selector"]["matchLabels"]), $"{name}: its selector does not match its own pods");
    }

    [Theory]
    [MemberData(nameof(Workloads))]
    public void The_grace_period_covers_the_prestop_wait_the_drain_delay_and_the_stream_timeout(string name)
    {
        var w = Get(name);
        var shutdown = w.Options.Shutdown;
        int preStop = w.Container["lifecycle"]["preStop"]["sleep"]["seconds"].Text is { } s ? int.Parse(s, CultureInfo.InvariantCulture) : 0;
        Assert.True(preStop > 0, $"{name}: no preStop sleep: the endpoint would still be handed out after SIGTERM");
        int grace = w.Pod["terminationGracePeriodSeconds"].Int;
        double needed = preStop + shutdown.DrainDelaySeconds + shutdown.TimeoutSeconds + 5;
        Assert.True(grace >= needed,
            $"{name}: terminationGracePeriodSeconds {grace} < preStop {preStop} + DrainDelaySeconds {shutdown.DrainDelaySeconds} + TimeoutSeconds {shutdown.TimeoutSeconds} + 5");
        int livenessGrace = w.Container["livenessProbe"]["terminationGracePeriodSeconds"].Int;
        Assert.InRange(livenessGrace, 1, grace - 1);
    }

    [Theory]
    [MemberData(nameof(Workloads))]
    public void Gpu_pods_ask_for_a_gpu_and_may_land_on_gpu_nodes_and_cpu_pods_do_not(string name)
    {
        var w = Get(name);
        var resources = w.Container["resources"];
        foreach (var kind in new[] { "requests", "limits" })
            foreach (var resource in new[] { "cpu", "memory" })
                Assert.True(resources[kind][resource].Exists, $"{name}: no {kind}.{resource}");
        var tolerated = w.Pod["tolerations"].Items.Select(t => t["key"].Text).ToList();
        if (ServerSettings.Backend(w.Options, w.Environment) == BackendKind.Cuda)
        {
            Assert.Equal(1, GpuLimit(w));
            Assert.Contains("nvidia.com/gpu", tolerated);
            Assert.True(w.Pod["nodeSelector"].Pairs.Any(p => p.Key.StartsWith("nvidia.com/", StringComparison.Ordinal)), $"{name}: no GPU node selector");
            Assert.EndsWith(":cuda", w.Image, StringComparison.Ordinal);
        }
        else
        {
            Assert.Equal(0, GpuLimit(w));
            Assert.DoesNotContain("nvidia.com/gpu", tolerated);
            Assert.EndsWith(":cpu", w.Image, StringComparison.Ordinal);
            // OpenBLAS would size its threads from the node's cores: it gets the container's CPU limit.
            var threads = Assert.Single(w.Container["env"].Items, e => e["name"].Text == "OPENBLAS_NUM_THREADS");
            Assert.Equal("limits.cpu", threads["valueFrom"]["resourceFieldRef"]["resource"].Text);
        }
    }

    static int GpuLimit(Workload w) => w.Container["resources"]["limits"]["nvidia.com/gpu"].Text is { } n ? int.Parse(n, CultureInfo.InvariantCulture) : 0;

    [Theory]
    [MemberData(nameof(Workloads))]
    public void Pods_run_as_the_images_non_root_user_on_a_read_only_root_with_a_writable_tmp(string name)
    {
        var w = Get(name);
        var image = Dockerfile.Load(w.DockerfilePath);
        var user = image.Final.All("USER").Last().Arguments.Split(':')[0];
        Assert.Equal(user, w.Pod["securityContext"]["runAsUser"].String);
        Assert.Equal("true", w.Pod["securityContext"]["runAsNonRoot"].Text);
        Assert.Equal("RuntimeDefault", w.Pod["securityContext"]["seccompProfile"]["type"].Text);
        var container = w.Container["securityContext"];
        Assert.Equal("true", container["readOnlyRootFilesystem"].Text);
        Assert.Equal("false", container["allowPrivilegeEscalation"].Text);
        Assert.Equal(["ALL"], container["capabilities"]["drop"].Items.Select(i => i.String));
        var tmp = Assert.Single(w.Container["volumeMounts"].Items, m => m["mountPath"].Text == "/tmp");
        Assert.True(Assert.Single(w.Pod["volumes"].Items, v => v["name"].Text == tmp["name"].Text)["emptyDir"].Exists);
        Assert.Equal("false", w.Pod["automountServiceAccountToken"].Text);
    }

    [Fact]
    public void Autoscaling_on_streams_uses_a_metric_the_server_exports_below_its_stream_limit()
    {
        var patch = YamlFiles.Load("deploy/k8s/components/autoscale-on-streams/hpa-streams.yaml").Single();
        var metric = Assert.Single(Assert.Single(patch.Items)["value"].Items)["pods"];
        var name = metric["metric"]["name"].String;
        Assert.Contains($"`{name}`", Repo.Read(ServerSettings.Readme));
        int target = int.Parse(metric["target"]["averageValue"].String, CultureInfo.InvariantCulture);
        Assert.All(Manifests.Workloads, w => Assert.InRange(target, 1, w.Options.Limits.MaxConcurrentStreams - 1));
    }

    [Fact]
    public void Proxies_route_the_contracts_services_to_the_cluster_ip_services_grpc_port()
    {
        var service = Manifests.Named("Service", "ecmt");
        var grpcPort = Assert.Single(service["spec"]["ports"].Items, p => p["name"].Text == "grpc");
        var contract = ProtoServices();
        Assert.Contains(HealthNames.Classifier, contract);

        var route = Assert.Single(Manifests.OfKind("GRPCRoute"));
        var gateway = Assert.Single(Manifests.OfKind("Gateway"));
        Assert.Equal(gateway["metadata"]["name"].Text, Assert.Single(route["spec"]["parentRefs"].Items)["name"].Text);
        foreach (var rule in route["spec"]["rules"].Items)
        {
            foreach (var match in rule["matches"].Items)
                Assert.Contains(match["method"]["service"].String, contract.Append("grpc.health.v1.Health"));
            var backend = Assert.Single(rule["backendRefs"].Items);
            Assert.Equal("ecmt", backend["name"].Text);
            Assert.Equal(grpcPort["port"].Int, backend["port"].Int);
        }

        var ingress = Assert.Single(Manifests.OfKind("Ingress"), i => i["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"].Text == "GRPC");
        var bodyLimit = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"].String;
        Assert.EndsWith("m", bodyLimit, StringComparison.Ordinal);
        Assert.All(Manifests.Workloads, w => Assert.True(long.Parse(bodyLimit[..^1], CultureInfo.InvariantCulture) * 1024 * 1024 > w.Options.Limits.MaxMessageBytes,
            "the proxy would refuse messages the server accepts"));
        var paths = ingress["spec"]["rules"].Items.SelectMany(r => r["http"]["paths"].Items).ToList();
        // Every service of the contract that clients call (reflection stays internal) has its path.
        foreach (var name in contract.Where(c => !c.StartsWith("grpc.reflection", StringComparison.Ordinal)))
            Assert.Contains(paths, p => p["path"].Text == $"/{name}/");
        foreach (var path in paths)
        {
            Assert.Equal("ecmt", path["backend"]["service"]["name"].Text);
            Assert.Equal("grpc", path["backend"]["service"]["port"]["name"].Text);
        }
        // The same holds for the GRPCRoute: every service of the contract is routed.
        var routed = route["spec"]["rules"].Items.SelectMany(r => r["matches"].Items).Select(m => m["method"]["service"].String).ToList();
        Assert.All(contract, c => Assert.Contains(c, routed));
    }

    [Fact]
    public void Proxies_route_rest_and_the_page_to_the_http_port_on_a_host_name_of_their_own()
    {
        var service = Manifests.Named("Service", "ecmt");
        var httpPort = Assert.Single(service["spec"]["ports"].Items, p => p["name"].Text == "http");
        var gateway = Assert.Single(Manifests.OfKind("Gateway"));
        var route = Assert.Single(Manifests.OfKind("HTTPRoute"));
        var parent = Assert.Single(route["spec"]["parentRefs"].Items);
        Assert.Equal(gateway["metadata"]["name"].Text, parent["name"].Text);
        var listeners = gateway["spec"]["listeners"].Items.ToDictionary(l => l["name"].String, l => l["hostname"].String);
        var grpcRoute = Assert.Single(Manifests.OfKind("GRPCRoute"));
        string grpcListener = Assert.Single(grpcRoute["spec"]["parentRefs"].Items)["sectionName"].String;
        // A GRPCRoute and an HTTPRoute may not share a listener's host name.
        Assert.NotEqual(listeners[grpcListener], listeners[parent["sectionName"].String]);
        Assert.Equal([listeners[parent["sectionName"].String]], route["spec"]["hostnames"].Items.Select(h => h.String));
        var backend = Assert.Single(Assert.Single(route["spec"]["rules"].Items)["backendRefs"].Items);
        Assert.Equal(("ecmt", httpPort["port"].Int), (backend["name"].String, backend["port"].Int));

        var ingress = Assert.Single(Manifests.OfKind("Ingress"), i => i["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"].Text == "HTTP");
        // The per-step stream must reach the client line by line.
        Assert.Equal("off", ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-buffering"].Text);
        var path = Assert.Single(ingress["spec"]["rules"].Items.SelectMany(r => r["http"]["paths"].Items));
        Assert.Equal("/", path["path"].Text);
        Assert.Equal(("ecmt", "http"), (path["backend"]["service"]["name"].String, path["backend"]["service"]["port"]["name"].String));
    }

    /// <summary>Fully qualified service names of the contract: "package.Service" from protos/.</summary>
    static List<string> ProtoServices() => Repo.Files("protos").Where(f => f.EndsWith(".proto", StringComparison.Ordinal)).SelectMany(f =>
    {
        var text = Repo.Read(f);
        var package = ProtoPackage().Match(text).Groups[1].Value;
        return ProtoService().Matches(text).Select(m => $"{package}.{m.Groups[1].Value}");
    }).ToList();

    [GeneratedRegex(@"^\s*package\s+([\w.]+)\s*;", RegexOptions.Multiline)]
    private static partial Regex ProtoPackage();

    [GeneratedRegex(@"^\s*service\s+(\w+)", RegexOptions.Multiline)]
    private static partial Regex ProtoService();
}
