using System.Globalization;
using System.Text.RegularExpressions;
using System.Xml.Linq;
using Ecmt.Kernels;

namespace Ecmt.Deploy.Tests;

/// <summary>
/// The Dockerfiles, .dockerignore and compose file against the repository and the server: every COPY source is in
/// the build context, the publish builds the server's whole project closure (and nothing of libtorch), the runtime
/// stage has what the backends load, and ports, user, volume and health check agree with the server's settings.
/// </summary>
public sealed partial class DockerTests
{
    public const string ServerProject = "src/Server/Ecmt.Server.csproj";

    public static TheoryData<string> Dockerfiles() => new(["deploy/docker/Dockerfile.cpu", "deploy/docker/Dockerfile.cuda"]);

    [Theory]
    [MemberData(nameof(Dockerfiles))]
    public void Every_copied_path_exists_and_is_in_the_build_context(string path)
    {
        var dockerfile = Dockerfile.Load(path);
        var ignore = DockerIgnore.Load();
        var stages = new List<string>();
        foreach (var stage in dockerfile.Stages)
        {
            foreach (var copy in stage.Copies)
            {
                if (copy.From is { } from)
                {
                    Assert.True(stages.Contains(from, StringComparer.OrdinalIgnoreCase), $"{path}:{copy.Line}: COPY --from={from} names no earlier stage");
                    continue;
                }
                foreach (var source in copy.Sources)
                {
                    var relative = source.TrimEnd('/');
                    if (relative.StartsWith("models/", StringComparison.Ordinal) && !Repo.Exists(relative)) continue; // ShippedModel test
                    Assert.True(Repo.Exists(relative), $"{path}:{copy.Line}: COPY source {source} does not exist");
                    if (File.Exists(Repo.Full(relative)))
                        Assert.False(ignore.Excludes(relative), $"{path}:{copy.Line}: {source} is left out of the build context by .dockerignore");
                    else
                        Assert.True(Repo.Files(relative).Any(f => !ignore.Excludes(f)), $"{path}:{copy.Line}: nothing under {source} passes .dockerignore");
                }
            }
            if (stage.Name is not null) stages.Add(stage.Name);
        }
    }

    [Theory]
    [MemberData(nameof(Dockerfiles))]
    public void The_build_stage_publishes_the_server_with_its_whole_project_closure(string path)
    {
        var dockerfile = Dockerfile.Load(path);
        var build = dockerfile.Stages[0];
        var run = Assert.Single(build.Runs, r => PublishCommand().IsMatch(r));
        Assert.Equal(ServerProject, PublishCommand().Match(run).Groups[1].Value);
        Assert.True(File.Exists(Repo.Full(ServerProject)));

        // WORKDIR /src mirrors the repository: each project of the closure, and the shared build files, copied there.
        var copied = build.Copies.Where(c => c.From is null).SelectMany(c => c.Sources).Select(s => s.TrimEnd('/')).ToHashSet(StringComparer.Ordinal);
        foreach (var project in ProjectClosure(ServerProject))
        {
            Assert.Contains(project, copied);
            Assert.Contains(Path.GetDirectoryName(project)!.Replace('\\', '/'), copied);
        }
        foreach (var shared in new[] { "Directory.Build.props", "Directory.Packages.props", "protos" })
            Assert.Contains(shared, copied);

        // The published output is what the runtime stage copies and starts.
        var output = PublishOutput().Match(run).Groups[1].Value;
        Assert.NotEmpty(output);
        var fromBuild = Assert.Single(dockerfile.Final.Copies, c => c.From == build.Name);
        Assert.Equal(output.TrimEnd('/'), Assert.Single(fromBuild.Sources).TrimEnd('/'));
        var assembly = XDocument.Load(Repo.Full(ServerProject)).Descendants("AssemblyName").Single().Value;
        var entry = Dockerfile.ExecForm(dockerfile.Final.All("ENTRYPOINT").Single().Arguments);
        var workdir = dockerfile.Final.All("WORKDIR").Last().Arguments.TrimEnd('/');
        Assert.Contains(entry, e => e == $"{workdir}/{assembly}" || e == $"{workdir}/{assembly}.dll");
        Assert.True(fromBuild.Destination is "./" or "." || fromBuild.Destination.TrimEnd('/') == workdir, $"{path}: the publish output is not copied to WORKDIR {workdir}");
    }

    [GeneratedRegex(@"dotnet\s+publish\s+(\S+)")]
    private static partial Regex PublishCommand();

