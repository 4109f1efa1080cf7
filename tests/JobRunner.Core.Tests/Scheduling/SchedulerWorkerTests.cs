using JobRunner.Scheduling;
using JobRunner.Tests.Support;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace JobRunner.Tests.Scheduling;

/// <summary>The scheduler inside the worker: limits hold across outcomes, explanations reach the client.</summary>
public sealed class SchedulerWorkerTests
{
    private static Task WaitUntilAsync(TestHost host, Func<JobScheduler, bool> condition) => host.WaitForSchedulerAsync(condition);

    [Fact]
    public async Task ConcurrencyKey_AttemptAbandonedWhileItsCodeRuns_FreesTheSlot_ButKeepsTheKeyUntilTheCodeReturns()
    {
        await using var host = new TestHost(r => r.ConfigureWorker(w => w.Slots = 2));
        var stubborn = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

        // Ignores its token: cancelled with no grace (the test host's), it is abandoned while it still runs.
        host.Behavior.Run = (context, _) =>
        {
            if (context.Request.CorrelationId != "stubborn")
            {
                return ValueTask.CompletedTask;
            }

            started.TrySetResult();
            return new ValueTask(stubborn.Task);
        };
        await host.StartAsync();
        var first = (await host.Client.SubmitAsync(new JobRequest("work") { ConcurrencyKey = "nightly", CorrelationId = "stubborn" })).Id;
        await started.Task.WaitAsync(TestHost.WaitLimit);
        await host.Client.CancelAsync(first, "stop");
        await host.WaitForStateAsync(first, JobState.Cancelled);

        // Submitted in this order: the keyed job would be taken first if its key were free.
        var keyed = (await host.Client.SubmitAsync(new JobRequest("work") { ConcurrencyKey = "nightly" })).Id;
        var other = (await host.Client.SubmitAsync(new JobRequest("work"))).Id;
        await host.WaitForStateAsync(other, JobState.Succeeded);
        var again = (await host.Client.SubmitAsync(new JobRequest("work"))).Id;
        await host.WaitForStateAsync(again, JobState.Succeeded);

        Assert.Equal(JobState.Queued, (await host.Client.GetAsync(keyed))!.State);
        var explanation = await host.Client.ExplainAsync(keyed);
        Assert.Equal((WaitReason.ConcurrencyLimit, "key:nightly=1"), (explanation.Reason, explanation.Limit));

        // The abandoned code returns: the key is free.
        stubborn.SetResult();
        await host.WaitForStateAsync(keyed, JobState.Succeeded);
    }

    [Fact]
    public async Task ConcurrencyKey_Singleton_HeldAcrossCancelAndTimeout_SlotAlwaysGivenBack()
    {
        await using var host = new TestHost(r => r.ConfigureWorker(w => w.Slots = 3));
        var started = new Dictionary<JobId, TaskCompletionSource>();
        host.Behavior.Run = async (context, ct) =>
        {
            lock (started)
            {
                started[context.JobId].TrySetResult();
            }

            await Task.Delay(Timeout.Infinite, ct);
        };
        await host.StartAsync();

        async Task<JobId> SubmitAsync(TimeSpan? timeout = null)
        {
            var result = await host.Client.SubmitAsync(new JobRequest("work") { ConcurrencyKey = "nightly", Timeout = timeout });
            lock (started)
            {
                started[result.Id] = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            }

            return result.Id;
        }

        var first = await SubmitAsync();
        var second = await SubmitAsync(TimeSpan.FromSeconds(30));
        var third = await SubmitAsync();
        await started[first].Task.WaitAsync(TestHost.WaitLimit);
        await WaitUntilAsync(host, s => s.PendingCount == 2);

        var explanation = await host.Client.ExplainAsync(second);
        Assert.Equal((WaitReason.ConcurrencyLimit, "key:nightly=1"), (explanation.Reason, explanation.Limit));
        Assert.Equal(JobState.Queued, (await host.Client.GetAsync(second))!.State);

        await host.Client.CancelAsync(first, "stop");
        await host.WaitForStateAsync(first, JobState.Cancelled);
        await started[second].Task.WaitAsync(TestHost.WaitLimit);
        Assert.Equal(JobState.Queued, (await host.Client.GetAsync(third))!.State);

        host.Time.Advance(TimeSpan.FromSeconds(30));
        await host.WaitForStateAsync(second, JobState.Failed);
        await started[third].Task.WaitAsync(TestHost.WaitLimit);
        Assert.Equal(JobState.Running, (await host.Client.GetAsync(third))!.State);
    }

