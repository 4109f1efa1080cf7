using JobRunner.Kubernetes.Engine;
using JobRunner.Kubernetes.Testing;
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
