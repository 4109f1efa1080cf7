// Container task definitions run as Kubernetes Jobs.
//   On the in-process fake API server:   dotnet run --project samples/JobRunner.Samples.Kubernetes -- --fake
//   On a real cluster (kubeconfig):      dotnet run --project samples/JobRunner.Samples.Kubernetes -- [--context NAME] [--namespace NS]
// It defines tasks, runs them, follows their logs live (streamed from the pods into the log store), and shows the
// failure classes: a non-zero exit (permanent), an OOMKilled container (transient, retried), an image that cannot be
// pulled (permanent after the back-off limit), and a cancelled run (its Job is deleted). Exits non-zero if a run ends
// other than expected.
using JobRunner;
using JobRunner.Kubernetes.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

var fake = args.Contains("--fake");
string? Arg(string name) => Array.IndexOf(args, name) is var i and >= 0 && i + 1 < args.Length ? args[i + 1] : null;

await using var server = fake ? await FakeKubernetesServer.StartAsync() : null;
if (server is not null)
{
    // The fake's pods act out what their commands say: the sample's tasks are written for it and for a real cluster alike.
    server.PodBehavior = static pod =>
    {
        var script = string.Join(' ', pod.Args);
        var attempt = int.Parse(pod.Env.GetValueOrDefault("JOBRUNNER_ATTEMPT", "1"), System.Globalization.CultureInfo.InvariantCulture);
        return pod.Image switch
        {
            "registry.invalid/missing:1.0" => new FakePodScript { ImagePullFails = true },
            _ when script.Contains("allocate", StringComparison.Ordinal) => attempt < 2 ? FakePodScript.OomKilled() : FakePodScript.Succeed("done"),
            _ when script.Contains("exit 3", StringComparison.Ordinal) => FakePodScript.Exit(3, "validating input", "error: column 'id' missing"),
            _ when script.Contains("sleep 3600", StringComparison.Ordinal) => new FakePodScript { Logs = ["sleeping"], RunUntil = Task.Delay(Timeout.Infinite) },
            _ => FakePodScript.Succeed([.. Enumerable.Range(1, 3).Select(i => $"row {i} for {pod.Env.GetValueOrDefault("CUSTOMER")}")]),
        };
    };
    Console.WriteLine($"Fake Kubernetes API server on {server.BaseAddress}");
}

var builder = Host.CreateApplicationBuilder();
builder.Logging.SetMinimumLevel(LogLevel.Warning);
builder.Services.AddJobRunner(runner => runner
    .ConfigureWorker(w => w.Slots = 4)
    .UseKubernetes(k =>
    {
        k.Namespace = Arg("--namespace") ?? "default";
        k.Context = Arg("--context");
        k.Server = server?.BaseAddress;
        k.ImagePullBackOffLimit = TimeSpan.FromSeconds(fake ? 1 : 60);
        k.TtlAfterFinished = TimeSpan.FromMinutes(10);
    })
    .AddDefinitions());

using var host = builder.Build();
await host.StartAsync();
var definitions = host.Services.GetRequiredService<IJobDefinitions>();
var client = host.Services.GetRequiredService<IJobClient>();

var small = new ContainerResources { CpuMillicores = 256, MemoryMb = 512 };
await definitions.CreateAsync(new JobDefinition
{
    Name = "customer-report",
    Spec = new ContainerSpec
    {
        Image = "busybox:1.36",
        Command = ["/bin/sh", "-c"],
        Args = ["for i in 1 2 3; do echo \"row $i for $CUSTOMER\"; done"],
        Env = [new EnvVar("CUSTOMER", "${customer}")],
        Resources = small,
    },
    Parameters = [new DefinitionParameter("customer", Required: true) { Pattern = "[a-z]+" }],
});
await definitions.CreateAsync(new JobDefinition
{
    Name = "bad-input",
    Spec = new ContainerSpec { Image = "busybox:1.36", Command = ["/bin/sh", "-c"], Args = ["echo validating input; echo \"error: column 'id' missing\" >&2; exit 3"], Resources = small },
    Retry = RetryPolicy.Fixed(TimeSpan.FromMilliseconds(100), maxAttempts: 3),
});
await definitions.CreateAsync(new JobDefinition
{
    Name = "memory-hungry",
    Description = "Needs more memory than its limit on the first try (OOMKilled is transient: retried).",
    Spec = new ContainerSpec { Image = "busybox:1.36", Command = ["/bin/sh", "-c"], Args = ["[ \"$JOBRUNNER_ATTEMPT\" -ge 2 ] || allocate=$(head -c 600m /dev/zero | tr '\\0' x); echo done"], Resources = small },
    Retry = RetryPolicy.Fixed(TimeSpan.FromMilliseconds(100), maxAttempts: 3),
});
await definitions.CreateAsync(new JobDefinition
{
    Name = "missing-image",
    Spec = new ContainerSpec { Image = "registry.invalid/missing:1.0", Command = ["/app"], Resources = small },
    Retry = RetryPolicy.Fixed(TimeSpan.FromMilliseconds(100), maxAttempts: 3),
});
await definitions.CreateAsync(new JobDefinition
{
    Name = "long-sleeper",
    Spec = new ContainerSpec { Image = "busybox:1.36", Command = ["/bin/sh", "-c"], Args = ["echo sleeping; sleep 3600"], Resources = small },
});