    [Fact]
    public async Task LookaheadFullOfJobsBlockedByOneKey_ARunnableJobFurtherInTheQueueStillRuns()
    {
        // Two slots and a lookahead of 4: twelve jobs of one key (limit 1) fill what the worker holds, and a job without
        // a key comes after them in the queue.
        await using var host = new TestHost(r => r
            .ConfigureWorker(w => w.Slots = 2)
            .ConfigureScheduler(s => s.Lookahead = 4));
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        host.Behavior.Run = async (context, ct) =>
        {
            if (context.Request.ConcurrencyKey is not null)
            {
                await release.Task.WaitAsync(ct);
            }
        };
        var keyed = new List<JobId>();
        for (var i = 0; i < 12; i++)
        {
            keyed.Add((await host.Client.SubmitAsync(new JobRequest("work") { ConcurrencyKey = "account-1" })).Id);
        }

        var free = await host.Client.SubmitAsync(new JobRequest("work"));
        await host.StartAsync();

        // It runs while the keyed ones still wait (the second slot would otherwise sit idle until they drained).
        await host.WaitForStateAsync(free.Id, JobState.Succeeded);
        Assert.Equal(11, (await Task.WhenAll(keyed.Select(id => host.Client.GetAsync(id).AsTask()))).Count(j => j!.State == JobState.Queued));

        release.SetResult();
        foreach (var id in keyed)
        {
            await host.WaitForStateAsync(id, JobState.Succeeded);
        }
    }

    [Fact]
    public async Task WorkloadLimit_RunsAtMostThatManyAtOnce()
    {
        await using var host = new TestHost(r => r
            .ConfigureWorker(w => w.Slots = 4)
            .ConfigureScheduler(s => s.WorkloadLimits["work"] = 2));
        var running = 0;
        var peak = 0;
        var gates = new List<TaskCompletionSource>();
        var twoRunning = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        host.Behavior.Run = async (_, ct) =>
        {
            var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            lock (gates)
            {
                gates.Add(gate);
                peak = Math.Max(peak, ++running);
                if (running == 2)
                {
                    twoRunning.TrySetResult();
                }
            }

            await gate.Task.WaitAsync(ct);
            lock (gates)
            {
                running--;
            }
        };
        await host.StartAsync();

        var ids = new List<JobId>();
        for (var i = 0; i < 5; i++)
        {
            ids.Add(await host.SubmitAsync(new JobRequest("work")));
        }

        await twoRunning.Task.WaitAsync(TestHost.WaitLimit);
        await WaitUntilAsync(host, s => s.PendingCount == 3);
        Assert.Equal("workload:work=2", (await host.Client.ExplainAsync(ids[^1])).Limit);

        // Open every gate, present and future: the remaining jobs then run as the limit allows.
        host.Behavior.Run = (_, _) =>
        {
            lock (gates)
            {
                peak = Math.Max(peak, ++running);
                running--;
            }

            return ValueTask.CompletedTask;
        };
        lock (gates)
        {
            gates.ForEach(g => g.TrySetResult());
        }

        foreach (var id in ids)
        {
            await host.WaitForStateAsync(id, JobState.Succeeded);
        }

        Assert.Equal(2, peak);
    }

