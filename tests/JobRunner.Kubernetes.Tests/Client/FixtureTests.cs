using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using JobRunner.Kubernetes.Client;
using JobRunner.Kubernetes.Testing;
using JobRunner.Kubernetes.Tests.Support;

namespace JobRunner.Kubernetes.Tests.Client;

/// <summary>
/// The fake server and the client checked against real API data (Fixtures/, see its README.md): the fake emits only
/// fields the API has, the client reads real objects, and sends requests shaped like client-go's golden requests.
/// </summary>
public sealed class FixtureTests
{
    private static readonly HashSet<string> s_maps = ["labels", "annotations", "nodeSelector", "requests", "limits", "matchLabels", "capacity", "allocatable"];

    private static string Fixture(string name) => File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "Fixtures", name));

    /// <summary>Every field path of a JSON value; array items as [], map keys as *.</summary>
    private static HashSet<string> Paths(JsonNode? node, string prefix = "", HashSet<string>? into = null)
    {
        into ??= [];
        switch (node)
        {
            case JsonObject o:
                var isMap = s_maps.Contains(prefix.Split('.')[^1]);
                foreach (var (key, value) in o)
                {
                    var path = prefix.Length == 0 ? (isMap ? "*" : key) : prefix + "." + (isMap ? "*" : key);
                    into.Add(path);
                    Paths(value, path, into);
                }

                break;
            case JsonArray a:
                foreach (var item in a)
                {
                    Paths(item, prefix + "[]", into);
                }

                break;
        }

        return into;
    }

    private static void AssertSubset(JsonNode emitted, string fixture)
    {
        var allowed = Paths(JsonNode.Parse(Fixture(fixture)));
        var extra = Paths(emitted).Where(p => !allowed.Contains(p)).Order(StringComparer.Ordinal).ToList();
        Assert.True(extra.Count == 0, $"Fields not in {fixture}: {string.Join(", ", extra)}");
    }

    private static async Task<(K8sTest Test, string Job, string Pod)> RunOneAsync(FakePodScript script)
    {
        var test = await K8sTest.StartAsync();
        test.Server.PodBehavior = _ => script;
        var context = new TestContext();
        try
        {
            await test.Engine().ExecuteAsync(context, CancellationToken.None).AsTask().WaitAsync(K8sTest.Limit);
        }
        catch (WorkloadExitException)
        {
            // The failure's objects are what the test looks at.
        }

        var job = $"jr-{context.JobId}-1";
        return (test, job, test.Server.Names("pods", "jobs").Single());
    }

    [Fact]
    public async Task FakeJobAndPod_UseOnlyFieldsOfTheApi()
    {
        var (test, job, pod) = await RunOneAsync(FakePodScript.Succeed("x"));
        await using var _ = test;

        AssertSubset(test.Server.GetObject("jobs", "jobs", job)!, "batch.v1.Job.json");
        AssertSubset(test.Server.GetObject("pods", "jobs", pod)!, "core.v1.Pod.json");
        foreach (var e in test.Server.Names("events", "jobs"))
        {
            AssertSubset(test.Server.GetObject("events", "jobs", e)!, "core.v1.Event.json");
        }
    }

    [Fact]
    public async Task FakeFailedAndEvictedObjects_UseOnlyFieldsOfTheApi()
    {
        var (test, job, pod) = await RunOneAsync(new FakePodScript { Evicted = true });
        await using var _ = test;

        AssertSubset(test.Server.GetObject("jobs", "jobs", job)!, "batch.v1.Job.json");
        AssertSubset(test.Server.GetObject("pods", "jobs", pod)!, "core.v1.Pod.json");
    }

    [Fact]
    public async Task FakeNodesStatusesAndWatchEvents_UseOnlyFieldsOfTheApi()
    {
        await using var server = await FakeKubernetesServer.StartAsync();
        server.AddNode("n1", new Dictionary<string, string> { ["pool"] = "a" });
        AssertSubset(server.GetObject("nodes", "", "n1")!, "core.v1.Node.json");

        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        var notFound = await http.GetStringAsync(new Uri("/apis/batch/v1/namespaces/x/jobs/missing", UriKind.Relative)).ContinueWith(static t => t.Exception?.InnerException as HttpRequestException);
        Assert.Equal(HttpStatusCode.NotFound, notFound!.StatusCode);
        using var invalid = await http.PostAsync(new Uri("/apis/batch/v1/namespaces/x/jobs", UriKind.Relative), new StringContent("""{"metadata":{"name":"Bad"},"spec":{"template":{"spec":{"containers":[{"name":"main"}]}}}}""", Encoding.UTF8, "application/json"));
        var status = JsonNode.Parse(await invalid.Content.ReadAsStringAsync())!;
        Assert.Equal(422, status["code"]!.GetValue<int>());
        AssertSubset(status, "core.v1.Status.json");

        using var watch = await http.GetAsync(new Uri("/apis/batch/v1/namespaces/x/jobs?watch=true&resourceVersion=1", UriKind.Relative), HttpCompletionOption.ResponseHeadersRead);
        server.ExpireWatches();
        var line = JsonNode.Parse((await watch.Content.ReadAsStringAsync()).Split('\n')[0])!.AsObject();
        Assert.Equal(["type", "object"], line.Select(static p => p.Key));
        Assert.Equal(Paths(JsonNode.Parse(Fixture("core.v1.WatchEvent.json"))!).Where(static p => !p.Contains('.', StringComparison.Ordinal)).Order(), line.Select(static p => p.Key).Order());
        AssertSubset(line["object"]!, "core.v1.Status.json");
        Assert.Equal("Expired", line["object"]!["reason"]!.GetValue<string>());
        Assert.Equal("application/json", watch.Content.Headers.ContentType!.MediaType);
    }

    [Fact]
    public void Client_ReadsTheApiFixtures()
    {
        var job = JsonSerializer.Deserialize(Fixture("batch.v1.Job.json"), KubeJson.Default.KubeJob)!;
        Assert.Equal("nameValue", job.Metadata.Name);
        Assert.Equal("typeValue", job.Status!.Conditions![0].Type);
        Assert.NotNull(job.Spec!.ActiveDeadlineSeconds);
        Assert.NotNull(job.Spec.TtlSecondsAfterFinished);

        var pod = JsonSerializer.Deserialize(Fixture("core.v1.Pod.json"), KubeJson.Default.KubePod)!;
        var state = pod.Status!.ContainerStatuses![0].State!;
        Assert.Equal("reasonValue", state.Waiting!.Reason);
        Assert.NotNull(state.Terminated);

        var status = JsonSerializer.Deserialize(Fixture("core.v1.Status.json"), KubeJson.Default.KubeStatus)!;
        Assert.Equal("fieldValue", status.Details!.Causes![0].Field);
        Assert.Equal(5, status.Details.RetryAfterSeconds);

        var pods = JsonSerializer.Deserialize(Fixture("csharp-client.minikube-PodList.json"), KubeJson.Default.KubePodList)!;
        Assert.Equal("1762810", pods.Metadata.ResourceVersion);
        Assert.NotEmpty(pods.Items);
        Assert.All(pods.Items, static p => Assert.NotNull(p.Status?.Phase));
    }

    [Fact]
    public async Task ClientWatch_RealWatchStreamAndOldApiServer410_AreRead()
    {
        // The body of a real watch response (chunked on the wire; the chunk framing is HTTP's business).
        var raw = File.ReadAllBytes(Path.Combine(AppContext.BaseDirectory, "Fixtures", "client-go-golden", "TestGoldenResponse", "responses", "events"));
        var body = Dechunk(raw);
        var events = new List<RawWatchEvent>();
        await foreach (var e in Client(body).WatchAsync("/api/v1/namespaces/default/serviceaccounts", null, "0", CancellationToken.None))
        {
            events.Add(e);
        }

        Assert.Equal(["ADDED", "BOOKMARK"], events.Select(static e => e.Type));
        Assert.Equal("964", events[1].Object.GetProperty("metadata").GetProperty("resourceVersion").GetString());

        var error = await Assert.ThrowsAsync<KubernetesApiException>(async () =>
        {
            await foreach (var _ in Client(Fixture("csharp-client.watch-error-410-too-old-resource-version.jsonl")).WatchAsync("/x", null, "44982", CancellationToken.None))
            {
            }
        });
        Assert.True(error.IsExpired);
        Assert.Equal("Gone", error.Reason);
        Assert.Contains("too old resource version", error.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("create")]
    [InlineData("delete")]
    [InlineData("get")]
    [InlineData("list")]
    [InlineData("watch")]
    public async Task ClientRequests_MatchClientGoGoldenRequests(string golden)
    {
        var expected = GoldenRequest.Parse(File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "Fixtures", "client-go-golden", "TestGoldenRequest", golden)));
        await using var server = await FakeKubernetesServer.StartAsync();
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        var client = new KubernetesApiClient(http, TimeProvider.System);
        var job = new KubeJob
        {
            ApiVersion = "batch/v1",
            Kind = "Job",
            Metadata = new ObjectMeta { Name = "mips" },
            Spec = new JobSpec { Template = new PodTemplateSpec { Spec = new PodSpec { RestartPolicy = "Never", Containers = [new Container { Name = "main", Image = "i" }] } } },
        };
        switch (golden)
        {
            case "create":
                await client.CreateJobAsync("mops", job, CancellationToken.None);
                break;
            case "delete":
                await client.CreateJobAsync("mops", job, CancellationToken.None);
                server.ResetCounters();
                await client.DeleteJobAsync("mops", "mips", CancellationToken.None);
                break;
            case "get":
                await client.CreateJobAsync("mops", job, CancellationToken.None);
                server.ResetCounters();
                await client.GetJobAsync("mops", "mips", CancellationToken.None);
                break;
            case "list":
                await client.ListJobsAsync("mops", null, CancellationToken.None);
                break;
            case "watch":
                // From a compacted version the server answers at once with a 410 ERROR event and closes.
                server.ExpireWatches();
                await Assert.ThrowsAsync<KubernetesApiException>(async () =>
                {
                    await foreach (var _ in client.WatchAsync(KubernetesApiClient.JobsPath("mops"), null, "42", CancellationToken.None))
                    {
                    }
                });

                break;
        }

        var actual = server.Requests[^1];
        Assert.Equal(expected.Method, actual.Method);

        // Same resource path shape: /apis/{group}/{version}/namespaces/{namespace}/{resource}[/{name}].
        Assert.StartsWith("/apis/batch/v1/namespaces/mops/jobs", actual.Path, StringComparison.Ordinal);
        Assert.StartsWith("/apis/flops/v1alpha1/namespaces/mops/flips", expected.Path, StringComparison.Ordinal);

        Assert.Equal(expected.Headers["Accept"], actual.Headers["Accept"]);
        Assert.True(actual.Headers.ContainsKey("User-Agent"));
        if (expected.Headers.TryGetValue("Content-Type", out var contentType))
        {
            Assert.Equal(contentType, actual.Headers["Content-Type"]);
            var expectedBody = JsonNode.Parse(expected.Body)!.AsObject();
            var actualBody = JsonNode.Parse(actual.Body)!.AsObject();
            if (expectedBody.ContainsKey("kind"))
            {
                // DeleteOptions: kind and apiVersion first, as client-go writes them.
                Assert.Equal(expectedBody.Select(static p => p.Key).Take(2), actualBody.Select(static p => p.Key).Take(2));
                Assert.Equal(expectedBody["kind"]!.GetValue<string>(), actualBody["kind"]!.GetValue<string>());
                Assert.Equal(expectedBody["apiVersion"]!.GetValue<string>(), actualBody["apiVersion"]!.GetValue<string>());
            }
            else
            {
                Assert.Equal(expectedBody["metadata"]!["name"]!.GetValue<string>(), actualBody["metadata"]!["name"]!.GetValue<string>());
            }
        }
        else
        {
            Assert.Equal("", actual.Body);
        }

        // Every query parameter client-go sends for this call (except the dry-run/validation extras JobRunner does not use) is sent the same way.
        foreach (var (name, value) in expected.Query)
        {
            if (name is "fieldValidation" or "resourceVersion" && golden is not "watch")
            {
                continue;
            }

            Assert.Equal(value, actual.QueryValue(name));
        }
    }

    private static byte[] Dechunk(byte[] raw)
    {
        var text = Encoding.UTF8.GetString(raw);
        var body = text[(text.IndexOf("\r\n\r\n", StringComparison.Ordinal) + 4)..];
        var output = new StringBuilder();
        while (true)
        {
            var end = body.IndexOf("\r\n", StringComparison.Ordinal);
            var size = Convert.ToInt32(body[..end], 16);
            if (size == 0)
            {
                return Encoding.UTF8.GetBytes(output.ToString());
            }

            output.Append(body.AsSpan(end + 2, size));
            body = body[(end + 2 + size + 2)..];
        }
    }

    private static KubernetesApiClient Client(string body) => Client(Encoding.UTF8.GetBytes(body));

    private static KubernetesApiClient Client(byte[] body)
        => new(new HttpClient(new StaticHandler(body)) { BaseAddress = new Uri("http://127.0.0.1:1") }, TimeProvider.System);

    private sealed class StaticHandler(byte[] body) : HttpMessageHandler
    {
        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
            => Task.FromResult(new HttpResponseMessage(HttpStatusCode.OK) { Content = new ByteArrayContent(body) });
    }

    private sealed record GoldenRequest(string Method, string Path, IReadOnlyList<(string Name, string Value)> Query, Dictionary<string, string> Headers, string Body)
    {
        public static GoldenRequest Parse(string text)
        {
            var split = text.IndexOf("\r\n\r\n", StringComparison.Ordinal);
            var head = text[..split].Split("\r\n");
            var requestLine = head[0].Split(' ');
            var target = requestLine[1];
            var q = target.IndexOf('?', StringComparison.Ordinal);
            var query = q < 0 ? [] : target[(q + 1)..].Split('&').Select(static p => p.Split('=', 2)).Select(static p => (p[0], p[1])).ToList();
            var headers = head.Skip(1).Select(static h => h.Split(": ", 2)).ToDictionary(static h => h[0], static h => h[1], StringComparer.OrdinalIgnoreCase);
            return new GoldenRequest(requestLine[0], q < 0 ? target : target[..q], query, headers, text[(split + 4)..]);
        }
    }
}

internal static class FakeRequestExtensions
{
    public static string? QueryValue(this FakeRequest request, string name)
    {
        foreach (var pair in request.Query.TrimStart('?').Split('&', StringSplitOptions.RemoveEmptyEntries))
        {
            var parts = pair.Split('=', 2);
            if (parts[0] == name)
            {
                return Uri.UnescapeDataString(parts.Length > 1 ? parts[1] : "");
            }
        }

        return null;
    }
}
