using System.Diagnostics;
using System.Net.Http.Json;
using System.Text.Json.Nodes;
using JobRunner.Kubernetes.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace JobRunner.Benchmarks;

/// <summary>
/// API requests per job and throughput of the Kubernetes engine through the fake API server, as a console harness:
/// <c>dotnet run -c Release --project benchmarks/JobRunner.Benchmarks -- kubernetes [jobs] [concurrency] [podSeconds]</c>.
/// The baseline, in the same run, is the design JobRunner replaces: create the Job, then GET it every tick until it
/// finishes, then GET its log.
/// </summary>
internal static class KubernetesRequests
{
    public static async Task RunAsync(string[] args)
    {
        var jobs = args.Length > 1 ? int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 1000;
        var concurrency = args.Length > 2 ? int.Parse(args[2], System.Globalization.CultureInfo.InvariantCulture) : 100;
        var podSeconds = args.Length > 3 ? double.Parse(args[3], System.Globalization.CultureInfo.InvariantCulture) : 0;
        var pod = TimeSpan.FromSeconds(podSeconds);
        var tick = pod > TimeSpan.Zero ? TimeSpan.FromSeconds(1) : TimeSpan.FromMilliseconds(50);
        Console.WriteLine($"{jobs} jobs, {concurrency} concurrent, pods run {pod.TotalSeconds:0.###} s; baseline polls every {tick.TotalMilliseconds} ms");

        // Warm-up of both paths (JIT, connections), not counted.
        await BaselineAsync(Math.Min(jobs, 100), concurrency, pod, tick);
        await JobRunnerAsync(Math.Min(jobs, 100), concurrency, pod);

        var baseline = await BaselineAsync(jobs, concurrency, pod, tick);
        var jobRunner = await JobRunnerAsync(jobs, concurrency, pod);
        Console.WriteLine();
        Console.WriteLine("| scenario | requests/job | jobs/s | ratio (jobs/s) |");
        Console.WriteLine("|---|---:|---:|---:|");
        Print("polling loop: create, GET per tick, GET log (baseline)", baseline, baseline);
        Print("JobRunner Kubernetes engine (shared watch, log stream)", jobRunner, baseline);
        Console.WriteLine();
        Console.WriteLine($"JobRunner requests: {jobRunner.Breakdown}");
        Console.WriteLine($"Baseline requests:  {baseline.Breakdown}");
    }

    private static void Print(string name, Result r, Result baseline)
        => Console.WriteLine($"| {name} | {r.PerJob:0.00} | {r.JobsPerSecond:0} | {r.JobsPerSecond / baseline.JobsPerSecond:0.00} |");

    private sealed record Result(double PerJob, double JobsPerSecond, string Breakdown);

    private static FakePodScript Script(TimeSpan pod) => pod > TimeSpan.Zero
        ? new FakePodScript { Logs = ["working", "done"], RunUntil = Task.Delay(pod) }
        : FakePodScript.Succeed("working", "done");

    private static async Task<Result> JobRunnerAsync(int jobs, int concurrency, TimeSpan pod)
    {
        await using var server = await FakeKubernetesServer.StartAsync();
        server.PodBehavior = _ => Script(pod);
        var builder = Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings());
        builder.Services.AddJobRunner(runner => runner
            .ConfigureWorker(w => w.Slots = concurrency)
            .UseKubernetes(k =>
            {
                k.Server = server.BaseAddress;
                k.Namespace = "bench";
            })
            .AddContainerWorkload("k8s", new ContainerSpec { Image = "busybox:1.36", Command = ["/bin/sh", "-c", "echo working; echo done"] }));
        using var host = builder.Build();
        await host.StartAsync();
        var client = host.Services.GetRequiredService<IJobClient>();

        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var finished = 0;
        using var stop = new CancellationTokenSource();
        var watching = Task.Run(async () =>
        {
            var filter = new JobEventFilter { Workload = "k8s" };
            await foreach (var e in client.WatchAsync(filter, stop.Token))
            {
                if (e.Kind == JobEventKind.StateChanged && e.State is JobState.Succeeded or JobState.Failed or JobState.Cancelled && Interlocked.Increment(ref finished) == jobs)
                {
                    done.TrySetResult();
                }
            }
        });