    [GeneratedRegex(@"\s-o\s+(\S+)")]
    private static partial Regex PublishOutput();

    [Fact]
    public void The_servers_closure_holds_no_libtorch()
    {
        var closure = ProjectClosure(ServerProject);
        Assert.Contains("src/Engine/Ecmt.Engine.csproj", closure);
        Assert.DoesNotContain("src/Torch/Ecmt.Torch.csproj", closure);
        var packages = closure.SelectMany(p => XDocument.Load(Repo.Full(p)).Descendants("PackageReference").Select(r => (string)r.Attribute("Include")!)).ToList();
        Assert.Contains("Grpc.AspNetCore", packages);
        Assert.DoesNotContain(packages, p => p.Contains("Torch", StringComparison.OrdinalIgnoreCase));
    }

    /// <summary>The project and every project it references, transitively ('/'-separated, relative to the root).</summary>
    static List<string> ProjectClosure(string project)
    {
        var seen = new List<string>();
        var pending = new Stack<string>([project]);
        while (pending.Count > 0)
        {
            var current = pending.Pop();
            if (seen.Contains(current)) continue;
            seen.Add(current);
            foreach (var reference in XDocument.Load(Repo.Full(current)).Descendants("ProjectReference"))
            {
                var include = ((string)reference.Attribute("Include")!).Replace('\\', '/');
                pending.Push(Repo.Relative(Path.GetFullPath(Path.Combine(Path.GetDirectoryName(Repo.Full(current))!, include))));
            }
        }
        return seen;
    }

    [Theory]
    [MemberData(nameof(Dockerfiles))]
    public void The_runtime_image_exposes_the_servers_ports_and_checks_its_readiness(string path)
    {
        var image = Dockerfile.Load(path).Final;
        var options = ServerSettings.Effective(image.Env);
        Assert.Empty(ServerSettings.ValidationErrors(options));
        var exposed = image.All("EXPOSE").SelectMany(e => Dockerfile.Words(e.Arguments)).Select(p => int.Parse(p.Split('/')[0], CultureInfo.InvariantCulture)).Order();
        Assert.Equal(new[] { options.Port, options.HttpPort, options.MetricsPort }.Order(), exposed);

        var check = Dockerfile.ExecForm(image.All("HEALTHCHECK").Single().Arguments);
        var script = Assert.Single(image.Copies, c => c.Destination == check[0]);
        var text = Repo.Read(Assert.Single(script.Sources));
        Assert.Equal("0755", script.Flags.GetValueOrDefault("chmod"));
        // The script's own default port (when Ecmt__MetricsPort is unset) is the server's.
        var fallback = ScriptDefaultPort().Match(text);
        Assert.True(fallback.Success, "healthcheck.sh reads Ecmt__MetricsPort with a default");
        Assert.Equal(ServerSettings.Effective().MetricsPort, int.Parse(fallback.Groups[1].Value, CultureInfo.InvariantCulture));
        Assert.Equal("SIGTERM", image.All("STOPSIGNAL").Single().Arguments);
    }

    [GeneratedRegex(@"\$\{Ecmt__MetricsPort:-(\d+)\}")]
    private static partial Regex ScriptDefaultPort();

    [Theory]
    [MemberData(nameof(Dockerfiles))]
    public void Every_environment_variable_the_images_set_is_read_and_the_backend_is_the_images_own(string path)
    {
        var image = Dockerfile.Load(path).Final;
        var problems = image.Env.Select(e => ServerSettings.Problem(e.Key)).OfType<string>().ToList();
        Assert.True(problems.Count == 0, string.Join("\n", problems));
        var env = image.EnvMap;
        var backend = ServerSettings.Backend(ServerSettings.Effective(image.Env), env);
        Assert.Equal(path.EndsWith(".cuda", StringComparison.Ordinal) ? BackendKind.Cuda : BackendKind.FastCpu, backend);
    }