    [Fact]
    public async Task RateLimit_WaitingJobsStartWhenTheBucketRefills()
    {
        await using var host = new TestHost(r => r.ConfigureScheduler(s => s.WorkloadRates["work"] = new RateLimit(PerSecond: 1)));
        await host.StartAsync();

        var first = await host.SubmitAsync(new JobRequest("work"));
        var second = await host.SubmitAsync(new JobRequest("work"));
        await host.WaitForStateAsync(first, JobState.Succeeded);
        await WaitUntilAsync(host, s => s.PendingCount == 1);

        Assert.Equal(WaitReason.RateLimited, (await host.Client.ExplainAsync(second)).Reason);
        host.Time.Advance(TimeSpan.FromSeconds(1));
        await host.WaitForStateAsync(second, JobState.Succeeded);
    }

    [Fact]
    public async Task RateLimit_JobsCancelledWhileQueued_DoNotUseUpTheRate()
    {
        await using var host = new TestHost(r => r.ConfigureScheduler(s =>
        {
            s.TenantRates["t"] = new RateLimit(PerSecond: 1);
            s.WorkloadRates["work"] = new RateLimit(PerSecond: 1);
        }));
        for (var i = 0; i < 30; i++)
        {
            await host.Client.CancelAsync(await host.SubmitAsync(new JobRequest("work") { Tenant = "t" }));
        }

        var last = await host.SubmitAsync(new JobRequest("work") { Tenant = "t" });
        await host.StartAsync();

        // The clock does not move: the cancelled jobs' leases are refused and their tokens given back, so the one
        // token of each bucket is still there for the last job (without the refund it would start after ~30 s).
        await host.WaitForStateAsync(last, JobState.Succeeded);
    }

    [Fact]
    public async Task CancelledWhileHeld_LeavesTheSchedulerAndTheQueueAtOnce_WithoutSpendingItsTenantsTurn()
    {
        await using var host = new TestHost(r => r.ConfigureWorker(w => w.Slots = 1));
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        JobId blocker = default;
        host.Behavior.Run = (context, _) => context.JobId == blocker ? new ValueTask(release.Task) : ValueTask.CompletedTask;
        await host.StartAsync();
        blocker = await host.SubmitAsync(new JobRequest("work") { Tenant = "z" });
        await host.Behavior.FirstStart.Task.WaitAsync(TestHost.WaitLimit);

        // The one slot is busy: all three wait in the scheduler, tenant a's turn before tenant b's.
        var a1 = await host.SubmitAsync(new JobRequest("work") { Tenant = "a" });
        var a2 = await host.SubmitAsync(new JobRequest("work") { Tenant = "a" });
        var b1 = await host.SubmitAsync(new JobRequest("work") { Tenant = "b" });
        await WaitUntilAsync(host, s => s.PendingCount == 3);

        await host.Client.CancelAsync(a1, "not needed");

        // Gone from the scheduler (and so from the gauges and explanations) and from the queue before any slot frees up.
        await WaitUntilAsync(host, s => s.PendingCount == 2);
        var scheduler = host.Services.GetRequiredService<JobScheduler>();
        Assert.Null(scheduler.Explain(a1));
        Assert.DoesNotContain(scheduler.SnapshotPending(), j => j.Id == a1);
        Assert.Equal(3, host.Services.GetRequiredService<JobRunner.InMemory.InMemoryJobQueue>().Depth);
        Assert.Equal(WaitReason.NotWaiting, (await host.Client.ExplainAsync(a1)).Reason);

        // Tenant a keeps its turn for a2: a1 taken and refused would have spent it, and b1 would have gone first.
        release.SetResult();
        await host.WaitForStateAsync(b1, JobState.Succeeded);
        await host.WaitForStateAsync(a2, JobState.Succeeded);
        lock (host.Behavior.Started)
        {
            Assert.Equal([blocker, a2, b1], host.Behavior.Started.Select(s => s.Job));
        }
    }

