using JobRunner.Kubernetes.Engine;
using JobRunner.Kubernetes.Testing;
using JobRunner.Testing;
using Microsoft.Extensions.Options;

namespace JobRunner.Kubernetes.Tests.Support;

/// <summary>A fake API server and an engine host pointed at it; disposed after each test.</summary>
public sealed class K8sTest : IAsyncDisposable
{
    public static readonly TimeSpan Limit = TimeSpan.FromSeconds(30);

    private readonly List<KubernetesEngineHost> _hosts = [];

    private K8sTest(FakeKubernetesServer server)
    {
        Server = server;
    }

    public FakeKubernetesServer Server { get; }

    public static async Task<K8sTest> StartAsync() => new(await FakeKubernetesServer.StartAsync());

    /// <summary>Starts the fake API server with <paramref name="pods"/> as its <see cref="FakeKubernetesServer.PodBehavior"/>.</summary>
    public static async Task<K8sTest> StartAsync(Func<FakePodRequest, FakePodScript> pods)
    {
        var test = await StartAsync();
        test.Server.PodBehavior = pods;
        return test;
    }

    public static ContainerSpec Spec(string image = "busybox:1.36") => new()
    {
        Image = image,
        Command = ["/bin/sh", "-c"],
        Args = ["echo hello"],
        Env = [new EnvVar("GREETING", "hi")],
        Resources = new ContainerResources { CpuMillicores = 500, MemoryMb = 512 },
    };

    internal KubernetesEngineHost Host(TimeProvider? time = null, Action<KubernetesEngineOptions>? configure = null, IJobStore? store = null)
    {
        var options = new KubernetesEngineOptions { Server = Server.BaseAddress, Namespace = "jobs" };
        configure?.Invoke(options);
        var host = new KubernetesEngineHost(Options.Create(options), time ?? TimeProvider.System, store: store);
        _hosts.Add(host);
        return host;
    }

    internal IExecutionEngine Engine(ContainerSpec? spec = null, TimeProvider? time = null, Action<KubernetesEngineOptions>? configure = null)
        => Host(time, configure).CreateEngine((_, _) => ValueTask.FromResult(spec ?? Spec()));

    /// <summary>Starts one attempt of <paramref name="context"/> on a new engine, without waiting for it.</summary>
    internal Task Start(TestContext context, ContainerSpec? spec = null, TimeProvider? time = null, Action<KubernetesEngineOptions>? configure = null, CancellationToken cancellationToken = default)
        => Engine(spec, time, configure).ExecuteAsync(context, cancellationToken).AsTask();

    /// <summary>Starts one attempt of <paramref name="context"/> on an engine of <paramref name="host"/>, without waiting for it.</summary>
    internal static Task StartOn(KubernetesEngineHost host, TestContext context, ContainerSpec? spec = null, CancellationToken cancellationToken = default)
        => host.CreateEngine((_, _) => ValueTask.FromResult(spec ?? Spec())).ExecuteAsync(context, cancellationToken).AsTask();

    /// <summary>
    /// Starts one attempt on a new <see cref="FakeTimeProvider"/> that the context and the engine share, without waiting
    /// for it: the test moves the clock and awaits the run.
    /// </summary>
    internal (FakeTimeProvider Time, TestContext Context, Task Run) StartOnFakeClock(Action<KubernetesEngineOptions> configure, ContainerSpec? spec = null, CancellationToken cancellationToken = default)
    {
        var time = new FakeTimeProvider();
        var context = new TestContext(time: time);
        return (time, context, Start(context, spec, time, configure, cancellationToken));
    }

    /// <summary>Waits, bounded, until the namespace holds two events: the fake kubelet has begun pulling the image.</summary>
    public Task UntilPullStartedAsync() => UntilAsync(() => Server.Names("events", "jobs").Count >= 2, "The fake kubelet never started the pull.");

    public int Posts => Server.CountRequests(static r => r.Method == "POST");

    /// <summary>Waits, bounded, until <paramref name="condition"/> holds: for what the fake server does that no event announces.</summary>
    public static async Task UntilAsync(Func<bool> condition, string failure)
    {
        for (var i = 0; !condition(); i++)
        {
            Assert.True(i < 3000, failure);
            await Task.Delay(TimeSpan.FromMilliseconds(10), TimeProvider.System);
        }
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var host in _hosts)
        {
            await host.DisposeAsync();
        }

        await Server.DisposeAsync();
    }
}