    [Theory]
    [MemberData(nameof(Dockerfiles))]
    public void The_model_directory_is_a_volume_holding_the_shipped_models_and_the_user_is_not_root(string path)
    {
        var image = Dockerfile.Load(path).Final;
        var models = image.EnvMap["Ecmt__ModelDirectory"];
        var volumes = image.All("VOLUME").SelectMany(v => v.Arguments.StartsWith('[') ? Dockerfile.ExecForm(v.Arguments) : Dockerfile.Words(v.Arguments));
        Assert.Contains(models, volumes);
        // Every shipped model (a folder of models/ with a conversion) is copied to its own folder of the volume,
        // the default one included; nothing else lands there.
        var shipped = Directory.GetDirectories(Repo.Full("models"))
            .Where(d => File.Exists(Path.Combine(d, "conversion.json")))
            .Select(d => Path.GetFileName(d)!).Order(StringComparer.Ordinal).ToArray();
        Assert.Contains(Engine.Model.ModelDirectory.DefaultModelName, shipped);
        var copies = image.Copies.Where(c => c.Destination.StartsWith(models + "/", StringComparison.Ordinal)).ToArray();
        Assert.Equal(shipped, copies.Select(c => c.Destination.TrimEnd('/')[(models.Length + 1)..]).Order(StringComparer.Ordinal));
        foreach (var copy in copies)
            Assert.Equal($"models/{copy.Destination.TrimEnd('/')[(models.Length + 1)..]}", Assert.Single(copy.Sources).TrimEnd('/'));
        var user = image.All("USER").Last().Arguments.Split(':');
        Assert.True(int.TryParse(user[0], out var uid) && uid > 0, $"{path}: USER {user[0]} is not a numeric non-root user (runAsNonRoot needs a number)");
    }

    [Theory]
    [MemberData(nameof(Dockerfiles))]
    public void The_runtime_stage_installs_the_blas_the_cpu_backends_load(string path)
    {
        // src/Kernels/Cpu/OpenBlas.cs names the package in its error message: that is the package to install.
        var package = AptPackage().Match(Repo.Read("src/Kernels/Cpu/OpenBlas.cs")).Groups[1].Value;
        Assert.Equal("libopenblas0-pthread", package);
        Assert.Contains(Installed(Dockerfile.Load(path).Final), p => p == package);
    }

    [GeneratedRegex(@"apt-get install (\S+?)[\s)""]")]
    private static partial Regex AptPackage();

    static List<string> Installed(Stage stage) => stage.Runs
        .SelectMany(r => Regex.Matches(r, @"apt-get install((?:\s+[^&;|]+))").Select(m => m.Groups[1].Value))
        .SelectMany(Dockerfile.Words).Where(w => !w.StartsWith('-')).ToList();

    [Fact]
    public void The_images_use_the_dotnet_version_the_projects_target()
    {
        var target = XDocument.Load(Repo.Full("Directory.Build.props")).Descendants("TargetFramework").Single().Value;
        foreach (var path in new[] { "deploy/docker/Dockerfile.cpu", "deploy/docker/Dockerfile.cuda" })
        {
            var dockerfile = Dockerfile.Load(path);
            Assert.Equal($"net{dockerfile.GlobalArgs["DOTNET_VERSION"]}", target);
            Assert.StartsWith($"mcr.microsoft.com/dotnet/sdk:{dockerfile.GlobalArgs["DOTNET_VERSION"]}", dockerfile.Stages[0].From, StringComparison.Ordinal);
        }
        var cpu = Dockerfile.Load("deploy/docker/Dockerfile.cpu");
        Assert.StartsWith($"mcr.microsoft.com/dotnet/aspnet:{cpu.GlobalArgs["DOTNET_VERSION"]}", cpu.Final.From, StringComparison.Ordinal);
        Assert.Contains(cpu.Stages[0].Runs, r => r.Contains("--self-contained false", StringComparison.Ordinal));
    }

    [Fact]
    public void The_cuda_image_starts_from_nvidia_cuda_with_a_self_contained_server_that_needs_no_icu()
    {
        var cuda = Dockerfile.Load("deploy/docker/Dockerfile.cuda");
        Assert.StartsWith("nvidia/cuda:", cuda.Final.From, StringComparison.Ordinal);
        Assert.Contains("-base-", cuda.Final.From, StringComparison.Ordinal);
        Assert.Contains(cuda.Stages[0].Runs, r => r.Contains("--self-contained true", StringComparison.Ordinal));
        // No .NET runtime and no ICU in that image: the build must be globalization-invariant.
        Assert.DoesNotContain(Installed(cuda.Final), p => p.StartsWith("libicu", StringComparison.Ordinal));
        var invariant = XDocument.Load(Repo.Full("Directory.Build.props")).Descendants("InvariantGlobalization").Single().Value;
        Assert.Equal("true", invariant);
        Assert.Contains("compute", cuda.Final.EnvMap["NVIDIA_DRIVER_CAPABILITIES"].Split(','));
        // No CUDA toolkit libraries: ILGPU needs only the driver (the packages installed are all Ubuntu's).
        Assert.DoesNotContain(Installed(cuda.Final), p => p.StartsWith("cuda-", StringComparison.Ordinal) || p.StartsWith("libcu", StringComparison.Ordinal));
    }