    [Fact]
    public async Task CancelledFarFutureJob_LeavesTheInMemoryQueue()
    {
        await using var host = new TestHost(r => r.ConfigureWorker(w => w.Slots = 1));
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        host.Behavior.Run = (_, _) => new ValueTask(release.Task);
        await host.StartAsync();
        var queue = host.Services.GetRequiredService<JobRunner.InMemory.InMemoryJobQueue>();
        var running = await host.SubmitAsync(new JobRequest("work"));
        await host.Behavior.FirstStart.Task.WaitAsync(TestHost.WaitLimit);
        var held = await host.SubmitAsync(new JobRequest("work"));
        await WaitUntilAsync(host, s => s.PendingCount == 1);
        var nextWeek = await host.SubmitAsync(new JobRequest("work") { NotBefore = host.Time.GetUtcNow().AddDays(7) });
        Assert.Equal(3, queue.Depth);

        await host.Client.CancelAsync(nextWeek);

        // The worker hears cancellations in order: once the held job's (cancelled after) is handled, so is nextWeek's.
        await host.Client.CancelAsync(held);
        await WaitUntilAsync(host, s => s.PendingCount == 0);
        Assert.Equal(1, queue.Depth);
        Assert.Equal(JobState.Running, (await host.Client.GetAsync(running))!.State);
        release.SetResult();
        await host.WaitForStateAsync(running, JobState.Succeeded);
    }

    [Fact]
    public async Task CancelledWhileHeld_ThenRetried_RunsOnce()
    {
        await using var host = new TestHost(r => r.ConfigureWorker(w => w.Slots = 1));
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        JobId blocker = default;
        host.Behavior.Run = (context, _) => context.JobId == blocker ? new ValueTask(release.Task) : ValueTask.CompletedTask;
        await host.StartAsync();
        blocker = await host.SubmitAsync(new JobRequest("work"));
        await host.Behavior.FirstStart.Task.WaitAsync(TestHost.WaitLimit);
        var job = await host.SubmitAsync(new JobRequest("work"));
        await WaitUntilAsync(host, s => s.PendingCount == 1);

        // Retried at once: whichever delivery the worker holds when it hears of the cancellation, the job still runs.
        await host.Client.CancelAsync(job);
        await host.Client.RetryAsync(job);
        release.SetResult();

        await host.WaitForStateAsync(job, JobState.Succeeded);
        await host.WaitForStateAsync(blocker, JobState.Succeeded);
        lock (host.Behavior.Started)
        {
            Assert.Equal(1, host.Behavior.Started.Count(s => s.Job == job));
        }
    }

    [Theory]
    [InlineData(1e-12)]
    [InlineData(4e-12)]
    public async Task Start_RateTooLowForATime_NamesTheMinimum(double perSecond)
    {
        await using var host = new TestHost(r => r.ConfigureScheduler(s => s.TenantRates["acme"] = new RateLimit(perSecond)));

        var e = await Assert.ThrowsAsync<OptionsValidationException>(host.StartAsync);

        Assert.Equal($"SchedulerOptions.TenantRates['acme'] is {new RateLimit(perSecond)}. Set PerSecond to at least 1E-10 (about one start every 317 years) and Burst to 1 or more, or remove the entry for no rate limit.", Assert.Single(e.Failures));
    }

    [Fact]
    public async Task Explain_ScheduledRunningAndFinishedJobs()
    {
        await using var host = new TestHost();
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        host.Behavior.Run = async (_, ct) => await gate.Task.WaitAsync(ct);
        await host.StartAsync();

        var later = await host.SubmitAsync(new JobRequest("work") { NotBefore = host.Time.GetUtcNow().AddHours(1) });
        var now = await host.SubmitAsync(new JobRequest("work"));
        await host.Behavior.FirstStart.Task.WaitAsync(TestHost.WaitLimit);

        Assert.Equal(WaitReason.NotBefore, (await host.Client.ExplainAsync(later)).Reason);
        Assert.Contains("not-before", (await host.Client.ExplainAsync(later)).Message, StringComparison.Ordinal);
        Assert.Equal(WaitReason.NotWaiting, (await host.Client.ExplainAsync(now)).Reason);
        gate.SetResult();
        await host.WaitForStateAsync(now, JobState.Succeeded);
        Assert.Contains("Succeeded", (await host.Client.ExplainAsync(now)).Message, StringComparison.Ordinal);
        await Assert.ThrowsAsync<JobNotFoundException>(() => host.Client.ExplainAsync(JobId.New(host.Time)).AsTask());
    }

