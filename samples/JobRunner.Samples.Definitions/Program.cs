// Container task definitions run as local processes. Run it with
//   dotnet run --project samples/JobRunner.Samples.Definitions
// It defines tasks, runs them with parameters, follows their logs live, shows a run that fails and retries, one that
// times out and one that is cancelled, and lists the run history with exit codes. Logs go to files under the temp dir.
using JobRunner;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

var logDirectory = Path.Combine(Path.GetTempPath(), "jobrunner-definitions-sample");
var builder = Host.CreateApplicationBuilder(args);
builder.Logging.SetMinimumLevel(LogLevel.Warning);
builder.Services.AddJobRunner(runner => runner
    .ConfigureWorker(w =>
    {
        w.Slots = 3;
        w.CancellationGracePeriod = TimeSpan.FromSeconds(5);
    })
    .ConfigureProcessEngine(p =>
    {
        p.TransientExitCodes.Add(75); // EX_TEMPFAIL: "try again later"
        p.KillGracePeriod = TimeSpan.FromSeconds(2);
    })
    .AddDefinitions()
    .UseFileLogs(logDirectory));

using var host = builder.Build();
await host.StartAsync();
var definitions = host.Services.GetRequiredService<IJobDefinitions>();
var client = host.Services.GetRequiredService<IJobClient>();

// 1. Define tasks: command and args as an array; ${name} placeholders filled by typed, validated parameters.
await definitions.CreateAsync(new JobDefinition
{
    Name = "customer-report",
    Aliases = ["report"],
    Description = "Prints a few report rows for a customer.",
    Spec = new ContainerSpec
    {
        Image = "alpine:3.20",
        Command = ["/bin/sh", "-c", "for i in $(seq 1 ${rows}); do echo \"row $i of ${rows} for $CUSTOMER\"; sleep 0.05; done; echo 'warning: 1 row skipped' >&2"],
        Env = [new EnvVar("CUSTOMER", "${customer}"), EnvVar.Secret("API_KEY", "sk-live-123")],
        Resources = new ContainerResources { CpuMillicores = 500, MemoryMb = 512 },
    },
    Parameters =
    [
        new DefinitionParameter("customer", Required: true) { Pattern = "[a-z]+" },
        new DefinitionParameter("rows", ParameterType.Integer, Default: "3") { Min = 1, Max = 20 },
    ],
});
await definitions.CreateAsync(new JobDefinition
{
    Name = "flaky-export",
    Description = "Exits 75 (try again) until its third attempt.",
    Spec = new ContainerSpec { Image = "alpine:3.20", Command = ["/bin/sh", "-c", "echo \"export attempt $JOBRUNNER_ATTEMPT\"; [ \"$JOBRUNNER_ATTEMPT\" -ge 3 ] || exit 75"] },
    Retry = RetryPolicy.Exponential(TimeSpan.FromMilliseconds(200), maxAttempts: 5),
});
await definitions.CreateAsync(new JobDefinition
{
    Name = "sleepy",
    Description = "Sleeps; its runs time out after 1 second.",
    Spec = new ContainerSpec { Image = "alpine:3.20", Command = ["/bin/sh", "-c", "echo sleeping ${seconds}s; exec sleep ${seconds}"], Timeout = TimeSpan.FromSeconds(1) },
    Parameters = [new DefinitionParameter("seconds", ParameterType.Integer, Default: "30")],
    Retry = RetryPolicy.None,
});

// 2. Preview a run: the resolved spec and its resources, secrets redacted, nothing runs.
var preview = await definitions.PreviewAsync("report", new Dictionary<string, string> { ["customer"] = "acme", ["rows"] = "2" });
Console.WriteLine($"Preview of customer-report v{preview.Definition.Version}: {string.Join(' ', preview.Spec.Command)}");
Console.WriteLine($"  env: {string.Join(", ", preview.Spec.Env)}; resources: {preview.Spec.Resources.CpuMillicores}m CPU, {preview.Spec.Resources.MemoryMb} MB");

// Bad parameters are one error that lists every problem.
try
{
    await definitions.RunAsync("report", new Dictionary<string, string> { ["rows"] = "99", ["colour"] = "red" });
}
catch (JobValidationException e)
{
    Console.WriteLine(e.Message);
}

// 3. Follow every run's logs live.
using var stopWatching = new CancellationTokenSource();
var names = new Dictionary<JobId, string>();
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
            }

            Console.WriteLine(e.Kind == JobEventKind.Log
                ? $"  [{name,-18}] #{e.Attempt} {e.Log!.Stream,-6} {e.Log.Message}"
                : $"  [{name,-18}] #{e.Attempt} {e.State}{(e.Message is null ? "" : "  " + e.Message)}");
        }
    }
    catch (OperationCanceledException)
    {
    }
});

var expected = new List<(JobId Id, string Name, JobState State)>();
async Task<JobId> RunAsync(string name, string definition, JobState expectedState, Dictionary<string, string>? parameters = null)
{
    var id = (await definitions.RunAsync(definition, parameters)).Id;
    lock (names)
    {
        names[id] = name;
    }

    expected.Add((id, name, expectedState));
    return id;
}

// 4. Run the report several times with parameters, a flaky export that retries, a run that times out, one cancelled.
await RunAsync("report acme", "report", JobState.Succeeded, new() { ["customer"] = "acme" });
await RunAsync("report globex x5", "customer-report", JobState.Succeeded, new() { ["customer"] = "globex", ["rows"] = "5" });
await RunAsync("flaky-export", "flaky-export", JobState.Succeeded);
await RunAsync("sleepy (timeout)", "sleepy", JobState.Failed);
var cancelMe = await RunAsync("sleepy (cancelled)", "sleepy", JobState.Cancelled, new() { ["seconds"] = "20" });

await foreach (var e in client.WatchAsync(cancelMe))
{
    if (e.Kind == JobEventKind.Log)
    {
        await client.CancelAsync(cancelMe, "no longer needed");
        break;
    }
}

foreach (var (id, _, _) in expected)
{
    await foreach (var _ in client.WatchAsync(id))
    {
    }
}

await stopWatching.CancelAsync();
await watcher;

// 5. The run history, with exit codes per attempt.
Console.WriteLine();
Console.WriteLine($"{"run",-20} {"definition",-16} {"state",-10} exit codes (per attempt)");
Console.WriteLine(new string('-', 80));
var ok = true;
var history = await client.ListAsync(new JobQuery { Workload = "definition-run" });
foreach (var job in history.Items)
{
    var (_, name, expectedState) = expected.Find(x => x.Id == job.Id);
    ok &= job.State == expectedState;
    var codes = string.Join(", ", job.Attempts.Select(a => $"#{a.Number}: {a.ExitCode?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "-"} {a.Outcome}"));
    Console.WriteLine($"{name,-20} {job.Request.Labels["jobrunner.io/definition"],-16} {job.State,-10} {codes}");
}

var first = expected[0].Id;
var logs = await client.ReadLogsAsync(first);
Console.WriteLine();
Console.WriteLine($"Logs of '{expected[0].Name}' stay readable after it finished ({logs.Entries.Count} lines, files under {logDirectory}).");
Console.WriteLine(ok ? "All runs ended as expected." : "Some runs did not end as expected.");
await host.StopAsync();
return ok ? 0 : 1;