// Follow every run live: state changes and the pods' log lines as they arrive.
using var stopWatching = new CancellationTokenSource();
var names = new Dictionary<JobId, string>();
var running = new Dictionary<JobId, TaskCompletionSource>();
var watcher = Task.Run(async () =>
{
    try
    {
        var filter = new JobEventFilter { Kinds = new HashSet<JobEventKind> { JobEventKind.Log, JobEventKind.StateChanged } };
        await foreach (var e in client.WatchAsync(filter, stopWatching.Token))
        {
            string name;
            lock (names)
            {
                name = names.GetValueOrDefault(e.JobId, "?");
                if (e.Kind == JobEventKind.Log && e.Log!.Message == "sleeping" && running.TryGetValue(e.JobId, out var started))
                {
                    started.TrySetResult();
                }
            }

            Console.WriteLine(e.Kind == JobEventKind.Log
                ? $"  [{name,-16}] #{e.Attempt} {e.Log!.Stream,-6} {e.Log.Message}"
                : $"  [{name,-16}] #{e.Attempt} {e.State}{(e.Message is null ? "" : "  " + e.Message)}");
        }
    }
    catch (OperationCanceledException)
    {
    }
});

var expected = new List<(JobId Id, string Name, JobState State)>();
async Task<JobId> RunAsync(string definition, JobState state, Dictionary<string, string>? parameters = null)
{
    var id = (await definitions.RunAsync(definition, parameters)).Id;
    lock (names)
    {
        names[id] = definition;
        running[id] = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    expected.Add((id, definition, state));
    return id;
}

await RunAsync("customer-report", JobState.Succeeded, new Dictionary<string, string> { ["customer"] = "acme" });
await RunAsync("bad-input", JobState.Failed);
await RunAsync("memory-hungry", JobState.Succeeded);
await RunAsync("missing-image", JobState.Failed);
var sleeper = await RunAsync("long-sleeper", JobState.Cancelled);

// Cancel the sleeper once its pod runs: its Job is deleted (propagationPolicy=Background), pods and all.
await running[sleeper].Task.WaitAsync(TimeSpan.FromMinutes(5));
await client.CancelAsync(sleeper, "no longer needed");

var failures = 0;
using var limit = new CancellationTokenSource(TimeSpan.FromMinutes(fake ? 1 : 10));
Console.WriteLine();
Console.WriteLine("Runs:");
foreach (var (id, name, state) in expected)
{
    JobRecord record;
    while ((record = (await client.GetAsync(id, limit.Token))!).State is not (JobState.Succeeded or JobState.Failed or JobState.Cancelled))
    {
        await foreach (var e in client.WatchAsync(id, limit.Token))
        {
            if (e.State is JobState.Succeeded or JobState.Failed or JobState.Cancelled)
            {
                break;
            }
        }
    }

    var last = record.Attempts.Count > 0 ? record.Attempts[^1] : null;
    var ok = record.State == state;
    failures += ok ? 0 : 1;
    Console.WriteLine($"  {(ok ? "ok " : "BAD")} {name,-16} {record.State,-9} attempts {record.Attempts.Count}, exit code {last?.ExitCode?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "-"}{(last?.Error is { } error ? ", " + error : "")}");
}

if (server is not null)
{
    Console.WriteLine($"API requests to the fake server: {server.RequestCount} for {expected.Count} runs.");
}

await stopWatching.CancelAsync();
await watcher;
await host.StopAsync();
return failures == 0 ? 0 : 1;