        server.ResetCounters();
        var clock = Stopwatch.StartNew();
        for (var i = 0; i < jobs; i++)
        {
            await client.SubmitAsync(new JobRequest("k8s"));
        }

        await done.Task.WaitAsync(TimeSpan.FromMinutes(10));
        var elapsed = clock.Elapsed;
        var requests = server.RequestCount;
        var breakdown = Breakdown(server);
        await stop.CancelAsync();
        await watching.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        await host.StopAsync();
        return new Result((double)requests / jobs, jobs / elapsed.TotalSeconds, breakdown);
    }

    private static async Task<Result> BaselineAsync(int jobs, int concurrency, TimeSpan pod, TimeSpan tick)
    {
        await using var server = await FakeKubernetesServer.StartAsync();
        server.PodBehavior = _ => Script(pod);
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        server.ResetCounters();
        var next = -1;
        var clock = Stopwatch.StartNew();
        var workers = Enumerable.Range(0, concurrency).Select(_ => Task.Run(async () =>
        {
            while (Interlocked.Increment(ref next) < jobs)
            {
                var name = $"poll-{Guid.NewGuid():N}";
                var job = new JsonObject
                {
                    ["apiVersion"] = "batch/v1",
                    ["kind"] = "Job",
                    ["metadata"] = new JsonObject { ["name"] = name },
                    ["spec"] = new JsonObject
                    {
                        ["backoffLimit"] = 0,
                        ["template"] = new JsonObject
                        {
                            ["spec"] = new JsonObject
                            {
                                ["restartPolicy"] = "Never",
                                ["containers"] = new JsonArray(new JsonObject { ["name"] = "main", ["image"] = "busybox:1.36" }),
                            },
                        },
                    },
                };
                using (var created = await http.PostAsJsonAsync("/apis/batch/v1/namespaces/bench/jobs", job))
                {
                    created.EnsureSuccessStatusCode();
                }

                while (true)
                {
                    var current = await http.GetFromJsonAsync<JsonObject>($"/apis/batch/v1/namespaces/bench/jobs/{name}");
                    if (current!["status"]?["conditions"] is JsonArray { Count: > 0 })
                    {
                        break;
                    }

                    await Task.Delay(tick);
                }

                var pods = await http.GetFromJsonAsync<JsonObject>($"/api/v1/namespaces/bench/pods?labelSelector=job-name%3D{name}");
                var podName = pods!["items"]![0]!["metadata"]!["name"]!.GetValue<string>();
                var log = await http.GetStringAsync($"/api/v1/namespaces/bench/pods/{podName}/log?container=main");
                GC.KeepAlive(log);
            }
        })).ToList();
        await Task.WhenAll(workers);
        var elapsed = clock.Elapsed;
        return new Result((double)server.RequestCount / jobs, jobs / elapsed.TotalSeconds, Breakdown(server));
    }

    private static string Breakdown(FakeKubernetesServer server)
    {
        var requests = server.Requests;
        var create = requests.Count(static r => r.Method == "POST");
        var logs = requests.Count(static r => r.Path.EndsWith("/log", StringComparison.Ordinal));
        var watches = requests.Count(static r => r.IsWatch);
        var gets = requests.Count(static r => r.Method == "GET" && !r.IsWatch && !r.Path.EndsWith("/log", StringComparison.Ordinal));
        var deletes = requests.Count(static r => r.Method == "DELETE");
        return $"{requests.Count} total: {create} create, {gets} get/list, {watches} watch connections, {logs} log streams, {deletes} delete";
    }
}