    [Fact]
    public void Dockerignore_keeps_build_outputs_git_tests_and_other_projects_out_and_lets_the_sources_in()
    {
        var ignore = DockerIgnore.Load();
        foreach (var excluded in new[] { "src/Server/bin/Release/net10.0/ecmt-server.dll", "src/Engine/obj/project.assets.json", ".git/HEAD",
                     "tests/Ecmt.Server.Tests/KestrelTests.cs", "src/Torch/TorchVit.cs", "src/Cli/Program.cs", "models/other/model.safetensors",
                     "artifacts/x.nupkg", "global.json", "examples/python/ecmt_client.py" })
            Assert.True(ignore.Excludes(excluded), $".dockerignore lets {excluded} into the build context");
        foreach (var kept in new[] { "src/Server/Program.cs", "src/Kernels/Cpu/OpenBlas.cs", "protos/ecmt/v1/classifier.proto", "Directory.Packages.props",
                     "models/fmnist-vit/model.safetensors", "models/fmnist-eva/model.safetensors", "deploy/docker/healthcheck.sh" })
            Assert.False(ignore.Excludes(kept), $".dockerignore leaves out {kept}");
    }

    [Theory]
    [InlineData("fmnist-vit")]
    [InlineData("fmnist-eva")]
    public void The_shipped_models_the_images_copy_are_converted_models(string name)
    {
        var folder = $"models/{name}";
        if (!Repo.Exists(folder)) Assert.Skip($"{folder} is not in this checkout yet: the images cannot be built until it is");
        foreach (var dockerfile in new[] { "deploy/docker/Dockerfile.cpu", "deploy/docker/Dockerfile.cuda" })
            Assert.Contains($"COPY {folder}/ /models/{name}/", File.ReadAllText(Repo.Full(dockerfile)), StringComparison.Ordinal);
        Assert.True(Engine.Conversion.ConvertedModel.IsConvertedModel(Repo.Full(folder)), $"{folder} is not a converted model");
        Assert.True(File.Exists(Repo.Full($"{folder}/{Engine.Model.ModelDirectory.WeightsFile}")));
        var ignore = DockerIgnore.Load();
        Assert.All(Repo.Files(folder), f => Assert.False(ignore.Excludes(f), $"{f} is left out of the build context"));
    }

    [Fact]
    public void Compose_services_build_the_images_with_valid_settings_ports_and_stop_grace()
    {
        var compose = YamlFiles.Load("deploy/docker/compose.yaml").Single();
        var services = compose["services"].Pairs.ToList();
        Assert.Equal(2, services.Count);
        foreach (var (name, service) in services)
        {
            var dockerfilePath = service["build"]["dockerfile"].String;
            Assert.Equal("../..", service["build"]["context"].Text);
            var image = Dockerfile.Load(dockerfilePath).Final;
            var environment = service["environment"].Pairs.Select(p => KeyValuePair.Create(p.Key, p.Value.String)).ToList();
            var problems = environment.Select(e => ServerSettings.Problem(e.Key)).OfType<string>().ToList();
            Assert.True(problems.Count == 0, string.Join("\n", problems));
            var options = ServerSettings.Effective(image.Env, environment);
            Assert.Empty(ServerSettings.ValidationErrors(options));
            ServerSettings.Backend(options, ServerSettings.Merge(image.Env, environment));

            var containerPorts = service["ports"].Items.Select(p => int.Parse(p.String.Split(':')[^1], CultureInfo.InvariantCulture)).Order();
            Assert.Equal(new[] { options.Port, options.HttpPort, options.MetricsPort }.Order(), containerPorts);
            var grace = service["stop_grace_period"].String;
            Assert.EndsWith("s", grace, StringComparison.Ordinal);
            Assert.True(int.Parse(grace[..^1], CultureInfo.InvariantCulture) >= options.Shutdown.DrainDelaySeconds + options.Shutdown.TimeoutSeconds + 5,
                $"{name}: stop_grace_period {grace} is shorter than the server's drain");
            Assert.Equal("SIGTERM", service["stop_signal"].Text);
        }
    }
}
