using System.Collections.Concurrent;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace JobRunner.Storage.Postgres.Tests;

/// <summary>The worker host on PostgreSQL, end to end, on the real clock: submit, run, retry, resume, cancel.</summary>
public sealed class PostgresHostTests : IAsyncLifetime
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(60);
    private readonly PostgresTestDatabase _database = new();

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync() => await _database.DisposeAsync();

    [Fact]
    public async Task Jobs_run_to_completion_with_retries_and_a_checkpoint_carries_over_to_the_next_host()
    {
        var flaky = new ConcurrentDictionary<JobId, int>();
        var resumedFrom = new ConcurrentDictionary<JobId, string?>();
        var blocking = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var blocked = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var first = Build(new Steps(flaky, resumedFrom, blocking, blocked));
        await first.StartAsync();
        var client = first.Services.GetRequiredService<IJobClient>();

        var ok = await client.SubmitAsync(new JobRequest("steps") { Input = "\"ok\""u8.ToArray() });
        var retried = await client.SubmitAsync(new JobRequest("steps") { Input = "\"flaky\""u8.ToArray() });
        var held = await client.SubmitAsync(new JobRequest("steps") { Input = "\"block\""u8.ToArray() });
        Assert.Equal(JobState.Succeeded, await WaitForTerminalAsync(client, ok.Job.Id));
        Assert.Equal(JobState.Succeeded, await WaitForTerminalAsync(client, retried.Job.Id));
        Assert.Equal(2, flaky[retried.Job.Id]);

        // The blocking job checkpoints, then its host stops: the job is released and a second host resumes it.
        if (await Task.WhenAny(blocked.Task, Task.Delay(Limit, TimeProvider.System)) != blocked.Task)
        {
            var record = await client.GetAsync(held.Job.Id);
            Assert.Fail($"The blocking job never checkpointed: {record?.State} {record?.LastError} attempts {record?.Attempts.Count}");
        }

        await first.StopAsync();
        first.Dispose();
        Assert.Equal((short)JobState.Queued, await _database.ScalarAsync<short>($"SELECT state FROM {{s}}.jobs WHERE id = '{held.Job.Id}'"));

        blocking.SetResult();
        using var second = Build(new Steps(flaky, resumedFrom, blocking, new TaskCompletionSource()));
        await second.StartAsync();
        var client2 = second.Services.GetRequiredService<IJobClient>();
        Assert.Equal(JobState.Succeeded, await WaitForTerminalAsync(client2, held.Job.Id));
        Assert.Equal("step-1", resumedFrom[held.Job.Id]);

        // Cancellation of a queued job.
        var later = await client2.SubmitAsync(new JobRequest("steps") { Input = "\"ok\""u8.ToArray(), NotBefore = DateTimeOffset.UtcNow.AddHours(1) });
        Assert.Equal(JobState.Cancelled, (await client2.CancelAsync(later.Job.Id, "not needed")).State);
        await second.StopAsync();
    }

    [Fact]
    public async Task Logs_and_definitions_written_on_one_host_are_read_on_another()
    {
        using var writer = Build(new Steps(new(), new(), new(), new()));
        using var reader = Build(new Steps(new(), new(), new(), new()), worker: false);
        await writer.StartAsync();
        await reader.StartAsync();
        var client = writer.Services.GetRequiredService<IJobClient>();

        var flaky = await client.SubmitAsync(new JobRequest("steps") { Input = "\"flaky\""u8.ToArray() });
        Assert.Equal(JobState.Succeeded, await WaitForTerminalAsync(client, flaky.Job.Id));
        await writer.Services.GetRequiredService<IJobDefinitions>().CreateAsync(new JobDefinition { Name = "nightly", Aliases = ["n"], Spec = new ContainerSpec { Image = "registry.local/nightly:1", Command = ["/bin/true"] } });

        var logs = await reader.Services.GetRequiredService<IJobClient>().ReadLogsAsync(flaky.Job.Id);
        Assert.Equal([(0L, 1, "steps flaky attempt 1"), (1L, 2, "steps flaky attempt 2")], logs.Entries.Select(e => (e.Offset, e.Attempt, e.Message)));
        var definition = await reader.Services.GetRequiredService<IJobDefinitions>().GetAsync("n");
        Assert.Equal(("nightly", 1, "registry.local/nightly:1"), (definition!.Name, definition.Version, definition.Spec.Image));
        await writer.StopAsync();
        await reader.StopAsync();
    }

    [Fact]
    public async Task A_client_host_watches_a_job_that_a_worker_host_runs()
    {
        using var worker = Build(new Steps(new(), new(), new(), new()));
        using var api = Build(new Steps(new(), new(), new(), new()), worker: false);
        await api.StartAsync();
        var client = api.Services.GetRequiredService<IJobClient>();

        // Submitted and watched on the API host; run by the worker host, started only once the watch is open.
        var submitted = await client.SubmitAsync(new JobRequest("steps") { Input = "\"ok\""u8.ToArray() });
        using var timeout = new CancellationTokenSource(Limit);
        var states = new List<JobState>();
        await foreach (var e in client.WatchAsync(submitted.Job.Id, timeout.Token))
        {
            if (e.Kind == JobEventKind.StateChanged)
            {
                states.Add(e.State);
                if (states.Count == 1)
                {
                    await worker.StartAsync();
                }

                if (e.State.IsTerminal())
                {
                    break;
                }
            }
        }

        Assert.Equal([JobState.Queued, JobState.Running, JobState.Succeeded], states);
        await worker.StopAsync();
        await api.StopAsync();
    }

    [Fact]
    public async Task A_tenants_job_runs_long_before_another_tenants_earlier_flood_has_drained()
    {
        var builder = Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings());
        builder.Services.AddJobRunner(r => r
            .UsePostgres(_database.ConnectionString, o => o.Schema = _database.Schema)
            .ConfigureWorker(w => w.Slots = 2)
            .AddWorkload<NoOpWorkload>("noop"));
        using var host = builder.Build();
        var client = host.Services.GetRequiredService<IJobClient>();
        await client.SubmitManyAsync(Enumerable.Range(0, 3_000).Select(_ => new JobRequest("noop") { Tenant = "flood" }).ToList());
        var late = await client.SubmitAsync(new JobRequest("noop") { Tenant = "late" });

        await host.StartAsync();
        Assert.Equal(JobState.Succeeded, await WaitForTerminalAsync(client, late.Job.Id));
        var floodDone = await _database.ScalarAsync<long>("SELECT count(*) FROM {s}.jobs WHERE tenant = 'flood' AND state = 3");
        await host.StopAsync();

        // Oldest first, the late job would wait for all 3,000; the worker's first batch already holds it.
        Assert.InRange(floodDone, 0, 1_000);
    }

    public sealed class NoOpWorkload : IWorkload
    {
        public ValueTask ExecuteAsync(WorkloadContext context, CancellationToken cancellationToken) => ValueTask.CompletedTask;
    }

    private static async Task<JobState> WaitForTerminalAsync(IJobClient client, JobId id)
    {
        using var timeout = new CancellationTokenSource(Limit);
        await foreach (var e in client.WatchAsync(id, timeout.Token))
        {
            if (e.Kind == JobEventKind.StateChanged && e.State.IsTerminal())
            {
                return e.State;
            }
        }

        return (await client.GetAsync(id))!.State;
    }

    private IHost Build(Steps steps, bool worker = true)
    {
        var builder = Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings());
        builder.Services.AddSingleton(steps);
        builder.Services.AddJobRunner(r => r
            .UsePostgres(_database.ConnectionString, o => o.Schema = _database.Schema)
            .ConfigureWorker(w =>
            {
                w.Enabled = worker;
                w.Slots = 4;
                w.ShutdownGracePeriod = TimeSpan.FromSeconds(5);
            })
            .AddWorkload<StepsWorkload>("steps", w => w.Retry = RetryPolicy.Fixed(TimeSpan.FromMilliseconds(50), 3))
            .AddDefinitions());
        return builder.Build();
    }

    public sealed record Steps(ConcurrentDictionary<JobId, int> Flaky, ConcurrentDictionary<JobId, string?> ResumedFrom, TaskCompletionSource Blocking, TaskCompletionSource Blocked);

    public sealed class StepsWorkload(Steps steps) : IWorkload
    {
        public async ValueTask ExecuteAsync(WorkloadContext context, CancellationToken cancellationToken)
        {
            var kind = context.GetInput<string>();
            await context.LogAsync($"steps {kind} attempt {context.Attempt}", cancellationToken: cancellationToken);
            switch (kind)
            {
                case "flaky" when steps.Flaky.AddOrUpdate(context.JobId, 1, (_, n) => n + 1) == 1:
                    throw new TransientJobException("first try fails");
                case "block":
                    if (context.Checkpoint is { } checkpoint)
                    {
                        steps.ResumedFrom[context.JobId] = System.Text.Encoding.UTF8.GetString(checkpoint.Span);
                        return;
                    }

                    await context.SaveCheckpointAsync("step-1"u8.ToArray(), cancellationToken);
                    steps.Blocked.TrySetResult();
                    // Stops when the host asks for a checkpoint (shutdown).
                    await steps.Blocking.Task.WaitAsync(context.CheckpointRequested);
                    break;
            }
        }
    }
}
