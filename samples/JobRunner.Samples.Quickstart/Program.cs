// The JobRunner quickstart: no configuration, no external service. Run it with
//   dotnet run --project samples/JobRunner.Samples.Quickstart
using JobRunner;
using JobRunner.Samples.Quickstart;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

var builder = Host.CreateApplicationBuilder(args);
builder.Logging.SetMinimumLevel(LogLevel.Warning);
builder.Services.AddJobRunner(runner => runner
    .ConfigureWorker(w => w.Slots = 2)
    .AddWorkload<Greet>("greet")
    .AddWorkload<Flaky>("flaky", w => w.Retry = RetryPolicy.Exponential(TimeSpan.FromMilliseconds(200), maxAttempts: 5))
    .AddWorkload<Import>("import", w => w.Retry = RetryPolicy.Fixed(TimeSpan.FromMilliseconds(100), maxAttempts: 3))
    .AddWorkload<Forever>("forever", w => w.Retry = RetryPolicy.None));

using var host = builder.Build();
var client = host.Services.GetRequiredService<IJobClient>();
// Written here, read by the watcher's thread: every access takes the lock.
var expected = new List<(JobId Id, string What, JobState Expected)>();

async Task<JobId> SubmitAsync(string what, JobRequest request, JobState expectedState)
{
    var result = await client.SubmitAsync(request);
    lock (expected)
    {
        expected.Add((result.Id, what, expectedState));
    }

    return result.Id;
}

// Live view: every state change, progress report and log line, as it happens.
using var stopWatching = new CancellationTokenSource();
var watcher = Task.Run(async () =>
{
    try
    {
        await foreach (var e in client.WatchAsync(new JobEventFilter(), stopWatching.Token))
        {
            string name;
            lock (expected)
            {
                name = expected.Find(x => x.Id == e.JobId).What ?? e.Workload;
            }

            var line = e.Kind switch
            {
                JobEventKind.StateChanged => $"{e.State,-9}{(e.Message is null ? "" : "  " + e.Message)}",
                JobEventKind.Progress => $"progress {e.Progress?.Fraction,5:P0}  {e.Progress?.Message}",
                JobEventKind.Log => $"log      {e.Log?.Message}",
                JobEventKind.CancellationRequested => $"cancel requested: {e.Message}",
                _ => null,
            };
            if (line is not null)
            {
                Console.WriteLine($"  [{name,-22}] #{e.Attempt} {line}");
            }
        }
    }
    catch (OperationCanceledException)
    {
    }
});

// 1. Priorities and tenants: submitted before the worker starts, so the start order shows priority, then FIFO.
Console.WriteLine("Submitting six jobs of several priorities and tenants (higher priority runs first)...");
foreach (var (name, priority, tenant) in new[] { ("low-1", 1, "acme"), ("normal-1", 5, "globex"), ("urgent", 10, "acme"), ("normal-2", 5, "acme"), ("high", 8, "globex"), ("low-2", 1, "globex") })
{
    await SubmitAsync($"greet {name} (p{priority})", JobRequest.Create("greet", new GreetInput(name)) with { Priority = priority, Tenant = tenant }, JobState.Succeeded);
}

// A dedupe key attaches a second submit to the live job.
var first = await client.SubmitAsync(JobRequest.Create("greet", new GreetInput("dedupe")) with { DedupeKey = "nightly-report", Priority = 2 });
var second = await client.SubmitAsync(JobRequest.Create("greet", new GreetInput("dedupe")) with { DedupeKey = "nightly-report", Priority = 2 });
lock (expected)
{
    expected.Add((first.Id, "greet dedupe", JobState.Succeeded));
}

Console.WriteLine($"Dedupe: the second submit attached to the first: {second.Attached && second.Id == first.Id}");

// Bad input is a typed error that names the fix, and stores nothing.
try
{
    await client.SubmitAsync(new JobRequest("greet") { Priority = 11, Tenant = "no spaces" });
}
catch (JobValidationException e)
{
    Console.WriteLine(e.Message);
}

await host.StartAsync();

// 2. Fails twice with a transient error, retries with exponential back-off (a Scheduled state, no slot held), succeeds.
await SubmitAsync("flaky (fails twice)", JobRequest.Create("flaky", new FlakyInput(FailTimes: 2)), JobState.Succeeded);

// 3. Checkpoints after each item; attempt 1 crashes at item 6; attempt 2 resumes from the checkpoint.
var import = await SubmitAsync("import (crash, resume)", JobRequest.Create("import", new ImportInput(Items: 10, CrashAt: 6)), JobState.Succeeded);

// 4. Cancelled while it runs.
var cancelMe = await SubmitAsync("forever (cancelled)", new JobRequest("forever") { Priority = 9 }, JobState.Cancelled);

// 5. Times out after 500 ms.
await SubmitAsync("forever (timeout)", new JobRequest("forever") { Timeout = TimeSpan.FromMilliseconds(500), Priority = 9 }, JobState.Failed);

await foreach (var e in client.WatchAsync(cancelMe))
{
    if (e.State == JobState.Running)
    {
        await client.CancelAsync(cancelMe, "the user pressed stop");
    }
}

foreach (var (id, _, _) in expected)
{
    await foreach (var _ in client.WatchAsync(id))
    {
        // WatchAsync ends after the job reaches a terminal state.
    }
}

await stopWatching.CancelAsync();
await watcher;
await host.StopAsync();

Console.WriteLine();
Console.WriteLine($"{"job",-24} {"state",-10} {"expected",-10} {"attempts",8}  last error");
Console.WriteLine(new string('-', 100));
var ok = true;
foreach (var (id, what, expectedState) in expected)
{
    var job = (await client.GetAsync(id))!;
    ok &= job.State == expectedState;
    var error = job.LastError is { } e ? (e.Length > 50 ? e[..50] + "…" : e) : "";
    Console.WriteLine($"{what,-24} {job.State,-10} {expectedState,-10} {job.Attempts.Count,8}  {error}");
}

var resumed = (await client.GetAsync(import))!;
var log = await client.ReadLogsAsync(import);
Console.WriteLine();
Console.WriteLine($"import: attempt 2 {(log.Entries.Any(l => l.Attempt == 2 && l.Message.Contains("after item 5", StringComparison.Ordinal)) ? "resumed from the checkpoint after item 5" : "did NOT resume from its checkpoint")}; attempts: {string.Join(", ", resumed.Attempts.Select(a => $"#{a.Number} {a.Outcome}"))}");
Console.WriteLine(ok ? "All jobs ended as expected." : "Some jobs did not end as expected.");
return ok ? 0 : 1;
