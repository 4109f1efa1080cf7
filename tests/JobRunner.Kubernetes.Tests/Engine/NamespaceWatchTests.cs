using System.Net;
using JobRunner.Kubernetes.Client;
using JobRunner.Kubernetes.Engine;
using JobRunner.Kubernetes.Testing;
using JobRunner.Kubernetes.Tests.Support;
using Microsoft.Extensions.Logging.Abstractions;

namespace JobRunner.Kubernetes.Tests.Engine;

public sealed class NamespaceWatchTests
{
    [Fact]
    public async Task StartAsync_CalledWhileARefusedListIsOnItsWay_WaitsForTheNextTry_AndOnlyEarlierCallersFail()
    {
        // The identity may not list pods for the first try only. Its answer is held on its way back to the client: a
        // caller that arrives meanwhile came after the server answered, and must not fail with that answer.
        await using var server = await FakeKubernetesServer.StartAsync();
        server.InjectFault(403, count: 1, match: static r => r.Method == "GET" && r.Path.EndsWith("/pods", StringComparison.Ordinal) && !r.IsWatch);
        using var handler = new HoldingHandler(HttpStatusCode.Forbidden) { InnerHandler = new SocketsHttpHandler() };
        using var http = new HttpClient(handler) { BaseAddress = server.BaseAddress };
        var watch = new NamespaceWatch(new KubernetesApiClient(http, new HurriedTime()), "jobs", new HurriedTime(), NullLogger.Instance);
        await using var _ = watch;

        var first = watch.StartAsync(CancellationToken.None);
        await handler.Held.WaitAsync(K8sTest.Limit);
        var second = watch.StartAsync(CancellationToken.None);
        handler.Release.SetResult();

        var refused = await Assert.ThrowsAsync<KubernetesApiException>(() => first.WaitAsync(K8sTest.Limit));
        Assert.Equal(403, refused.StatusCode);
        await second.WaitAsync(K8sTest.Limit);
        Assert.Equal(2, server.CountRequests(static r => r.Method == "GET" && r.Path.EndsWith("/pods", StringComparison.Ordinal) && !r.IsWatch));
    }

    /// <summary>Holds the first response with <paramref name="status"/> until <see cref="Release"/> completes.</summary>
    private sealed class HoldingHandler(HttpStatusCode status) : DelegatingHandler
    {
        private readonly TaskCompletionSource _held = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public Task Held => _held.Task;

        public TaskCompletionSource Release { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            var response = await base.SendAsync(request, cancellationToken);
            if (response.StatusCode == status && _held.TrySetResult())
            {
                await Release.Task.WaitAsync(cancellationToken);
            }

            return response;
        }
    }
}
