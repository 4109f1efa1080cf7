using JobRunner.Kubernetes.Client;
using JobRunner.Kubernetes.Testing;
using JobRunner.Kubernetes.Tests.Support;

namespace JobRunner.Kubernetes.Tests.Client;

#pragma warning disable CA1001 // xunit disposes it through IAsyncLifetime.
public sealed class KubernetesApiClientTests : IAsyncLifetime
#pragma warning restore CA1001
{
    private FakeKubernetesServer _server = null!;
    private HttpClient _http = null!;

    public async Task InitializeAsync()
    {
        _server = await FakeKubernetesServer.StartAsync();
        _http = new HttpClient { BaseAddress = _server.BaseAddress };
    }

    public async Task DisposeAsync()
    {
        _http.Dispose();
        await _server.DisposeAsync();
    }

    private KubernetesApiClient Client(TimeProvider? time = null) => new(_http, time ?? TimeProvider.System);

    private static KubeJob Job(string name) => new()
    {
        ApiVersion = "batch/v1",
        Kind = "Job",
        Metadata = new ObjectMeta { Name = name, Labels = new() { ["app.kubernetes.io/managed-by"] = "jobrunner" } },
        Spec = new JobSpec
        {
            BackoffLimit = 0,
            Template = new PodTemplateSpec { Spec = new PodSpec { RestartPolicy = "Never", Containers = [new Container { Name = "main", Image = "busybox" }] } },
        },
    };

    [Fact]
    public async Task CreateJob_Twice_ThrowsAlreadyExists()
    {
        var client = Client();
        var created = await client.CreateJobAsync("ns", Job("a"), CancellationToken.None);

        var error = await Assert.ThrowsAsync<KubernetesApiException>(() => client.CreateJobAsync("ns", Job("a"), CancellationToken.None));

        Assert.NotNull(created.Metadata.Uid);
        Assert.Equal(409, error.StatusCode);
        Assert.Equal("AlreadyExists", error.Reason);
        Assert.True(error.IsAlreadyExists);
        Assert.False(error.IsTransient);
        Assert.Contains("jobs.batch \"a\" already exists", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task GetJob_Missing_ThrowsNotFound()
    {
        var error = await Assert.ThrowsAsync<KubernetesApiException>(() => Client().GetJobAsync("ns", "missing", CancellationToken.None));

        Assert.Equal(404, error.StatusCode);
        Assert.Equal("NotFound", error.Reason);
        Assert.False(error.IsTransient);
    }

    [Fact]
    public async Task CreateJob_Invalid_ThrowsInvalidWithCauses()
    {
        var job = Job("Bad_Name");
        job.Spec!.Template.Spec.Containers[0].Image = "";

        var error = await Assert.ThrowsAsync<KubernetesApiException>(() => Client().CreateJobAsync("ns", job, CancellationToken.None));

        Assert.Equal(422, error.StatusCode);
        Assert.Equal("Invalid", error.Reason);
        Assert.Contains(error.Causes, c => c.StartsWith("metadata.name: Invalid value", StringComparison.Ordinal));
        Assert.Contains("spec.template.spec.containers[0].image: Required value", error.Causes);
    }

    [Fact]
    public async Task Request_Throttled_WaitsRetryAfterOnTheClockThenSucceeds()
    {
        var time = new TimerSignal();
        _server.InjectFault(429, count: 1, retryAfterSeconds: 7);
        var client = Client(time);

        var list = client.ListJobsAsync("ns", null, CancellationToken.None);
        await time.WaitForTimerAsync(TimeSpan.FromSeconds(7));
        Assert.False(list.IsCompleted);
        time.Fake.Advance(TimeSpan.FromSeconds(7));
        var result = await list.WaitAsync(K8sTest.Limit);

        Assert.NotNull(result.Metadata.ResourceVersion);
        Assert.Equal(2, _server.RequestCount);
    }

    [Fact]
    public async Task Request_ThrottledTooOften_ThrowsTransientWithRetryAfter()
    {
        _server.InjectFault(429, count: 10, retryAfterSeconds: 1);
        var client = new KubernetesApiClient(_http, TimeProvider.System, maxRetries: 0);

        var error = await Assert.ThrowsAsync<KubernetesApiException>(() => client.ListJobsAsync("ns", null, CancellationToken.None));

        Assert.Equal(429, error.StatusCode);
        Assert.True(error.IsTransient);
        Assert.Equal(TimeSpan.FromSeconds(1), error.RetryAfter);
        Assert.Contains("Too many requests", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Request_ServerError_IsRetriedAndTransient()
    {
        var time = new TimerSignal();
        _server.InjectFault(500, count: 1);
        var client = Client(time);

        var get = client.ListPodsAsync("ns", null, CancellationToken.None);
        await time.WaitForTimerAsync(TimeSpan.FromMilliseconds(200));
        time.Fake.Advance(TimeSpan.FromMilliseconds(200));
        await get.WaitAsync(K8sTest.Limit);

        Assert.Equal(2, _server.RequestCount);
        Assert.True(new KubernetesApiException(503, "ServiceUnavailable", "x").IsTransient);
    }

    [Fact]
    public async Task DeleteJob_SendsBackgroundPropagationAndRemovesPods()
    {
        var client = Client();
        var release = new TaskCompletionSource();
        _server.PodBehavior = _ => new FakePodScript { RunUntil = release.Task };
        await client.CreateJobAsync("ns", Job("d"), CancellationToken.None);

        Assert.True(await client.DeleteJobAsync("ns", "d", CancellationToken.None));
        Assert.False(await client.DeleteJobAsync("ns", "d", CancellationToken.None));

        var delete = _server.Requests.First(static r => r.Method == "DELETE");
        Assert.Equal("""{"kind":"DeleteOptions","apiVersion":"v1","propagationPolicy":"Background"}""", delete.Body);
        Assert.Empty(_server.Names("pods", "ns"));
    }

    [Fact]
    public async Task Watch_FromAResourceVersion_ReplaysEventsThenBookmarks()
    {
        var client = Client();
        var list = await client.ListJobsAsync("ns", null, CancellationToken.None);
        await client.CreateJobAsync("ns", Job("w"), CancellationToken.None);
        using var cancel = new CancellationTokenSource(K8sTest.Limit);
        var events = new List<RawWatchEvent>();

        await foreach (var e in client.WatchAsync(KubernetesApiClient.JobsPath("ns"), null, list.Metadata.ResourceVersion!, cancel.Token))
        {
            events.Add(e);
            if (events.Count == 1)
            {
                _server.SendBookmarks();
            }

            if (e.Type == "BOOKMARK")
            {
                break;
            }
        }

        Assert.Equal("ADDED", events[0].Type);
        Assert.Equal("w", events[0].Object.GetProperty("metadata").GetProperty("name").GetString());
        Assert.Equal("BOOKMARK", events[^1].Type);
        Assert.Contains(_server.Requests, static r => r.IsWatch && r.Query.Contains("allowWatchBookmarks=true", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Watch_FromACompactedVersion_Throws410Expired()
    {
        var client = Client();
        var list = await client.ListJobsAsync("ns", null, CancellationToken.None);
        await client.CreateJobAsync("ns", Job("x"), CancellationToken.None);
        _server.ExpireWatches();

        var error = await Assert.ThrowsAsync<KubernetesApiException>(async () =>
        {
            await foreach (var _ in client.WatchAsync(KubernetesApiClient.JobsPath("ns"), null, list.Metadata.ResourceVersion!, CancellationToken.None))
            {
            }
        });

        Assert.Equal(410, error.StatusCode);
        Assert.Equal("Expired", error.Reason);
        Assert.True(error.IsExpired);
    }

    [Fact]
    public async Task OpenLog_ContainerWaitingToStart_RetriesUntilItRuns()
    {
        var time = new TimerSignal();
        var release = new TaskCompletionSource();
        _server.PodBehavior = _ => new FakePodScript { Unschedulable = true };
        var client = Client(time);
        await client.CreateJobAsync("ns", Job("l"), CancellationToken.None);
        var pods = await client.ListPodsAsync("ns", "job-name=l", CancellationToken.None);
        var pod = Assert.Single(pods.Items).Metadata.Name!;

        var open = client.OpenLogAsync("ns", pod, "main", follow: false, null, waitingRetries: 1, CancellationToken.None);
        await time.WaitForTimerAsync(TimeSpan.FromSeconds(1));
        time.Fake.Advance(TimeSpan.FromSeconds(1));
        var error = await Assert.ThrowsAsync<KubernetesApiException>(() => open.WaitAsync(K8sTest.Limit));

        Assert.Equal(400, error.StatusCode);
        Assert.Contains($"container \"main\" in pod \"{pod}\" is waiting to start: ContainerCreating", error.Message, StringComparison.Ordinal);
        Assert.Equal(2, _server.CountRequests(static r => r.Path.EndsWith("/log", StringComparison.Ordinal)));
    }

    [Fact]
    public async Task OpenLog_FinishedPod_ReturnsTimestampedLines()
    {
        _server.PodBehavior = _ => FakePodScript.Succeed("alpha", "beta");
        var client = Client();
        await client.CreateJobAsync("ns", Job("t"), CancellationToken.None);
        string pod;
        while (true)
        {
            // The fake's controller runs asynchronously; the pod's Succeeded phase is observed through a watch.
            var pods = await client.ListPodsAsync("ns", "job-name=t", CancellationToken.None);
            if (pods.Items is [{ Status.Phase: "Succeeded" } p])
            {
                pod = p.Metadata.Name!;
                break;
            }

            await foreach (var _ in client.WatchAsync(KubernetesApiClient.PodsPath("ns"), "job-name=t", pods.Metadata.ResourceVersion!, CancellationToken.None))
            {
                break;
            }
        }

        using var reader = new StreamReader(await client.OpenLogAsync("ns", pod, "main", follow: true, null, 0, CancellationToken.None));
        var lines = (await reader.ReadToEndAsync()).Split('\n', StringSplitOptions.RemoveEmptyEntries);

        Assert.Equal(["alpha", "beta"], lines.Select(static l => Kubernetes.Engine.AttemptRun.SplitTimestamp(l).Text));
        Assert.All(lines, static l => Assert.NotNull(Kubernetes.Engine.AttemptRun.SplitTimestamp(l).Time));
    }

    [Fact]
    public async Task PodEventsAndNodes_AreListed()
    {
        _server.AddNode("node-a", new Dictionary<string, string> { ["pool"] = "batch" }, ready: true);
        _server.AddNode("node-b", new Dictionary<string, string> { ["pool"] = "web" }, ready: false);
        _server.PodBehavior = _ => new FakePodScript { ImagePullFails = true };
        var client = Client();
        await client.CreateJobAsync("ns", Job("e"), CancellationToken.None);

        var nodes = await client.ListNodesAsync("pool=batch", CancellationToken.None);
        var all = await client.ListNodesAsync(null, CancellationToken.None);
        var pod = (await client.ListPodsAsync("ns", "job-name=e", CancellationToken.None)).Items.Single().Metadata.Name!;
        var events = await client.ListPodEventsAsync("ns", pod, CancellationToken.None);

        var node = Assert.Single(nodes.Items);
        Assert.Equal("node-a", node.Metadata.Name);
        Assert.True(node.IsReady);
        Assert.False(all.Items.Single(static n => n.Metadata.Name == "node-b").IsReady);
        Assert.All(events.Items, e => Assert.Equal(pod, e.InvolvedObject!.Name));
        Assert.Contains(events.Items, static e => e.Reason == "Scheduled");
    }

    [Fact]
    public async Task Request_NoAnswerWithinTheTimeLimit_ThrowsTransientTimeout()
    {
        var time = new TimerSignal();
        _server.InjectFault(503, count: 100, retryAfterSeconds: 30);
        var client = new KubernetesApiClient(_http, time) { RequestTimeout = TimeSpan.FromSeconds(20) };

        var list = client.ListJobsAsync("ns", null, CancellationToken.None);
        await time.WaitForTimerAsync(TimeSpan.FromSeconds(30));
        time.Fake.Advance(TimeSpan.FromSeconds(20));
        var error = await Assert.ThrowsAsync<KubernetesApiException>(() => list.WaitAsync(K8sTest.Limit));

        Assert.Equal(504, error.StatusCode);
        Assert.True(error.IsTransient);
        Assert.Contains("no answer within", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Watch_NoResponseHeadersWithinTheTimeLimit_ThrowsTransientTimeout()
    {
        var time = new TimerSignal();
        _server.InjectFault(503, count: 100, retryAfterSeconds: 30, match: static r => r.IsWatch);
        var client = new KubernetesApiClient(_http, time) { RequestTimeout = TimeSpan.FromSeconds(20) };

        await using var watch = client.WatchAsync(KubernetesApiClient.JobsPath("ns"), null, null, CancellationToken.None).GetAsyncEnumerator();
        var next = watch.MoveNextAsync().AsTask();
        await time.WaitForTimerAsync(TimeSpan.FromSeconds(30));
        time.Fake.Advance(TimeSpan.FromSeconds(20));
        var error = await Assert.ThrowsAsync<KubernetesApiException>(() => next.WaitAsync(K8sTest.Limit));

        Assert.Equal(504, error.StatusCode);
        Assert.Contains("no answer within", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task FollowedLog_HeadersLaterThanTheTimeLimit_IsNotCut()
    {
        // The kubelet sends a followed log's headers with its first line: a container silent for its first minute.
        using var handler = new SilentLogHandler();
        using var http = new HttpClient(handler) { BaseAddress = new Uri("https://kubernetes.example") };
        var time = new TimerSignal();
        var client = new KubernetesApiClient(http, time) { RequestTimeout = TimeSpan.FromSeconds(20) };

        var open = client.OpenLogAsync("ns", "pod", "main", follow: true, null, 0, CancellationToken.None);
        await handler.Called.Task.WaitAsync(K8sTest.Limit);
        time.Fake.Advance(TimeSpan.FromSeconds(61));
        Assert.False(open.IsCompleted);
        handler.Answer.SetResult();
        using var reader = new StreamReader(await open.WaitAsync(K8sTest.Limit));

        Assert.Equal("2026-01-01T00:00:00Z first", await reader.ReadLineAsync());
    }

    private sealed class SilentLogHandler : HttpMessageHandler
    {
        public TaskCompletionSource Called { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public TaskCompletionSource Answer { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            Called.TrySetResult();
            await Answer.Task.WaitAsync(cancellationToken);
            return new HttpResponseMessage(System.Net.HttpStatusCode.OK) { Content = new StringContent("2026-01-01T00:00:00Z first\n") };
        }
    }

    [Fact]
    public async Task Request_AsksForHttp2OrLower()
    {
        using var capture = new CaptureHandler();
        using var http = new HttpClient(capture) { BaseAddress = new Uri("https://kubernetes.example") };

        await new KubernetesApiClient(http, TimeProvider.System).ListJobsAsync("ns", null, CancellationToken.None);

        Assert.Equal(System.Net.HttpVersion.Version20, capture.Version);
        Assert.Equal(HttpVersionPolicy.RequestVersionOrLower, capture.Policy);
    }

    [Fact]
    public async Task DeleteJob_AnsweredWithTheJobItself_Succeeds()
    {
        // A finalizer holds the Job: the server answers 200 with the Job (deletionTimestamp set), not a Status.
        using var capture = new CaptureHandler { Body = """{"kind":"Job","apiVersion":"batch/v1","metadata":{"name":"j","deletionTimestamp":"2026-01-01T00:00:00Z","finalizers":["example.com/hold"]},"spec":{},"status":{"active":1}}""" };
        using var http = new HttpClient(capture) { BaseAddress = new Uri("https://kubernetes.example") };

        Assert.True(await new KubernetesApiClient(http, TimeProvider.System).DeleteJobAsync("ns", "j", CancellationToken.None));
    }

    [Fact]
    public async Task NamespaceWatch_ClosedAtOnceByTheServer_WaitsBeforeOpeningItAgain()
    {
        // Lists answer empty; every watch is answered with an empty body, closed at once (as a misbehaving proxy does).
        using var handler = new ClosingWatchHandler();
        using var http = new HttpClient(handler) { BaseAddress = new Uri("https://kubernetes.example") };
        var time = new TimerSignal();
        await using var watch = new Kubernetes.Engine.NamespaceWatch(new KubernetesApiClient(http, time), "ns", time, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);

        await watch.StartAsync(CancellationToken.None).WaitAsync(K8sTest.Limit);
        await time.WaitForTimerAsync(TimeSpan.FromMilliseconds(200));

        // Without a pause, the loops would have opened watches without end by now; with one, each waits on the clock.
        Assert.InRange(Volatile.Read(ref handler.Watches), 1, 4);
    }

    private sealed class ClosingWatchHandler : HttpMessageHandler
    {
        public int Watches;

        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            var watch = request.RequestUri!.Query.Contains("watch=true", StringComparison.Ordinal);
            if (watch)
            {
                Interlocked.Increment(ref Watches);
            }

            var body = watch ? "" : """{"metadata":{"resourceVersion":"1"},"items":[]}""";
            return Task.FromResult(new HttpResponseMessage(System.Net.HttpStatusCode.OK) { Content = new StringContent(body, System.Text.Encoding.UTF8, "application/json") });
        }
    }

    [Fact]
    public async Task ConnectTimeout_IsRetriedLikeAConnectionFailure()
    {
        // SocketsHttpHandler.ConnectTimeout throws a TaskCanceledException (inner TimeoutException), not an HttpRequestException.
        using var handler = new ConnectTimeoutHandler { Failures = 2 };
        using var http = new HttpClient(handler) { BaseAddress = new Uri("https://10.9.8.7:6443") };

        var list = await new KubernetesApiClient(http, new HurriedTime()).ListJobsAsync("ns", null, CancellationToken.None).WaitAsync(K8sTest.Limit);

        Assert.Empty(list.Items);
        Assert.Equal(3, handler.Calls);
    }

    [Fact]
    public async Task ConnectTimeout_PastTheRetries_IsUnreachableNamingTheServer()
    {
        using var handler = new ConnectTimeoutHandler { Failures = int.MaxValue };
        using var http = new HttpClient(handler) { BaseAddress = new Uri("https://10.9.8.7:6443") };

        var error = await Assert.ThrowsAsync<KubernetesApiException>(() => new KubernetesApiClient(http, new HurriedTime(), maxRetries: 2).ListJobsAsync("ns", null, CancellationToken.None).WaitAsync(K8sTest.Limit));

        Assert.Equal(0, error.StatusCode);
        Assert.Equal("Unreachable", error.Reason);
        Assert.True(error.IsTransient);
        Assert.Contains("https://10.9.8.7:6443", error.Message, StringComparison.Ordinal);
        Assert.Equal(3, handler.Calls);
    }

    [Fact]
    public async Task ConnectTimeout_WhenTheCallerCancelled_IsTheCallersCancellation()
    {
        using var cancel = new CancellationTokenSource();
        using var handler = new ConnectTimeoutHandler { Failures = int.MaxValue, OnCall = cancel.Cancel };
        using var http = new HttpClient(handler) { BaseAddress = new Uri("https://10.9.8.7:6443") };

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => new KubernetesApiClient(http, new HurriedTime()).ListJobsAsync("ns", null, cancel.Token).WaitAsync(K8sTest.Limit));

        Assert.Equal(1, handler.Calls);
    }

    private sealed class ConnectTimeoutHandler : HttpMessageHandler
    {
        public int Failures { get; init; }

        public Action? OnCall { get; init; }

        public int Calls;

        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            OnCall?.Invoke();
            if (Interlocked.Increment(ref Calls) <= Failures)
            {
                throw new TaskCanceledException("The connection attempt timed out.", new TimeoutException("A connection could not be established within 30 seconds."));
            }

            return Task.FromResult(new HttpResponseMessage(System.Net.HttpStatusCode.OK) { Content = new StringContent("""{"metadata":{"resourceVersion":"1"},"items":[]}""", System.Text.Encoding.UTF8, "application/json") });
        }
    }

    private sealed class CaptureHandler : HttpMessageHandler
    {
        public string Body { get; init; } = """{"metadata":{},"items":[]}""";

        public Version? Version { get; private set; }

        public HttpVersionPolicy? Policy { get; private set; }

        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            (Version, Policy) = (request.Version, request.VersionPolicy);
            return Task.FromResult(new HttpResponseMessage(System.Net.HttpStatusCode.OK) { Content = new StringContent(Body, System.Text.Encoding.UTF8, "application/json") });
        }
    }
}