    [Fact]
    public async Task Explain_DueScheduledJobBehindAConcurrencyKey_ExplainsTheLimit_NotAPastNotBefore()
    {
        await using var host = new TestHost();
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        host.Behavior.Run = async (_, ct) => await gate.Task.WaitAsync(ct);
        await host.StartAsync();

        var running = await host.SubmitAsync(new JobRequest("work") { ConcurrencyKey = "k" });
        await host.Behavior.FirstStart.Task.WaitAsync(TestHost.WaitLimit);
        var later = await host.SubmitAsync(new JobRequest("work") { ConcurrencyKey = "k", NotBefore = host.Time.GetUtcNow().AddMinutes(1) });
        Assert.Equal(WaitReason.NotBefore, (await host.Client.ExplainAsync(later)).Reason);

        host.Time.Advance(TimeSpan.FromMinutes(2));
        await WaitUntilAsync(host, s => s.PendingCount == 1);

        Assert.Equal(JobState.Scheduled, (await host.Client.GetAsync(later))!.State);
        var explanation = await host.Client.ExplainAsync(later);
        Assert.Equal((WaitReason.ConcurrencyLimit, "key:k=1"), (explanation.Reason, explanation.Limit));
        gate.SetResult();
        await host.WaitForStateAsync(running, JobState.Succeeded);
        await host.WaitForStateAsync(later, JobState.Succeeded);
    }

    [Fact]
    public async Task SchedulerControl_UnknownTier_NamesTheTiers()
    {
        await using var host = new TestHost();
        var control = host.Services.GetRequiredService<ISchedulerControl>();

        var e = Assert.Throws<JobValidationException>(() => control.SetTenantTier("acme", "platinum"));

        Assert.Contains("Use one of: gold, silver, bronze", Assert.Single(e.Errors), StringComparison.Ordinal);
        control.SetTenantTier("acme", "gold");
        Assert.Throws<ArgumentOutOfRangeException>(() => control.SetTenantWeight("acme", 0));
    }

    [Fact]
    public async Task SchedulerControl_GetTenantWeight_ReadsTheOverrideThenTheTierThenTheDefault()
    {
        await using var host = new TestHost(r => r.ConfigureScheduler(s =>
        {
            s.TierWeights["gold"] = 8;
            s.TenantTiers["acme"] = "gold";
            s.DefaultWeight = 3;
        }));
        var control = host.Services.GetRequiredService<ISchedulerControl>();

        Assert.Equal(8, control.GetTenantWeight("acme"));
        Assert.Equal(3, control.GetTenantWeight("other"));
        control.SetTenantWeight("acme", 2);
        control.SetTenantTier("other", "gold");
        Assert.Equal(2, control.GetTenantWeight("acme"));
        Assert.Equal(8, control.GetTenantWeight("other"));
        Assert.Throws<ArgumentNullException>(() => control.GetTenantWeight(null!));
    }

    [Fact]
    public async Task Start_BadSchedulerOptions_ListEveryProblem()
    {
        await using var host = new TestHost(r => r.ConfigureScheduler(s =>
        {
            s.TierWeights["gold"] = 0;
            s.TenantTiers["acme"] = "platinum";
            s.WorkloadLimits["prewarm"] = 0;
            s.ConcurrencyKeyLimits["k"] = -1;
            s.DefaultWeight = 0;
            s.TenantRates["acme"] = new RateLimit(PerSecond: 0);
            s.MaxWait = TimeSpan.Zero;
            s.PreferenceWait = TimeSpan.FromSeconds(-1);
        }));

        var e = await Assert.ThrowsAsync<OptionsValidationException>(host.StartAsync);

        Assert.Equal(8, e.Failures.Count());
        Assert.Contains("SchedulerOptions.PreferenceWait is -00:00:01. Set it to zero", e.Message, StringComparison.Ordinal);
        Assert.Contains("unknown tier 'platinum'", e.Message, StringComparison.Ordinal);
        Assert.Contains("WorkloadLimits['prewarm'] is 0", e.Message, StringComparison.Ordinal);
    }
}
