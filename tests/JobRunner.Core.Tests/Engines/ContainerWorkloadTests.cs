using JobRunner.Tests.Support;

namespace JobRunner.Tests.Engines;

/// <summary>Container workloads through the whole worker path, with real processes.</summary>
public sealed class ContainerWorkloadTests
{
    private static ContainerSpec Sh(string script) => new() { Image = "busybox", Command = ["/bin/sh", "-c", script] };

    [Fact]
    public async Task ContainerWorkload_TransientExitCode_RetriesAndRecordsEveryExitCode()
    {
        await using var host = new TestHost(r => r
            .ConfigureProcessEngine(p => p.TransientExitCodes.Add(75))
            .AddContainerWorkload("flaky", Sh("echo attempt $JOBRUNNER_ATTEMPT; [ \"$JOBRUNNER_ATTEMPT\" -ge 3 ] || exit 75"), w => w.Retry = RetryPolicy.Fixed(TimeSpan.Zero, 5)));
        await host.StartAsync();

        var id = await host.SubmitAsync(new JobRequest("flaky"));
        var job = await host.WaitForStateAsync(id, JobState.Succeeded);

        Assert.Equal([75, 75, 0], job.Attempts.Select(a => a.ExitCode!.Value));
        Assert.Equal(typeof(WorkloadExitException).FullName, job.Attempts[0].ErrorType);
        var logs = await host.Client.ReadLogsAsync(id, new LogQuery { Attempt = 3 });
        Assert.Contains(logs.Entries, l => l.Message == "attempt 3");
    }

    [Fact]
    public async Task ContainerWorkload_PermanentExitCode_FailsWithoutRetry()
    {
        await using var host = new TestHost(r => r.AddContainerWorkload("broken", Sh("exit 2"), w => w.Retry = RetryPolicy.Fixed(TimeSpan.Zero, 5)));
        await host.StartAsync();

        var id = await host.SubmitAsync(new JobRequest("broken"));
        var job = await host.WaitForStateAsync(id, JobState.Failed);

        Assert.Equal(2, Assert.Single(job.Attempts).ExitCode);
        Assert.Equal(AttemptOutcome.Failed, job.Attempts[0].Outcome);
    }

    [Fact]
    public async Task ContainerWorkload_SpecTimeout_IsTimedOutOutcome()
    {
        await using var host = new TestHost(r => r
            .ConfigureWorker(w => w.CancellationGracePeriod = TimeSpan.FromMinutes(1))
            .AddContainerWorkload("slow", Sh("echo ready; exec sleep 30") with { Timeout = TimeSpan.FromMilliseconds(200) }));
        await host.StartAsync();

        // The spec timeout runs on the host's clock, which is fake here: advance it once the process runs.
        var id = await host.SubmitAsync(new JobRequest("slow"));
        await WaitForLogAsync(host, id, "ready");
        host.Time.Advance(TimeSpan.FromMilliseconds(200));
        var job = await host.WaitForStateAsync(id, JobState.Failed);
        Assert.Equal(AttemptOutcome.TimedOut, Assert.Single(job.Attempts).Outcome);
        Assert.Equal(143, job.Attempts[0].ExitCode);
    }

    [Fact]
    public async Task ContainerWorkload_Cancelled_IsCancelledWithTheSigtermExitCode()
    {
        await using var host = new TestHost(r => r
            .ConfigureWorker(w => w.CancellationGracePeriod = TimeSpan.FromMinutes(1))
            .AddContainerWorkload("forever", Sh("echo ready; exec sleep 30")));
        await host.StartAsync();

        var id = await host.SubmitAsync(new JobRequest("forever"));
        await WaitForLogAsync(host, id, "ready");

        await host.Client.CancelAsync(id, "stop");
        var job = await host.WaitForStateAsync(id, JobState.Cancelled);

        Assert.Equal(AttemptOutcome.Cancelled, job.Attempts[0].Outcome);
        Assert.Equal(143, job.Attempts[0].ExitCode);
    }

    private static async Task WaitForLogAsync(TestHost host, JobId id, string line)
    {
        using var limit = new CancellationTokenSource(TestHost.WaitLimit);
        await using var watch = host.Client.WatchAsync(id, limit.Token).GetAsyncEnumerator(limit.Token);

        // The first event is the snapshot, taken after subscribing: a line logged before it is in the log store.
        Assert.True(await watch.MoveNextAsync());
        if ((await host.Client.ReadLogsAsync(id)).Entries.Any(e => e.Message == line))
        {
            return;
        }

        while (await watch.MoveNextAsync())
        {
            if (watch.Current.Log?.Message == line)
            {
                return;
            }
        }

        throw new InvalidOperationException($"Job {id} ended without logging '{line}'.");
    }
}
