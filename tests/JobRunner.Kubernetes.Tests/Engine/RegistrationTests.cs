using JobRunner.Kubernetes.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;

namespace JobRunner.Kubernetes.Tests.Engine;

public sealed class RegistrationTests
{
    private static IHost Build(Action<JobRunnerBuilder> configure)
    {
        var builder = Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings());
        builder.Services.AddJobRunner(configure);
        return builder.Build();
    }

    private static async Task<JobRecord> RunToEndAsync(IHost host, JobRequest request)
    {
        var client = host.Services.GetRequiredService<IJobClient>();
        var submitted = await client.SubmitAsync(request);
        using var limit = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await foreach (var e in client.WatchAsync(submitted.Id, limit.Token))
        {
            if (e.State is JobState.Succeeded or JobState.Failed or JobState.Cancelled)
            {
                break;
            }
        }

        return (await client.GetAsync(submitted.Id))!;
    }

    [Fact]
    public async Task UseKubernetes_ContainerWorkloadsRunAsJobsAndTheirLogsReachTheLogStore()
    {
        await using var server = await FakeKubernetesServer.StartAsync();
        server.PodBehavior = static r => FakePodScript.Succeed($"hello from {r.Image}");
        using var host = Build(runner => runner
            .UseKubernetes(k =>
            {
                k.Server = server.BaseAddress;
                k.Namespace = "batch";
            })
            .AddContainerWorkload("hello", new ContainerSpec { Image = "busybox:1.36", Command = ["echo", "hi"] }));
        await host.StartAsync();

        var job = await RunToEndAsync(host, new JobRequest("hello"));
        var logs = await host.Services.GetRequiredService<IJobClient>().ReadLogsAsync(job.Id);
        await host.StopAsync();

        Assert.Equal(JobState.Succeeded, job.State);
        Assert.Contains(logs.Entries, static e => e.Message == "hello from busybox:1.36");
        Assert.Single(server.Names("jobs", "batch"));
    }

    [Fact]
    public async Task AddKubernetesWorkload_OomKilledIsRetriedThenSucceeds()
    {
        await using var server = await FakeKubernetesServer.StartAsync();
        var calls = 0;
        server.PodBehavior = _ => Interlocked.Increment(ref calls) == 1 ? FakePodScript.OomKilled() : FakePodScript.Succeed("ok");
        using var host = Build(runner => runner
            .ConfigureKubernetes(k => k.Server = server.BaseAddress)
            .AddKubernetesWorkload("batch", new ContainerSpec { Image = "busybox", Command = ["run"] }, w => w.Retry = RetryPolicy.Fixed(TimeSpan.Zero, maxAttempts: 3)));
        await host.StartAsync();

        var job = await RunToEndAsync(host, new JobRequest("batch"));
        await host.StopAsync();

        Assert.True(job.State == JobState.Succeeded, string.Join(" | ", job.Attempts.Select(static a => a.Error)));
        Assert.Equal(2, server.CountRequests(static r => r.Method == "POST"));
    }

    [Fact]
    public void AddKubernetesWorkload_InvalidSpec_ThrowsAtRegistration()
    {
        var error = Assert.Throws<ArgumentException>(() => Build(runner => runner.AddKubernetesWorkload("w", new ContainerSpec { Image = "busybox", Command = ["x"], NodeSelector = new Dictionary<string, string> { ["a b"] = "c" } })));

        Assert.Equal("spec", error.ParamName);
        Assert.Contains("'a b' is not a valid label key", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task UseKubernetes_BadOptions_FailTheHostAtStartNamingTheFix()
    {
        using var host = Build(runner => runner.UseKubernetes(k =>
        {
            k.Namespace = "Not_A_Namespace";
            k.JobNamePrefix = "this-prefix-is-far-too-long";
            k.Labels["team"] = "a b";
            k.OrphanSweepInterval = TimeSpan.Zero;
        }));

        var error = await Assert.ThrowsAsync<OptionsValidationException>(() => host.StartAsync());

        Assert.Contains(error.Failures, static f => f.Contains("Namespace 'Not_A_Namespace' is not a valid namespace", StringComparison.Ordinal));
        Assert.Contains(error.Failures, static f => f.Contains("JobNamePrefix", StringComparison.Ordinal));
        Assert.Contains(error.Failures, static f => f.Contains("'team' has value 'a b'", StringComparison.Ordinal));
        Assert.Contains(error.Failures, static f => f.Contains("OrphanSweepInterval must be positive", StringComparison.Ordinal));
    }

    [Fact]
    public async Task UseKubernetes_WrongKubeconfigContext_FailsTheHostAtStart()
    {
        var path = Path.Combine(AppContext.BaseDirectory, "Fixtures", "kubeconfig", "csharp-client.kubeconfig.yml");
        using var host = Build(runner => runner.UseKubernetes(k =>
        {
            k.KubeconfigPath = path;
            k.Context = "missing-context";
        }));

        var error = await Assert.ThrowsAsync<OptionsValidationException>(() => host.StartAsync());

        Assert.Contains("has no context 'missing-context'", error.Message, StringComparison.Ordinal);
    }
}
